"""Stage III's objective (report §4, §6.2) for the generic learner: pairs → one optimizer step.

Each learner streams ITS shard of batch `step` from the pair dataset on disk
(`data.pairs.PairDataset`: a (seed, epoch) permutation, every world_size-th pair per rank, so
resume replays the same pairs), encodes winner and loser with the frozen VAE (optionally at a
lower training resolution, §4.3), draws ONE (σ, ε) per pair shared by both clips, and runs
`algorithms.dpo.dpo_step` in the configured backward mode against the frozen reference (the
previous stage's policy: a frozen copy, or with LoRA the same transformer with its adapters off).

Under DDP, `sequential` runs the winner's backward without all-reduce and the loser's with it;
`standard` has one backward; `decoupled` cannot be data-parallel (DDP arms its all-reduce in
forward, so it would reduce during the winner's backward and lose the loser's gradient) — the
config refuses it with more than one learner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from actors.objectives import StepFn, TrainContext
from algorithms.dpo import dpo_step, dpo_terms, flow_matching_errors, make_preference_batch
from data.pairs import PairBatch, PairDataset, resample_pair
from schedulers.dpo_beta import DPOBetaSchedule


@dataclass(frozen=True)
class DPOObjective:
    pairs_root: str
    batch_size: int  # pairs per learner and step
    seed: int
    shift: float
    mode: str
    beta: DPOBetaSchedule
    train_shape: tuple[int, int, int] | None = None  # (frames, height, width) to train at, §4.3
    needs_reference = True

    def optimizer_steps(self, ctx: TrainContext, seed: int, shard_sizes: list[int], step: int) -> Iterator[StepFn]:
        """One optimizer step on this rank's shard of pair batch `step` (1-based)."""
        batch = next(PairDataset(self.pairs_root).batches(
            self.batch_size, seed=self.seed, rank=ctx.rank, world_size=ctx.world_size, start_step=step - 1))
        generator = torch.Generator().manual_seed(seed + 1_000_003 * (ctx.rank + 1))
        yield lambda: self._step(ctx, batch, generator, self.beta.beta_at(step - 1))

    def _latents(self, ctx: TrainContext, batch: PairBatch, generator: torch.Generator):
        winner, loser = batch.winner, batch.loser
        if self.train_shape is not None:
            pairs = [resample_pair(w, l, *self.train_shape) for w, l in zip(winner, loser)]
            winner, loser = torch.stack([w for w, _ in pairs]), torch.stack([l for _, l in pairs])
        with torch.no_grad():
            winner = ctx.policy.encode_video(winner.float().div(255))
            loser = ctx.policy.encode_video(loser.float().div(255))
            text = ctx.policy.encode_prompts([record.prompt for record in batch.records]).to(ctx.device)
        return make_preference_batch(winner, loser, text, generator, shift=self.shift)

    def _step(self, ctx: TrainContext, batch: PairBatch, generator: torch.Generator, beta: float) -> dict[str, float]:
        pairs = self._latents(ctx, batch, generator)
        sync = ctx.no_sync if (self.mode == "sequential" and ctx.data_parallel) else None
        terms = dpo_step(ctx.velocity, ctx.reference_velocity, pairs, beta, self.mode, grad_sync=sync)
        return {"loss": terms.loss.item(), "beta": beta, **_logged(terms)}

    @torch.no_grad()
    def evaluate(self, ctx: TrainContext, pairs_root: str, batch_size: int = 8) -> dict[str, float]:
        """Implicit accuracy and reward margin over the full batches of a (held-out) pair dataset
        at β's floor, with fixed (σ, ε) per pair so two evaluations differ only by the weights."""
        dataset = PairDataset(pairs_root)
        batch_size = max(1, min(batch_size, len(dataset)))  # a small held-out set is still evaluated whole
        batches = dataset.batches(batch_size, seed=self.seed)
        generator = torch.Generator().manual_seed(self.seed)
        sums, count = {}, 0
        for _ in range(dataset.batches_per_epoch(batch_size)):
            pairs = self._latents(ctx, next(batches), generator)
            errors = [flow_matching_errors(model, latents, noise, pairs.sigma, pairs.text)
                      for model in (ctx.velocity, ctx.reference_velocity)
                      for latents, noise in ((pairs.winner, pairs.winner_noise), (pairs.loser, pairs.loser_noise))]
            terms = dpo_terms(*errors, self.beta.floor)
            for key, value in {"loss": terms.loss.item(), **_logged(terms)}.items():
                sums[key] = sums.get(key, 0.0) + value * len(pairs.sigma)
            count += len(pairs.sigma)
        return {key: value / count for key, value in sums.items()}


def _logged(terms) -> dict[str, float]:
    return {"implicit_accuracy": terms.implicit_accuracy.item(), "reward_margin": terms.reward_margin.item(),
            "winner_reward": terms.winner_reward.item(), "loser_reward": terms.loser_reward.item(),
            "err_w": terms.err_w.item(), "err_l": terms.err_l.item(), "ref_err_w": terms.ref_err_w.item(),
            "ref_err_l": terms.ref_err_l.item()}
