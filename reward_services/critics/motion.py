"""Motion and temporal-physics critic (report §5.1, item 2).

The report's motion critics "penalise non-causal transitions, static frame
repetition, and unnatural warping" and guard against the "slide-show" failure
mode. All five scores come from one dense optical-flow pass per video:

- OpenCV Farneback (default): runs anywhere, no weights, good enough on the toy
  world's textured, slowly moving content.
- torchvision RAFT (`flow_backend="raft"`): far better on real footage, needs
  torchvision and (by default) its pretrained weights.

Flow convention everywhere in this file (and in `evaluation/flow_metrics`):
`flow[t]` has shape [2, H, W], channel 0 = x, channel 1 = y, and maps frame t
onto frame t+1: frame_t(y, x) ~ frame_{t+1}(y + flow[t, 1], x + flow[t, 0]).

Not supported: occlusion reasoning (disoccluded pixels add to the warp error),
camera-motion compensation (a pan counts as motion), scene cuts (a cut reads
as a large warp error and, correctly, a non-causal transition).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from reward_services.base import Critic, CriticOutput

FLOW_BACKENDS = ("farneback", "raft")


def farneback_params(height: int, width: int) -> dict:
    """Farneback settings chosen from the frame size.

    The coarsest pyramid level is kept at >= ~16 px, below which the polynomial
    expansion has too few pixels to fit; the window grows with the frame so large
    frames stay smooth while 32x32 toy frames keep their small objects.
    """
    short = min(height, width)
    levels = int(np.clip(1 + math.floor(math.log2(max(short, 1) / 16)), 1, 5))
    if short < 128:
        winsize, poly_n, poly_sigma = (9 if short < 64 else 11), 5, 1.1
    else:
        winsize, poly_n, poly_sigma = 15, 7, 1.5
    return dict(
        pyr_scale=0.5, levels=levels, winsize=winsize, iterations=5,
        poly_n=poly_n, poly_sigma=poly_sigma, flags=cv2.OPTFLOW_FARNEBACK_GAUSSIAN,
    )


def farneback_flow(frames_uint8_gray: np.ndarray, **overrides) -> np.ndarray:
    """Dense flow between consecutive frames: [T, H, W] uint8 -> [T-1, 2, H, W] float32 (ch 0 = x).

    `overrides` replace any of the size-chosen `farneback_params` (pyr_scale,
    levels, winsize, iterations, poly_n, poly_sigma, flags).
    """
    frames = np.asarray(frames_uint8_gray)
    if frames.ndim != 3 or frames.dtype != np.uint8:
        raise ValueError(
            f"frames_uint8_gray must be a [T, H, W] uint8 array, got shape {frames.shape} dtype {frames.dtype}"
        )
    num_frames, height, width = frames.shape
    params = {**farneback_params(height, width), **overrides}
    # OpenCV's polynomial expansion misbehaves at the image edge (up to ~1 px of
    # flow between two IDENTICAL frames); a 5 px replicated border, cropped
    # afterwards, makes a still video's flow zero (< 0.002 px) at 32-256 px and
    # keeps the mean end-point error on translating texture within ~0.1 px.
    pad = 5
    padded = [cv2.copyMakeBorder(frame, pad, pad, pad, pad, cv2.BORDER_REPLICATE) for frame in frames]
    flows = np.zeros((max(num_frames - 1, 0), 2, height, width), np.float32)
    for t in range(num_frames - 1):
        flow = cv2.calcOpticalFlowFarneback(padded[t], padded[t + 1], None, **params)
        flows[t] = flow[pad : pad + height, pad : pad + width].transpose(2, 0, 1)
    return flows


def warp_to_source(image: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sample `image` (the later frame) at x + flow(x): returns (warped [H, W, C], valid [H, W]).

    `valid` is False where x + flow(x) falls outside the frame; those pixels are
    filled by border replication and must not count in an error.
    """
    height, width = flow.shape[1:]
    grid_y, grid_x = np.mgrid[0:height, 0:width].astype(np.float32)
    map_x = grid_x + flow[0]
    map_y = grid_y + flow[1]
    warped = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if warped.ndim == 2:
        warped = warped[..., None]
    valid = (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)
    return warped, valid


def _to_gray_uint8(video: np.ndarray) -> np.ndarray:
    """[T, H, W, 3] float in [0, 1] -> [T, H, W] uint8 luma (Rec.601, as cv2.COLOR_RGB2GRAY)."""
    gray = video @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.clip(np.rint(gray * 255.0), 0, 255).astype(np.uint8)


class MotionCritic(Critic):
    """Flow-based motion scores, each in [0, 1] with higher = better.

    Scores (flow in pixels per frame; "short side" = min(H, W)):

    - dynamic_degree = 1 - exp(-m / dynamic_scale), m = mean over frame pairs of
      the mean flow magnitude of the fastest `dynamic_top_fraction` of pixels, in
      percent of the short side. Top pixels, not all, so a small object moving
      over a still background still counts as motion (as VBench's dynamic
      degree); percent of the short side so the score does not depend on the
      resolution. 0 = frozen; 1 - e^-1 = 0.63 at `dynamic_scale` %/frame.
    - temporal_smoothness = 1 - 0.5 sum|a| / (sum(|f_t| + |f_{t+1}(x + f_t)|) + eps),
      with a(x) = f_{t+1}(x + f_t(x)) - f_t(x) the Lagrangian acceleration (the
      velocity change along each pixel's trajectory, so constant-velocity motion
      scores 1 even though the moving object covers different pixels per frame).
      By the triangle inequality the ratio is in [0, 2]; we halve it, so 0.5
      means velocity changes as large as the velocity itself (jitter), 0 means
      every trajectory reverses each frame. eps = smoothness_eps_px per pixel,
      so a still video scores 1 (stillness is frozen_frames' business).
      Needs T >= 3; 1.0 otherwise.
    - warp_error = exp(-e / warp_scale), e = mean absolute RGB error between
      frame t and frame t+1 warped back to t with the flow, over in-frame pixels
      and all pairs. Low when each frame is the previous one moved; high for
      "unnatural warping", popping objects, shuffled frames. Disocclusions add error.
    - frozen_frames = fraction of consecutive pairs NOT frozen; a pair is frozen
      when its mean absolute RGB difference < `frozen_threshold` (0.5 grey
      levels by default). 1.0 = no repeated frames, 0.0 = a still image.
    - time_direction = arrow-of-time indicator for DISSIPATIVE content, in
      [0, 1]: > 0.5 = plays forward, < 0.5 = plays backward, 0.5 = undetermined.
      Diffusion, smoke, melting and motion blur lose fine detail as time goes
      on, so a forward pair is explained by "warp, then blur" and a reversed
      pair is not. Per pair we fit the best Gaussian blur (sigma in
      `time_blur_sigmas`) for each direction after motion-compensating with the
      forward and backward flow (each flow once, which cancels the blur that
      bilinear warping adds to one side), get errors e_fwd and e_bwd, and use
      asym = (e_bwd - e_fwd) / (e_bwd + e_fwd); score = 0.5 + 0.5 tanh(asym /
      time_asymmetry_scale) when |asym| > time_dead_zone, else exactly 0.5.
      Reliable only when content dissipates; rigid motion, pans and stills are
      time-symmetric and correctly return ~0.5. Fooled by content whose detail
      legitimately grows (zoom-in, objects entering, focus pulls) and, as a
      reward alone, it pays for blurring over time — pair it with the
      perceptual critic's sharpness, or use it as an evaluation diagnostic.
      Disable with `time_direction=False` (returns 0.5, skips the backward flow).

    Map: flow_magnitude [B, T-1] = mean flow magnitude of each pair over all
    pixels, in pixels of the input video.
    """

    name = "motion"
    score_names = ("dynamic_degree", "temporal_smoothness", "warp_error", "frozen_frames", "time_direction")

    def __init__(
        self,
        flow_backend: str = "farneback",
        flow_max_side: int | None = 256,
        dynamic_scale: float = 2.0,
        dynamic_top_fraction: float = 0.05,
        smoothness_eps_px: float = 0.1,
        warp_scale: float = 0.02,
        frozen_threshold: float = 0.5 / 255.0,
        time_direction: bool = True,
        time_blur_sigmas: tuple[float, ...] = (0.0, 0.5, 0.75, 1.0, 1.5, 2.0),
        time_asymmetry_scale: float = 0.1,
        time_dead_zone: float = 0.02,
        raft_pretrained: bool = True,
        device: str = "cpu",
        farneback_overrides: dict | None = None,
    ) -> None:
        if flow_backend not in FLOW_BACKENDS:
            raise ValueError(f"flow_backend={flow_backend!r} is not one of {FLOW_BACKENDS}")
        if not 0.0 < dynamic_top_fraction <= 1.0:
            raise ValueError(f"dynamic_top_fraction={dynamic_top_fraction} must be in (0, 1]")
        for field_name, value in (("dynamic_scale", dynamic_scale), ("warp_scale", warp_scale),
                                  ("time_asymmetry_scale", time_asymmetry_scale)):
            if value <= 0:
                raise ValueError(f"{field_name}={value} must be > 0")
        self.flow_backend = flow_backend
        self.flow_max_side = flow_max_side
        self.dynamic_scale = dynamic_scale
        self.dynamic_top_fraction = dynamic_top_fraction
        self.smoothness_eps_px = smoothness_eps_px
        self.warp_scale = warp_scale
        self.frozen_threshold = frozen_threshold
        self.estimate_time_direction = time_direction
        self.time_blur_sigmas = tuple(time_blur_sigmas)
        self.time_asymmetry_scale = time_asymmetry_scale
        self.time_dead_zone = time_dead_zone
        self.device = device
        self.farneback_overrides = dict(farneback_overrides or {})
        self._raft = load_raft(raft_pretrained, device) if flow_backend == "raft" else None

    # ------------------------------------------------------------------ flow
    def _flows(self, video: np.ndarray) -> np.ndarray:
        """[T, h, w, 3] float video at analysis size -> [T-1, 2, h, w] flow."""
        if self._raft is not None:
            return raft_flow(self._raft, video, self.device)
        return farneback_flow(_to_gray_uint8(video), **self.farneback_overrides)

    def _analysis_video(self, video: np.ndarray) -> tuple[np.ndarray, float]:
        """Downscale so the long side is <= flow_max_side; returns (video, input px per analysis px)."""
        height, width = video.shape[1:3]
        long_side = max(height, width)
        if self.flow_max_side is None or long_side <= self.flow_max_side:
            return video, 1.0
        factor = self.flow_max_side / long_side
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        small = np.stack([cv2.resize(frame, size, interpolation=cv2.INTER_AREA) for frame in video])
        return small, width / size[0]

    # ---------------------------------------------------------------- scores
    def _score(self, videos, prompts, first_frames) -> CriticOutput:
        rows = [self._score_one(video.detach().cpu().numpy()) for video in videos]
        scores = {
            key: torch.tensor([row[0][key] for row in rows], dtype=torch.float32) for key in self.score_names
        }
        flow_magnitude = torch.from_numpy(np.stack([row[1] for row in rows])).float()
        return CriticOutput(scores=scores, maps={"flow_magnitude": flow_magnitude})

    def _score_one(self, video: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
        num_frames = video.shape[0]
        if num_frames < 2:
            raise ValueError(f"MotionCritic needs at least 2 frames per video, got {num_frames}")
        small, px_scale = self._analysis_video(video)
        flows = self._flows(small)
        magnitude = np.linalg.norm(flows, axis=1)  # [T-1, h, w]
        short_side = min(small.shape[1:3])

        # dynamic_degree: fastest pixels, in % of the short side per frame
        flat = magnitude.reshape(num_frames - 1, -1)
        top_k = max(1, int(round(self.dynamic_top_fraction * flat.shape[1])))
        top_mean = np.sort(flat, axis=1)[:, -top_k:].mean(axis=1)
        dynamic_percent = float(top_mean.mean()) / short_side * 100.0
        dynamic_degree = 1.0 - math.exp(-dynamic_percent / self.dynamic_scale)

        scores = {
            "dynamic_degree": dynamic_degree,
            "temporal_smoothness": self._smoothness(flows),
            "warp_error": math.exp(-self._warp_error(small, flows) / self.warp_scale),
            "frozen_frames": self._not_frozen_fraction(video),
            "time_direction": self._time_direction(small, flows) if self.estimate_time_direction else 0.5,
        }
        flow_magnitude = magnitude.reshape(num_frames - 1, -1).mean(axis=1) * px_scale
        return scores, flow_magnitude

    def _smoothness(self, flows: np.ndarray) -> float:
        if flows.shape[0] < 2:
            return 1.0
        accel_sum, speed_sum = 0.0, 0.0
        for t in range(flows.shape[0] - 1):
            # f_{t+1} sampled where each pixel of frame t lands in frame t+1
            next_flow, valid = warp_to_source(flows[t + 1].transpose(1, 2, 0).copy(), flows[t])
            next_flow = next_flow.transpose(2, 0, 1)
            accel = np.linalg.norm(next_flow - flows[t], axis=0)
            speed = np.linalg.norm(flows[t], axis=0) + np.linalg.norm(next_flow, axis=0)
            accel_sum += float(accel[valid].sum())
            speed_sum += float(speed[valid].sum())
        num_pixels = flows.shape[2] * flows.shape[3] * (flows.shape[0] - 1)
        ratio = accel_sum / (speed_sum + self.smoothness_eps_px * num_pixels)
        return float(np.clip(1.0 - 0.5 * ratio, 0.0, 1.0))

    @staticmethod
    def _warp_error(video: np.ndarray, flows: np.ndarray) -> float:
        error_sum, count = 0.0, 0
        for t in range(flows.shape[0]):
            warped, valid = warp_to_source(video[t + 1], flows[t])
            error = np.abs(warped - video[t]).mean(axis=-1)
            error_sum += float(error[valid].sum())
            count += int(valid.sum())
        return error_sum / max(count, 1)

    def _not_frozen_fraction(self, video: np.ndarray) -> float:
        pair_diff = np.abs(np.diff(video, axis=0)).reshape(video.shape[0] - 1, -1).mean(axis=1)
        return float((pair_diff >= self.frozen_threshold).mean())

    def _time_direction(self, video: np.ndarray, flows: np.ndarray) -> float:
        gray = video @ np.array([0.299, 0.587, 0.114], np.float32)
        backward = self._flows(video[::-1].copy())[::-1]  # backward[t] maps frame t+1 onto frame t
        err_forward, err_backward = 0.0, 0.0
        for t in range(flows.shape[0]):
            earlier, later = gray[t], gray[t + 1]
            # later frame brought to the earlier frame's pixels, and vice versa
            later_at_t, valid_t = warp_to_source(later, flows[t])
            earlier_at_t1, valid_t1 = warp_to_source(earlier, backward[t])
            pairs = ((earlier, later_at_t[..., 0], valid_t), (earlier_at_t1[..., 0], later, valid_t1))
            for early, late, valid in pairs:
                err_forward += self._best_blur_error(early, late, valid)   # later = blur(earlier)?
                err_backward += self._best_blur_error(late, early, valid)  # earlier = blur(later)?
        total = err_forward + err_backward
        if total < 1e-6:  # static video: no evidence either way
            return 0.5
        asym = (err_backward - err_forward) / total
        if abs(asym) <= self.time_dead_zone:
            return 0.5
        return float(0.5 + 0.5 * math.tanh(asym / self.time_asymmetry_scale))

    def _best_blur_error(self, source: np.ndarray, target: np.ndarray, valid: np.ndarray) -> float:
        """min over sigma of mean |G_sigma * source - target| on valid pixels."""
        if not valid.any():
            return 0.0
        best = math.inf
        for sigma in self.time_blur_sigmas:
            blurred = source if sigma <= 0 else cv2.GaussianBlur(source, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
            best = min(best, float(np.abs(blurred - target)[valid].mean()))
        return best


def load_raft(pretrained: bool, device: str):
    try:
        from torchvision.models.optical_flow import Raft_Small_Weights, raft_small
    except ImportError as error:
        raise ImportError(
            "flow_backend='raft' needs torchvision (torchvision.models.optical_flow.raft_small), "
            "which is not importable here; install torchvision or use flow_backend='farneback'"
        ) from error
    weights = Raft_Small_Weights.DEFAULT if pretrained else None
    return raft_small(weights=weights, progress=False).eval().to(device)


@torch.no_grad()
def raft_flow(model, video: np.ndarray, device: str, pairs_per_batch: int = 8) -> np.ndarray:
    """[T, H, W, 3] float in [0, 1] -> [T-1, 2, H, W] flow from torchvision RAFT."""
    frames = torch.from_numpy(np.ascontiguousarray(video)).permute(0, 3, 1, 2).float() * 2.0 - 1.0
    height, width = frames.shape[-2:]
    pad_h, pad_w = (-height) % 8, (-width) % 8  # RAFT needs sizes divisible by 8
    frames = torch.nn.functional.pad(frames, (0, pad_w, 0, pad_h), mode="replicate").to(device)
    flows = []
    for start in range(0, frames.shape[0] - 1, pairs_per_batch):
        stop = min(start + pairs_per_batch, frames.shape[0] - 1)
        flows.append(model(frames[start:stop], frames[start + 1 : stop + 1])[-1])
    return torch.cat(flows)[:, :, :height, :width].cpu().numpy().astype(np.float32)
