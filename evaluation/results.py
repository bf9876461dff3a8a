"""The evaluation results file `eval.json` and the GIFs it references.

The eval job writes `<pipeline_dir>/eval/eval.json` (validated by `EvalResults`) and one GIF per
(stage, prompt, seed) next to it; `evaluation.report` reads them. Layout:

    {"prompts": [...], "seeds": [...], "stages": ["base", "sft", "grpo", "dpo"],
     "metrics": {stage: {metric: {"mean", "low", "high", "values"}}},   # `vbench.summarize`
     "gsb": {"grpo_vs_base": {aspect: {"good", "same", "bad"}}},
     "clips": {stage: ["clips/base/p0_s0.gif", ...]}}                     # relative to eval/

`stages` is any subset of base → sft → grpo → dpo, in that order. Each metric's `values` holds
one value per seed (in `seeds` order). Every stage's clip list has len(prompts) × len(seeds) paths
in the same order — prompt-major: `clip_index(prompt_index, seed_index)` — so clips line up
across stages. NaN (a metric that does not apply) is written as the JSON constant NaN.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from evaluation.gsb import Aspect, GSBCounts

STAGES = ("base", "sft", "grpo", "dpo")  # pipeline order


class MetricSummary(BaseModel):
    """Mean over seeds with its 95 % t-interval (`low`/`high` None with one seed); per-seed values."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")

    mean: float
    low: float | None
    high: float | None
    values: list[float] = Field(min_length=1)


class EvalResults(BaseModel):
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")

    prompts: list[str] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    stages: list[str] = Field(min_length=1)
    metrics: dict[str, dict[str, MetricSummary]] = {}
    gsb: dict[str, dict[Aspect, GSBCounts]] = {}
    clips: dict[str, list[str]] = {}

    @field_validator("stages")
    @classmethod
    def _pipeline_order(cls, stages: list[str]) -> list[str]:
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise ValueError(f"{unknown} are not stages; accepted: {STAGES}")
        if stages != sorted(set(stages), key=STAGES.index):
            raise ValueError(f"{stages} must be distinct and in pipeline order {STAGES}")
        return stages

    @model_validator(mode="after")
    def _consistent(self) -> "EvalResults":
        for field in ("metrics", "clips"):
            extra = [s for s in getattr(self, field) if s not in self.stages]
            if extra:
                raise ValueError(f"{field} has stages {extra} that are not in stages={self.stages}")
        for stage, metrics in self.metrics.items():
            for name, summary in metrics.items():
                if len(summary.values) != len(self.seeds):
                    raise ValueError(
                        f"metrics.{stage}.{name}.values has {len(summary.values)} values; expected one per seed "
                        f"({len(self.seeds)})"
                    )
        for key in self.gsb:
            pair = key.split("_vs_")
            if len(pair) != 2 or pair[0] == pair[1] or any(s not in self.stages for s in pair):
                raise ValueError(f"gsb key {key!r} must be '<stage>_vs_<other stage>' with both in stages={self.stages}")
        expected = len(self.prompts) * len(self.seeds)
        for stage, paths in self.clips.items():
            if len(paths) != expected:
                raise ValueError(f"clips.{stage} has {len(paths)} paths; expected len(prompts) x len(seeds) = {expected}")
            for path in paths:
                posix = PurePosixPath(path)
                if posix.is_absolute() or ".." in posix.parts or not path:
                    raise ValueError(f"clips.{stage}: {path!r} must be a relative path inside the eval folder")
        return self

    def clip_index(self, prompt_index: int, seed_index: int) -> int:
        """Position of (prompt, seed) in every stage's clip list (prompt-major)."""
        return prompt_index * len(self.seeds) + seed_index

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "EvalResults":
        return cls.model_validate_json(Path(path).read_text())


def write_gif(clip, path: str | Path, fps: float = 8.0, min_side: int = 128) -> Path:
    """Write a clip [T, H, W, 3] (uint8, or float in [0, 1]) as a looping GIF.

    Small toy clips are enlarged by a whole factor with nearest-neighbour sampling so that a
    32-px clip is visible and its pixels stay crisp (no invented detail) — at least `min_side` px.
    """
    from PIL import Image

    frames = clip.detach().cpu().numpy() if isinstance(clip, torch.Tensor) else np.asarray(clip)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"clip must be [T, H, W, 3], got shape {frames.shape}")
    if frames.dtype != np.uint8:
        if frames.min() < 0 or frames.max() > 1:
            raise ValueError("a float clip must lie in [0, 1]")
        frames = np.rint(frames * 255.0).astype(np.uint8)
    factor = max(1, -(-min_side // min(frames.shape[1:3])))
    frames = frames.repeat(factor, axis=1).repeat(factor, axis=2)
    images = [Image.fromarray(frame) for frame in frames]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return path
