"""Configuration: one pydantic model per stage, validated before any actor starts.

A YAML file holds the shared sections (`clip`, `world`, `prompts`, `policy`, `sampling`,
`rewards`, `pool`) and one section per stage (`pretrain`, `grpo`, ...). Every model forbids
unknown keys, so a typo fails at submit time with the field's dotted path, e.g.
`grpo.group_size: Input should be greater than 1`. The sections an actor reads are defined in
the layer of that actor (`policy.config`, `reward_services.config`), so actors never import
`cluster/`; this module composes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from policy.config import ClipConfig, PolicyConfig, SamplingConfig
from reward_services.config import RewardsConfig
from schedulers.dpo_beta import DPOBetaSchedule
from toyworld.world import KINDS


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def ema_decay_field():
    """Every stage's `ema_decay` (one definition, one description)."""
    return Field(None, gt=0, lt=1, description=(
        "keep an exponential moving average of the trained weights (a constant decay per stage step: an average over "
        "about 1/(1-decay) steps, from the first update on); the average is the stage's result: checkpoints' policy weights, evaluations, "
        "the next stage's init_from. Rollouts still sample with the online weights. None: no average"))


def known_kinds(kinds: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [kind for kind in kinds if kind not in KINDS]
    if not kinds or unknown:
        raise ValueError(f"kinds must name some of {list(KINDS)}, got unknown {unknown or 'none'}")
    return kinds


class WorldConfig(Section):
    """Which toy-world scene kinds training prompts come from (`toyworld.world.KINDS`)."""

    kinds: tuple[str, ...] = ("object",)

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, kinds):
        return known_kinds(kinds)


class PromptsConfig(Section):
    """Where training prompts come from: the toy world's grammar, or a file (one prompt per
    line, or JSONL rows with a "prompt" field) for real models."""

    source: Literal["toy", "file"] = "toy"
    path: str | None = None

    @model_validator(mode="after")
    def _file_needs_path(self):
        if self.source == "file" and not self.path:
            raise ValueError("prompts.path is required when prompts.source is 'file'")
        return self


# Fractions of one bundle's accelerator each role holds by default; on a colocated bundle the
# roles placed there must sum to <= 1 so Ray lets all of them live there at once.
DEFAULT_SHARES = {"rollout": 0.3, "learner": 0.3, "reward": 0.2, "reward_worker": 0.04}


class PoolConfig(Section):
    """The accelerator pool (report §6.1.1): bundles, placement, and each role's share.

    Every stage places one learner per (main) bundle — the data-parallel group — and its other
    roles on the bundles its driver names; `shares` says how much of a bundle's accelerator each
    role reserves (fractional, overlapping assignment on a colocated bundle).
    """

    num_bundles: int = Field(1, ge=1)
    accelerator: Literal["auto", "GPU", "accelerator"] = "auto"
    cpus_per_bundle: float = Field(1.0, gt=0)
    placement: Literal["colocated", "disaggregated"] = "colocated"
    reward_bundles: int = Field(1, ge=1, description="bundles of the reward pool when disaggregated")
    max_phase_retries: int = Field(2, ge=0, description="times a phase is redone after an actor dies")
    shares: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_SHARES))

    @field_validator("shares")
    @classmethod
    def _shares(cls, shares):
        shares = {**DEFAULT_SHARES, **shares}
        unknown = set(shares) - set(DEFAULT_SHARES)
        bad = {role: share for role, share in shares.items() if not 0 < share <= 1}
        if unknown or bad:
            raise ValueError(f"pool.shares: roles are {sorted(DEFAULT_SHARES)} with shares in (0, 1]; "
                             f"got unknown {sorted(unknown)}, out of range {bad}")
        return shares

    @model_validator(mode="after")
    def _disaggregated_sizes(self):
        if self.placement == "disaggregated" and self.reward_bundles >= self.num_bundles:
            raise ValueError(f"pool.placement=disaggregated needs num_bundles ({self.num_bundles}) > "
                             f"reward_bundles ({self.reward_bundles})")
        return self


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
    statistics_clips: int = Field(256, ge=2, description="clips the VAE's per-channel latent mean/std are measured on")


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
    prior_rule: Literal["frozen", "ema", "bayes"] = Field(
        "frozen", description="frozen: the prior pooled from the reference groups is the fixed trust anchor (report "
        "§3.3); ema / bayes also fold in every training batch")
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


class SFTStructureConfig(Section):
    """Structure-aware loss reweighting (report §2.3): weights ∝ the background warping error of
    the model's one-step prediction, mean 1, clipped to [w_min, w_max]."""

    enabled: bool = True
    w_min: float = Field(0.5, gt=0, le=1)
    w_max: float = Field(2.0, ge=1)


class SFTPhysicsConfig(Section):
    """Physics-aware SFT (report §2.4): the decoder's motion branch supervised by ground-truth flow."""

    enabled: bool = False
    motion_weight: float = Field(1.0, ge=0)
    reconstruction_weight: float = Field(1.0, ge=0)


class SFTDataConfig(Section):
    """Training clips: the toy world's kinds (instruction/control prompts included) mixed with an
    optional folder of captioned real videos (MP4 + JSONL manifest) at `real_fraction`."""

    kinds: tuple[str, ...] = ("object", "pan", "orbit", "order", "composition")
    real_manifest: str | None = None
    real_fraction: float = Field(0.0, ge=0, le=1)
    real_flow: Literal["farneback", "raft"] = Field("farneback", description="flow targets for real clips (physics)")

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, kinds):
        return known_kinds(kinds)

    @model_validator(mode="after")
    def _real_needs_manifest(self):
        if self.real_fraction > 0 and not self.real_manifest:
            raise ValueError("sft.data.real_fraction > 0 needs sft.data.real_manifest")
        return self


class SFTConfig(Section):
    """Stage I (report §2): instruction/control SFT of the transformer with structure-aware
    reweighting, and optionally the physics-aware motion branch in the decoder."""

    steps: int = Field(60, ge=1)
    batch_size: int = Field(8, ge=1, description="clips per learner and step")
    learning_rate: float = Field(1e-4, gt=0)
    max_grad_norm: float = Field(1.0, gt=0)
    ema_decay: float | None = ema_decay_field()
    checkpoint_every: int = Field(20, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    structure: SFTStructureConfig = SFTStructureConfig()
    physics: SFTPhysicsConfig = SFTPhysicsConfig()
    data: SFTDataConfig = SFTDataConfig()


class TemporalPairsConfig(Section):
    """Synthetic temporal negatives (report §4.2 item 2): good clips vs their reversal, local
    frame shuffling or freezing. The good clips are the toy world's rendered ground truth."""

    enabled: bool = True
    clips: int = Field(32, ge=0, description="good clips; each gives one pair per kind")
    kinds: tuple[Literal["reverse", "shuffle", "freeze"], ...] = ("reverse", "shuffle", "freeze")
    window: int = Field(3, ge=2, description="local shuffle window (frames)")
    freeze_fraction: float = Field(0.5, gt=0, lt=1, description="share of the clip a freeze stalls")
    held_out_clips: int = Field(8, ge=0, description="clips (other seeds) whose pairs measure held-out implicit accuracy")


class OnPolicyPairsConfig(Section):
    """Policy-on-policy hard negatives (report §4.2 item 1): groups from the current policy ranked
    by an ensemble of critics; pairs that both follow the prompt but differ clearly in quality."""

    enabled: bool = False
    prompts: int = Field(8, ge=1)
    group_size: int = Field(8, ge=2)
    quality: tuple[str, ...] = ("toy_judges.smoothness", "perceptual.sharpness")
    agreement: str = "toy_judges.overall"
    agreement_threshold: float = 0.1
    gap_threshold: float = Field(0.5, gt=0, description="ensemble (z-score) quality gap a pair needs")
    max_pairs_per_group: int = Field(2, ge=1)


class DPOPairsConfig(Section):
    temporal: TemporalPairsConfig = TemporalPairsConfig()
    on_policy: OnPolicyPairsConfig = OnPolicyPairsConfig()
    human: str | None = Field(None, description="JSONL of {prompt, winner, loser, aspect, annotator} (report §4.2 item 3)")


class DPOConfig(Section):
    """Stage III (report §4, §6.2): Diffusion-DPO against the frozen previous stage.

    β: Diffusion-DPO's and VideoDPO's launchers use 5000; users report blow-ups at 2000-5000 with
    large learning rates, so the defaults pair β in the thousands with a small learning rate and
    anneal β from `start` to `floor` (report §4.3: start high for stability).
    """

    steps: int = Field(40, ge=1)
    batch_size: int = Field(4, ge=1, description="pairs per learner and step")
    learning_rate: float = Field(1e-5, gt=0)
    max_grad_norm: float = Field(1.0, gt=0)
    ema_decay: float | None = ema_decay_field()
    mode: Literal["standard", "decoupled", "sequential"] = Field(
        "sequential", description="backward schedule: same gradients; sequential never holds both branches' "
        "graphs (bench/dpo_memory.py: the only one that lowers peak memory)")
    beta: DPOBetaSchedule = DPOBetaSchedule()
    train_frames: int | None = Field(None, ge=2, description="train at fewer frames than generated (§4.3)")
    train_height: int | None = Field(None, ge=8)
    train_width: int | None = Field(None, ge=8)
    reference_refresh_every: int = Field(0, ge=0, description="online DPO: reference := policy every K steps (0 = never)")
    eval_every: int = Field(10, ge=0, description="held-out implicit accuracy every K steps (0 = off)")
    checkpoint_every: int = Field(10, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    pairs: DPOPairsConfig = DPOPairsConfig()

    @model_validator(mode="after")
    def _one_training_geometry(self):
        given = [self.train_frames, self.train_height, self.train_width]
        if any(v is not None for v in given) and any(v is None for v in given):
            raise ValueError("dpo.train_frames, train_height and train_width go together")
        return self


class EvalConfig(Section):
    """The pipeline's evaluation: every stage's final policy on the SAME held-out prompts (never
    trained on: `toyworld.world.is_held_out`) and sampling seeds, ODE sampling (noise level 0)."""

    prompts: int = Field(12, ge=1, description="held-out prompts")
    seeds: tuple[int, ...] = Field((0, 1, 2), min_length=1, description="sampling seeds (noise draws)")
    kinds: tuple[str, ...] = ("object", "pan", "orbit", "order", "composition")
    tie_margin: float = Field(0.02, ge=0, description="automatic GSB: score gaps below this are 'same'")

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, kinds):
        return known_kinds(kinds)


class GRPOConfig(Section):
    steps: int = Field(40, ge=1)
    prompts_per_step: int = Field(4, ge=1)
    group_size: int = Field(8, gt=1)
    prompt_pool: int = Field(32, ge=1, description="distinct training prompts drawn from the world")
    learning_rate: float = Field(3e-4, gt=0)
    clip_range: float = Field(1e-3, gt=0)
    adv_clip_max: float = Field(5.0, gt=0)
    kl_beta: float = Field(0.0, ge=0)
    kl_form: Literal["flow_grpo", "exact"] = Field(
        "flow_grpo", description="flow_grpo: ‖Δμ‖²/(2·std_t²) per step, Flow-GRPO's scale, so its published kl_beta "
        "values carry over; exact: the one-step Gaussian KL ‖Δμ‖²/(2·std_t²·|dt|), 1/|dt| (4-110x on the toy schedule) stronger")
    kl_target_deviation: float | None = Field(
        None, gt=0, description="drift budget: kl_beta adapts every step (PPO's adaptive KL rule: x2 above 1.5x the "
        "budget, /2 below budget/1.5) so that the policy's velocity stays within this RMS fraction of the reference's "
        "(logged as update/velocity_deviation); kl_beta is the starting value and the floor. None: kl_beta fixed")
    timestep_fraction: float = Field(0.6, gt=0, le=1)
    inner_epochs: int = Field(1, ge=1)
    num_minibatches: int | None = Field(
        None, ge=1, description="optimizer steps per inner epoch (each learner splits its shard into this many "
        "minibatches); None: one per prompt group of the smallest learner shard")
    max_grad_norm: float = Field(1.0, gt=0)
    ema_decay: float | None = ema_decay_field()
    checkpoint_every: int = Field(10, ge=1)
    eval_every: int = Field(5, ge=0, description="fixed-seed evaluation on the prompt pool every K steps (0 = off)")
    keep_checkpoints: int = Field(3, ge=1)
    joint_reward: JointRewardConfig = JointRewardConfig()
    bpgo: BPGOConfig = BPGOConfig()
    vipo: ViPOConfig = ViPOConfig()
    self_paced: SelfPacedConfig = SelfPacedConfig()

    @model_validator(mode="after")
    def _drift_budget_needs_a_kl(self):
        if self.kl_target_deviation is not None and self.kl_beta <= 0:
            raise ValueError("grpo.kl_target_deviation adapts kl_beta, which must then start > 0 "
                             f"(got kl_beta={self.kl_beta})")
        return self

    @field_validator("clip_range")
    @classmethod
    def _clip_below_one(cls, value):
        if value >= 1:
            raise ValueError(f"clip_range must be < 1, got {value}")
        return value


class TeleBoostConfig(Section):
    run_dir: str = "runs/toy"
    seed: int = 0
    clip: ClipConfig = ClipConfig()
    world: WorldConfig = WorldConfig()
    prompts: PromptsConfig = PromptsConfig()
    policy: PolicyConfig = PolicyConfig()
    sampling: SamplingConfig = SamplingConfig()
    rewards: RewardsConfig = RewardsConfig()
    pool: PoolConfig = PoolConfig()
    pretrain: PretrainConfig = PretrainConfig()
    sft: SFTConfig = SFTConfig()
    grpo: GRPOConfig = GRPOConfig()
    dpo: DPOConfig = DPOConfig()
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _clip_fits_the_model(self):
        self.clip.check_for(self.policy.preset)
        return self

    @model_validator(mode="after")
    def _colocated_shares_fit_a_bundle(self):
        """GRPO's roles on one colocated bundle: rollout, learner and the reward actor (or one
        reward worker per critic when the joint reward runs grouped) must fit in one accelerator."""
        if self.pool.placement != "colocated":
            return self
        shares = self.pool.shares
        reward = (shares["reward_worker"] * len(self.rewards.critics) if self.rewards.execution == "grouped"
                  else shares["reward"])
        total = shares["rollout"] + shares["learner"] + reward
        if total > 1 + 1e-9:
            raise ValueError(f"pool.shares: rollout + learner + reward shares sum to {total:.3g} > 1 on a colocated bundle")
        return self

    @model_validator(mode="after")
    def _every_learner_gets_a_group(self):
        main_bundles = self.pool.num_bundles - (self.pool.reward_bundles if self.pool.placement == "disaggregated" else 0)
        if self.grpo.prompts_per_step < main_bundles:
            raise ValueError(f"grpo.prompts_per_step ({self.grpo.prompts_per_step}) must be >= the {main_bundles} "
                             "main bundles: each bundle samples and trains on whole prompt groups")
        return self

    @model_validator(mode="after")
    def _dpo_fits_the_pool_and_critics(self):
        main_bundles = self.pool.num_bundles - (self.pool.reward_bundles if self.pool.placement == "disaggregated" else 0)
        if self.dpo.mode == "decoupled" and main_bundles > 1:
            raise ValueError("dpo.mode=decoupled cannot be data-parallel (DDP arms its all-reduce in forward and would "
                             "miss the loser's gradient); use sequential (same gradients, lower peak) or standard")
        if self.dpo.reference_refresh_every and self.policy.trainable == "lora":
            raise ValueError("dpo.reference_refresh_every needs a frozen-copy reference; with LoRA the reference is the "
                             "adapters-off base, which cannot be refreshed")
        on_policy = self.dpo.pairs.on_policy
        if on_policy.enabled:
            critics = {spec.name for spec in self.rewards.critics}
            for score in (*on_policy.quality, on_policy.agreement):
                if score.split(".", 1)[0] not in critics:
                    raise ValueError(f"dpo.pairs.on_policy names {score!r}, but rewards.critics are {sorted(critics)}")
        return self

    @model_validator(mode="after")
    def _physics_needs_the_branch(self):
        if self.sft.physics.enabled and self.policy.motion_branch is None:
            raise ValueError("sft.physics.enabled needs policy.motion_branch (the branch it trains)")
        return self

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
    return parse_config(_read_yaml(Path(path)), overrides)


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A YAML config with its `extends: other.yaml` (relative to this file) merged underneath:
    a variant states only what it changes, so a fix to the base reaches every variant. Mappings
    merge key by key; lists and scalars replace."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"extends: cycle {' -> '.join(map(str, (*seen, path)))}")
    data = yaml.safe_load(path.read_text()) or {}
    base = data.pop("extends", None)
    if base is None:
        return data
    base_path = path.parent / base
    if not base_path.is_file():
        raise ConfigError(f"extends: {base!r} in {path} names no file ({base_path})")
    return _deep_merge(_read_yaml(base_path, (*seen, path)), data)


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
