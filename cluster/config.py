"""Configuration: one pydantic model per stage, validated before any actor starts.

A YAML file holds the shared sections (`world`, `policy`, `sampling`, `rewards`, `pool`) and
one section per stage (`pretrain`, `grpo`, ...). Every model forbids unknown keys, so a typo
fails at submit time with the field's dotted path, e.g. `grpo.group_size: Input should be
greater than 0`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WorldConfig(Section):
    """The toy world's clip geometry and which scene kinds prompts come from."""

    num_frames: int = Field(9, ge=3)
    height: int = Field(32, ge=16)
    width: int = Field(32, ge=16)
    kinds: tuple[Literal["object", "pan", "fluid"], ...] = ("object",)

    @model_validator(mode="after")
    def _vae_compatible(self):
        if (self.num_frames - 1) % 2:
            raise ValueError(f"num_frames must be odd (1 + 2k frames for the VAE), got {self.num_frames}")
        if self.height % 8 or self.width % 8:
            raise ValueError(f"height and width must be multiples of 8, got {self.height}x{self.width}")
        return self


class PolicyConfig(Section):
    """Which Wan model: `tiny` (CPU-sized, the toy world's) or a real Wan2.x preset.

    `model_path` is a diffusers-layout folder or hub id. For `tiny` it is where
    `cluster.jobs.pretrain` writes the base model (None = random init, used by tests);
    real presets require it.
    """

    preset: Literal["tiny", "wan2.1-t2v-1.3b", "wan2.1-t2v-14b", "wan2.2-i2v-14b"] = "tiny"
    model_path: str | None = None
    dtype: Literal["float32", "bfloat16"] = "float32"
    trainable: Literal["full", "lora", "decoder"] = "full"
    lora_rank: int = Field(8, ge=1)
    torch_threads: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _path_for_pretrained(self):
        if self.preset != "tiny" and not self.model_path:
            raise ValueError(f"policy.model_path is required for preset {self.preset!r}")
        return self


class SamplingConfig(Section):
    num_steps: int = Field(10, ge=2)
    shift: float = Field(3.0, gt=0)
    noise_level: float = Field(0.7, ge=0)


class CriticSpec(Section):
    """A critic to build by its registered name, with constructor options."""

    name: str
    options: dict = Field(default_factory=dict)


class RewardComponent(Section):
    """One reward the trainer optimises: a critic's score (`critic.score`) with a weight."""

    score: str
    weight: float = Field(1.0, ge=0)


class RewardsConfig(Section):
    """Which critics score rollouts, and which of their scores are the reward components.

    With one component the reward is that score; with several, `grpo.joint_reward.mode`
    decides how they combine (report §3.5). `gate` names a score (e.g. `safety.gated`) whose
    truthy samples get the reward floor (report §5.1, item 3).
    """

    critics: tuple[CriticSpec, ...] = (CriticSpec(name="toy_judges"),)
    components: dict[str, RewardComponent] = Field(
        default_factory=lambda: {"overall": RewardComponent(score="toy_judges.overall")}
    )
    gate: str | None = None
    gate_floor: float = 0.0
    execution: Literal["actor", "grouped"] = Field(
        "actor",
        description="actor: one RewardActor per bundle runs every critic; grouped: one worker process "
        "per critic, grouped and given quotas by the MPS planner (report §6.1.2)",
    )

    @model_validator(mode="after")
    def _components_name_configured_critics(self):
        names = {spec.name for spec in self.critics}
        if not self.components:
            raise ValueError("rewards.components must name at least one score")
        for label, component in {**self.components, "gate": RewardComponent(score=self.gate or "")}.items():
            if label == "gate" and not self.gate:
                continue
            critic = component.score.split(".", 1)[0]
            if "." not in component.score or critic not in names:
                raise ValueError(
                    f"rewards.components.{label}.score={component.score!r} must be 'critic.score' "
                    f"with critic among the configured critics {sorted(names)}"
                )
        return self


class PoolConfig(Section):
    num_bundles: int = Field(1, ge=1)
    accelerator: Literal["auto", "GPU", "accelerator"] = "auto"
    cpus_per_bundle: float = Field(1.0, gt=0)
    placement: Literal["colocated", "disaggregated"] = "colocated"
    reward_bundles: int = Field(1, ge=1, description="bundles of the reward pool when disaggregated")
    max_phase_retries: int = Field(2, ge=0, description="times a phase is redone after an actor dies")


class PretrainConfig(Section):
    """Base-model training on the toy world: the VAE first, then the transformer on its latents."""

    vae_steps: int = Field(800, ge=0)
    vae_clip_frames: int = Field(5, ge=1)
    transformer_steps: int = Field(3000, ge=0)
    dataset_clips: int = Field(2048, ge=1)
    batch_size: int = Field(8, ge=1)
    transformer_batch_size: int = Field(32, ge=1)
    vae_lr: float = Field(2e-3, gt=0)
    transformer_lr: float = Field(1e-3, gt=0)
    kl_weight: float = Field(1e-6, ge=0)
    eval_prompts: int = Field(32, ge=1)


class JointRewardConfig(Section):
    """How several reward components become one advantage (report §3.5).

    weighted_sum: Σ w_i r_i, then group-normalised; advantage_sum: Σ w_i A_i (what peers do);
    min_norm: Σ c_i A_i with c minimising ‖Σ c_i A_i‖² on the simplex (report eq. 4).
    """

    mode: Literal["weighted_sum", "advantage_sum", "min_norm"] = "weighted_sum"


class BPGOConfig(Section):
    """Prior-guided trust (report §3.3). Both switches off = plain GRPO exactly."""

    ras: bool = False
    crt: bool = False
    prior_rule: Literal["ema", "bayes", "frozen"] = "ema"
    prior_momentum: float = Field(0.9, ge=0, lt=1)
    prior_groups: int = Field(1, ge=0, description="reference groups sampled per prompt before training")
    alpha: float = Field(1.0, ge=0)
    gamma: float = Field(4.0, ge=0)
    w_min: float = Field(0.2, gt=0, le=1)
    w_max: float = Field(3.0, ge=1)
    margin: float = Field(1.0, ge=0)
    stretch: float = Field(1.5, ge=1)
    compress: float = Field(0.5, gt=0, le=1)

    @property
    def enabled(self) -> bool:
        return self.ras or self.crt


class ViPOConfig(Section):
    """Spatiotemporal advantage maps (report §3.2). lam = 0 is plain GRPO exactly.

    map: `reward_aligned` = where the group's winners and losers differ (uses the advantages);
    `deviation` = where each video departs from its group's consensus (reward-blind).
    """

    lam: float = Field(0.0, ge=0, le=1)
    map: Literal["reward_aligned", "deviation"] = "reward_aligned"
    backbone: Literal["pixel", "dinov2"] = "pixel"
    backbone_path: str | None = None
    patch: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _dinov2_needs_path(self):
        if self.backbone == "dinov2" and not self.backbone_path:
            raise ValueError("grpo.vipo.backbone_path is required for the dinov2 backbone")
        return self


class SelfPacedConfig(Section):
    """Reward curriculum (report §3.4): `reward_phases` maps each reward component to a phase."""

    enabled: bool = False
    reward_phases: dict[str, Literal["visual_fidelity", "temporal_coherence", "semantic_alignment"]] = Field(default_factory=dict)
    window: int = Field(4, ge=1)
    std_threshold: float = Field(0.05, ge=0)
    saturation_threshold: float | None = None
    patience: int = Field(2, ge=1)
    floor: float = Field(0.1, ge=0, lt=1)


class GRPOConfig(Section):
    steps: int = Field(40, ge=1)
    prompts_per_step: int = Field(4, ge=1)
    group_size: int = Field(8, gt=1)
    prompt_pool: int = Field(32, ge=1, description="distinct training prompts drawn from the world")
    learning_rate: float = Field(3e-4, gt=0)
    clip_range: float = Field(1e-3, gt=0)
    adv_clip_max: float = Field(5.0, gt=0)
    kl_beta: float = Field(0.0, ge=0)
    timestep_fraction: float = Field(0.6, gt=0, le=1)
    inner_epochs: int = Field(1, ge=1)
    max_grad_norm: float = Field(1.0, gt=0)
    checkpoint_every: int = Field(10, ge=1)
    eval_every: int = Field(5, ge=0, description="fixed-seed evaluation on the prompt pool every K steps (0 = off)")
    keep_checkpoints: int = Field(3, ge=1)
    joint_reward: JointRewardConfig = JointRewardConfig()
    bpgo: BPGOConfig = BPGOConfig()
    vipo: ViPOConfig = ViPOConfig()
    self_paced: SelfPacedConfig = SelfPacedConfig()

    @field_validator("clip_range")
    @classmethod
    def _clip_below_one(cls, value):
        if value >= 1:
            raise ValueError(f"clip_range must be < 1, got {value}")
        return value


class TeleBoostConfig(Section):
    run_dir: str = "runs/toy"
    seed: int = 0
    world: WorldConfig = WorldConfig()
    policy: PolicyConfig = PolicyConfig()
    sampling: SamplingConfig = SamplingConfig()
    rewards: RewardsConfig = RewardsConfig()
    pool: PoolConfig = PoolConfig()
    pretrain: PretrainConfig = PretrainConfig()
    grpo: GRPOConfig = GRPOConfig()

    @model_validator(mode="after")
    def _curriculum_names_components(self):
        curriculum = self.grpo.self_paced
        if curriculum.enabled:
            unknown = set(curriculum.reward_phases) ^ set(self.rewards.components)
            if unknown:
                raise ValueError(
                    f"grpo.self_paced.reward_phases must give a phase for exactly the reward components "
                    f"{sorted(self.rewards.components)}; mismatched: {sorted(unknown)}"
                )
        return self


class ConfigError(ValueError):
    """A config that failed validation; the message lists every bad field by dotted path."""


def _format(err: ValidationError) -> str:
    lines = []
    for item in err.errors():
        path = ".".join(str(part) for part in item["loc"]) or "<root>"
        lines.append(f"  {path}: {item['msg']} (got {item.get('input')!r})")
    return "invalid config:\n" + "\n".join(lines)


def parse_config(data: dict, overrides: dict | None = None) -> TeleBoostConfig:
    merged = _deep_merge(data or {}, overrides or {})
    try:
        return TeleBoostConfig.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_format(err)) from None


def load_config(path: str | Path, overrides: dict | None = None) -> TeleBoostConfig:
    """Load and validate a YAML config; `overrides` is a nested dict merged on top."""
    text = Path(path).read_text()
    return parse_config(yaml.safe_load(text) or {}, overrides)


def parse_overrides(pairs: list[str]) -> dict:
    """`["grpo.steps=3", "seed=1"]` → nested dict with YAML-typed values (for `--set`)."""
    result: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} must look like section.field=value")
        dotted, value = pair.split("=", 1)
        node = result
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return result


def _deep_merge(base: dict, top: dict) -> dict:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
