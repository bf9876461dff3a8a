"""Verifiable judges: score toy-world videos against their prompts from PIXELS only.

They are the toy stand-in for the VLM judge (DESIGN.md §5), so they must grade the blurry, noisy
videos a generator makes, not just the renderer's clean ones: every score is a continuous float in
[0, 1] (an RL trainer needs a gradient of quality), shaped [B].

Inputs: videos float [B, T, H, W, 3] in [0, 1] (uint8 in [0, 255] is rescaled; floats are clamped);
specs as `SceneSpec`s or grammar prompts.

Foreground. Every judge but smoothness first measures each pixel's RGB distance d to the spec's
background colour and thresholds it at half its maximum (half of the clip's 99th percentile of
d, at least 0.15). A symmetric blur leaves the half-maximum contour of an edge where it was, so
blurry objects keep their size; soft weights relu(d - threshold) stress object cores, and
coverage = min(1, d / peak) estimates how much of a pixel an object covers.

Scores (one line each; * = what the spec asks for):
- color      = exp(-|fg_rgb - c*|^2 / 0.25^2) * min(1, bg_share / 0.4) * presence. fg_rgb = bg* +
               peak * (unit mean offset of foreground pixels from bg*): blended edge pixels point
               the same way as the object's core, so blur does not drag it to the background.
               bg_share = mean_p exp(-d^2 / (2 * 0.1^2)), the share of pixels showing bg*;
               presence = min(1, foreground px per frame / (25 % of one object's area)).
- shape      = mean over foreground components (not touching the border, >= 30 % of one object's
               area) of exp(-(cross - cross*)^2 / (2 * 0.1^2) - (skew - skew*)^2 / (2 * 0.2^2)):
               coverage-weighted moments, cross = E[dx^2 dy^2] / (E[dx^2] E[dy^2]) (square 1.0,
               triangle 0.82, circle 0.68), skew = vertical skewness (triangle -0.58, others 0);
               * = the same features of the ideal rendered shape; 0 if no component qualifies.
- motion     = ((1 + cos(v, d*)) / 2)^2 * min(1, |v| / (0.6 * speed*))^2 for a direction,
               exp(-(|v| / (0.6 px * scale))^2) for "static"; v (px/frame) = least-squares slope
               of the soft foreground centroid (objects) or the mean whole-image shift between
               consecutive distance maps (pans: d* is opposite the camera; fluids: the drift).
- smoothness = exp(-r / 0.025), r = mean over interior pixels of frames 1..T-2 of the
               motion-compensated interpolation residual min_s |(f[t-1](p - s) + f[t+1](p + s)) / 2
               - f[t](p)| (3x3-patch mean L1 over RGB, s on a half-pixel grid up to 2 px; frames
               larger than 32 px are resampled to 32 first): noise, flicker, jitter and shuffled
               frames raise it; smooth motion does not. Needs no prompt.
- count      = mean over ALL frames (not just the middle one: steadier) of
               exp(-(n - count*)^2 / (2 * 0.35^2)), n = sum over components of
               min(2a, 1) + max(0, a - 1.5), a = component area / one object's area (specks count
               fractionally, two merged objects count 1.5).
- relation   = presence_1 * presence_2 * clamp((along - |across|) / (0.8 * size), 0, 1) for a
               composition: along / across = the displacement between the two objects' mean
               centroids along / across the named relation (first object to the second).

The instruction kinds (report §2.2) reuse these judges where the question is the same and change
what they read where it is not:
- orbit:       motion = the direction score above of the BACKGROUND's shift (the shift search on
               pixels >= 2 px from the foreground, so the fixed object does not anchor it) times
               the object's stillness (the "static" score of its centroid) times its centring
               exp(-(|mean centroid - frame centre| / (0.25 * size))^2).
- order:       motion = sqrt(score of the first leg on frames 0..switch * score of the second
               on frames switch..T-1), each the direction score of that leg's centroid slope, so
               a wrong order or a wrong leg scores low.
- composition: each object is its own colour layer: a pixel's amount of colour k is its
               projection on the segment bg* -> c_k times exp(-(distance off that segment /
               0.25)^2), kept for the nearer colour only. presence_k = min(1, that amount summed
               per frame / (50 % of the object's area)); color = min(1, bg_share / 0.4) *
               sqrt(presence_1 * presence_2); shape = mean over the two objects of the shape
               score of their layer; motion reads the centroid ("static").

`judge_all` parses prompts and adds "overall" = weighted mean of the judges that apply (weights in
OVERALL_WEIGHTS; smoothness weighs half as it ignores the prompt). What applies (APPLICABLE_JUDGES):
object, orbit and order scenes all but relation; pans colour, shape, motion, smoothness; fluids
colour, motion, smoothness; compositions all but count. In `judge_all` a judge that does not apply
reports the clip's overall score (so it neither rewards nor penalises); called directly,
`judge_shape` / `judge_count` / `judge_relation` return NaN for such clips.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from toyworld.prompts import parse
from toyworld.world import (
    BACKGROUNDS,
    COLORS,
    DIRECTION_VECTORS,
    RELATION_VECTORS,
    SceneSpec,
    content_direction,
    expected_speed,
    object_size,
    order_switch_frame,
    pan_shape_size,
    shape_area,
    shape_coverage,
)

JUDGES = ("color", "shape", "motion", "smoothness", "count", "relation")
APPLICABLE_JUDGES: dict[str, tuple[str, ...]] = {
    "object": ("color", "shape", "motion", "smoothness", "count"),
    "pan": ("color", "shape", "motion", "smoothness"),
    "fluid": ("color", "motion", "smoothness"),
    "orbit": ("color", "shape", "motion", "smoothness", "count"),
    "order": ("color", "shape", "motion", "smoothness", "count"),
    "composition": ("color", "shape", "motion", "smoothness", "relation"),
}
OVERALL_WEIGHTS = {"color": 1.0, "shape": 1.0, "motion": 1.0, "count": 1.0, "smoothness": 0.5, "relation": 1.0}

_THRESHOLD_FLOOR = 0.15  # RGB distance below which nothing counts as foreground
_BACKGROUND_RADIUS = 0.1  # RGB distance at which a pixel counts ~0.6 as background
_BACKGROUND_SHARE = 0.4
_COLOR_SCALE = 0.25  # nearest wrong object colour is >= 0.66 away => exp(-7) ~ 0
_CROSS_SIGMA = 0.1
_SKEW_SIGMA = 0.2
_COUNT_SIGMA = 0.35
_SMOOTH_SCALE = 0.025
_GLOBAL_SEARCH_PX = 3  # px/frame at 32x32 (scaled) for whole-image shifts (pans, fluids)
_SEARCH_PX = 2  # px/frame at 32x32 (scaled); the world moves content <= 2 px/frame
_LAYER_PRESENCE = 0.5  # share of an object's area its colour layer must fill for presence 1
_RELATION_RAMP = 0.8  # object sizes of clear separation for a relation to score 1


# ----------------------------------------------------------------------------------------------
# Inputs and shared features.


def _specs(specs, batch: int) -> list[SceneSpec]:
    out = [parse(s) if isinstance(s, str) else s for s in specs]
    if len(out) != batch:
        raise ValueError(f"got {len(out)} specs/prompts for a batch of {batch} videos")
    return out


def _videos(videos) -> torch.Tensor:
    videos = torch.as_tensor(videos)
    if videos.ndim != 5 or videos.shape[-1] != 3:
        raise ValueError(f"videos must be [B, T, H, W, 3]; got shape {tuple(videos.shape)}")
    if min(videos.shape[2:4]) < 3:  # the judges compare 3x3 neighbourhoods
        raise ValueError(f"videos must be at least 3x3 pixels; got {videos.shape[2]}x{videos.shape[3]}")
    if videos.dtype == torch.uint8:
        return videos.to("cpu", torch.float32) / 255.0
    return videos.detach().to("cpu", torch.float32).clamp(0.0, 1.0)


def _object_size(spec: SceneSpec, height: int, width: int) -> int:
    """Bounding-box side the renderer gives this spec's objects."""
    if spec.kind == "object":
        return object_size(height, width, spec.count)
    if spec.kind == "pan":
        return pan_shape_size(height, width)
    return object_size(height, width, 2 if spec.kind == "composition" else 1)


def _one_object_area(spec: SceneSpec, height: int, width: int) -> float:
    if spec.kind == "fluid":
        return float(object_size(height, width) ** 2)
    return shape_area(spec.shape, _object_size(spec, height, width))


@dataclass
class _Foreground:
    distance: torch.Tensor  # [B, T, H, W] RGB distance to the spec's background
    peak: torch.Tensor  # [B] 99th percentile of `distance` over the clip
    weight: torch.Tensor  # [B, T, H, W] relu(distance - threshold)
    mask: torch.Tensor  # [B, T, H, W] bool, distance > threshold

    @property
    def coverage(self) -> torch.Tensor:
        """[B, T, H, W] estimated object coverage: distance / peak, clamped to [0, 1]."""
        return (self.distance / self.peak.clamp_min(1e-6)[:, None, None, None]).clamp(0.0, 1.0)

    def select(self, index: torch.Tensor) -> "_Foreground":
        return _Foreground(self.distance[index], self.peak[index], self.weight[index], self.mask[index])

    def frames(self, start: int, stop: int) -> "_Foreground":
        span = slice(start, stop)
        return _Foreground(self.distance[:, span], self.peak, self.weight[:, span], self.mask[:, span])


def _foreground(videos: torch.Tensor, specs: list[SceneSpec]) -> _Foreground:
    background = torch.tensor([BACKGROUNDS[s.background] for s in specs], dtype=torch.float32)
    distance = (videos - background[:, None, None, None, :]).norm(dim=-1)
    peak = torch.quantile(distance.flatten(1), 0.99, dim=1)
    threshold = (0.5 * peak).clamp_min(_THRESHOLD_FLOOR)[:, None, None, None]
    return _Foreground(distance, peak, (distance - threshold).clamp_min(0.0), distance > threshold)


@dataclass
class _Components:
    """Connected foreground components of every frame (8-connected, never across frames).

    Shape features are central moments of the component's soft coverage (distance to the
    background / peak distance, over the component grown by one pixel so anti-aliased and blurred
    edges count by their coverage): `cross` = E[dx^2 dy^2] / (E[dx^2] E[dy^2]) is 1 for an
    axis-aligned square (x and y independent, blurred or not) and 2/3 for a disc; `skew` =
    E[dy^3] / E[dy^2]^1.5 is about -0.6 for an upward triangle and 0 for the symmetric shapes.
    """

    video: np.ndarray  # [N] which clip
    frame: np.ndarray  # [N]
    area: np.ndarray  # [N] pixels above the half-maximum threshold
    cross: np.ndarray  # [N]
    skew: np.ndarray  # [N]
    touches_border: np.ndarray  # [N] bool


def _components(mask: torch.Tensor, coverage: torch.Tensor) -> _Components:
    b, t, h, w = mask.shape
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # connect within a frame only
    core = mask.reshape(b * t, h, w).numpy()
    labels, n = ndimage.label(core, structure=structure)
    grown = np.where(labels > 0, labels, ndimage.grey_dilation(labels, footprint=structure))
    frame_index, ys, xs = np.nonzero(grown)
    label = grown[frame_index, ys, xs] - 1
    weight = coverage.reshape(b * t, h, w).numpy().astype(np.float64)[frame_index, ys, xs]
    in_core = core[frame_index, ys, xs]
    mass = np.bincount(label, weights=weight, minlength=n)

    def mean(values):
        return np.bincount(label, weights=weight * values, minlength=n) / np.maximum(mass, 1e-9)

    dx = xs - mean(xs)[label]
    dy = ys - mean(ys)[label]
    var_x, var_y = mean(dx * dx), mean(dy * dy)
    on_border = in_core & ((ys == 0) | (xs == 0) | (ys == h - 1) | (xs == w - 1))
    frame = np.zeros(n, dtype=np.int64)
    frame[label] = frame_index
    return _Components(
        video=frame // t,
        frame=frame % t,
        area=np.bincount(label, weights=in_core, minlength=n),
        cross=mean(dx * dx * dy * dy) / np.maximum(var_x * var_y, 1e-6),
        skew=mean(dy**3) / np.maximum(var_y, 1e-6) ** 1.5,
        touches_border=np.bincount(label, weights=on_border, minlength=n) > 0,
    )


@lru_cache(maxsize=None)
def _ideal_features(shape: str, size: int) -> tuple[float, float]:
    """(cross, skew) of the rendered shape's coverage, averaged over sub-pixel offsets."""
    side = size + 4
    y, x = np.mgrid[0:side, 0:side].astype(np.float64)
    offsets = np.linspace(0, 1, 4, endpoint=False)
    coverage = np.stack(
        [
            shape_coverage(shape, x, y, (side - 1) / 2 + ox, (side - 1) / 2 + oy, size)
            for ox in offsets
            for oy in offsets
        ]
    )[None]
    comps = _components(torch.from_numpy(coverage > 0.5), torch.from_numpy(coverage))
    return float(comps.cross.mean()), float(comps.skew.mean())


@dataclass
class _Layers:
    """The two named objects of each composition clip, separated by colour (module doc)."""

    row: dict[int, int]  # clip index -> row n of the tensors below
    coverage: torch.Tensor  # [N, 2, T, H, W] amount of each object's colour per pixel
    presence: torch.Tensor  # [N, 2] in [0, 1]
    comps: _Components  # components of every layer; "video" 2n + k is object k of row n


def _composition_layers(videos: torch.Tensor, specs: list[SceneSpec]) -> _Layers | None:
    rows = [i for i, s in enumerate(specs) if s.kind == "composition"]
    if not rows:
        return None
    _, t, h, w, _ = videos.shape
    chosen = [specs[i] for i in rows]
    background = torch.tensor([BACKGROUNDS[s.background] for s in chosen], dtype=torch.float32)
    colors = torch.tensor([[COLORS[s.color], COLORS[s.other_color]] for s in chosen], dtype=torch.float32)
    offset = videos[rows] - background[:, None, None, None, :]  # [N, T, H, W, 3]
    axis = colors - background[:, None, :]  # [N, 2, 3]: background -> each object colour
    amount = torch.einsum("nthwc,nkc->nkthw", offset, axis) / (axis**2).sum(-1)[..., None, None, None]
    amount = amount.clamp(0.0, 1.0)
    off_segment = (offset[:, None] - amount[..., None] * axis[:, :, None, None, None, :]).norm(dim=-1)
    first_nearer = off_segment[:, 0] <= off_segment[:, 1]
    nearer = torch.stack([first_nearer, ~first_nearer], dim=1)
    coverage = torch.where(nearer, amount * torch.exp(-((off_segment / _COLOR_SCALE) ** 2)), torch.zeros(()))
    area = torch.tensor([[shape_area(s.shape, _object_size(s, h, w)), shape_area(s.other_shape, _object_size(s, h, w))]
                         for s in chosen])
    presence = (coverage.sum(dim=(3, 4)).mean(dim=2) / (_LAYER_PRESENCE * area)).clamp(0.0, 1.0)
    flat = coverage.reshape(-1, t, h, w)
    return _Layers({i: n for n, i in enumerate(rows)}, coverage, presence, _components(flat > 0.5, flat))


# ----------------------------------------------------------------------------------------------
# Judges on precomputed features (judge_all shares the features between them).


def _color_scores(videos, specs, fg: _Foreground, layers: _Layers | None) -> torch.Tensor:
    b, t, h, w, _ = videos.shape
    target = torch.tensor([COLORS[s.color] for s in specs], dtype=torch.float32)
    background = torch.tensor([BACKGROUNDS[s.background] for s in specs], dtype=torch.float32)
    # Edge pixels blend object and background, but all lie on the segment from the background to
    # the object colour: take the direction of that segment from every foreground pixel and its
    # length from the clip's most saturated pixels, so blur does not pull the estimate to the background.
    weight_sum = fg.weight.sum(dim=(1, 2, 3))
    offset = (fg.weight[..., None] * (videos - background[:, None, None, None, :])).sum(dim=(1, 2, 3))
    direction = offset / offset.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    fg_rgb = background + direction * fg.peak[:, None]
    # share of pixels showing the spec's background (soft), against the 40 % every scene leaves bare
    bg_share = torch.exp(-(fg.distance**2) / (2 * _BACKGROUND_RADIUS**2)).mean(dim=(1, 2, 3))
    background_term = (bg_share / _BACKGROUND_SHARE).clamp(0.0, 1.0)
    object_term = torch.exp(-((fg_rgb - target) ** 2).sum(-1) / _COLOR_SCALE**2)
    pixels_per_frame = fg.mask.sum(dim=(2, 3)).float().mean(dim=1)
    needed = torch.tensor([0.25 * _one_object_area(s, h, w) for s in specs])
    presence = (pixels_per_frame / needed).clamp(0.0, 1.0)
    scores = torch.where(weight_sum > 0, object_term * background_term * presence, torch.zeros(b))
    for i, n in (layers.row if layers else {}).items():  # two colours: each object's own layer
        scores[i] = background_term[i] * layers.presence[n].prod().sqrt()
    return scores


def _shape_fit(comps: _Components, video: int, shape: str, size: int) -> float:
    """Area-weighted fit of video `video`'s components to `shape` (module doc); 0 without any."""
    one = shape_area(shape, size)
    mine = (comps.video == video) & ~comps.touches_border & (comps.area >= 0.3 * one)
    if not mine.any():
        return 0.0
    cross, skew = _ideal_features(shape, size)
    fit = np.exp(
        -0.5 * ((comps.cross[mine] - cross) / _CROSS_SIGMA) ** 2
        - 0.5 * ((comps.skew[mine] - skew) / _SKEW_SIGMA) ** 2
    )
    weight = np.minimum(comps.area[mine] / one, 1.0)
    return float((fit * weight).sum() / weight.sum())


def _shape_scores(specs, comps: _Components, height: int, width: int, layers: _Layers | None) -> torch.Tensor:
    scores = torch.full((len(specs),), float("nan"))
    for i, spec in enumerate(specs):
        if "shape" not in APPLICABLE_JUDGES[spec.kind]:
            continue
        size = _object_size(spec, height, width)
        if spec.kind == "composition":
            n = layers.row[i]
            shapes = (spec.shape, spec.other_shape)
            scores[i] = sum(_shape_fit(layers.comps, 2 * n + k, shape, size) for k, shape in enumerate(shapes)) / 2
        else:
            scores[i] = _shape_fit(comps, i, spec.shape, size)
    return scores


def _relation_scores(specs, layers: _Layers | None, height: int, width: int) -> torch.Tensor:
    scores = torch.full((len(specs),), float("nan"))
    for i, n in (layers.row if layers else {}).items():
        coverage = layers.coverage[n]  # [2, T, H, W]
        mass = coverage.sum(dim=(2, 3))
        xs = torch.arange(width, dtype=torch.float32)
        ys = torch.arange(height, dtype=torch.float32)
        cx = (coverage.sum(dim=2) * xs).sum(-1) / mass.clamp_min(1e-8)
        cy = (coverage.sum(dim=3) * ys).sum(-1) / mass.clamp_min(1e-8)
        seen = (mass > 1e-3).all(dim=0)  # frames in which both objects show
        if not seen.any():
            scores[i] = 0.0
            continue
        dx, dy = ((c[1, seen] - c[0, seen]).mean() for c in (cx, cy))
        ux, uy = RELATION_VECTORS[specs[i].relation]
        along, across = float(dx * ux + dy * uy), abs(float(dx * uy - dy * ux))
        separation = min(max((along - across) / (_RELATION_RAMP * _object_size(specs[i], height, width)), 0.0), 1.0)
        scores[i] = float(layers.presence[n].prod()) * separation
    return scores


def _count_scores(specs, comps: _Components, num_frames: int, height: int, width: int) -> torch.Tensor:
    scores = torch.full((len(specs),), float("nan"))
    for i, spec in enumerate(specs):
        if "count" not in APPLICABLE_JUDGES[spec.kind]:
            continue
        mine = comps.video == i
        relative = comps.area[mine] / _one_object_area(spec, height, width)
        soft = np.minimum(2 * relative, 1.0) + np.maximum(relative - 1.5, 0.0)
        per_frame = np.bincount(comps.frame[mine], weights=soft, minlength=num_frames)
        scores[i] = float(np.exp(-((per_frame - spec.count) ** 2) / (2 * _COUNT_SIGMA**2)).mean())
    return scores


def _centroids(fg: _Foreground) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Soft foreground centroid per frame: x [B, T], y [B, T] and whether the frame has one [B, T]."""
    b, t, h, w = fg.weight.shape
    mass = fg.weight.sum(dim=(2, 3))
    xs = torch.arange(w, dtype=torch.float32)
    ys = torch.arange(h, dtype=torch.float32)
    cx = (fg.weight.sum(dim=2) * xs).sum(-1) / mass.clamp_min(1e-8)
    cy = (fg.weight.sum(dim=3) * ys).sum(-1) / mass.clamp_min(1e-8)
    return cx, cy, mass > 1e-3


def _centroid_velocity(fg: _Foreground) -> torch.Tensor:
    """[B, 2] least-squares slope (px/frame) of the soft foreground centroid; frames without one skipped."""
    b, t = fg.weight.shape[:2]
    cx, cy, has_centroid = _centroids(fg)
    valid = has_centroid.float()
    time = torch.arange(t, dtype=torch.float32).expand(b, t)
    n = valid.sum(1).clamp_min(1.0)
    t_mean = (valid * time).sum(1) / n
    dt = (time - t_mean[:, None]) * valid
    denom = (dt**2).sum(1)
    slope = torch.stack([(dt * cx).sum(1), (dt * cy).sum(1)], dim=-1) / denom.clamp_min(1e-8)[:, None]
    slope[valid.sum(1) < 2] = float("nan")  # no trajectory to speak of
    return slope


def _global_velocity(distance: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """[B, 2] mean whole-image shift (px/frame) between consecutive distance-to-background maps.

    For each pair of frames, the integer shift s in [-3, 3]^2 (scaled) minimising the mean squared
    difference between frame t + 1 at p + s and frame t at p on the interior, refined to sub-pixel
    by a parabola through its neighbours along x and along y. For a fluid this is a texture-weighted
    mean of the flow, i.e. the drift plus a small part of the swirl. `weight` [B, T, H, W] in
    [0, 1] restricts the comparison to pixels weighted in both frames (an orbit's background).
    """
    b, t, h, w = distance.shape
    if t < 2:
        return torch.zeros(b, 2)
    if min(h, w) > 32:
        resized, factor = _to_reference_size(distance)
        return factor * _global_velocity(resized, None if weight is None else _to_reference_size(weight)[0])
    reach = max(1, math.ceil(_GLOBAL_SEARCH_PX * min(h, w) / 32))
    now = distance[:, :-1, reach : h - reach, reach : w - reach]
    nxt = distance[:, 1:]
    offsets = range(-reach, reach + 1)
    costs = []
    for sy in offsets:
        for sx in offsets:
            moved = nxt[..., reach + sy : h - reach + sy, reach + sx : w - reach + sx]
            if weight is None:
                costs.append(((moved - now) ** 2).mean(dim=(-2, -1)))
                continue
            both = weight[:, :-1, reach : h - reach, reach : w - reach] * weight[
                :, 1:, reach + sy : h - reach + sy, reach + sx : w - reach + sx
            ]
            costs.append((both * (moved - now) ** 2).sum(dim=(-2, -1)) / both.sum(dim=(-2, -1)).clamp_min(1e-6))
    cost = torch.stack(costs, dim=-1).unflatten(-1, (len(offsets), len(offsets)))  # [B, T-1, dy, dx]
    n = len(offsets)
    flat = cost.flatten(-2)
    # ties (a flat or empty video) go to the smallest shift rather than to a corner of the search
    radius = torch.tensor([sy * sy + sx * sx for sy in offsets for sx in offsets], dtype=torch.float32)
    best = (flat + 1e-9 * radius).argmin(dim=-1)
    iy, ix = best // n, best % n

    def at(y, x):
        return flat.gather(-1, (y * n + x)[..., None]).squeeze(-1)

    def vertex(left, centre, right):
        curvature = left - 2 * centre + right
        step = 0.5 * (left - right) / curvature.clamp_min(1e-12)
        return torch.where(curvature > 1e-12, step.clamp(-1.0, 1.0), torch.zeros_like(step))

    iy_in, ix_in = iy.clamp(1, n - 2), ix.clamp(1, n - 2)
    shift_x = (ix_in - reach) + vertex(at(iy, ix_in - 1), at(iy, ix_in), at(iy, ix_in + 1))
    shift_y = (iy_in - reach) + vertex(at(iy_in - 1, ix), at(iy_in, ix), at(iy_in + 1, ix))
    shift = torch.stack([shift_x, shift_y], dim=-1)  # [B, T-1, 2]
    return shift.mean(dim=1)


def _stillness(velocity: torch.Tensor, scale: float) -> float:
    """The "static" score of a velocity (px/frame)."""
    return math.exp(-((float(velocity.norm()) / (0.35 * 1.75 * scale)) ** 2))


def _direction_score(velocity: torch.Tensor, direction: tuple[float, float], speed: float) -> float:
    """How well a velocity (px/frame) goes `direction` at `speed` or faster (module doc)."""
    if torch.isnan(velocity).any():
        return 0.0  # no trajectory to speak of
    norm = float(velocity.norm())
    cosine = (float(velocity[0]) * direction[0] + float(velocity[1]) * direction[1]) / max(norm, 1e-8)
    return ((1 + cosine) / 2) ** 2 * min(1.0, norm / (0.6 * speed)) ** 2


def _orbit_scores(specs, fg: _Foreground, num_frames: int, height: int, width: int) -> list[float]:
    """Background moving with the camera times the object held still at the centre (module doc)."""
    near_object = F.max_pool2d(fg.mask.flatten(0, 1)[:, None].float(), 5, stride=1, padding=2)
    background = (1.0 - near_object).reshape(fg.mask.shape)  # >= 2 px from the foreground
    background_velocity = _global_velocity(fg.distance, background)
    object_velocity = _centroid_velocity(fg)
    cx, cy, has_centroid = _centroids(fg)
    scale = min(height, width) / 32
    scores = []
    for i, spec in enumerate(specs):
        if not has_centroid[i].any():
            scores.append(0.0)
            continue
        offset = math.hypot(float(cx[i, has_centroid[i]].mean()) - (width - 1) / 2,
                            float(cy[i, has_centroid[i]].mean()) - (height - 1) / 2)
        centring = math.exp(-((offset / (0.25 * _object_size(spec, height, width))) ** 2))
        still = 0.0 if torch.isnan(object_velocity[i]).any() else _stillness(object_velocity[i], scale)
        speed = expected_speed(spec, num_frames, height, width)
        scores.append(_direction_score(background_velocity[i], content_direction(spec), speed) * still * centring)
    return scores


def _order_scores(specs, fg: _Foreground, num_frames: int, height: int, width: int) -> list[float]:
    """Geometric mean of the two legs' direction scores, each read on its own frames."""
    switch = order_switch_frame(num_frames)
    first = _centroid_velocity(fg.frames(0, switch + 1))
    second = _centroid_velocity(fg.frames(switch, num_frames))
    scores = []
    for i, spec in enumerate(specs):
        speed = expected_speed(spec, num_frames, height, width)
        legs = (
            _direction_score(first[i], DIRECTION_VECTORS[spec.motion], speed),
            _direction_score(second[i], DIRECTION_VECTORS[spec.then], speed),
        )
        scores.append(math.sqrt(legs[0] * legs[1]))
    return scores


def _motion_scores(specs, fg: _Foreground, num_frames: int, height: int, width: int) -> torch.Tensor:
    b = len(specs)
    scores = torch.zeros(b)
    by_kind = {
        "centroid": [i for i, s in enumerate(specs) if s.kind in ("object", "composition")],
        "shift": [i for i, s in enumerate(specs) if s.kind in ("pan", "fluid")],
        "orbit": [i for i, s in enumerate(specs) if s.kind == "orbit"],
        "order": [i for i, s in enumerate(specs) if s.kind == "order"],
    }
    velocity = torch.zeros(b, 2)
    if by_kind["centroid"]:
        index = torch.tensor(by_kind["centroid"])
        velocity[index] = _centroid_velocity(fg.select(index))
    if by_kind["shift"]:
        index = torch.tensor(by_kind["shift"])
        velocity[index] = _global_velocity(fg.distance[index])
    for name, judge in (("orbit", _orbit_scores), ("order", _order_scores)):
        if by_kind[name]:
            index = torch.tensor(by_kind[name])
            chosen = [specs[i] for i in by_kind[name]]
            scores[index] = torch.tensor(judge(chosen, fg.select(index), num_frames, height, width))
    scale = min(height, width) / 32
    for i in by_kind["centroid"] + by_kind["shift"]:
        spec, v = specs[i], velocity[i]
        if torch.isnan(v).any():
            continue  # no foreground trajectory: 0
        if spec.motion == "static":
            scores[i] = _stillness(v, scale)
        else:
            scores[i] = _direction_score(v, content_direction(spec), expected_speed(spec, num_frames, height, width))
    return scores


def _half_pixel_versions(frames: torch.Tensor, reach: int) -> dict[tuple[int, int], torch.Tensor]:
    """frames [N, 3, H, W] padded by `reach` + 1 and sampled at offsets in half pixels.

    Key (hy, hx) in {0, 1}^2: the image shifted by half a pixel down (hy) / right (hx), i.e.
    the bilinear value between neighbours, so the search below covers half-pixel motions too.
    """
    padded = F.pad(frames, (reach + 1,) * 4, mode="replicate")
    x_half = 0.5 * (padded[..., :, :-1] + padded[..., :, 1:])
    return {
        (0, 0): padded[..., :, :-1],
        (0, 1): x_half,
        (1, 0): 0.5 * (padded[..., :-1, :-1] + padded[..., 1:, :-1]),
        (1, 1): 0.5 * (x_half[..., :-1, :] + x_half[..., 1:, :]),
    }


def _shifted(versions, shift_y: float, shift_x: float, reach: int, h: int, w: int) -> torch.Tensor:
    """The image whose pixel p holds the source at p - shift (shifts are multiples of 0.5)."""
    # source position p - s = p - floor(s) - frac(s); versions[(1, .)] holds position p + 0.5
    oy, ox = math.floor(-shift_y), math.floor(-shift_x)
    hy, hx = int(-shift_y - oy != 0), int(-shift_x - ox != 0)
    top, left = reach + 1 + oy, reach + 1 + ox
    return versions[(hy, hx)][..., top : top + h, left : left + w]


def _to_reference_size(frames: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Resample [..., H, W] (antialiased bilinear) so the short side is at most 32 px.

    The motion searches are tuned (and stay cheap) there; also returns the factor to multiply
    shifts measured on the resampled frames by.
    """
    *lead, h, w = frames.shape
    if min(h, w) <= 32:
        return frames, 1.0
    factor = min(h, w) / 32
    size = (round(h / factor), round(w / factor))
    flat = frames.reshape(-1, 1, h, w)
    resized = F.interpolate(flat, size=size, mode="bilinear", antialias=True, align_corners=False)
    return resized.reshape(*lead, *size), factor


def _smoothness_scores(videos: torch.Tensor) -> torch.Tensor:
    b, t, h, w, _ = videos.shape
    if t < 3:
        return torch.ones(b)
    # big frames are judged at 32 px: same tuning, and the shift search stays 81 candidates
    videos = _to_reference_size(videos.permute(0, 1, 4, 2, 3))[0].permute(0, 1, 3, 4, 2)
    _, _, h, w, _ = videos.shape
    reach = max(1, math.ceil(_SEARCH_PX * min(h, w) / 32))
    frames = videos.permute(0, 1, 4, 2, 3)  # [B, T, 3, H, W]
    before = _half_pixel_versions(frames[:, :-2].reshape(-1, 3, h, w), reach)
    after = _half_pixel_versions(frames[:, 2:].reshape(-1, 3, h, w), reach)
    twice_now = 2 * frames[:, 1:-1].reshape(-1, 3, h, w)
    best = torch.full((twice_now.shape[0], h - 2, w - 2), float("inf"))
    pair_sum = torch.empty_like(twice_now)
    steps = [k / 2 for k in range(-2 * reach, 2 * reach + 1)]
    for sy in steps:
        for sx in steps:
            # before(p - s) + after(p + s) lines up on 2 now(p) for content moving s px per frame
            earlier = _shifted(before, sy, sx, reach, h, w)
            later = _shifted(after, -sy, -sx, reach, h, w)
            torch.add(earlier, later, out=pair_sum)
            residual = pair_sum.sub_(twice_now).abs_().sum(dim=1)
            # 3x3 patch sums (valid part only), so the best shift is chosen per patch, not per noisy pixel
            residual = residual[:, :, :-2] + residual[:, :, 1:-1] + residual[:, :, 2:]
            residual = residual[:, :-2] + residual[:, 1:-1] + residual[:, 2:]
            torch.minimum(best, residual, out=best)
    best = best / (2 * 3 * 9)  # midpoint error, mean over RGB and the 3x3 patch
    margin = reach  # near the border p - s or p + s leaves the frame (patch sums dropped 1 px already)
    interior = best[:, margin : best.shape[1] - margin, margin : best.shape[2] - margin]
    return torch.exp(-interior.reshape(b, -1).mean(dim=1) / _SMOOTH_SCALE)


# ----------------------------------------------------------------------------------------------
# Public judges.


def judge_color(videos, specs) -> torch.Tensor:
    """[B] how close the foreground and background colours are to the spec's (see module doc)."""
    videos = _videos(videos)
    specs = _specs(specs, len(videos))
    return _color_scores(videos, specs, _foreground(videos, specs), _composition_layers(videos, specs))


def judge_shape(videos, specs) -> torch.Tensor:
    """[B] how well foreground components' moment features match the spec's shape; NaN for fluids."""
    videos = _videos(videos)
    specs = _specs(specs, len(videos))
    _, _, h, w, _ = videos.shape
    fg = _foreground(videos, specs)
    return _shape_scores(specs, _components(fg.mask, fg.coverage), h, w, _composition_layers(videos, specs))


def judge_relation(videos, specs) -> torch.Tensor:
    """[B] whether a composition's first object lies where the spec says from the second; NaN otherwise."""
    videos = _videos(videos)
    specs = _specs(specs, len(videos))
    _, _, h, w, _ = videos.shape
    return _relation_scores(specs, _composition_layers(videos, specs), h, w)


def judge_motion(videos, specs) -> torch.Tensor:
    """[B] how well the content's velocity matches the named direction (or standing still)."""
    videos = _videos(videos)
    specs = _specs(specs, len(videos))
    _, t, h, w, _ = videos.shape
    return _motion_scores(specs, _foreground(videos, specs), t, h, w)


def judge_smoothness(videos) -> torch.Tensor:
    """[B] 1 for perfectly smooth motion, lower with jitter, flicker, noise or shuffled frames."""
    return _smoothness_scores(_videos(videos))


def judge_count(videos, specs) -> torch.Tensor:
    """[B] how close the number of objects per frame is to the spec's count; NaN for pans/fluids."""
    videos = _videos(videos)
    specs = _specs(specs, len(videos))
    _, t, h, w, _ = videos.shape
    fg = _foreground(videos, specs)
    return _count_scores(specs, _components(fg.mask, fg.coverage), t, h, w)


def judge_all(videos, prompts: list[str]) -> dict[str, torch.Tensor]:
    """Every judge plus "overall" (weighted mean of the applicable ones), each a float tensor [B]."""
    videos = _videos(videos)
    specs = _specs(prompts, len(videos))
    _, t, h, w, _ = videos.shape
    fg = _foreground(videos, specs)
    comps = _components(fg.mask, fg.coverage)
    layers = _composition_layers(videos, specs)
    scores = {
        "color": _color_scores(videos, specs, fg, layers),
        "shape": _shape_scores(specs, comps, h, w, layers),
        "motion": _motion_scores(specs, fg, t, h, w),
        "smoothness": _smoothness_scores(videos),
        "count": _count_scores(specs, comps, t, h, w),
        "relation": _relation_scores(specs, layers, h, w),
    }
    applies = torch.tensor([[name in APPLICABLE_JUDGES[s.kind] for s in specs] for name in JUDGES])  # [J, B]
    weights = torch.tensor([OVERALL_WEIGHTS[name] for name in JUDGES])[:, None] * applies
    stacked = torch.stack([scores[name] for name in JUDGES]).nan_to_num(0.0)
    overall = (weights * stacked).sum(0) / weights.sum(0)
    for row, name in enumerate(JUDGES):
        scores[name] = torch.where(applies[row], stacked[row], overall)
    scores["overall"] = overall
    return scores
