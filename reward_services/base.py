"""The one critic interface every reward source implements (report §5).

A critic maps a batch of videos and their prompts to named scores of shape [B]
(and, optionally, per-frame or per-region maps). The trainer's reward actors,
the HTTP endpoint and the evaluation code all call critics through this
interface, which is what makes their scores identical for identical inputs.
"""

from __future__ import annotations

import importlib
import inspect
import zlib
from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import torch


@dataclass
class CriticOutput:
    """Named per-video scores ([B] floats) and optional maps ([B, T, H, W] or [B, T])."""

    scores: dict[str, torch.Tensor]
    maps: dict[str, torch.Tensor] = field(default_factory=dict)


def as_float_video(videos: torch.Tensor) -> torch.Tensor:
    """Return videos as float32 in [0, 1], shape [B, T, H, W, 3].

    uint8 input is scaled by 1/255; float input is checked to be in range rather
    than silently clipped, because an out-of-range float video means a caller bug.
    """
    if videos.ndim != 5 or videos.shape[-1] != 3:
        raise ValueError(f"videos must be [B, T, H, W, 3], got shape {tuple(videos.shape)}")
    if videos.dtype == torch.uint8:
        return videos.float() / 255.0
    if not videos.is_floating_point():
        raise ValueError(f"videos must be uint8 or float, got dtype {videos.dtype}")
    videos = videos.float()
    if videos.numel() and (videos.min() < -1e-4 or videos.max() > 1 + 1e-4):
        raise ValueError("float videos must lie in [0, 1]")
    return videos.clamp(0.0, 1.0)


class Critic:
    """Base class: subclasses set `name`, `score_names` and implement `_score`."""

    name: ClassVar[str] = ""
    score_names: ClassVar[tuple[str, ...]] = ()

    def score(
        self,
        videos: torch.Tensor,
        prompts: Sequence[str],
        first_frames: torch.Tensor | None = None,
    ) -> CriticOutput:
        videos = as_float_video(videos)
        if len(prompts) != videos.shape[0]:
            raise ValueError(f"got {videos.shape[0]} videos but {len(prompts)} prompts")
        out = self._score(videos, list(prompts), first_frames)
        for key, value in out.scores.items():
            if value.shape != (videos.shape[0],):
                raise RuntimeError(f"critic {self.name!r} returned score {key!r} of shape {tuple(value.shape)}")
        return out

    def _score(
        self, videos: torch.Tensor, prompts: list[str], first_frames: torch.Tensor | None
    ) -> CriticOutput:
        raise NotImplementedError

    def refuses(self, prompts: Sequence[str]) -> str | None:
        """Why this critic cannot judge `prompts` (e.g. outside its prompt grammar), or None.
        An endpoint asked for "every critic" skips a refusing one and says why, instead of
        failing the whole request."""
        return None


# Built-in critics by name, imported only when built: naming a critic costs nothing until it is
# used, and the table (not an import side effect) is the list of what exists.
BUILTIN_CRITICS: dict[str, str] = {
    "toy_judges": "reward_services.critics.toy:ToyJudges",
    "vlm_judge": "reward_services.vlm_judge:VLMJudge",
    "motion": "reward_services.critics.motion:MotionCritic",
    "perceptual": "reward_services.critics.perceptual:PerceptualCritic",
    "safety": "reward_services.critics.safety:SafetyGate",
    "noisy_toy": "reward_services.critics.ablation:NoisyToyJudges",
    "local_defect": "reward_services.critics.ablation:LocalDefect",
    "stillness": "reward_services.critics.ablation:Stillness",
    "coarse_smoothness": "reward_services.critics.ablation:CoarseSmoothness",
}
# User critics, added by `register_critic` when their module is imported (the HTTP server's
# `extra_critic_modules`).
_REGISTERED: dict[str, type[Critic]] = {}


def register_critic(cls: type[Critic]) -> type[Critic]:
    """Class decorator for user critics: make `cls` buildable by its `name` from config."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _REGISTERED[cls.name] = cls
    return cls


def available_critics() -> list[str]:
    return sorted(set(BUILTIN_CRITICS) | set(_REGISTERED))


def critic_class(name: str) -> type[Critic]:
    """The class behind a critic name; an unknown name lists the known ones."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name not in BUILTIN_CRITICS:
        raise KeyError(f"unknown critic {name!r}; available: {available_critics()}")
    module, attribute = BUILTIN_CRITICS[name].split(":")
    return getattr(importlib.import_module(module), attribute)


def check_critic_options(name: str, options: dict) -> None:
    """Raise ValueError naming the option if `options` do not fit the critic's constructor, so a
    typo fails when the config is read, not in an actor's log."""
    try:
        inspect.signature(critic_class(name)).bind(**options)
    except TypeError as err:
        accepted = [p for p in inspect.signature(critic_class(name)).parameters if p != "self"]
        raise ValueError(f"critic {name!r}: {err}; accepted options: {accepted}") from None


def build_critic(name: str, **options) -> Critic:
    """Build a critic by name, with torch's RNG seeded from the name while it is built.

    Critics with randomly initialised weights (tests, benchmarks, a RAFT without weights) then
    get the SAME weights in every process that builds them, so a score never depends on which
    worker, or which schedule of the reward phase, computed it. The caller's RNG is untouched.
    """
    cls = critic_class(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(zlib.crc32(name.encode()))
        return cls(**options)
