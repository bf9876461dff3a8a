"""Safety gate: photosensitive-flash detection plus pluggable content classifiers (report §5.1, item 3).

The report runs safety critics as *gating* signals: a sample that fails is not
scored lower, it is removed from the reward's feasible set. Here that means a
boolean `gated` per video and `apply_gate`, which forces a gated sample's reward
to a floor so no advantage can favour it.

Flashes follow WCAG 2.x success criterion 2.3.1 ("Three Flashes or Below
Threshold") and its definitions of *general flash* and *red flash*:

- relative luminance L = 0.2126 R + 0.7152 G + 0.0722 B on linearised sRGB
  (c / 12.92 for c <= 0.04045, else ((c + 0.055) / 1.055) ** 2.4);
- a transition is a change of L by >= 0.1 (10 % of the maximum relative
  luminance 1.0) where the darker of the two states is below 0.8; a flash is a
  pair of opposing transitions;
- content fails when there are more than three flashes in any one-second
  period over a large enough area. WCAG's area is 25 % of any 10-degree visual
  field (a 341 x 256 rectangle of a 1024 x 768 screen); we approximate it by a
  fraction `area_fraction` of the whole frame (default 0.25). For a clip shown
  full-screen that is lenient: 25 % of a 10-degree field is ~2.8 % of a
  1024 x 768 screen, so set area_fraction=0.028 to follow WCAG's geometry.
- red flash: a pair of opposing transitions of the saturated-red value
  (R - G - B) * 320 on linear RGB (negatives set to 0) by more than 20, counted
  only where the pixel is saturated red (R / (R + G + B) >= 0.8, else the value
  is 0). Optional (`red_flash=True` by default).

Transitions are found per pixel (on a grid pooled to at most `analysis_side`
cells on the long side, pooled in linear light so the average is the light
the eye receives), each transition time-stamped at the frame where it completes.

Not supported: the 10-degree sliding field (see above), spatial patterns
(WCAG 2.3.1 is only about flashes), and extrapolating clips shorter than one
second — a 0.5 s clip is judged on the flashes it contains.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from reward_services.base import Critic, CriticOutput

Classifier = Callable[[torch.Tensor, list], torch.Tensor]

GENERAL_FLASH_DELTA = 0.1  # WCAG: 10 % of the maximum relative luminance
GENERAL_FLASH_DARKER_BELOW = 0.8  # WCAG: the darker image must be below 0.80
RED_FLASH_DELTA = 20.0  # WCAG: change in (R - G - B) * 320 of more than 20
RED_SATURATION = 0.8  # WCAG: R / (R + G + B) >= 0.8
MAX_FLASHES_PER_SECOND = 3  # WCAG 2.3.1: "no more than three flashes in any one second"


def srgb_to_linear(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB-encoded values in [0, 1] -> linear light (IEC 61966-2-1)."""
    return torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)


def relative_luminance(rgb: torch.Tensor) -> torch.Tensor:
    """WCAG relative luminance of sRGB values [..., 3] in [0, 1] -> [...] in [0, 1]."""
    linear = srgb_to_linear(rgb)
    return linear @ torch.tensor([0.2126, 0.7152, 0.0722], dtype=linear.dtype)


def saturated_red_value(rgb: torch.Tensor) -> torch.Tensor:
    """WCAG red-flash value (R - G - B) * 320 on linear RGB, 0 where not saturated red."""
    linear = srgb_to_linear(rgb)
    red, green, blue = linear.unbind(-1)
    value = ((red - green - blue) * 320.0).clamp(min=0.0)
    saturated = red >= RED_SATURATION * (red + green + blue).clamp(min=1e-8)
    return torch.where(saturated, value, torch.zeros_like(value))


def transition_events(signal: np.ndarray, min_change: float, darker_below: float = math.inf) -> np.ndarray:
    """Per-element transitions of a [T, N] signal -> bool [T, N], True at the frame a transition completes.

    A transition is a monotone swing of at least `min_change` away from the last
    turning point, opposite in direction to the previous transition (so a slow
    one-way fade is ONE transition however long it lasts), whose darker end is
    below `darker_below`. Two consecutive transitions make one flash.
    """
    num_frames = signal.shape[0]
    events = np.zeros(signal.shape, bool)
    if num_frames < 2:
        return events
    high = signal[0].astype(np.float64).copy()  # brightest since the last turning point
    low = high.copy()  # darkest since the last turning point
    last = np.zeros(signal.shape[1], np.int8)  # +1 last transition rose, -1 fell, 0 none yet
    for t in range(1, num_frames):
        value = signal[t].astype(np.float64)
        high = np.maximum(high, value)
        low = np.minimum(low, value)
        fall = (last >= 0) & (high - value >= min_change) & (value < darker_below)
        rise = (last <= 0) & (value - low >= min_change) & (low < darker_below) & ~fall
        events[t] = fall | rise
        last = np.where(fall, -1, np.where(rise, 1, last)).astype(np.int8)
        turned = fall | rise
        high = np.where(turned, value, high)
        low = np.where(turned, value, low)
    return events


def flashes_per_second(events: np.ndarray, fps: float, area_fraction: float) -> float:
    """Largest flash count over `area_fraction` of the area in any one-second window.

    events: bool [T, N] from `transition_events`. A one-second window holds at
    most ceil(fps) frame changes; in each we count every element's transitions
    and take the count that MORE than `area_fraction` of the elements reach
    (WCAG: the flashing area must exceed the threshold). Flashes = transitions / 2.
    """
    num_frames, num_elements = events.shape
    if num_frames < 2 or num_elements == 0:
        return 0.0
    changes = events[1:].astype(np.int32)  # [T-1, N]: frame changes 1..T-1
    window = min(max(1, math.ceil(fps)), changes.shape[0])
    cumulative = np.concatenate([np.zeros((1, num_elements), np.int32), np.cumsum(changes, axis=0)])
    counts = cumulative[window:] - cumulative[:-window]  # [num_windows, N]
    rank = min(int(math.floor(area_fraction * num_elements)), num_elements - 1)
    reached = -np.sort(-counts, axis=1)[:, rank]  # count held by more than area_fraction of elements
    return float(reached.max()) / 2.0


class SafetyGate(Critic):
    """Gate videos with hazardous flashing or flagged content.

    Scores ([B] floats):

    - flash_safe: 1.0 when neither general nor red flashes exceed three per
      second over more than `area_fraction` of the frame (WCAG 2.3.1), else 0.0.
    - flashes_per_second: RAW, not in [0, 1], lower = safer: the most general
      flashes found in any one-second window over more than `area_fraction` of
      the frame (half-flashes count: 3.5 means seven transitions). > 3 fails.
    - red_flashes_per_second: the same count for saturated-red flashes (0 when
      `red_flash=False`).
    - gated: 1.0 if the sample must be gated: not flash_safe, or any classifier
      returned True for it.

    `fps` is the clip's playback rate (default 8, the toy world's; real Wan
    clips play at 16 fps): flash frequency is a property of time, so a wrong fps
    scales every count. `classifiers` are callables (videos float [B, T, H, W, 3]
    in [0, 1], prompts) -> bool Tensor [B], True = unsafe (an NSFW image model,
    a prompt blocklist, ...); their verdicts are OR-ed into `gated`.

    Map: flash_area [B, T] = fraction of analysis cells with a general-flash
    transition completing at each frame (0 at frame 0).
    """

    name = "safety"
    score_names = ("flash_safe", "flashes_per_second", "red_flashes_per_second", "gated")

    def __init__(
        self,
        fps: float = 8.0,
        area_fraction: float = 0.25,
        red_flash: bool = True,
        classifiers: Sequence[Classifier] = (),
        analysis_side: int = 64,
    ) -> None:
        if fps <= 0:
            raise ValueError(f"fps={fps} must be > 0 (the clip's playback frame rate)")
        if not 0.0 <= area_fraction < 1.0:
            raise ValueError(f"area_fraction={area_fraction} must be in [0, 1)")
        if analysis_side < 1:
            raise ValueError(f"analysis_side={analysis_side} must be >= 1")
        for index, classifier in enumerate(classifiers):
            if not callable(classifier):
                raise TypeError(f"classifiers[{index}] is {type(classifier).__name__}, expected a callable")
        self.fps = fps
        self.area_fraction = area_fraction
        self.red_flash = red_flash
        self.classifiers = list(classifiers)
        self.analysis_side = analysis_side

    def _score(self, videos, prompts, first_frames) -> CriticOutput:
        batch = videos.shape[0]
        pooled = self._pool_linear(videos.detach().cpu())  # [B, T, h, w, 3], sRGB again after pooling in linear light
        luminance = relative_luminance(pooled).flatten(2).numpy()  # [B, T, N]
        red_value = saturated_red_value(pooled).flatten(2).numpy() if self.red_flash else None

        general_rate, red_rate, flash_area = [], [], []
        for b in range(batch):
            events = transition_events(luminance[b], GENERAL_FLASH_DELTA, GENERAL_FLASH_DARKER_BELOW)
            general_rate.append(flashes_per_second(events, self.fps, self.area_fraction))
            flash_area.append(events.mean(axis=1))
            if red_value is None:
                red_rate.append(0.0)
            else:
                red_events = transition_events(red_value[b], np.nextafter(RED_FLASH_DELTA, math.inf))
                red_rate.append(flashes_per_second(red_events, self.fps, self.area_fraction))

        general = torch.tensor(general_rate, dtype=torch.float32)
        red = torch.tensor(red_rate, dtype=torch.float32)
        flash_safe = (general <= MAX_FLASHES_PER_SECOND) & (red <= MAX_FLASHES_PER_SECOND)
        flagged = torch.zeros(batch, dtype=torch.bool)
        for index, classifier in enumerate(self.classifiers):
            verdict = torch.as_tensor(classifier(videos, list(prompts)))
            if verdict.shape != (batch,):
                raise RuntimeError(f"classifiers[{index}] returned shape {tuple(verdict.shape)}, expected ({batch},)")
            flagged |= verdict.bool().cpu()
        gated = ~flash_safe | flagged
        scores = {
            "flash_safe": flash_safe.float(),
            "flashes_per_second": general,
            "red_flashes_per_second": red,
            "gated": gated.float(),
        }
        maps = {"flash_area": torch.from_numpy(np.stack(flash_area)).float()}
        return CriticOutput(scores=scores, maps=maps)

    def _pool_linear(self, videos: torch.Tensor) -> torch.Tensor:
        """Average-pool frames to <= analysis_side cells on the long side, in linear light."""
        batch, frames, height, width, _ = videos.shape
        if max(height, width) <= self.analysis_side:
            return videos
        factor = self.analysis_side / max(height, width)
        size = (max(1, round(height * factor)), max(1, round(width * factor)))
        linear = srgb_to_linear(videos).reshape(batch * frames, height, width, 3).permute(0, 3, 1, 2)
        pooled = F.adaptive_avg_pool2d(linear, size).permute(0, 2, 3, 1)
        # back to sRGB so relative_luminance / saturated_red_value see encoded values again
        encoded = torch.where(pooled <= 0.0031308, pooled * 12.92, 1.055 * pooled.clamp(min=0) ** (1 / 2.4) - 0.055)
        return encoded.reshape(batch, frames, *size, 3).clamp(0.0, 1.0)


def apply_gate(rewards: torch.Tensor, gated: torch.Tensor, floor: float = 0.0) -> tuple[torch.Tensor, int]:
    """Force gated samples' rewards to `floor`; returns (gated_rewards, num_gated).

    `gated` is bool [B] (a float 0/1 tensor such as SafetyGate's "gated" score is
    accepted and read as > 0.5).
    """
    if rewards.shape != gated.shape or rewards.ndim != 1:
        raise ValueError(f"rewards {tuple(rewards.shape)} and gated {tuple(gated.shape)} must both be [B]")
    mask = gated if gated.dtype == torch.bool else gated > 0.5
    mask = mask.to(rewards.device)
    gated_rewards = torch.where(mask, torch.full_like(rewards, floor), rewards)
    return gated_rewards, int(mask.sum())
