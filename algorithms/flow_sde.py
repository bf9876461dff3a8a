"""Flow-matching SDE step with an exact Gaussian log-probability (report §3.1).

Convention (diffusers / Wan): x_σ = (1 − σ)·x0 + σ·ε, the model predicts the velocity
v = ε − x0, and sampling walks σ from 1 to 0 with dt = σ_next − σ < 0. The plain ODE step is
x + v·dt. GRPO needs a *stochastic* policy with a tractable density, so we use the
Flow-GRPO reverse SDE whose marginals match the ODE's:

    std_t  = noise_level · sqrt(σ / (1 − σ'))     σ' = σ, except σ' = σ_next where σ = 1
    mean   = x·(1 + std_t²·dt / (2σ)) + v·(1 + std_t²·(1 − σ) / (2σ))·dt
    prev   = mean + std_t·sqrt(−dt)·ε,   ε ~ N(0, I)

The σ = 1 guard is Flow-GRPO's (`sde_step_with_logprob`: `sqrt(sigma / (1 - where(sigma == 1,
sigmas[1], sigma)))`): only the DENOMINATOR's σ is replaced, so the first step of a schedule
starting at 1 has std_t = noise_level / sqrt(1 − σ_1); σ = 1 only occurs there, where σ_next is
the scheduler's σ_1.

`std_t` (the SDE's diffusion coefficient, Flow-GRPO's `std_dev_t`) and the step's noise scale
std_t·sqrt(−dt) are different numbers: the KL penalty is quoted in the first (Flow-GRPO) and the
density needs the second, see `algorithms.grpo.reference_kl`. `log_prob` is the exact
log N(prev; mean, (std_t·sqrt(−dt))²) per element, averaged over all non-batch dimensions so that
its scale does not depend on the video size.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch


class SDEStep(NamedTuple):
    prev_sample: torch.Tensor
    log_prob: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor  # the step's noise scale std_t·sqrt(−dt), broadcastable to the sample (see `sde_std`)


def _per_sample(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar or [B] schedule value to [B, 1, 1, ...] in float64-safe dtype."""
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if value.ndim == 0:
        value = value.expand(like.shape[0])
    return value.reshape(-1, *([1] * (like.ndim - 1)))


def sde_std(
    sigma: torch.Tensor | float,
    sigma_next: torch.Tensor | float,
    noise_level: float,
    like: torch.Tensor,
    step: bool = False,
) -> torch.Tensor:
    """std_t = noise_level·sqrt(σ / (1 − σ')), σ' = σ_next at σ = 1 (Flow-GRPO's guard), shaped
    [B, 1, ...] like `like`: the SDE's std without sqrt(−dt). step=True: the step's noise scale
    std_t·sqrt(−dt)."""
    sigma_b, sigma_next_b = _per_sample(sigma, like), _per_sample(sigma_next, like)
    std_t = noise_level * torch.sqrt(sigma_b / (1.0 - torch.where(sigma_b >= 1.0, sigma_next_b, sigma_b)))
    return std_t * torch.sqrt(sigma_b - sigma_next_b) if step else std_t


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
    std_t = sde_std(sigma, sigma_next, noise_level, sample)

    mean = sample * (1 + std_t**2 * dt / (2 * sigma_b)) + velocity * (
        1 + std_t**2 * (1 - sigma_b) / (2 * sigma_b)
    ) * dt
    step_std = std_t * torch.sqrt(-dt)

    if noise_level == 0:
        prev = mean if prev_sample is None else prev_sample
        zeros = torch.zeros(sample.shape[0], dtype=sample.dtype, device=sample.device)
        return SDEStep(prev, torch.zeros_like(prev) if per_element else zeros, mean, step_std)

    if prev_sample is None:
        # drawn where the generator lives (a host generator gives the same noise on any device)
        noise_device = generator.device if generator is not None else sample.device
        noise = torch.randn(sample.shape, generator=generator, dtype=sample.dtype, device=noise_device).to(sample.device)
        prev_sample = mean + step_std * noise

    log_prob = (
        -((prev_sample.detach() - mean) ** 2) / (2 * step_std**2)
        - torch.log(step_std)
        - 0.5 * math.log(2 * math.pi)
    )
    if not per_element:
        log_prob = log_prob.mean(dim=tuple(range(1, log_prob.ndim)))
    return SDEStep(prev_sample, log_prob, mean, step_std)
