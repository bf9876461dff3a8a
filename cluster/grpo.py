"""Stage II driver: GRPO on flow-matching video rollouts — sample → evaluate → update.

The driver is a single controller (as in verl): it owns the order of phases and the step
counter; the actors own state. Each step:

1. sample   — the RolloutActor draws G videos per prompt with per-step SDE log-probs, using
              weights of exactly the version the driver expects (it refuses stale weights);
2. evaluate — the RewardActor scores the videos; the AdvantageEstimator turns the reward
              components into advantages: group-relative (eq. 1), optionally BPGO-anchored,
              curriculum-weighted and min-norm balanced (report §3.3-3.5);
3. update   — the PolicyLearner runs the clipped surrogate (+ KL to the reference) and the
              new weights are shipped to the rollout actor with the next version number.

Supports: the Stage II extensions as config switches (grpo.joint_reward / bpgo / vipo /
self_paced), standalone runs (starts local Ray) and `ray job submit`; checkpoints every K steps
(atomic, checksummed; `--resume` continues the same run and reproduces an uninterrupted one
on CPU); a metrics JSONL and a reward-curve PNG in `run_dir`.
Assumptions / limits: one rollout, reward and learner actor on bundle 0 of the pool (the
multi-bundle, multiplexed pool is a later extension); a checkpoint holds the trainable weights
and optimizer state, and steps after the last checkpoint are recomputed on resume.
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
from actors.rollout import RolloutActor
from cluster.advantage import AdvantageEstimator
from cluster.config import TeleBoostConfig
from cluster.pool import Pool, ensure_ray
from cluster.run_log import MetricsLog, plot_curves
from policy.checkpoint import load_latest, save_checkpoint
from toyworld.world import ToyWorld

log = logging.getLogger("teleboost.grpo")


class GRPODriver:
    def __init__(self, config: TeleBoostConfig, resume: bool = False):
        self.config = config
        self.resume = resume
        self.run_dir = Path(config.run_dir)
        self.checkpoint_dir = self.run_dir / "checkpoints"

    # -- setup ------------------------------------------------------------------------------
    def setup(self) -> None:
        ensure_ray(self.config.pool.num_bundles)
        self.pool = Pool(self.config.pool)
        runtime_env = {"env_vars": {"OMP_NUM_THREADS": str(self.config.policy.torch_threads)}}
        self.rollout = ray.remote(RolloutActor).options(**self.pool.actor_options("rollout"), runtime_env=runtime_env).remote(self.config)
        self.reward = ray.remote(RewardActor).options(**self.pool.actor_options("reward"), runtime_env=runtime_env).remote(
            self.config.rewards, self.config.policy.torch_threads
        )
        self.learner = ray.remote(PolicyLearner).options(**self.pool.actor_options("learner"), runtime_env=runtime_env).remote(self.config)
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
        self.version = self._sync_weights()
        if checkpoint is None and self.config.grpo.bpgo.enabled:
            self.estimate_reward_prior()

    def _sync_weights(self) -> int:
        """Ship the learner's weights to the rollout actor; returns the version now live there."""
        weights_and_version = self.learner.get_weights.remote()
        state, version = ray.get(weights_and_version)
        return ray.get(self.rollout.set_weights.remote(state, version))

    # -- the loop ---------------------------------------------------------------------------
    def train(self) -> list[dict]:
        cfg = self.config.grpo
        for step in range(self.start_step + 1, cfg.steps + 1):
            started = time.perf_counter()
            prompts = self.prompts_for(step)

            # 1. sample
            videos_ref, trajectories_ref = self.rollout.sample.options(num_returns=2).remote(
                prompts, cfg.group_size, self.step_seed(step, "sample"), self.version
            )
            ray.wait([videos_ref])
            sampled = time.perf_counter()

            # 2. evaluate
            rewards, scores, num_gated = self.evaluate(videos_ref, prompts)
            result = self.estimator.compute(prompts, rewards)
            evaluated = time.perf_counter()

            # 3. update, then ship the new weights
            update = ray.get(self.learner.update.remote(
                trajectories_ref, result.advantages, self.step_seed(step, "update"), result.sample_weights
            ))
            self.version = self._sync_weights()
            updated = time.perf_counter()

            total = sum(rewards.values()) / len(rewards)
            record = {
                "step": step,
                "reward_mean": total.mean().item(),
                "reward_std": total.std(correction=0).item(),
                "reward_group_std": total.std(dim=1, correction=0).mean().item(),
                **{f"reward/{name}": value.mean().item() for name, value in rewards.items()},
                **{f"score/{k}": v.mean().item() for k, v in scores.items()},
                **result.logs,
                "gated_samples": num_gated,
                **{f"update/{k}": v for k, v in update.items()},
                "weights_version": self.version,
                "seconds/sample": sampled - started,
                "seconds/evaluate": evaluated - sampled,
                "seconds/update": updated - evaluated,
            }
            self.metrics.write(record)
            log.info("step %d/%d reward %.4f ± %.4f  loss %.4g  (sample %.1fs, evaluate %.1fs, update %.1fs)",
                     step, cfg.steps, record["reward_mean"], record["reward_std"], update["loss"],
                     record["seconds/sample"], record["seconds/evaluate"], record["seconds/update"])
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                self.save(step)
        records = self.metrics.records()
        if records:
            plot_curves(records, ["reward_mean"], self.run_dir / "reward_curve.png", "GRPO: mean reward per step")
        return records

    # -- helpers ----------------------------------------------------------------------------
    def evaluate(self, videos_ref, prompts: list[str]):
        """({component: [P, G]}, raw scores {critic.score: [B]}, gated count) for one batch of groups."""
        group_size = self.config.grpo.group_size
        scores = ray.get(self.reward.score.remote(videos_ref, [p for p in prompts for _ in range(group_size)]))
        components, num_gated = component_rewards(scores, self.config.rewards)
        return {name: value.view(len(prompts), group_size) for name, value in components.items()}, scores, num_gated

    def estimate_reward_prior(self) -> None:
        """BPGO's prior (report §3.3): sample the reference policy on every training prompt first."""
        cfg = self.config.grpo
        for round_index in range(cfg.bpgo.prior_groups):
            for start in range(0, len(self.prompt_pool), cfg.prompts_per_step):
                prompts = self.prompt_pool[start:start + cfg.prompts_per_step]
                videos_ref, _ = self.rollout.sample.options(num_returns=2).remote(
                    prompts, cfg.group_size, self.step_seed(-1 - round_index, f"prior{start}"), self.version
                )
                rewards, _, _ = self.evaluate(videos_ref, prompts)
                self.estimator.observe_prior(prompts, rewards)
        log.info("BPGO prior estimated from %d reference groups per prompt", cfg.bpgo.prior_groups)

    def prompts_for(self, step: int) -> list[str]:
        """The step's prompts: a deterministic draw from the prompt pool (same on resume)."""
        rng = random.Random(self.step_seed(step, "prompts"))
        return rng.sample(self.prompt_pool, min(self.config.grpo.prompts_per_step, len(self.prompt_pool)))

    def step_seed(self, step: int, purpose: str) -> int:
        """A seed that depends only on (run seed, step, purpose): stable across processes and resumes."""
        return zlib.crc32(f"{self.config.seed}:{step}:{purpose}".encode())

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
        for actor in (self.rollout, self.reward, self.learner):
            ray.kill(actor)
        self.pool.shutdown()


def run(config: TeleBoostConfig, resume: bool = False) -> list[dict]:
    driver = GRPODriver(config, resume=resume)
    driver.setup()
    try:
        return driver.train()
    finally:
        driver.shutdown()
