"""GRPO for flow-matching video policies (report §3.1, with the joint objective of eq. 5).

Group-relative advantages replace a learned critic (eq. 1); the update is the PPO clipped
surrogate on per-step SDE log-probabilities, plus a KL penalty to the frozen reference policy.
With several rewards the loss is eq. (5), L = Σ_i c_i L_i: one clipped surrogate per reward with
its own advantages and the shared ratio. It is NOT L(Σ_i c_i A_i): clipping makes the surrogate
non-linear in the advantage (ratio 1.1, clip 0.01, A = (2, −1), c = ½: eq. 5 has gradient +0.55
with respect to the log-prob, the combined form 0).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from algorithms.flow_sde import sde_std

KL_FORMS = ("flow_grpo", "exact")


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(r − mean) / (std + eps) within each group, population std — report eq. (1).

    rewards: [num_groups, G] or [G] (or [..., G]: any leading dims are independent groups).
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
    """‖mean − ref_mean‖² / (2·std²) averaged over non-batch dims → [B]; with `std` the Gaussians'
    common std this is KL(N(mean, std²) ‖ N(ref_mean, std²))."""
    kl = (mean - ref_mean) ** 2 / (2 * std**2)
    return kl.mean(dim=tuple(range(1, kl.ndim)))


def reference_kl(
    mean: torch.Tensor,
    ref_mean: torch.Tensor,
    sigma: torch.Tensor | float,
    sigma_next: torch.Tensor | float,
    noise_level: float,
    form: str = "flow_grpo",
) -> torch.Tensor:
    """KL penalty [B] between the policy's and the reference's SDE steps (same std, see flow_sde).

    form="exact":     ‖μ_θ − μ_ref‖² / (2·std_t²·|dt|), the one-step Gaussian KL.
    form="flow_grpo": ‖μ_θ − μ_ref‖² / (2·std_t²) = |dt| × exact: Flow-GRPO's `kl_loss`, so its
                      published `beta` values carry over. With 10–40 steps |dt| ≈ 0.1–0.025, so
                      the same beta is 10–40× weaker here than under "exact".
    Both average over elements. A deterministic step (noise_level = 0) has no finite KL.
    """
    if form not in KL_FORMS:
        raise ValueError(f"KL form {form!r} is not one of {KL_FORMS}")
    if noise_level <= 0:
        raise ValueError(f"the KL to the reference needs a stochastic step: noise_level must be > 0, got {noise_level}")
    return gaussian_mean_kl(mean, ref_mean, sde_std(sigma, sigma_next, noise_level, mean, step=form == "exact"))


def clipped_surrogate(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float,
    adv_clip_max: float = 5.0,
    kl: torch.Tensor | None = None,
    kl_beta: float = 0.0,
    sample_weights: torch.Tensor | None = None,
    component_weights: torch.Tensor | None = None,
) -> SurrogateTerms:
    """PPO-clip surrogate for one denoising step; log-probs and `kl` are [B].

    advantages [B]: one objective. advantages [N, B] with component_weights c [N]: report eq. (5),
    Σ_i c_i · mean_b max(−A_ib·ρ_b, −A_ib·clip(ρ_b)) with the shared ratio ρ. `sample_weights`
    ([B], or [N, B] for a trust per component, e.g. BPGO's RAS normalised to mean 1) scale each
    sample's policy term; weights of one give plain GRPO. The loss is minimised (it is minus
    the surrogate): a positive gradient with respect to log_prob lowers that sample's likelihood.
    """
    if advantages.ndim == 2:
        if component_weights is None or component_weights.shape != advantages.shape[:1]:
            raise ValueError(
                f"advantages [N, B] = {tuple(advantages.shape)} need component_weights of shape "
                f"({advantages.shape[0]},), got {None if component_weights is None else tuple(component_weights.shape)}"
            )
    elif component_weights is not None:
        raise ValueError(f"component_weights need advantages [N, B], got shape {tuple(advantages.shape)}")
    advantages = advantages.clamp(-adv_clip_max, adv_clip_max)
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    per_sample = torch.maximum(unclipped, clipped)
    if sample_weights is not None:
        per_sample = per_sample * sample_weights
    policy_loss = per_sample.mean(dim=-1)
    if component_weights is not None:  # report eq. (5): L = Σ_i c_i L_i
        policy_loss = (component_weights.to(policy_loss.dtype) * policy_loss).sum()
    kl_mean = kl.mean() if kl is not None else torch.zeros((), dtype=log_prob.dtype)
    loss = policy_loss + kl_beta * kl_mean if kl_beta > 0 else policy_loss
    clip_fraction = ((ratio - 1.0).abs() > clip_range).float().mean()
    return SurrogateTerms(loss, policy_loss.detach(), kl_mean.detach(), clip_fraction, ratio.detach().mean())


def velocity_deviation(velocity: torch.Tensor, ref_velocity: torch.Tensor) -> torch.Tensor:
    """RMS(v − v_ref) / RMS(v_ref) over the whole batch: how far the policy's velocity field has
    moved from the reference's, as a fraction (scale-free, and the same for either KL form)."""
    return (velocity - ref_velocity).pow(2).mean().sqrt() / ref_velocity.pow(2).mean().sqrt().clamp_min(1e-12)


def adapt_kl_beta(beta: float, drift: float, target: float, floor: float = 0.0, band: float = 1.5, factor: float = 2.0) -> float:
    """The KL coefficient for the next step under a drift budget — PPO's adaptive KL penalty
    (Schulman et al. 2017, §4) applied to the distance from the reference, which turns the KL
    penalty into the constraint of report §3.1 (Ziegler et al. 2019): β·factor when the measured
    drift exceeds band·target, β/factor (not below `floor`) when it is below target/band, else β.

    The floor keeps a run that starts inside its budget at the configured β instead of letting β
    decay towards 0 while the drift is small, which would leave many doublings to catch up with."""
    if drift > band * target:
        return beta * factor
    if drift < target / band:
        return max(beta / factor, floor)
    return beta


def select_train_timesteps(num_steps: int, fraction: float, generator: torch.Generator | None = None) -> list[int]:
    """A random subset of denoising steps to train on (Flow-GRPO's timestep_fraction)."""
    count = max(1, round(num_steps * fraction))
    order = torch.randperm(num_steps, generator=generator)[:count]
    return sorted(order.tolist())
