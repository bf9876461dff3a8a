"""Test-bench critics for the Stage II ablations (bench/ablations.py, report §3.2-3.5).

Each one builds a reward with a KNOWN defect on top of the toy judges, so a Stage II mechanism
can be measured against the failure it is meant to handle:

- `noisy_toy`     the toy judges plus `noisy`: a clean toy score (`clean`, default the overall), with
                  large zero-mean noise on an "ambiguous" subset of prompts (BPGO, §3.3). Trained
                  on `noisy`, scored on `clean`.
- `local_defect`  `stability` of one small fixed region against flicker, blended with the toy
                  overall into `score` (ViPO, §3.2: a defect that lives in one place).
- `stillness`     `still`: the toy motion judge asked whether the content stands still, which
                  conflicts with the prompt's own direction (Joint Reward, §3.5).
- `coarse_smoothness`  `fidelity`: the toy smoothness judge through a coarse critic that stops
                  discriminating above a threshold (capped at 1) and carries a little evaluator
                  noise, so once the generator passes the threshold its group differences are noise
                  (Self-Paced, §3.4: reward saturation).

They are ordinary registered critics (`rewards.critics: [{name: noisy_toy}]`), deterministic
for identical inputs: the noise is seeded from the video's bytes, not from a global RNG, so the
same rollout scores the same on any worker, after a restart or in a test.
"""

from __future__ import annotations

import dataclasses
import hashlib

import torch

from reward_services.base import Critic, CriticOutput
from reward_services.critics.toy import TOY_SCORES
from toyworld.judges import judge_all, judge_motion, judge_smoothness
from toyworld.prompts import parse

_REFERENCE_SIDE = 32  # region geometry is quoted at 32x32 and scales with the frame, like the world's


def video_seed(video: torch.Tensor, salt: int = 0) -> int:
    """A 63-bit seed from one video's 8-bit pixels (what the trainer ships), stable across processes."""
    pixels = (video.detach().to("cpu", torch.float32).clamp(0, 1) * 255).round().to(torch.uint8)
    digest = hashlib.blake2b(pixels.numpy().tobytes(), digest_size=8, key=salt.to_bytes(8, "little")).digest()
    return int.from_bytes(digest, "little") >> 1


def video_noise(videos: torch.Tensor, salt: int = 0) -> torch.Tensor:
    """[B] standard normal draws, one per video, each seeded by `video_seed` (evaluator noise)."""
    draws = [torch.randn((), generator=torch.Generator().manual_seed(video_seed(v, salt))) for v in videos]
    return torch.stack(draws) if draws else torch.zeros(0)


class NoisyToyJudges(Critic):
    """The toy judges, plus `noisy` = clean + noise_std * error on ambiguous prompts only.

    `clean` is the toy score named by `clean_score` (default `overall`). `error` is
      "random":   N(0, 1) per video (seeded by its pixels): an evaluator that is merely noisy;
      "spurious": a fixed random linear read-out of the video's 4x4-pooled pixels, normalised by
                  their norm (unit scale across videos, ~0.3 within a prompt's group on the toy
                  base model): an evaluator that is consistently wrong there, preferring some
                  arbitrary look the policy can learn, as reward models do out of distribution.
    A prompt is ambiguous when its motion is in `ambiguous_motions` or its background in
    `ambiguous_backgrounds` (default: horizontal motion, as if the evaluator could not tell a clip
    from its mirror image). Elsewhere `noisy` equals `clean` exactly. `ambiguous` (0/1) is
    reported so a run can be split by subset afterwards.
    """

    name = "noisy_toy"
    score_names = (*TOY_SCORES, "clean", "noisy", "ambiguous")

    def __init__(self, noise_std: float = 0.3, ambiguous_motions=("left", "right"), ambiguous_backgrounds=(),
                 salt: int = 0, clean_score: str = "overall", error: str = "random"):
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        if error not in ("random", "spurious"):
            raise ValueError(f"error must be 'random' or 'spurious', got {error!r}")
        if clean_score not in TOY_SCORES:
            raise ValueError(f"clean_score must be one of the toy scores {TOY_SCORES}, got {clean_score!r}")
        self.error = error
        self.clean_score = clean_score
        self.noise_std = float(noise_std)
        self.ambiguous_motions = frozenset(ambiguous_motions)
        self.ambiguous_backgrounds = frozenset(ambiguous_backgrounds)
        self.salt = int(salt)

    def is_ambiguous(self, prompt: str) -> bool:
        spec = parse(prompt)
        return spec.motion in self.ambiguous_motions or spec.background in self.ambiguous_backgrounds

    def _score(self, videos: torch.Tensor, prompts: list[str], first_frames) -> CriticOutput:
        scores = {key: value.float() for key, value in judge_all(videos, prompts).items()}
        ambiguous = torch.tensor([self.is_ambiguous(p) for p in prompts])
        noise = video_noise(videos, self.salt) if self.error == "random" else spurious_readout(videos, self.salt)
        scores["clean"] = scores[self.clean_score]
        scores["noisy"] = torch.where(ambiguous, scores["clean"] + self.noise_std * noise, scores["clean"])
        scores["ambiguous"] = ambiguous.float()
        return CriticOutput(scores=scores)


def spurious_readout(videos: torch.Tensor, salt: int = 0, pool: int = 4) -> torch.Tensor:
    """[B] w . x / ||x||: x = the video's `pool`x`pool`-pooled pixels minus 0.5, w ~ N(0, I) fixed by
    `salt` and the video's shape. Deterministic, smooth in the pixels (so a policy can climb it)
    and unrelated to any toy judge by construction."""
    b, t, h, w_, c = videos.shape
    pixels = videos.detach().to("cpu", torch.float32)  # in [0, 1]: `Critic.score` converts uint8
    x = torch.nn.functional.avg_pool2d(pixels.permute(0, 1, 4, 2, 3).reshape(b, t * c, h, w_), pool).reshape(b, -1) - 0.5
    weights = torch.randn(x.shape[1], generator=torch.Generator().manual_seed(salt))
    return (x @ weights) / x.norm(dim=1).clamp_min(1e-8)


def flicker_map(videos: torch.Tensor) -> torch.Tensor:
    """[B, T-2, H, W] temporal second difference |f[t] - (f[t-1] + f[t+1]) / 2| (mean over RGB).

    Zero for anything static or moving at constant speed per pixel (a linear ramp in time), large
    for flicker: a pixel that changes and changes back.
    """
    return (videos[:, 1:-1] - 0.5 * (videos[:, :-2] + videos[:, 2:])).abs().mean(dim=-1)


class LocalDefect(Critic):
    """`stability` = exp(-flicker / scale) inside one small region; `score` blends it with the toy overall.

    region = (top, left, size) in pixels at 32x32, scaled with the frame (default: the top-left
    8x8 corner, one latent cell of the tiny Wan VAE). Flicker outside the region does not change
    `stability` at all; it reaches `score` only through the toy judges' own `overall`.
        score = region_weight * stability + (1 - region_weight) * overall
    """

    name = "local_defect"
    score_names = ("score", "stability", "flicker", "overall")

    def __init__(self, region=(0, 0, 8), scale: float = 0.02, region_weight: float = 0.5):
        top, left, size = (int(v) for v in region)
        if size < 1 or top < 0 or left < 0 or top + size > _REFERENCE_SIDE or left + size > _REFERENCE_SIDE:
            raise ValueError(f"region=(top, left, size)={tuple(region)} must lie inside a {_REFERENCE_SIDE}x{_REFERENCE_SIDE} frame")
        if scale <= 0 or not 0 <= region_weight <= 1:
            raise ValueError(f"need scale > 0 and 0 <= region_weight <= 1, got scale={scale}, region_weight={region_weight}")
        self.region = (top, left, size)
        self.scale = float(scale)
        self.region_weight = float(region_weight)

    def region_slices(self, height: int, width: int) -> tuple[slice, slice]:
        factor = min(height, width) / _REFERENCE_SIDE
        top, left, size = (max(1, round(v * factor)) if v else 0 for v in self.region)
        return slice(top, top + size), slice(left, left + size)

    def _score(self, videos: torch.Tensor, prompts: list[str], first_frames) -> CriticOutput:
        b, t, h, w, _ = videos.shape
        rows, cols = self.region_slices(h, w)
        if t < 3:
            flicker = torch.zeros(b)
        else:
            flicker = flicker_map(videos)[:, :, rows, cols].mean(dim=(1, 2, 3))
        stability = torch.exp(-flicker / self.scale)
        overall = judge_all(videos, prompts)["overall"].float()
        score = self.region_weight * stability + (1.0 - self.region_weight) * overall
        return CriticOutput(scores={"score": score, "stability": stability, "flicker": flicker, "overall": overall})


class Stillness(Critic):
    """`still` = the toy motion judge asked whether the content stays still, whatever the prompt says.

    For a prompt that names a direction it rewards exactly what the toy `motion` judge penalises
    (speed), so the two are conflicting objectives; for a "stays still" prompt they agree.
    Pans score 0 (the camera always moves).
    """

    name = "stillness"
    score_names = ("still",)

    def _score(self, videos: torch.Tensor, prompts: list[str], first_frames) -> CriticOutput:
        specs = [parse(p) for p in prompts]
        still = torch.zeros(len(specs))  # a pan has no still camera in the grammar: it scores 0
        index = [i for i, spec in enumerate(specs) if spec.kind != "pan"]
        if index:
            static = [dataclasses.replace(specs[i], motion="static") for i in index]
            still[index] = judge_motion(videos[index], static).float()
        return CriticOutput(scores={"still": torch.nan_to_num(still, nan=0.0)})


class CoarseSmoothness(Critic):
    """`fidelity` = min(1, smoothness / threshold) + N(0, noise_std^2), noise seeded from the video.

    Below the threshold it ranks videos as the toy smoothness judge does; above it every video
    scores 1 plus evaluator noise, so a group that has passed it has only noise left to compare
    (report §3.4: scores cluster at the ceiling and the intra-group advantage collapses to noise).
    `smoothness` (the judge's raw score) is reported alongside.
    """

    name = "coarse_smoothness"
    score_names = ("fidelity", "smoothness")

    def __init__(self, threshold: float = 0.45, noise_std: float = 0.02, salt: int = 1):
        if threshold <= 0 or noise_std < 0:
            raise ValueError(f"need threshold > 0 and noise_std >= 0, got threshold={threshold}, noise_std={noise_std}")
        self.threshold = float(threshold)
        self.noise_std = float(noise_std)
        self.salt = int(salt)

    def _score(self, videos: torch.Tensor, prompts: list[str], first_frames) -> CriticOutput:
        smoothness = judge_smoothness(videos).float()
        noise = video_noise(videos, self.salt)
        fidelity = (smoothness / self.threshold).clamp_max(1.0) + self.noise_std * noise
        return CriticOutput(scores={"fidelity": fidelity, "smoothness": smoothness})


__all__ = ["CoarseSmoothness", "LocalDefect", "NoisyToyJudges", "Stillness", "flicker_map", "spurious_readout", "video_noise",
           "video_seed"]
