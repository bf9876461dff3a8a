"""Stage II driver: GRPO on flow-matching video rollouts — sample → evaluate → update.

The driver is a single controller (as in verl): it owns the order of phases and the step
counter; the actors own state; the machinery every stage shares (placement, phase retry, weight
sync, checkpoints, logs) is `cluster.runtime.StageRuntime`. Each step moves the pool through:

1. sample   — one RolloutActor per main bundle draws G videos for its share of the prompts, with
              per-step SDE log-probs, using weights of exactly the version the driver expects
              (a rollout actor refuses stale weights);
2. evaluate — the RewardActors score the videos where they lie (or the grouped reward workers,
              report §6.1.2); the AdvantageEstimator turns the reward components into advantages:
              group-relative (eq. 1), optionally BPGO-anchored, curriculum-weighted and min-norm
              balanced (report §3.3-3.5);
3. update   — one learner per main bundle, data-parallel, trains on the samples its bundle drew
              (the clipped surrogate + KL + ViPO maps, `actors.objectives.GRPOObjective`); rank 0's
              new weights go to every rollout actor through the object store with a new version.

Supports: `colocated` and `disaggregated` placements (cluster/pool.py), with a per-step
timeline and utilisation; the Stage II extensions as config switches; standalone runs and
`ray job submit`; checkpoints every K steps and `--resume`, which on CPU reproduces an
uninterrupted run exactly; a rollout or reward actor that dies mid-phase is restarted and the
phase redone with the same seeds; groups with non-finite rewards are dropped (counted) before
they can reach the weights. Limits: those of the runtime (a dead learner ends the run).
"""

from __future__ import annotations

import logging
import random

import torch

from actors.learner import OptimizerSpec
from actors.objectives.grpo import GRPOObjective
from actors.rollout import RolloutActor
from algorithms.grpo import adapt_kl_beta
from cluster.advantage import AdvantageEstimator, AdvantageResult
from cluster.config import GRPOConfig, TeleBoostConfig
from cluster.pool import PhaseTimeline
from cluster.progress import progress_bar
from cluster.group_phases import GroupPhases
from cluster.prompts import load_prompts
from cluster.run_log import plot_curves
from cluster.runtime import StageRuntime, run_stage
from reward_services.config import component_rewards

log = logging.getLogger("teleboost.grpo")


def grpo_objective(cfg: GRPOConfig) -> GRPOObjective:
    vipo = cfg.vipo
    return GRPOObjective(
        group_size=cfg.group_size, clip_range=cfg.clip_range, adv_clip_max=cfg.adv_clip_max, kl_beta=cfg.kl_beta,
        kl_form=cfg.kl_form,
        timestep_fraction=cfg.timestep_fraction, inner_epochs=cfg.inner_epochs, num_minibatches=cfg.num_minibatches,
        vipo_lam=vipo.lam, vipo_map=vipo.map, vipo_backbone=vipo.backbone, vipo_backbone_path=vipo.backbone_path,
        vipo_patch=vipo.patch,
    )


class GRPODriver(GroupPhases, StageRuntime):
    stage = "grpo"
    phase_roles = {"sample": ("rollout",), "evaluate": ("reward",), "update": ("learner",)}

    # -- setup ------------------------------------------------------------------------------
    def setup(self) -> None:
        self.start()
        cfg = self.config
        self.rollouts = self.place("rollout", RolloutActor, cfg.policy, cfg.sampling, cfg.clip, cfg.seed,
                                   cfg.grpo.vipo.lam > 0, bundles=self.pool.main_bundles())
        self.place_reward_role()
        self.place_learners(grpo_objective(cfg.grpo), OptimizerSpec.of(cfg.grpo))
        self.prompt_pool = load_prompts(cfg, cfg.grpo.prompt_pool, seed=cfg.seed)
        self.estimator = AdvantageEstimator(cfg)
        state = self.restore()
        self.start_step = state["step"] if state else 0
        # the KL coefficient: fixed, or adapted each step to hold the drift budget (kl_target_deviation)
        self.kl_beta = state.get("kl_beta", cfg.grpo.kl_beta) if state else cfg.grpo.kl_beta
        if state:
            self.estimator.load_state_dict(state["advantage_estimator"])
        self.version = self.sync_weights()
        if state is None and cfg.grpo.bpgo.enabled:
            self.estimate_reward_prior()

    # -- the loop ---------------------------------------------------------------------------
    def train(self) -> list[dict]:
        cfg = self.config.grpo
        if cfg.eval_every and self.start_step == 0:  # the baseline, before any update
            self.metrics.write({"step": 0, "eval_reward": self.evaluate_fixed()})
        with progress_bar("GRPO", cfg.steps, self.start_step) as advance:
            for step in range(self.start_step + 1, cfg.steps + 1):
                timeline = PhaseTimeline(self.pool.all_bundles())
                prompts = self.prompts_for(step)

                # 1. sample: every main bundle draws whole groups for its share of the prompts
                shards = self.shard(prompts)
                video_refs, trajectory_refs = self.sample(timeline, shards, f"{step}", cfg.group_size)
                if self.tracker.wants_clips(step):  # fetched and encoded on the tracking thread
                    self.tracker.log_clips(step, video_refs[0], [p for p in next(iter(shards.values())) for _ in range(cfg.group_size)])

                # 2. evaluate: rewards per component [P, G] → advantages (non-finite groups dropped)
                rewards, scores, num_gated = self.evaluate(timeline, video_refs, shards)
                kept = torch.stack([torch.isfinite(r).all(dim=1) for r in rewards.values()]).all(dim=0)
                if not kept.all():
                    log.warning("dropped %d group(s) with non-finite rewards", int((~kept).sum()))
                advantages = self.estimator.compute(prompts, rewards, kept)

                # 3. update: each learner on the samples its bundle drew, then ship the new weights
                update = self.update(timeline, step, shards, trajectory_refs, advantages)
                self.version = self.sync_weights()

                record = {**self.record(step, rewards, kept, scores, num_gated, advantages.logs, update), "kl_beta": self.kl_beta}
                if cfg.kl_target_deviation is not None:  # the budget holds whatever lr, noise or KL form
                    self.kl_beta = adapt_kl_beta(self.kl_beta, update["velocity_deviation"], cfg.kl_target_deviation, floor=cfg.kl_beta)
                if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
                    record["eval_reward"] = self.evaluate_fixed()
                record = self.record_step(record, timeline)
                log.info("step %d/%d reward %.4f ± %.4f  loss %.4g  (sample %.2fs, evaluate %.2fs, update %.2fs, util %.2f)",
                         step, cfg.steps, record["reward_mean"], record["reward_std"], update["loss"], record["seconds/sample"],
                         record["seconds/evaluate"], record["seconds/update"], record["utilisation"])
                if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                    self.save(step, {"advantage_estimator": self.estimator.state_dict(), "kl_beta": self.kl_beta},
                              keep=cfg.keep_checkpoints)
                advance()
        records = self.metrics.records()
        if records:
            plot_curves(records, ["reward_mean", "eval_reward"], self.run_dir / "reward_curve.png",
                        "GRPO on the toy world: reward per step and fixed-seed eval")
        return records

    # -- phases -----------------------------------------------------------------------------
    def evaluate(self, timeline: PhaseTimeline, video_refs: list, shards: dict):
        """({component: [P, G]}, raw scores {critic.score: [B]}, gated count)."""
        group_size = self.config.grpo.group_size
        scores = self.score(timeline, video_refs, shards, group_size)
        components, num_gated = component_rewards(scores, self.config.rewards)
        num_prompts = sum(len(shard) for shard in shards.values())
        return {name: value.view(num_prompts, group_size) for name, value in components.items()}, scores, num_gated

    def update(self, timeline, step, shards, trajectory_refs, advantages: AdvantageResult) -> dict[str, float]:
        """Every learner on its bundle's samples (data-parallel); the merged update statistics."""
        group_size = self.config.grpo.group_size
        sizes = [len(shard) * group_size for shard in shards.values()]
        cuts = torch.tensor([0, *sizes]).cumsum(0).tolist()
        weights = advantages.sample_weights
        per_rank = [(ref, advantages.advantages[:, a:b], advantages.component_weights, advantages.combined[a:b],
                     None if weights is None else weights[:, a:b])
                    for ref, a, b in zip(trajectory_refs, cuts, cuts[1:])]
        results = self.run_phase(timeline, "update", lambda: self.learners.update(
            self.step_seed(step, "update"), sizes, per_rank, kl_beta=self.kl_beta), {})
        return self.learners.merge([results[bundle][0] for bundle in self.learners.handles], sizes)

    def evaluate_fixed(self) -> float:
        """Mean reward on the whole prompt pool with the SAME noise every time, so that changes
        come from the weights alone (the per-step reward also varies with which prompts were
        drawn); of the stage's result — the weight average with `grpo.ema_decay`."""
        timeline = PhaseTimeline(self.pool.all_bundles())
        shards = self.shard(self.prompt_pool)
        with self.averaged_rollouts():
            video_refs, _ = self.sample(timeline, shards, "eval", self.config.grpo.group_size)  # returns once sampled
        rewards, _, _ = self.evaluate(timeline, video_refs, shards)
        return (sum(rewards.values()) / len(rewards)).nanmean().item()

    def estimate_reward_prior(self) -> None:
        """BPGO's prior (report §3.3): sample the reference policy on every training prompt first."""
        cfg = self.config.grpo
        for round_index in range(cfg.bpgo.prior_groups):
            for start in range(0, len(self.prompt_pool), cfg.prompts_per_step):
                prompts = self.prompt_pool[start:start + cfg.prompts_per_step]
                timeline = PhaseTimeline(self.pool.all_bundles())
                shards = self.shard(prompts)
                video_refs, _ = self.sample(timeline, shards, f"prior/{round_index}/{start}", cfg.group_size)
                rewards, _, _ = self.evaluate(timeline, video_refs, shards)
                self.estimator.observe_prior(prompts, rewards)
        log.info("BPGO prior estimated from %d reference group(s) per prompt", cfg.bpgo.prior_groups)

    # -- helpers ----------------------------------------------------------------------------
    def prompts_for(self, step: int) -> list[str]:
        """The step's prompts: a deterministic draw from the prompt pool (same on resume)."""
        rng = random.Random(self.step_seed(step, "prompts"))
        return rng.sample(self.prompt_pool, min(self.config.grpo.prompts_per_step, len(self.prompt_pool)))

    def record(self, step, rewards, kept, scores, num_gated, logs, update) -> dict:
        total = sum(rewards.values())[kept] / len(rewards)
        return {
            "step": step,
            "reward_mean": total.mean().item() if total.numel() else float("nan"),
            "reward_std": total.std(correction=0).item() if total.numel() else float("nan"),
            "reward_group_std": total.std(dim=1, correction=0).mean().item() if total.numel() else float("nan"),
            **{f"reward/{name}": value[kept].mean().item() for name, value in rewards.items()},
            **{f"score/{k}": v.nanmean().item() for k, v in scores.items()},
            **logs,
            "gated_samples": num_gated,
            "dropped_groups": int((~kept).sum()),
            **({f"reward_workers/{k}": v for k, v in self.reward_group.metrics.items()} if self.reward_group else {}),
            **{f"update/{k}": v for k, v in update.items()},
        }


def run(config: TeleBoostConfig, resume: bool = False) -> list[dict]:
    return run_stage(GRPODriver(config, resume=resume))
