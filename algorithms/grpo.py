"""GRPO for flow-matching video policies (report §3.1).

Group-relative advantages replace a learned critic (eq. 1); the update is the PPO clipped
surrogate on per-step SDE log-probabilities, plus a KL penalty to the frozen reference policy.
Because both policies' SDE steps are Gaussians with the SAME std, their KL is the closed form
‖μ_θ − μ_ref‖² / (2·std²) per element (Flow-GRPO).
"""

from __future__ import annotations

from typing import NamedTuple

import torch


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(r − mean) / (std + eps) within each group, population std — report eq. (1).

    rewards: [num_groups, G] or [G].
    """
    mean = rewards.mean(dim=-1, keepdim=True)
    std = rewards.std(dim=-1, keepdim=True, correction=0)
    return (rewards - mean) / (std + eps)


class SurrogateTerms(NamedTuple):
    loss: torch.Tensor
    policy_loss: torch.Tensor
    kl: torch.Tensor
    clip_fraction: torch.Tensor
    ratio_mean: torch.Tensor


def gaussian_mean_kl(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, std²) ‖ N(ref_mean, std²)) averaged over non-batch dims → [B]."""
    kl = (mean - ref_mean) ** 2 / (2 * std**2)
    return kl.mean(dim=tuple(range(1, kl.ndim)))


def clipped_surrogate(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float,
    adv_clip_max: float = 5.0,
    kl: torch.Tensor | None = None,
    kl_beta: float = 0.0,
    sample_weights: torch.Tensor | None = None,
) -> SurrogateTerms:
    """PPO-clip surrogate for one denoising step; all inputs are [B].

    `sample_weights` (e.g. BPGO's per-group trust, normalised to mean 1) scale each sample's
    policy term; with weights of one this is exactly plain GRPO.
    """
    advantages = advantages.clamp(-adv_clip_max, adv_clip_max)
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    per_sample = torch.maximum(unclipped, clipped)
    if sample_weights is not None:
        per_sample = per_sample * sample_weights
    policy_loss = per_sample.mean()
    kl_mean = kl.mean() if kl is not None else torch.zeros((), dtype=log_prob.dtype)
    loss = policy_loss + kl_beta * kl_mean if kl_beta > 0 else policy_loss
    clip_fraction = ((ratio - 1.0).abs() > clip_range).float().mean()
    return SurrogateTerms(loss, policy_loss.detach(), kl_mean.detach(), clip_fraction, ratio.detach().mean())


def select_train_timesteps(num_steps: int, fraction: float, generator: torch.Generator | None = None) -> list[int]:
    """A random subset of denoising steps to train on (Flow-GRPO's timestep_fraction)."""
    count = max(1, round(num_steps * fraction))
    order = torch.randperm(num_steps, generator=generator)[:count]
    return sorted(order.tolist())
