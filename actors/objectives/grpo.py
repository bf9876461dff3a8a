"""GRPO's objective (report §3.1-3.2) for the generic learner."""

from __future__ import annotations

import functools
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Iterator, NamedTuple

import torch

from actors.objectives import StepFn, TrainContext, minibatch_splits
from algorithms.flow_sde import sde_step_with_logprob
from algorithms.grpo import SurrogateTerms, clipped_surrogate, reference_kl, select_train_timesteps, velocity_deviation
from algorithms.vipo import map_weighted_log_prob
from policy.psm import PerceptualStructuringModule
from policy.sampling import Trajectories


@dataclass(frozen=True)
class GRPOObjective:
    """GRPO's update on flow-SDE rollouts (report §3.1): per optimizer step, a minibatch of this
    rank's samples over a random subset of denoising steps, the PPO-clipped surrogate on per-step
    log-probs (+ KL to the reference, + ViPO maps, report §3.2). The first inner step's ratio is
    exactly 1: the learner recomputes the rollout's velocities with the same weights and precision.
    """

    group_size: int
    clip_range: float
    adv_clip_max: float = 5.0
    kl_beta: float = 0.0
    kl_form: str = "flow_grpo"
    timestep_fraction: float = 1.0
    inner_epochs: int = 1
    num_minibatches: int | None = None  # None: one per prompt group of the smallest shard
    vipo_lam: float = 0.0
    vipo_map: str = "reward_aligned"
    vipo_backbone: str = "pixel"
    vipo_backbone_path: str | None = None
    vipo_patch: int = 4

    @property
    def needs_reference(self) -> bool:
        return self.kl_beta > 0

    def optimizer_steps(
        self, ctx: TrainContext, seed: int, shard_sizes: list[int], trajectories: Trajectories,
        advantages: torch.Tensor, component_weights: torch.Tensor, combined: torch.Tensor,
        sample_weights: torch.Tensor | None = None, kl_beta: float | None = None,
    ) -> Iterator[StepFn]:
        """This rank's shard: trajectories, per-objective advantages [N, B] weighted by
        `component_weights` [N] in the loss (report eq. 5: one clipped surrogate per objective,
        sharing the ratio), their combination Σ c_i A_i [B] (ViPO's reward-aligned maps only),
        and BPGO's trust [N, B] or None. `kl_beta` overrides the objective's for this update
        (the driver's adaptive coefficient, `grpo.kl_target_deviation`)."""
        shared = torch.Generator().manual_seed(seed)  # identical on every rank: timesteps
        local = torch.Generator().manual_seed(seed + 1_000_003 * (ctx.rank + 1))  # this rank's shuffles
        num_minibatches = self.num_minibatches or min(shard_sizes) // self.group_size
        maps = self._advantage_maps(trajectories, combined)
        batch = _Batch(trajectories, advantages, component_weights, sample_weights, self.kl_beta if kl_beta is None else kl_beta)
        num_steps = trajectories.log_probs.shape[1]
        for _ in range(self.inner_epochs):
            train_steps = select_train_timesteps(num_steps, self.timestep_fraction, shared)
            for index, scale in minibatch_splits(shard_sizes, ctx.rank, num_minibatches, local):
                yield lambda index=index, scale=scale, train_steps=train_steps: self._minibatch(
                    ctx, batch, maps, index, scale, train_steps)

    def _minibatch(self, ctx, batch, maps, index, scale, train_steps) -> dict[str, float]:
        sums = dict.fromkeys(("loss", "kl", "clip_fraction", "ratio", "policy_loss", "log_ratio_abs", "velocity_deviation"), 0.0)
        for position, j in enumerate(train_steps):
            terms, extra = self._step_terms(ctx, batch, maps, index, j)
            last = position == len(train_steps) - 1
            with ctx.no_sync() if not last else nullcontext():
                (terms.loss * scale / len(train_steps)).backward()
            values = [t.item() for t in (terms.loss, terms.kl, terms.clip_fraction, terms.ratio_mean, terms.policy_loss)]
            for key, value in zip(sums, [*values, extra["log_ratio_abs"], extra["velocity_deviation"]]):
                sums[key] += value / len(train_steps)
        return sums

    def _step_terms(self, ctx, batch, maps, index, j) -> tuple[SurrogateTerms, dict[str, float]]:
        device = ctx.device
        trajectories = batch.trajectories
        x = trajectories.latents[index, j].to(device)
        prev = trajectories.latents[index, j + 1].to(device)
        sigma, sigma_next = trajectories.sigmas[j], trajectories.sigmas[j + 1]
        text = trajectories.text_embeds[index].to(device)
        per_element = maps is not None
        velocity = ctx.velocity(x, sigma, text)
        step = sde_step_with_logprob(velocity, x, sigma, sigma_next, trajectories.noise_level,
                                     prev_sample=prev, per_element=per_element)
        kl = None
        extra = {"velocity_deviation": 0.0}
        if self.needs_reference:
            with torch.no_grad():
                ref_velocity = ctx.reference_velocity(x, sigma, text)
                extra["velocity_deviation"] = velocity_deviation(velocity, ref_velocity).item()
            ref_mean = sde_step_with_logprob(ref_velocity, x, sigma, sigma_next, trajectories.noise_level, prev_sample=prev).mean
            kl = reference_kl(step.mean, ref_mean, sigma, sigma_next, trajectories.noise_level, form=self.kl_form)
        log_prob, old_log_prob = step.log_prob, trajectories.log_probs[index, j].to(device)
        if per_element:  # ViPO: the map-weighted per-sample log-prob (report eq. 2)
            sample_maps = maps[index].to(device)
            log_prob = map_weighted_log_prob(step.log_prob, sample_maps)
            old_log_prob = map_weighted_log_prob(trajectories.log_prob_maps[index, j].to(device), sample_maps)
        weights = None if batch.sample_weights is None else batch.sample_weights[:, index].to(device)
        extra["log_ratio_abs"] = (log_prob.detach() - old_log_prob).abs().mean().item()
        return clipped_surrogate(log_prob, old_log_prob, batch.advantages[:, index].to(device), self.clip_range,
                                 self.adv_clip_max, kl=kl, kl_beta=batch.kl_beta, sample_weights=weights,
                                 component_weights=batch.component_weights.to(device)), extra

    def _advantage_maps(self, trajectories: Trajectories, advantages: torch.Tensor) -> torch.Tensor | None:
        """ViPO maps on the latent grid (report §3.2), or None when lam = 0 (plain GRPO exactly)."""
        if self.vipo_lam == 0:
            return None
        psm = _psm(self.vipo_backbone, self.vipo_backbone_path, self.vipo_patch)
        latent_thw = tuple(trajectories.latents.shape[-3:])
        return psm.advantage_maps(trajectories.videos.float() / 255, self.group_size, self.vipo_lam, latent_thw,
                                  advantages if self.vipo_map == "reward_aligned" else None)


class _Batch(NamedTuple):
    trajectories: Trajectories
    advantages: torch.Tensor  # [N, B]
    component_weights: torch.Tensor  # [N]
    sample_weights: torch.Tensor | None  # [N, B]
    kl_beta: float


@functools.lru_cache(maxsize=2)
def _psm(backbone: str, backbone_path: str | None, patch: int) -> PerceptualStructuringModule:
    """The frozen ViPO backbone, built once per learner process (a DINOv2 load is not free)."""
    return PerceptualStructuringModule(backbone, backbone_path, patch)
