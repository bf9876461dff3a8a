"""Config sections the policy layer reads: which model, how it samples, the clip it makes.

They live here, not in `cluster/`, so that actors can take exactly their own sections without
importing the cluster layer; `cluster.config` composes them into each stage's config.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Preset = Literal["tiny", "wan2.1-t2v-1.3b", "wan2.1-t2v-14b", "wan2.2-i2v-14b"]
# (VAE temporal compression, multiple that height and width must be) per preset: the tiny VAE
# compresses 2x in time and space, real Wan VAEs 4x in time and 8x in space; the transformer's
# 2x2 patches double the spatial multiple.
PRESET_GEOMETRY: dict[str, tuple[int, int]] = {
    "tiny": (2, 8),
    "wan2.1-t2v-1.3b": (4, 16),
    "wan2.1-t2v-14b": (4, 16),
    "wan2.2-i2v-14b": (4, 16),
}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MotionBranchSpec(Section):
    """The physics-aware motion branch fused into the VAE decoder (report §2.4, policy.motion_branch)."""

    hidden_channels: int = Field(32, ge=1)
    flow_scale_px: float = Field(4.0, gt=0, description="fixed flow normalisation: the largest motion, px per frame")


class PolicyConfig(Section):
    """Which Wan model, in which precision, with which parameters trainable.

    `model_path` is a diffusers-layout folder or hub id. For `tiny` it is where
    `cluster.jobs.pretrain` writes the base model (None = random init, used by tests); real
    presets require it unless `random_init` builds their exact shapes with random weights
    (benchmarks and GPU smoke tests: nothing to download).

    `dtype` is the precision of the frozen weights and of the transformer's compute (autocast);
    trainable parameters — LoRA adapters, or the whole transformer under `full` — and their
    optimizer state stay float32, and SDE means and log-probs are computed in float32.
    """

    preset: Preset = "tiny"
    model_path: str | None = None
    random_init: bool = Field(False, description="real presets: random weights of the preset's shapes")
    text_encoder_layers: int | None = Field(
        None, ge=1, description="random_init only: UMT5 layers (Wan's width kept), e.g. 1 for smoke tests"
    )
    dtype: Literal["float32", "bfloat16"] = "float32"
    trainable: Literal["full", "lora", "decoder"] = "full"
    lora_rank: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    gradient_checkpointing: bool = Field(False, description="recompute transformer blocks in backward (memory for time)")
    torch_threads: int = Field(1, ge=1)
    init_from: str | None = Field(
        None, description="a previous stage's run dir, checkpoint folder or .safetensors: its trained weights (and, "
        "recursively, those it started from) load onto this model by name — SFT -> GRPO -> DPO")
    motion_branch: MotionBranchSpec | None = Field(
        None, description="attach the physics-aware motion branch to the VAE decoder (trained by SFT, kept after)")

    @model_validator(mode="after")
    def _weights_source(self):
        if self.preset != "tiny" and not self.model_path and not self.random_init:
            raise ValueError(f"policy.model_path is required for preset {self.preset!r} (or set policy.random_init)")
        if self.random_init and self.model_path:
            raise ValueError("policy.random_init and policy.model_path exclude each other")
        if self.text_encoder_layers is not None and not (self.random_init or self.model_path is None):
            raise ValueError("policy.text_encoder_layers applies only to randomly initialised models")
        return self


class SamplingConfig(Section):
    """The flow-matching sampler: steps, the scheduler's shift, and the SDE's noise level."""

    num_steps: int = Field(10, ge=2)
    shift: float = Field(3.0, gt=0)
    noise_level: float = Field(0.7, ge=0)


class ClipConfig(Section):
    """The geometry of every generated clip (frames, height, width in pixels)."""

    num_frames: int = Field(9, ge=3)
    height: int = Field(32, ge=16)
    width: int = Field(32, ge=16)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.num_frames, self.height, self.width)

    def check_for(self, preset: str) -> None:
        """Raise if the VAE and the transformer's patches cannot tile this clip for `preset`."""
        temporal, spatial = PRESET_GEOMETRY[preset]
        if (self.num_frames - 1) % temporal:
            raise ValueError(
                f"clip.num_frames must be 1 + {temporal}k for preset {preset!r}, got {self.num_frames}"
            )
        if self.height % spatial or self.width % spatial:
            raise ValueError(
                f"clip height and width must be multiples of {spatial} for preset {preset!r}, "
                f"got {self.height}x{self.width}"
            )
