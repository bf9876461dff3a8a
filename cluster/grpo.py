"""Stage II driver: GRPO on flow-matching video rollouts — sample → evaluate → update.

The driver is a single controller (as in verl): it owns the order of phases and the step
counter; the actors own state. Each step moves the whole pool through three phases:

1. sample   — one RolloutActor per bundle draws G videos for its share of the prompts, with
              per-step SDE log-probs, using weights of exactly the version the driver expects
              (a rollout actor refuses stale weights);
2. evaluate — the RewardActors score the videos where they lie; the AdvantageEstimator turns
              the reward components into advantages: group-relative (eq. 1), optionally
              BPGO-anchored, curriculum-weighted and min-norm balanced (report §3.3-3.5);
3. update   — the PolicyLearner runs the clipped surrogate (+ KL, + ViPO maps) and the new
              weights go to every rollout actor through the object store with a new version.

Supports: `colocated` and `disaggregated` placements (cluster/pool.py), with a per-step
timeline (`timeline.jsonl`: start and end of each phase per bundle) and utilisation; the Stage II extensions as config switches; standalone runs and
`ray job submit`; checkpoints every K steps (atomic, checksummed, corrupt ones skipped) and
`--resume`, which on CPU reproduces an uninterrupted run exactly; a rollout or reward actor
that dies mid-phase is restarted by Ray and the phase is redone with the same seeds, so no
sample is lost or counted twice; groups with non-finite rewards are dropped (counted) before
they can reach the weights.
Limits: one learner (no data-parallel update across bundles); a dead learner ends the run,
which then resumes from its last checkpoint; steps after the last checkpoint are recomputed.
"""

from __future__ import annotations

import logging
import random
import time
import zlib
from pathlib import Path

import ray
import torch

from actors.learner import PolicyLearner
from actors.reward import RewardActor, component_rewards
from actors.reward_workers import RewardWorkerGroup
from actors.rollout import RolloutActor
from cluster.advantage import AdvantageEstimator
from cluster.config import TeleBoostConfig
from cluster.pool import PhaseTimeline, Pool, ensure_ray
from cluster.run_log import MetricsLog, plot_curves
from policy.checkpoint import load_latest, save_checkpoint
from toyworld.world import ToyWorld

log = logging.getLogger("teleboost.grpo")
RESTARTABLE = {"max_restarts": -1, "max_task_retries": 0}


class GRPODriver:
    def __init__(self, config: TeleBoostConfig, resume: bool = False):
        self.config = config
        self.resume = resume
        self.run_dir = Path(config.run_dir)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.actor_restarts = 0

    # -- setup ------------------------------------------------------------------------------
    def setup(self) -> None:
        ensure_ray(self.config.pool.num_bundles)
        self.pool = Pool(self.config.pool)
        env = {"env_vars": {"OMP_NUM_THREADS": str(self.config.policy.torch_threads)}}

        def place(cls, role, bundle, *args):
            return ray.remote(cls).options(**self.pool.actor_options(role, bundle), **RESTARTABLE, runtime_env=env).remote(*args)

        self.rollouts = {b: place(RolloutActor, "rollout", b, self.config) for b in self.pool.rollout_bundles()}
        self.rewards, self.reward_group = {}, None
        if self.config.rewards.execution == "grouped":
            self.reward_group = RewardWorkerGroup(
                self.config.rewards.critics, pool=self.pool, bundle=self.pool.reward_bundles()[0],
                run_dir=str(self.run_dir), device="cuda" if self.pool.accelerator == "GPU" else "cpu",
            )
        else:
            self.rewards = {b: place(RewardActor, "reward", b, self.config.rewards, self.config.policy.torch_threads)
                            for b in self.pool.reward_bundles()}
        self.learner = ray.remote(PolicyLearner).options(
            **self.pool.actor_options("learner", self.pool.learner_bundle()), runtime_env=env
        ).remote(self.config)
        world = self.config.world
        self.prompt_pool = ToyWorld(world.num_frames, world.height, world.width, kinds=world.kinds).prompts(
            self.config.grpo.prompt_pool, seed=self.config.seed
        )
        self.estimator = AdvantageEstimator(self.config)
        self.start_step = 0
        checkpoint = load_latest(self.checkpoint_dir) if self.resume else None
        if checkpoint is not None:
            tensors, objects, state = checkpoint
            ray.get(self.learner.load_state.remote(tensors["policy"], objects["learner"]))
            self.estimator.load_state_dict(state["advantage_estimator"])
            self.start_step = state["step"]
            log.info("resumed from step %d", self.start_step)
        elif self.resume:
            log.warning("--resume given but no valid checkpoint in %s: starting fresh", self.checkpoint_dir)
        self.metrics = MetricsLog(self.run_dir, resume_step=self.start_step if checkpoint else None)
        self.timelines = MetricsLog(self.run_dir, resume_step=self.start_step if checkpoint else None, name="timeline.jsonl")
        self.version = self.sync_weights()
        if checkpoint is None and self.config.grpo.bpgo.enabled:
            self.estimate_reward_prior()

    # -- the loop ---------------------------------------------------------------------------
    def train(self) -> list[dict]:
        cfg = self.config.grpo
        if cfg.eval_every and self.start_step == 0:  # the baseline, before any update
            self.metrics.write({"step": 0, "eval_reward": self.evaluate_fixed()})
        for step in range(self.start_step + 1, cfg.steps + 1):
            timeline = PhaseTimeline(self.pool.all_bundles())
            prompts = self.prompts_for(step)

            # 1. sample: every rollout bundle draws whole groups for its share of the prompts
            video_refs, trajectory_refs = self.sample(timeline, prompts, f"{step}")

            # 2. evaluate: rewards per component [P, G] → advantages (non-finite groups dropped)
            rewards, scores, num_gated = self.evaluate(timeline, video_refs, prompts)
            kept = torch.stack([torch.isfinite(r).all(dim=1) for r in rewards.values()]).all(dim=0)
            advantages, sample_weights, logs = self.advantages(prompts, rewards, kept)

            # 3. update on the concatenated shards, then ship the new weights to every bundle
            update = self.run_phase(timeline, "update", lambda: {
                self.pool.learner_bundle(): [self.learner.update.remote(
                    advantages, self.step_seed(step, "update"), sample_weights, *trajectory_refs)]
            }, {})[self.pool.learner_bundle()][0]
            self.version = self.sync_weights()

            record = self.record(step, rewards, kept, scores, num_gated, logs, update, timeline)
            if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
                record["eval_reward"] = self.evaluate_fixed()
            self.metrics.write(record)
            self.timelines.write({"step": step, "intervals": timeline.intervals})
            log.info("step %d/%d reward %.4f ± %.4f  loss %.4g  (sample %.2fs, evaluate %.2fs, update %.2fs, util %.2f)",
                     step, cfg.steps, record["reward_mean"], record["reward_std"], update["loss"], record["seconds/sample"],
                     record["seconds/evaluate"], record["seconds/update"], record["utilisation"])
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                self.save(step)
        records = self.metrics.records()
        if records:
            plot_curves(records, ["reward_mean", "eval_reward"], self.run_dir / "reward_curve.png",
                        "GRPO on the toy world: reward per step and fixed-seed eval")
        return records

    # -- phases -----------------------------------------------------------------------------
    def activate(self, phase: str) -> None:
        """Temporal multiplexing (report §6.1.1): on a colocated pool, wake the actors of `phase`
        and have every other role give its accelerator memory back (offload / VLM sleep)."""
        if self.config.pool.placement != "colocated":
            return
        roles = {"sample": list(self.rollouts.values()), "evaluate": list(self.rewards.values()), "update": [self.learner]}
        calls = [actor.wake.remote() if role == phase else actor.release.remote()
                 for role, actors in roles.items() for actor in actors]
        ray.get(calls)

    def run_phase(self, timeline: PhaseTimeline, phase: str, submit, restartable: dict) -> dict:
        """Run one phase; if an actor dies, wait for Ray to restart it, re-ship the weights and
        redo the whole phase with the same seeds (so its results replace, never add to, the lost ones)."""
        attempt = 0
        while True:
            try:
                self.activate(phase)
                return timeline.run(phase, submit())
            except ray.exceptions.RayActorError as err:
                attempt += 1
                if not restartable or attempt > self.config.pool.max_phase_retries:
                    raise
                self.actor_restarts += 1
                log.warning("phase %s: an actor died (%s); redoing the phase (attempt %d)",
                            phase, type(err).__name__, attempt + 1)
                self.wait_alive(restartable)
                self.version = self.sync_weights()

    def sample(self, timeline: PhaseTimeline, prompts: list[str], seed_key: str) -> tuple[list, list]:
        """(video refs, trajectory refs) per rollout bundle, in prompt order; the data stays in
        the object store and the driver only waits on each shard's weights version."""
        group_size = self.config.grpo.group_size
        shards = self.shard(prompts, self.rollouts)
        refs: dict = {}

        def submit():
            for i, (bundle, shard) in enumerate(shards.items()):
                refs[bundle] = self.rollouts[bundle].sample.options(num_returns=3).remote(
                    shard, group_size, self.step_seed(seed_key, f"sample/{i}"), self.version)
            return {bundle: [shard_refs[2]] for bundle, shard_refs in refs.items()}

        self.run_phase(timeline, "sample", submit, self.rollouts)
        return [refs[b][0] for b in shards], [refs[b][1] for b in shards]

    def evaluate(self, timeline: PhaseTimeline, video_refs: list, prompts: list[str]):
        """({component: [P, G]}, raw scores {critic.score: [B]}, gated count)."""
        group_size = self.config.grpo.group_size
        scoring = self.evaluate_grouped if self.reward_group is not None else self.evaluate_with_actors
        scores = scoring(timeline, video_refs, list(self.shard(prompts, self.rollouts).values()))
        components, num_gated = component_rewards(scores, self.config.rewards)
        return {name: value.view(len(prompts), group_size) for name, value in components.items()}, scores, num_gated

    def evaluate_with_actors(self, timeline: PhaseTimeline, video_refs: list, shard_prompts: list) -> dict[str, torch.Tensor]:
        """Colocated: each bundle's reward actor scores the videos its rollout made (no transfer).
        Disaggregated: the reward pool's actors take the shards round-robin."""
        group_size = self.config.grpo.group_size
        reward_bundles = list(self.rewards)
        assignment = [reward_bundles[i % len(reward_bundles)] for i in range(len(video_refs))]

        def submit():
            calls: dict = {}
            for bundle, ref, shard in zip(assignment, video_refs, shard_prompts):
                calls.setdefault(bundle, []).append(
                    self.rewards[bundle].score.remote(ref, [p for p in shard for _ in range(group_size)]))
            return calls

        results = {bundle: list(values) for bundle, values in self.run_phase(timeline, "evaluate", submit, self.rewards).items()}
        per_shard = [results[bundle].pop(0) for bundle in assignment]  # back in shard order
        return {key: torch.cat([shard[key] for shard in per_shard]) for key in per_shard[0]}

    def evaluate_grouped(self, timeline: PhaseTimeline, video_refs: list, shard_prompts: list) -> dict[str, torch.Tensor]:
        """Joint reward by planned worker groups: groups in sequence, members at once under their
        quotas (report §6.1.2); profiles are measured once per input shape and cached on disk."""
        group_size = self.config.grpo.group_size
        prompts = [p for shard in shard_prompts for p in shard for _ in range(group_size)]
        start = time.perf_counter()
        videos = torch.cat(ray.get(video_refs))
        self.reward_group.profile(videos, prompts)
        phase = self.reward_group.score(videos, prompts, mode="planned")
        timeline.add("evaluate", self.pool.reward_bundles()[0], start, time.perf_counter())
        return phase.scores

    def advantages(self, prompts, rewards, kept):
        """Advantages [P·G] for the kept groups; dropped groups get advantage 0 and weight 0."""
        group_size = self.config.grpo.group_size
        kept_prompts = [p for p, k in zip(prompts, kept.tolist()) if k]
        advantages = torch.zeros(len(prompts), group_size)
        sample_weights = None
        logs: dict = {}
        if kept_prompts:
            result = self.estimator.compute(kept_prompts, {name: r[kept] for name, r in rewards.items()})
            advantages[kept] = result.advantages.view(-1, group_size)
            logs = result.logs
            if result.sample_weights is not None:
                sample_weights = torch.zeros(len(prompts), group_size)
                sample_weights[kept] = result.sample_weights.view(-1, group_size)
        if not kept.all():
            sample_weights = (sample_weights if sample_weights is not None else torch.ones(len(prompts), group_size))
            sample_weights[~kept] = 0.0
            log.warning("dropped %d group(s) with non-finite rewards", int((~kept).sum()))
        return advantages.flatten(), None if sample_weights is None else sample_weights.flatten(), logs

    def evaluate_fixed(self) -> float:
        """Mean reward on the whole prompt pool with the SAME noise every time, so that changes
        come from the weights alone (the per-step reward also varies with which prompts were drawn)."""
        timeline = PhaseTimeline(self.pool.all_bundles())
        video_refs, _ = self.sample(timeline, self.prompt_pool, "eval")
        rewards, _, _ = self.evaluate(timeline, video_refs, self.prompt_pool)
        return (sum(rewards.values()) / len(rewards)).nanmean().item()

    def sync_weights(self) -> int:
        """Ship the learner's weights to every rollout actor via the object store; returns the version."""
        weights_ref, version_ref = self.learner.get_weights.options(num_returns=2).remote()
        versions = ray.get([actor.set_weights.remote(weights_ref, version_ref) for actor in self.rollouts.values()])
        if len(set(versions)) != 1:
            raise RuntimeError(f"rollout actors disagree on the weights version: {versions}")
        return versions[0]

    def wait_alive(self, actors: dict, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        for actor in actors.values():
            while True:
                try:
                    ray.get(actor.ping.remote(), timeout=30)
                    break
                except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)

    def estimate_reward_prior(self) -> None:
        """BPGO's prior (report §3.3): sample the reference policy on every training prompt first."""
        cfg = self.config.grpo
        for round_index in range(cfg.bpgo.prior_groups):
            for start in range(0, len(self.prompt_pool), cfg.prompts_per_step):
                prompts = self.prompt_pool[start:start + cfg.prompts_per_step]
                timeline = PhaseTimeline(self.pool.all_bundles())
                video_refs, _ = self.sample(timeline, prompts, f"prior/{round_index}/{start}")
                rewards, _, _ = self.evaluate(timeline, video_refs, prompts)
                self.estimator.observe_prior(prompts, rewards)
        log.info("BPGO prior estimated from %d reference group(s) per prompt", cfg.bpgo.prior_groups)

    # -- helpers ----------------------------------------------------------------------------
    @staticmethod
    def shard(prompts: list[str], actors: dict) -> dict:
        """Whole prompts (hence whole groups) per bundle, contiguous, so concatenation keeps order."""
        bundles = list(actors)
        per = -(-len(prompts) // len(bundles))
        return {b: prompts[i * per:(i + 1) * per] for i, b in enumerate(bundles) if prompts[i * per:(i + 1) * per]}

    def prompts_for(self, step: int) -> list[str]:
        """The step's prompts: a deterministic draw from the prompt pool (same on resume)."""
        rng = random.Random(self.step_seed(step, "prompts"))
        return rng.sample(self.prompt_pool, min(self.config.grpo.prompts_per_step, len(self.prompt_pool)))

    def step_seed(self, step: int | str, purpose: str) -> int:
        """A seed that depends only on (run seed, step, purpose): stable across processes and resumes."""
        return zlib.crc32(f"{self.config.seed}:{step}:{purpose}".encode())

    def record(self, step, rewards, kept, scores, num_gated, logs, update, timeline) -> dict:
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
            "actor_restarts": self.actor_restarts,
            **({f"reward_workers/{k}": v for k, v in self.reward_group.metrics.items()} if self.reward_group else {}),
            **{f"update/{k}": v for k, v in update.items()},
            "weights_version": self.version,
            **timeline.summary(),
        }

    def save(self, step: int) -> Path:
        weights, learner_state = ray.get(self.learner.state.remote())
        path = save_checkpoint(
            self.checkpoint_dir, step, {"policy": weights}, {"learner": learner_state},
            {"weights_version": self.version, "advantage_estimator": self.estimator.state_dict()},
            keep=self.config.grpo.keep_checkpoints,
        )
        log.info("checkpoint %s", path)
        return path

    def shutdown(self) -> None:
        for actor in [*self.rollouts.values(), *self.rewards.values(), self.learner]:
            ray.kill(actor, no_restart=True)
        if self.reward_group is not None:
            self.reward_group.shutdown()
        self.pool.shutdown()


def run(config: TeleBoostConfig, resume: bool = False) -> list[dict]:
    driver = GRPODriver(config, resume=resume)
    driver.setup()
    try:
        return driver.train()
    finally:
        driver.shutdown()
