"""Flow-matching SDE step with an exact Gaussian log-probability (report §3.1).

Convention (diffusers / Wan): x_σ = (1 − σ)·x0 + σ·ε, the model predicts the velocity
v = ε − x0, and sampling walks σ from 1 to 0 with dt = σ_next − σ < 0. The plain ODE step is
x + v·dt. GRPO needs a *stochastic* policy with a tractable density, so we use the
Flow-GRPO reverse SDE whose marginals match the ODE's:

    std_t  = noise_level · sqrt(σ / (1 − σ))                     (σ = 1 guarded by σ_next)
    mean   = x·(1 + std_t²·dt / (2σ)) + v·(1 + std_t²·(1 − σ) / (2σ))·dt
    prev   = mean + std_t·sqrt(−dt)·ε,   ε ~ N(0, I)

`log_prob` is the exact log N(prev; mean, (std_t·sqrt(−dt))²) per element, averaged over all
non-batch dimensions so that its scale does not depend on the video size.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch


class SDEStep(NamedTuple):
    prev_sample: torch.Tensor
    log_prob: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor  # the step's noise scale std_t·sqrt(−dt), broadcastable to the sample


def _per_sample(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar or [B] schedule value to [B, 1, 1, ...] in float64-safe dtype."""
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if value.ndim == 0:
        value = value.expand(like.shape[0])
    return value.reshape(-1, *([1] * (like.ndim - 1)))


def sde_step_with_logprob(
    velocity: torch.Tensor,
    sample: torch.Tensor,
    sigma: torch.Tensor | float,
    sigma_next: torch.Tensor | float,
    noise_level: float,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    per_element: bool = False,
) -> SDEStep:
    """One reverse-SDE step; with `prev_sample` given, only scores it (used by the learner).

    noise_level = 0 reproduces the Euler ODE step exactly; the step is then deterministic and
    carries no density, so `log_prob` is returned as zeros.
    """
    sigma_b = _per_sample(sigma, sample)
    sigma_next_b = _per_sample(sigma_next, sample)
    dt = sigma_next_b - sigma_b
    # σ = 1 makes σ/(1−σ) infinite; Flow-GRPO substitutes the next sigma there.
    sigma_safe = torch.where(sigma_b >= 1.0, sigma_next_b, sigma_b)
    std_t = noise_level * torch.sqrt(sigma_safe / (1.0 - sigma_safe))

    mean = sample * (1 + std_t**2 * dt / (2 * sigma_b)) + velocity * (
        1 + std_t**2 * (1 - sigma_b) / (2 * sigma_b)
    ) * dt
    step_std = std_t * torch.sqrt(-dt)

    if noise_level == 0:
        prev = mean if prev_sample is None else prev_sample
        zeros = torch.zeros(sample.shape[0], dtype=sample.dtype, device=sample.device)
        return SDEStep(prev, torch.zeros_like(prev) if per_element else zeros, mean, step_std)

    if prev_sample is None:
        noise = torch.randn(sample.shape, generator=generator, dtype=sample.dtype, device=sample.device)
        prev_sample = mean + step_std * noise

    log_prob = (
        -((prev_sample.detach() - mean) ** 2) / (2 * step_std**2)
        - torch.log(step_std)
        - 0.5 * math.log(2 * math.pi)
    )
    if not per_element:
        log_prob = log_prob.mean(dim=tuple(range(1, log_prob.ndim)))
    return SDEStep(prev_sample, log_prob, mean, step_std)
