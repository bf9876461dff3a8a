"""The toy world: procedural videos a 2-core CPU renders in milliseconds (DESIGN.md §5).

Six kinds of scene, all described by one `SceneSpec`. The three CORE_KINDS (the world the tiny
base model is pretrained on):

- ``"object"`` — ``count`` (1..3) coloured shapes of one kind moving in a named direction
  (or standing still) over a flat background. Exact flow: the object velocity on pixels an object
  covers (coverage >= 0.5) in frame t, zero on the static background.
- ``"pan"`` — the camera pans in ``motion`` over a static layout of shapes scattered on the
  background. Convention: the CAMERA moves in the named direction, so the image content moves the
  OPPOSITE way ("the camera pans left" => content moves right, flow u > 0). The pan speed is a
  whole number of pixels per frame and the flow is that constant shift everywhere.
- ``"fluid"`` — a smooth random dye texture (``color`` on ``background``) advected by a known
  smooth, divergence-free, slowly time-varying velocity field: two sinusoidal stream-function
  modes plus a drift in direction ``motion`` ("static" = swirl without drift). Fluid specs carry
  the fixed ``shape=FLUID_SHAPE`` and ``count=1`` (the grammar does not mention them).

and three INSTRUCTION_KINDS, the instruction and control prompts of report §2.2 (camera behaviour,
event ordering, composition):

- ``"orbit"`` — the camera orbits ``motion`` (left | right) around one object. The object stays
  still, its centroid within half a pixel of the frame centre; the background, a low-contrast texture of the background colour (its
  distance to the flat colour stays below what the judges call foreground), moves WITH the camera
  by `pan_speed` whole pixels per frame: a camera that circles a fixated object sees points beyond
  the pivot move the way it travels (fixation parallax), which a flat 2-D layer behind a fixed
  object renders with exact flow (the shift on background pixels, 0 on the object).
- ``"order"`` — "first ... then ...": one object moves ``motion`` for the first
  `order_switch_frame` frames, then ``then`` (a different direction) for the rest.
- ``"composition"`` — two still objects of different colours, the first (``shape``, ``color``)
  ``relation`` (left | right | above | below) the second (``other_shape``, ``other_color``).

Videos are float32 tensors [T, H, W, 3] in [0, 1]. Pixel (row i, column j) has its centre at
x = j, y = i; flows are [T-1, 2, H, W] with channel 0 = x (+ right) and channel 1 = y (+ down),
in pixels, FORWARD: frame t+1 at (x + u, y + v) equals frame t at (x, y). For pans and fluids
the flow is exact (fluids up to RK4 integration error, ~1e-7 px; warping with bilinear sampling
adds ~1 % interpolation error on the texture); for objects and "order" scenes it is exact on the
objects and the background, except where a moving object covers background in frame t + 1
(occlusion); for orbits, except on the object's anti-aliased rim and where background slides
behind the object; compositions stand still (zero flow).

Structure (report §2.3): every clip whose background is rigid — all kinds but fluids — carries its
global camera motion, `camera_shift` [T-1, 2] (px, (x, y): how far the background moves in the
image from frame t to t+1; 0 for a still camera), and `background` [T, H, W] (bool: pixels that
show only background, no object coverage; every pixel of a pan).

Sizes and speeds are quoted at 32x32 and scale with min(H, W); sides must be >= MIN_SIDE (24).

Everything is computed in float64 numpy from (spec, seed) alone and cast once to float32, so the
same inputs give bitwise-identical tensors.
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

SHAPES = ("square", "circle", "triangle")
# Object colours, pairwise >= 0.66 apart in RGB (Euclidean), and >= 0.54 from every background.
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.80, 0.20),
    "blue": (0.20, 0.45, 1.00),
    "yellow": (0.95, 0.90, 0.10),
    "white": (1.00, 1.00, 1.00),
    "purple": (0.75, 0.10, 0.90),
}
# Backgrounds, pairwise >= 0.40 apart.
BACKGROUNDS: dict[str, tuple[float, float, float]] = {
    "black": (0.00, 0.00, 0.00),
    "gray": (0.42, 0.42, 0.42),
    "navy": (0.04, 0.04, 0.40),
    "brown": (0.38, 0.22, 0.06),
}
MOTIONS = ("left", "right", "up", "down", "static")
PAN_DIRECTIONS = ("left", "right", "up", "down")
ORBIT_DIRECTIONS = ("left", "right")
RELATIONS = ("left", "right", "above", "below")
CORE_KINDS = ("object", "pan", "fluid")
INSTRUCTION_KINDS = ("orbit", "order", "composition")
KINDS = CORE_KINDS + INSTRUCTION_KINDS  # the one list of scene kinds (configs validate against it)
_MOTIONS_OF_KIND = {  # kinds not listed take any of MOTIONS
    "pan": PAN_DIRECTIONS, "orbit": ORBIT_DIRECTIONS, "order": PAN_DIRECTIONS, "composition": ("static",),
}
MAX_COUNT = 3
FLUID_SHAPE = "circle"  # fixed, unused value carried by every fluid spec

# Unit vectors in image coordinates (+y is down).
DIRECTION_VECTORS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "static": (0.0, 0.0),
}
# Unit direction from the first object of a composition to the second ("left" = first is left of second).
RELATION_VECTORS: dict[str, tuple[float, float]] = {
    "left": (1.0, 0.0),
    "right": (-1.0, 0.0),
    "above": (0.0, 1.0),
    "below": (0.0, -1.0),
}

_REFERENCE_SIDE = 32  # sizes and speeds below are quoted at 32x32 and scale with min(H, W)
_EDGE_MARGIN_PX = 1.0  # objects keep this far from the frame edge so they never touch the border
_OBJECT_GAP_PX = 2.0  # free pixels between objects at 32x32 (scaled), so a 3x3 blur does not merge them
MIN_SIDE = 24  # smallest frame side in which three objects fit side by side
_TEXTURE_CONTRAST = 0.10  # RGB distance of the orbit texture's brightest point from the flat background


@dataclass(frozen=True)
class SceneSpec:
    """What a clip shows; `toyworld.prompts.describe` / `parse` map it to and from a prompt.

    `then` is the second motion of an "order" scene; `relation`, `other_shape` and `other_color`
    place the second object of a "composition". Every other kind leaves them None.
    """

    kind: str
    shape: str
    color: str
    background: str
    motion: str
    count: int = 1
    then: str | None = None
    relation: str | None = None
    other_shape: str | None = None
    other_color: str | None = None

    def __post_init__(self):
        def _check(field, value, accepted):
            if value not in accepted:
                raise ValueError(f"SceneSpec.{field}={value!r} is not one of {tuple(accepted)}")

        _check("kind", self.kind, KINDS)
        _check("shape", self.shape, SHAPES)
        _check("color", self.color, COLORS)
        _check("background", self.background, BACKGROUNDS)
        _check("motion", self.motion, _MOTIONS_OF_KIND.get(self.kind, MOTIONS))
        if self.kind == "object":
            _check("count", self.count, range(1, MAX_COUNT + 1))
        else:
            _check("count", self.count, (1,))
        if self.kind == "fluid":
            _check("shape", self.shape, (FLUID_SHAPE,))
        _check("then", self.then, [d for d in PAN_DIRECTIONS if d != self.motion] if self.kind == "order" else (None,))
        composition = self.kind == "composition"
        _check("relation", self.relation, RELATIONS if composition else (None,))
        _check("other_shape", self.other_shape, SHAPES if composition else (None,))
        _check("other_color", self.other_color, [c for c in COLORS if c != self.color] if composition else (None,))


@dataclass
class ToyClip:
    """One rendered clip: video [T, H, W, 3] in [0, 1], its prompt, spec, exact forward flow and,
    where the background is rigid, the camera's motion and the background pixels (module doc)."""

    video: torch.Tensor
    prompt: str
    spec: SceneSpec
    flow: torch.Tensor | None  # [T-1, 2, H, W], channel 0 = x (px, +right), 1 = y (px, +down)
    camera_shift: torch.Tensor | None = None  # [T-1, 2] px, (x, y) image motion of the background
    background: torch.Tensor | None = None  # [T, H, W] bool, pixels showing only background


# ----------------------------------------------------------------------------------------------
# Geometry shared by the renderer and the judges (so a judge knows the size it should expect).


def _scale(height: int, width: int) -> float:
    return min(height, width) / _REFERENCE_SIDE


def object_size(height: int, width: int, count: int = 1) -> int:
    """Side of an object's bounding box in pixels: 9 at 32x32 (8 when three must fit side by side)."""
    base = 9 if count < 3 else 8
    return max(4, round(base * _scale(height, width)))


def pan_shape_size(height: int, width: int) -> int:
    """Side of the shapes a camera pans over: the object size, so judges see them as well."""
    return object_size(height, width)


def shape_area(shape: str, size: float) -> float:
    """Area in px^2 of a shape whose bounding box is size x size."""
    return {"square": 1.0, "circle": math.pi / 4, "triangle": 0.5}[shape] * size * size


def object_speed(num_frames: int, height: int, width: int, count: int, motion: str) -> float:
    """Pixels per frame: 1.75 at 32x32, slowed down when the clip is too long to stay in frame."""
    if motion == "static":
        return 0.0
    extent = width if motion in ("left", "right") else height
    room = extent - 1 - 2 * _EDGE_MARGIN_PX - object_size(height, width, count)
    speed = 1.75 * _scale(height, width)
    if num_frames > 1:
        speed = min(speed, room / (num_frames - 1))
    if speed <= 0:
        raise ValueError(f"a {extent}-pixel frame has no room for a moving object")
    return speed


def pan_speed(height: int, width: int) -> int:
    """Whole pixels per frame, so that warping by the flow is exact on the pixel grid."""
    return max(1, round(2 * _scale(height, width)))


def fluid_drift_speed(height: int, width: int) -> float:
    return 1.25 * _scale(height, width)


def order_switch_frame(num_frames: int) -> int:
    """The frame at which an "order" scene's object turns from `motion` to `then`."""
    return (num_frames - 1) // 2


def _order_unit_offsets(num_frames: int, first: str, then: str) -> np.ndarray:
    """[T, 2] displacement from the start of an "order" object moving 1 px per frame."""
    switch = order_switch_frame(num_frames)
    t = np.arange(num_frames, dtype=np.float64)[:, None]
    leg1 = np.minimum(t, switch) * np.asarray(DIRECTION_VECTORS[first])
    return leg1 + np.maximum(t - switch, 0.0) * np.asarray(DIRECTION_VECTORS[then])


def order_speed(num_frames: int, height: int, width: int, first: str, then: str) -> float:
    """Pixels per frame of an "order" object: 1.75 at 32x32, slower if both legs must fit the frame."""
    extent = np.ptp(_order_unit_offsets(num_frames, first, then), axis=0)  # (x, y) at unit speed
    room = np.array([width, height]) - 1 - 2 * _EDGE_MARGIN_PX - object_size(height, width)
    speed = 1.75 * _scale(height, width)
    for axis in (0, 1):
        if extent[axis] > 0:
            speed = min(speed, room[axis] / extent[axis])
    return float(speed)


def content_direction(spec: SceneSpec) -> tuple[float, float]:
    """Unit direction in which the image content moves.

    Opposite of the camera for pans; WITH the camera for the background of orbits (fixation
    parallax, module doc); the first leg of an "order" scene.
    """
    dx, dy = DIRECTION_VECTORS[spec.motion]
    if spec.kind == "pan":
        return (-dx, -dy)
    return (dx, dy)


def expected_speed(spec: SceneSpec, num_frames: int, height: int, width: int) -> float:
    """Speed of the content in px/frame that `render` gives this spec (an orbit's background)."""
    if spec.kind == "object":
        return object_speed(num_frames, height, width, spec.count, spec.motion)
    if spec.kind in ("pan", "orbit"):
        return float(pan_speed(height, width))
    if spec.kind == "order":
        return order_speed(num_frames, height, width, spec.motion, spec.then)
    return 0.0 if spec.motion == "static" else fluid_drift_speed(height, width)


# ----------------------------------------------------------------------------------------------
# Anti-aliased shapes: coverage = clamp(0.5 - signed distance, 0, 1) on pixel centres.


def _signed_distance(shape: str, x: np.ndarray, y: np.ndarray, cx, cy, size: float) -> np.ndarray:
    """Signed distance (px, < 0 inside) to a shape with bounding box centred at (cx, cy).

    The triangle points up: apex at the top centre of the box, base along the bottom edge.
    """
    dx, dy = x - cx, y - cy
    half = size / 2
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - half
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy) - half
    if shape == "triangle":
        # half-plane distances of the three edges; exact along edges, which is all coverage needs
        rise = dy + half  # distance below the apex line
        sides = (2 * np.abs(dx) - rise) / math.sqrt(5.0)
        return np.maximum(dy - half, sides)
    raise ValueError(f"shape={shape!r} is not one of {SHAPES}")


def centroid_below_box_centre(shape: str, size: float) -> float:
    """How far (px) below its bounding-box centre a shape's area centroid lies: size / 6 for the
    upward triangle (2/3 of the way down from the apex), 0 for the symmetric shapes."""
    return size / 6 if shape == "triangle" else 0.0


def shape_coverage(shape: str, x: np.ndarray, y: np.ndarray, cx, cy, size: float) -> np.ndarray:
    return np.clip(0.5 - _signed_distance(shape, x, y, cx, cy, size), 0.0, 1.0)


def _compose(
    coverage: np.ndarray, color: str, background: str, shade: np.ndarray | None = None, others=()
) -> torch.Tensor:
    """coverage [T, H, W] in [0, 1] -> video [T, H, W, 3] float32.

    `shade` [T, H, W] in [0, 1] textures the background (orbits); `others` are more
    (coverage, colour) layers that never overlap the first (compositions).
    """
    bg = np.asarray(BACKGROUNDS[background], dtype=np.float64)
    if shade is not None:
        toward_white = 1.0 - bg
        bg = bg + shade[..., None] * (_TEXTURE_CONTRAST / np.linalg.norm(toward_white)) * toward_white
    fg = np.asarray(COLORS[color], dtype=np.float64)
    video = bg + coverage[..., None] * (fg - bg)
    for other_coverage, other_color in others:
        video = video + other_coverage[..., None] * (np.asarray(COLORS[other_color], dtype=np.float64) - bg)
    return torch.from_numpy(np.clip(video, 0.0, 1.0).astype(np.float32))


class _Rendered(NamedTuple):
    video: torch.Tensor
    flow: np.ndarray  # [T-1, 2, H, W]
    camera_shift: np.ndarray | None = None  # [T-1, 2]
    background: np.ndarray | None = None  # [T, H, W] bool


def _still_camera(num_frames: int, coverage: np.ndarray) -> dict:
    """camera_shift and background of a scene filmed by a still camera over a flat background."""
    return dict(camera_shift=np.zeros((max(num_frames - 1, 0), 2)), background=coverage == 0)


def _free_range(extent: int, size: float, low_offset: float = 0.0, high_offset: float = 0.0) -> tuple[float, float]:
    """Range of centres along one axis that keeps an object whose centre moves by offsets in
    [low_offset, high_offset] inside the frame, `_EDGE_MARGIN_PX` from the border."""
    lo = -0.5 + _EDGE_MARGIN_PX + size / 2
    hi = extent - 0.5 - _EDGE_MARGIN_PX - size / 2
    return lo - low_offset, hi - high_offset


# ----------------------------------------------------------------------------------------------
# Object scenes.


def _object_starts(spec: SceneSpec, num_frames, height, width, rng: random.Random):
    """Start centres [count, 2] such that every object stays inside the frame and apart."""
    size = object_size(height, width, spec.count)
    speed = object_speed(num_frames, height, width, spec.count, spec.motion)
    ux, uy = DIRECTION_VECTORS[spec.motion]
    travel = speed * (num_frames - 1)

    def start_range(extent, unit):
        return _free_range(extent, size, min(0.0, unit * travel), max(0.0, unit * travel))

    ranges = [start_range(width, ux), start_range(height, uy)]
    # Objects sit side by side across the motion (for static clips the seed picks the axis); the
    # spacing is drawn "stars and bars" style so the layout is random but never overlaps.
    if spec.motion == "static":
        stack_axis = rng.randrange(2)
    else:
        stack_axis = 1 if ux != 0 else 0
    lo, hi = ranges[stack_axis]
    pitch = size + max(1.0, _OBJECT_GAP_PX * _scale(height, width))
    free = (hi - lo) - (spec.count - 1) * pitch
    if free < 0:
        raise ValueError(
            f"count={spec.count} objects of {size} px do not fit side by side in a "
            f"{height}x{width} frame"
        )
    offsets = sorted(rng.uniform(0.0, free) for _ in range(spec.count))
    other_lo, other_hi = ranges[1 - stack_axis]
    starts = np.zeros((spec.count, 2))
    for i, offset in enumerate(offsets):
        starts[i, stack_axis] = lo + offset + i * pitch
        starts[i, 1 - stack_axis] = rng.uniform(other_lo, other_hi)
    return starts, np.array([ux * speed, uy * speed]), size


def _render_object(spec, num_frames, height, width, rng):
    starts, velocity, size = _object_starts(spec, num_frames, height, width, rng)
    t = np.arange(num_frames, dtype=np.float64)[:, None, None]
    y = np.arange(height, dtype=np.float64)[None, :, None]
    x = np.arange(width, dtype=np.float64)[None, None, :]
    coverage = np.zeros((num_frames, height, width))
    for cx, cy in starts:
        coverage += shape_coverage(spec.shape, x, y, cx + velocity[0] * t, cy + velocity[1] * t, size)
    coverage = np.clip(coverage, 0.0, 1.0)
    flow = np.zeros((max(num_frames - 1, 0), 2, height, width))
    on_object = coverage[:-1] >= 0.5
    flow[:, 0][on_object] = velocity[0]
    flow[:, 1][on_object] = velocity[1]
    return _Rendered(_compose(coverage, spec.color, spec.background), flow, **_still_camera(num_frames, coverage))


# ----------------------------------------------------------------------------------------------
# Camera pans over a static layout.


def _pan_layout(spec, num_frames, height, width, rng):
    """World-space centres [N, 2] of a jittered lattice of shapes covering everything the camera sees."""
    size = pan_shape_size(height, width)
    step = pan_speed(height, width)
    cx, cy = content_direction(spec)
    shift = np.array([cx, cy]) * step  # content displacement per frame
    travel = shift * (num_frames - 1)
    pitch = round(1.9 * size)
    jitter = max(0.0, (pitch - size - _OBJECT_GAP_PX - 1) / 2)
    # frame t shows world point (x - t*shift), so the world spans the frame minus all travel
    lo = np.array([-0.5, -0.5]) - np.maximum(travel, 0) - pitch
    hi = np.array([width - 0.5, height - 0.5]) - np.minimum(travel, 0) + pitch
    cells_x = np.arange(lo[0], hi[0], pitch)
    cells_y = np.arange(lo[1], hi[1], pitch)
    centres = []
    for gx in cells_x:
        for gy in cells_y:
            if rng.random() < 0.7:
                jitter_x, jitter_y = rng.uniform(-jitter, jitter), rng.uniform(-jitter, jitter)
                centres.append((gx + pitch / 2 + jitter_x, gy + pitch / 2 + jitter_y))
    return np.array(centres, dtype=np.float64).reshape(-1, 2), shift, size


def _fully_visible_each_frame(centres, shift, size, num_frames, height, width) -> bool:
    for t in range(num_frames):
        pos = centres + t * shift
        inside = (
            (pos[:, 0] - size / 2 >= 0.5)
            & (pos[:, 0] + size / 2 <= width - 1.5)
            & (pos[:, 1] - size / 2 >= 0.5)
            & (pos[:, 1] + size / 2 <= height - 1.5)
        )
        if not inside.any():
            return False
    return True


def _render_pan(spec, num_frames, height, width, rng):
    for _ in range(50):  # redraw layouts (deterministically) until every frame shows a whole shape
        centres, shift, size = _pan_layout(spec, num_frames, height, width, rng)
        if _fully_visible_each_frame(centres, shift, size, num_frames, height, width):
            break
    t = np.arange(num_frames, dtype=np.float64)[:, None, None, None]
    y = np.arange(height, dtype=np.float64)[None, None, :, None]
    x = np.arange(width, dtype=np.float64)[None, None, None, :]
    cx = centres[:, 0][None, :, None, None] + shift[0] * t
    cy = centres[:, 1][None, :, None, None] + shift[1] * t
    coverage = shape_coverage(spec.shape, x, y, cx, cy, size).sum(axis=1).clip(0.0, 1.0)
    flow = np.zeros((max(num_frames - 1, 0), 2, height, width))
    flow[:, 0] = shift[0]
    flow[:, 1] = shift[1]
    camera_shift = np.broadcast_to(shift, (max(num_frames - 1, 0), 2))
    background = np.ones(coverage.shape, dtype=bool)  # the whole layout is static world
    return _Rendered(_compose(coverage, spec.color, spec.background), flow, camera_shift, background)


# ----------------------------------------------------------------------------------------------
# Fluid: analytic dye texture advected by an analytic velocity field.


class _FluidField:
    """Velocity v(x, y, s) = drift + curl of psi, psi = sum_k a_k sin(k.x + phase_k + omega_k s).

    The dye at time s is dye_0(X) where X is the point the flow carries to (x, y) by time s, found
    by integrating the field backwards; the forward flow of frame t is where the field carries a
    pixel between s = t and s = t + 1. Both use the same RK4 steps, so warping frame t by the flow
    lands on frame t + 1 up to integration error.
    """

    SUBSTEPS = 2  # RK4 steps per frame; round-trip integration error ~1e-7 px at 32x32

    def __init__(self, spec, height, width, rng: random.Random):
        scale = _scale(height, width)
        ux, uy = DIRECTION_VECTORS[spec.motion]
        self.drift = np.array([ux, uy]) * fluid_drift_speed(height, width)
        self.modes = []  # (kx, ky, amplitude, phase, omega)
        for _ in range(2):
            m, n = rng.choice([(1, 0), (0, 1), (1, 1), (1, -1), (2, 1), (1, 2)])
            kx, ky = 2 * math.pi * m / width, 2 * math.pi * n / height
            peak_speed = 0.35 * scale  # px/frame contributed by this mode at most
            amplitude = peak_speed / math.hypot(kx, ky)
            self.modes.append((kx, ky, amplitude, rng.uniform(0, 2 * math.pi), rng.uniform(-0.2, 0.2)))
        self.waves = []  # dye texture: (qx, qy, phase), wavelengths 14..28 px at 32x32
        for _ in range(6):
            wavelength = rng.uniform(14.0, 28.0) * scale
            angle = rng.uniform(0, 2 * math.pi)
            q = 2 * math.pi / wavelength
            self.waves.append((q * math.cos(angle), q * math.sin(angle), rng.uniform(0, 2 * math.pi)))

    def velocity(self, x, y, s):
        vx = np.full_like(x, self.drift[0])
        vy = np.full_like(y, self.drift[1])
        for kx, ky, amplitude, phase, omega in self.modes:
            c = amplitude * np.cos(kx * x + ky * y + phase + omega * s)
            vx = vx + c * ky  # d psi / d y
            vy = vy - c * kx  # -d psi / d x
        return vx, vy

    def _texture(self, x, y):
        z = sum(np.sin(qx * x + qy * y + phase) for qx, qy, phase in self.waves)
        return z * math.sqrt(2.0 / len(self.waves))  # unit variance

    def calibrate(self, x, y):
        """Dye levels from the first frame: clear water below its 55th percentile, full colour above its 90th."""
        z = self._texture(x, y)
        self.clear_level, self.full_level = np.quantile(z, 0.55), np.quantile(z, 0.90)

    def dye(self, x, y):
        """Dye concentration in [0, 1]: a C1 smoothstep of the texture, so bilinear warping stays accurate."""
        u = np.clip((self._texture(x, y) - self.clear_level) / (self.full_level - self.clear_level), 0.0, 1.0)
        return u * u * (3 - 2 * u)

    def advect(self, x, y, s, duration):
        """Carry points (x, y) at times s along the field for `duration` frames (negative = back)."""
        steps = np.maximum(np.ceil(np.abs(duration) * self.SUBSTEPS), 0).astype(int)
        most = int(steps.max()) if np.size(steps) else 0
        h = np.where(steps > 0, duration / np.maximum(steps, 1), 0.0)
        for i in range(most):
            active = i < steps
            dt = np.where(active, h, 0.0)
            k1x, k1y = self.velocity(x, y, s)
            k2x, k2y = self.velocity(x + 0.5 * dt * k1x, y + 0.5 * dt * k1y, s + 0.5 * dt)
            k3x, k3y = self.velocity(x + 0.5 * dt * k2x, y + 0.5 * dt * k2y, s + 0.5 * dt)
            k4x, k4y = self.velocity(x + dt * k3x, y + dt * k3y, s + dt)
            x = x + dt / 6 * (k1x + 2 * k2x + 2 * k3x + k4x)
            y = y + dt / 6 * (k1y + 2 * k2y + 2 * k3y + k4y)
            s = s + dt
        return x, y


def _render_fluid(spec, num_frames, height, width, rng):
    field = _FluidField(spec, height, width, rng)
    t = np.arange(num_frames, dtype=np.float64)[:, None, None]
    y = np.broadcast_to(np.arange(height, dtype=np.float64)[None, :, None], (num_frames, height, width))
    x = np.broadcast_to(np.arange(width, dtype=np.float64)[None, None, :], (num_frames, height, width))
    s = np.broadcast_to(t, x.shape)
    field.calibrate(x[0], y[0])
    x0, y0 = field.advect(x, y, s, -s)  # back to time 0, all frames at once
    coverage = field.dye(x0, y0)
    n = max(num_frames - 1, 0)
    x1, y1 = field.advect(x[:n], y[:n], s[:n], np.ones_like(s[:n]))
    flow = np.stack([x1 - x[:n], y1 - y[:n]], axis=1)
    return _Rendered(_compose(coverage, spec.color, spec.background), flow)  # no rigid background


# ----------------------------------------------------------------------------------------------
# Instruction and control scenes (report §2.2).


def _texture(rng: random.Random, height: int, width: int):
    """A smooth random texture in [0, 1] (four plane waves, wavelengths 6..12 px at 32x32)."""
    scale = _scale(height, width)
    waves = []
    for _ in range(4):
        q = 2 * math.pi / (rng.uniform(6.0, 12.0) * scale)
        angle = rng.uniform(0, 2 * math.pi)
        waves.append((q * math.cos(angle), q * math.sin(angle), rng.uniform(0, 2 * math.pi)))

    def shade(x, y):
        z = sum(np.sin(qx * x + qy * y + phase) for qx, qy, phase in waves) / math.sqrt(len(waves) / 2)
        return np.clip(0.5 + z / 4, 0.0, 1.0)  # unit-variance z -> mean 0.5, std 0.25

    return shade


def _render_orbit(spec, num_frames, height, width, rng):
    size = object_size(height, width)
    dx, dy = DIRECTION_VECTORS[spec.motion]
    shift = np.array([dx, dy]) * pan_speed(height, width)  # background moves with the camera
    shade = _texture(rng, height, width)
    t = np.arange(num_frames, dtype=np.float64)[:, None, None]
    y = np.arange(height, dtype=np.float64)[None, :, None]
    x = np.arange(width, dtype=np.float64)[None, None, :]
    # integer shifts: frame t's texture is frame 0's moved by t * shift, exactly on the pixel grid
    background_shade = shade(x - shift[0] * t, y - shift[1] * t)
    # the object's centroid within half a pixel of the frame centre (a seeded sub-pixel offset,
    # like every other kind's placement, so its anti-aliased outline is not always the same)
    cx = (width - 1) / 2 + rng.uniform(-0.5, 0.5)
    cy = (height - 1) / 2 + rng.uniform(-0.5, 0.5) - centroid_below_box_centre(spec.shape, size)
    coverage = shape_coverage(spec.shape, x, y, cx, cy, size)
    coverage = np.broadcast_to(coverage, (num_frames, height, width))
    flow = np.zeros((max(num_frames - 1, 0), 2, height, width))
    off_object = coverage[:-1] < 0.5
    flow[:, 0][off_object] = shift[0]
    flow[:, 1][off_object] = shift[1]
    video = _compose(coverage, spec.color, spec.background, shade=background_shade)
    return _Rendered(video, flow, np.broadcast_to(shift, (max(num_frames - 1, 0), 2)), coverage == 0)


def _render_order(spec, num_frames, height, width, rng):
    size = object_size(height, width)
    speed = order_speed(num_frames, height, width, spec.motion, spec.then)
    offsets = _order_unit_offsets(num_frames, spec.motion, spec.then) * speed  # [T, 2]
    (x_lo, x_hi), (y_lo, y_hi) = (
        _free_range(extent, size, offsets[:, axis].min(), offsets[:, axis].max())
        for axis, extent in enumerate((width, height))
    )
    start = np.array([rng.uniform(x_lo, x_hi), rng.uniform(y_lo, y_hi)])
    centres = start + offsets
    y = np.arange(height, dtype=np.float64)[None, :, None]
    x = np.arange(width, dtype=np.float64)[None, None, :]
    coverage = shape_coverage(spec.shape, x, y, centres[:, 0, None, None], centres[:, 1, None, None], size)
    flow = np.zeros((max(num_frames - 1, 0), 2, height, width))
    velocity = np.diff(centres, axis=0)  # [T-1, 2]
    on_object = coverage[:-1] >= 0.5
    for axis in (0, 1):
        flow[:, axis] = np.where(on_object, velocity[:, axis, None, None], 0.0)
    return _Rendered(_compose(coverage, spec.color, spec.background), flow, **_still_camera(num_frames, coverage))


def _render_composition(spec, num_frames, height, width, rng):
    size = object_size(height, width, count=2)
    ux, uy = RELATION_VECTORS[spec.relation]
    along_axis = 0 if ux else 1
    sign = ux + uy  # +1: the second object lies further along the axis than the first
    lo, hi = _free_range((width, height)[along_axis], size)
    gap = max(1.0, _OBJECT_GAP_PX * _scale(height, width))
    separation = rng.uniform(size + 2 * gap, hi - lo)
    start = rng.uniform(lo, hi - separation)
    along = (start, start + separation) if sign > 0 else (start + separation, start)
    across_lo, across_hi = _free_range((width, height)[1 - along_axis], size)
    across = rng.uniform(across_lo, across_hi)
    jitter = 1.5 * _scale(height, width)  # "left of" still reads as left of when not perfectly level
    centres = np.zeros((2, 2))
    for i in range(2):
        centres[i, along_axis] = along[i]
        centres[i, 1 - along_axis] = min(max(across + rng.uniform(-jitter, jitter), across_lo), across_hi)
    y = np.arange(height, dtype=np.float64)[:, None]
    x = np.arange(width, dtype=np.float64)[None, :]
    layers = [
        np.broadcast_to(shape_coverage(shape, x, y, cx, cy, size), (num_frames, height, width))
        for shape, (cx, cy) in zip((spec.shape, spec.other_shape), centres)
    ]
    video = _compose(layers[0], spec.color, spec.background, others=[(layers[1], spec.other_color)])
    flow = np.zeros((max(num_frames - 1, 0), 2, height, width))
    return _Rendered(video, flow, **_still_camera(num_frames, layers[0] + layers[1]))


# ----------------------------------------------------------------------------------------------
# Public entry points.


def render(spec: SceneSpec, num_frames: int = 9, height: int = 32, width: int = 32, seed: int = 0) -> ToyClip:
    """Render `spec` deterministically: the same (spec, sizes, seed) give bitwise-identical tensors."""
    from toyworld.prompts import describe  # prompts imports SceneSpec from here

    if num_frames < 1 or min(height, width) < MIN_SIDE:
        raise ValueError(
            f"need num_frames >= 1 and height, width >= {MIN_SIDE}; got {num_frames}, {height}, {width}"
        )
    rng = random.Random(seed)
    renderer = {
        "object": _render_object,
        "pan": _render_pan,
        "fluid": _render_fluid,
        "orbit": _render_orbit,
        "order": _render_order,
        "composition": _render_composition,
    }[spec.kind]
    rendered = renderer(spec, num_frames, height, width, rng)
    camera_shift, background = rendered.camera_shift, rendered.background
    return ToyClip(
        video=rendered.video,
        prompt=describe(spec),
        spec=spec,
        flow=torch.from_numpy(rendered.flow.astype(np.float32)),
        camera_shift=None if camera_shift is None else torch.from_numpy(camera_shift.astype(np.float32)),
        background=None if background is None else torch.from_numpy(np.ascontiguousarray(background)),
    )


def sample_spec(rng: random.Random, kinds=("object",)) -> SceneSpec:
    """Draw a spec uniformly: kind, then every field that kind uses."""
    kind = rng.choice(tuple(kinds))
    color = rng.choice(tuple(COLORS))
    background = rng.choice(tuple(BACKGROUNDS))
    if kind == "object":
        return SceneSpec(
            "object", rng.choice(SHAPES), color, background, rng.choice(MOTIONS), rng.randint(1, MAX_COUNT)
        )
    if kind == "pan":
        return SceneSpec("pan", rng.choice(SHAPES), color, background, rng.choice(PAN_DIRECTIONS))
    if kind == "fluid":
        return SceneSpec("fluid", FLUID_SHAPE, color, background, rng.choice(MOTIONS))
    if kind == "orbit":
        return SceneSpec("orbit", rng.choice(SHAPES), color, background, rng.choice(ORBIT_DIRECTIONS))
    if kind == "order":
        first = rng.choice(PAN_DIRECTIONS)
        then = rng.choice([d for d in PAN_DIRECTIONS if d != first])
        return SceneSpec("order", rng.choice(SHAPES), color, background, first, then=then)
    if kind == "composition":
        return SceneSpec(
            "composition", rng.choice(SHAPES), color, background, "static",
            relation=rng.choice(RELATIONS), other_shape=rng.choice(SHAPES),
            other_color=rng.choice([c for c in COLORS if c != color]),
        )
    raise ValueError(f"kind={kind!r} is not one of {KINDS}")


def all_object_specs(count: int = 1) -> list[SceneSpec]:
    """Every object scene with `count` objects: shape x colour x background x motion (360 specs)."""
    return [
        SceneSpec("object", shape, color, background, motion, count)
        for shape in SHAPES
        for color in COLORS
        for background in BACKGROUNDS
        for motion in MOTIONS
    ]


HELD_OUT_PERCENT = 10  # of the grammar's prompts, reserved for evaluation (a hash split: no list to keep)
SPLITS = ("train", "held_out")


def is_held_out(prompt: str) -> bool:
    """Whether `prompt` belongs to the evaluation split: a stable hash of the text, so every
    process, run and machine agrees without a stored list, and ~10 % of each kind is held out."""
    return zlib.crc32(prompt.encode()) % 100 < HELD_OUT_PERCENT


class ToyWorld:
    """A seeded source of toy clips and prompts of fixed size.

    `sample(n, seed)` and `prompts(n, seed)` draw the same specs, so prompts(n, seed)[i] is the
    prompt of sample(n, seed)[i] without rendering anything. By default it draws the CORE_KINDS,
    the world the base model is pretrained on; name the instruction kinds to add them.

    `split`: "train" draws only prompts outside the held-out set, "held_out" only prompts inside
    it (`is_held_out`), None (default) the whole grammar. Post-training stages sample "train" and
    the evaluation "held_out", so no stage trains on an evaluation prompt.
    """

    all_object_specs = staticmethod(all_object_specs)

    def __init__(self, num_frames: int = 9, height: int = 32, width: int = 32, kinds=CORE_KINDS, split: str | None = None):
        if split not in (None, *SPLITS):
            raise ValueError(f"split={split!r} must be one of {SPLITS} or None")
        unknown = [k for k in kinds if k not in KINDS]
        if unknown or not kinds:
            raise ValueError(f"kinds={tuple(kinds)!r}: each must be one of {KINDS} and at least one given")
        if num_frames < 1 or min(height, width) < MIN_SIDE:
            raise ValueError(
                f"num_frames={num_frames}, height={height}, width={width}: "
                f"need >= 1 frame and sides >= {MIN_SIDE}"
            )
        self.num_frames, self.height, self.width = num_frames, height, width
        self.kinds = tuple(kinds)
        self.split = split

    def _specs_and_seeds(self, n: int, seed: int) -> list[tuple[SceneSpec, int]]:
        from toyworld.prompts import describe

        rng = random.Random(seed)
        drawn = []
        while len(drawn) < n:
            spec = sample_spec(rng, self.kinds)
            clip_seed = rng.randrange(2**31)
            if self.split is None or is_held_out(describe(spec)) == (self.split == "held_out"):
                drawn.append((spec, clip_seed))
        return drawn

    def sample(self, n: int, seed: int) -> list[ToyClip]:
        return [
            render(spec, self.num_frames, self.height, self.width, clip_seed)
            for spec, clip_seed in self._specs_and_seeds(n, seed)
        ]

    def prompts(self, n: int, seed: int) -> list[str]:
        from toyworld.prompts import describe

        return [describe(spec) for spec, _ in self._specs_and_seeds(n, seed)]
