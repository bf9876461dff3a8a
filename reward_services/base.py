"""The one critic interface every reward source implements (report §5).

A critic maps a batch of videos and their prompts to named scores of shape [B]
(and, optionally, per-frame or per-region maps). The trainer's reward actors,
the HTTP endpoint and the evaluation code all call critics through this
interface, which is what makes their scores identical for identical inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Sequence

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


_REGISTRY: dict[str, Callable[..., Critic]] = {}


def register_critic(cls: type[Critic]) -> type[Critic]:
    """Class decorator: make a critic buildable by its `name` from config."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _REGISTRY[cls.name] = cls
    return cls


def available_critics() -> list[str]:
    _import_builtin_critics()
    return sorted(_REGISTRY)


def build_critic(name: str, **options) -> Critic:
    """Build a registered critic; an unknown name lists the known ones."""
    _import_builtin_critics()
    if name not in _REGISTRY:
        raise KeyError(f"unknown critic {name!r}; available: {sorted(_REGISTRY)}")
    return _REGISTRY[name](**options)


def _import_builtin_critics() -> None:
    # Importing the package registers every built-in critic exactly once.
    import reward_services.critics  # noqa: F401
