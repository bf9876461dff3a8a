"""Sample groups on the main bundles and score them where they lie: the sample and evaluate
phases GRPO runs every step, and DPO's on-policy hard negatives (report §4.2) run once.

A mixin for `cluster.runtime.StageRuntime` drivers; `place_reward_role()` builds the reward side
(one RewardActor per reward bundle, or the grouped reward workers of report §6.1.2), after the
driver placed `self.rollouts`.
"""

from __future__ import annotations

import time

import ray
import torch

from actors.reward import RewardActor
from cluster.pool import PhaseTimeline
from cluster.prompts import balanced_shards
from cluster.reward_group import RewardWorkerGroup


class GroupPhases:
    rollouts: dict
    rewards: dict
    reward_group: RewardWorkerGroup | None = None

    def place_reward_role(self) -> None:
        cfg = self.config
        self.rewards = {}
        if cfg.rewards.execution == "grouped":
            self.reward_group = RewardWorkerGroup(
                cfg.rewards.critics, pool=self.pool, bundle=self.pool.reward_bundles()[0], run_dir=str(self.run_dir),
                device="cuda" if self.pool.accelerator == "GPU" else "cpu",
            )
        else:
            self.rewards = self.place("reward", RewardActor, cfg.rewards, cfg.policy.torch_threads,
                                      bundles=self.pool.reward_bundles())

    def shard(self, prompts: list[str]) -> dict:
        """Whole prompts (hence whole groups) per main bundle, contiguous and balanced, so
        concatenating the shards keeps the prompt order."""
        return dict(zip(self.rollouts, balanced_shards(prompts, len(self.rollouts))))

    def sample(self, timeline: PhaseTimeline, shards: dict, seed_key: str, group_size: int) -> tuple[list, list]:
        """(video refs, trajectory refs) per main bundle, in prompt order; the data stays in the
        object store and the driver only waits on each shard's weights version."""
        refs: dict = {}

        def submit():
            for i, (bundle, shard) in enumerate(shards.items()):
                refs[bundle] = self.rollouts[bundle].sample.options(num_returns=3).remote(
                    shard, group_size, self.step_seed(seed_key, f"sample/{i}"), self.version)
            return {bundle: [shard_refs[2]] for bundle, shard_refs in refs.items()}

        self.run_phase(timeline, "sample", submit, self.rollouts)
        return [refs[b][0] for b in shards], [refs[b][1] for b in shards]

    def score(self, timeline: PhaseTimeline, video_refs: list, shards: dict, group_size: int) -> dict[str, torch.Tensor]:
        """Raw scores {critic.score: [P·G]} of the sampled groups, in prompt order."""
        scoring = self.score_grouped if self.reward_group is not None else self.score_with_actors
        return scoring(timeline, video_refs, list(shards.values()), group_size)

    def score_with_actors(self, timeline: PhaseTimeline, video_refs: list, shard_prompts: list, group_size: int) -> dict[str, torch.Tensor]:
        """Colocated: each bundle's reward actor scores the videos its rollout made (no transfer).
        Disaggregated: the reward pool's actors take the shards round-robin."""
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

    def score_grouped(self, timeline: PhaseTimeline, video_refs: list, shard_prompts: list, group_size: int) -> dict[str, torch.Tensor]:
        """Joint reward by planned worker groups: groups in sequence, members at once under their
        quotas (report §6.1.2); profiles are measured once per input shape and cached on disk."""
        prompts = [p for shard in shard_prompts for p in shard for _ in range(group_size)]
        start = time.perf_counter()
        videos = torch.cat(ray.get(video_refs))
        self.reward_group.profile(videos, prompts)
        phase = self.reward_group.score(videos, prompts, mode="planned")
        timeline.add("evaluate", self.pool.reward_bundles()[0], start, time.perf_counter())
        return phase.scores

    def shutdown(self) -> None:
        if self.reward_group is not None:
            self.reward_group.shutdown()
        super().shutdown()
