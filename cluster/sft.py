"""Stage I driver: supervised fine-tuning (report §2) — load batch → update.

Every main bundle holds one learner (data-parallel, `actors.objectives.sft.SFTObjective`); each
draws its own batch of the step from its mixed real + simulated source, in the learner process
(no clip passes through the driver), and all ranks take one synchronised optimizer step. What
trains is configuration: the transformer (LoRA or full, `policy.trainable`) on the flow-matching
loss with structure-aware weights (§2.2-2.3), and/or the decoder level with the motion branch
(§2.4, `sft.physics`, needs `policy.motion_branch`).

Supports: standalone runs and `ray job submit`; checkpoints every K steps and `--resume`
(batches are a function of (seed, rank, step), so a resumed run repeats an uninterrupted one);
logs per step the loss terms and the structure weights' spread, range, clipped fraction and
correlation with the warping signal. The checkpoint is what GRPO starts from
(`policy.init_from: <this run_dir>`). Limits: those of the runtime (a dead learner ends the run).
"""

from __future__ import annotations

import logging

from actors.learner import OptimizerSpec
from actors.objectives.sft import SFTObjective
from cluster.config import TeleBoostConfig
from cluster.pool import PhaseTimeline
from cluster.progress import progress_bar
from cluster.run_log import plot_curves
from cluster.runtime import StageRuntime, run_stage

log = logging.getLogger("teleboost.sft")


def sft_objective(config: TeleBoostConfig) -> SFTObjective:
    cfg = config.sft
    return SFTObjective(
        batch_size=cfg.batch_size, clip_shape=config.clip.shape, kinds=cfg.data.kinds, seed=config.seed,
        shift=config.sampling.shift, train_transformer=config.policy.trainable != "decoder",
        structure=cfg.structure.enabled, w_min=cfg.structure.w_min, w_max=cfg.structure.w_max,
        physics=cfg.physics.enabled, motion_weight=cfg.physics.motion_weight,
        reconstruction_weight=cfg.physics.reconstruction_weight, real_manifest=cfg.data.real_manifest,
        real_fraction=cfg.data.real_fraction, real_flow=cfg.data.real_flow,
    )


class SFTDriver(StageRuntime):
    stage = "sft"
    phase_roles = {"update": ("learner",)}

    def setup(self) -> None:
        self.start()
        cfg = self.config.sft
        self.place_learners(sft_objective(self.config), OptimizerSpec.of(cfg))
        state = self.restore()
        self.start_step = state["step"] if state else 0

    def train(self) -> list[dict]:
        cfg = self.config.sft
        with progress_bar("SFT", cfg.steps, self.start_step) as advance:
            for step in range(self.start_step + 1, cfg.steps + 1):
                timeline = PhaseTimeline(self.pool.all_bundles())
                # load batch → update: each learner draws its shard of batch `step` and all take one step
                update = self.learner_step(timeline, step, cfg.batch_size)
                record = self.record_step({"step": step, **update}, timeline)
                log.info("step %d/%d loss %.4f%s (%.2fs)", step, cfg.steps, record["loss"],
                         f" weights ±{record['sft/weight_std']:.3f}" if "sft/weight_std" in record else "", record["seconds/update"])
                if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                    self.save(step, {}, keep=cfg.keep_checkpoints)
                advance()
        records = self.metrics.records()
        if records:
            keys = [k for k in ("loss", "sft/flow_matching", "sft/motion", "sft/reconstruction") if k in records[-1]]
            plot_curves(records, keys, self.run_dir / "loss_curve.png", "SFT on the toy world: loss terms per step")
        return records


def run(config: TeleBoostConfig, resume: bool = False) -> list[dict]:
    return run_stage(SFTDriver(config, resume=resume))
