"""The flow-matching SDE step against Flow-GRPO's formulas, written out here by hand."""

import math

import pytest
import torch

from algorithms.flow_sde import sde_std, sde_step_with_logprob
from tests.helpers import assert_close

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _inputs(seed=0, shape=(3, 4, 2, 5, 5)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)


def _flow_grpo_mean(sample, velocity, sigma, sigma_next, std_t):
    dt = sigma_next - sigma
    return sample * (1 + std_t**2 * dt / (2 * sigma)) + velocity * (1 + std_t**2 * (1 - sigma) / (2 * sigma)) * dt


def test_noise_level_zero_is_the_euler_ode_step():
    velocity, sample = _inputs()
    out = sde_step_with_logprob(velocity, sample, 0.8, 0.6, noise_level=0.0)
    assert torch.equal(out.prev_sample, sample + velocity * (0.6 - 0.8))
    assert torch.equal(out.log_prob, torch.zeros(3, dtype=torch.float64))


def test_mean_and_both_stds_follow_the_flow_grpo_formula():
    velocity, sample = _inputs(1)
    sigma, sigma_next, a = 0.7, 0.5, 0.7
    out = sde_step_with_logprob(velocity, sample, sigma, sigma_next, a, generator=torch.Generator().manual_seed(0))
    std_t = a * math.sqrt(sigma / (1 - sigma))
    assert_close(out.mean, _flow_grpo_mean(sample, velocity, sigma, sigma_next, std_t))
    assert_close(out.std.flatten(), torch.full((3,), std_t * math.sqrt(0.2), dtype=torch.float64))
    like = torch.zeros(2, 4, 4)
    assert sde_std(sigma, sigma_next, a, like).shape == (2, 1, 1)
    assert sde_std(sigma, sigma_next, a, like).flatten().tolist() == pytest.approx([std_t] * 2, rel=1e-6)
    step_std = sde_std(sigma, sigma_next, a, like, step=True)
    assert step_std.flatten().tolist() == pytest.approx([std_t * math.sqrt(0.2)] * 2, rel=1e-6)


def test_sigma_one_replaces_only_the_denominator_as_flow_grpo_does():
    """Flow-GRPO: std_dev_t = sqrt(sigma / (1 - where(sigma == 1, sigmas[1], sigma))) * noise_level.
    At σ = 1, σ_1 = 0.9, a = 0.7: std_t = 0.7·sqrt(1/0.1), the step std 0.7·sqrt(10)·sqrt(0.1) = 0.7,
    and mean = x·(1 + 4.9·(−0.1)/2) + v·(−0.1) = 0.755·x − 0.1·v (substituting σ_1 in the
    numerator too would give std_t = 2.1 and 0.7795·x)."""
    velocity, sample = _inputs(6)
    sigma = torch.tensor([1.0, 0.5, 1.0], dtype=torch.float64)
    sigma_next = torch.tensor([0.9, 0.4, 0.9], dtype=torch.float64)
    out = sde_step_with_logprob(velocity, sample, sigma, sigma_next, 0.7, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.prev_sample).all() and torch.isfinite(out.log_prob).all()
    assert out.std.flatten().tolist() == pytest.approx([0.7, 0.7 * math.sqrt(0.1), 0.7], rel=1e-12)
    guarded = 0.7 * math.sqrt(10)
    assert sde_std(sigma, sigma_next, 0.7, sample).flatten().tolist() == pytest.approx([guarded, 0.7, guarded])
    assert_close(out.mean[0], 0.755 * sample[0] - 0.1 * velocity[0])
    assert_close(out.mean[1], _flow_grpo_mean(sample[1], velocity[1], 0.5, 0.4, 0.7))  # σ < 1: unguarded


def test_sampled_step_is_mean_plus_scaled_noise_with_its_exact_density():
    """The rollout's sample and log-prob, and the learner's re-scoring of it, against the Gaussian
    written out: prev = mean + s·ε, log p = mean over elements of (−ε²/2 − log s − ½ log 2π)."""
    velocity, sample = _inputs(2)
    sigma, sigma_next, a = 0.9, 0.75, 0.5
    out = sde_step_with_logprob(velocity, sample, sigma, sigma_next, a, generator=torch.Generator().manual_seed(3))
    eps = torch.randn(sample.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    s = a * math.sqrt(sigma / (1 - sigma)) * math.sqrt(sigma - sigma_next)
    mean = _flow_grpo_mean(sample, velocity, sigma, sigma_next, a * math.sqrt(sigma / (1 - sigma)))
    assert_close(out.prev_sample, mean + s * eps)
    density = -0.5 * eps**2 - math.log(s) - HALF_LOG_2PI
    assert_close(out.log_prob, density.mean(dim=(1, 2, 3, 4)))
    rescored = sde_step_with_logprob(velocity, sample, sigma, sigma_next, a, prev_sample=out.prev_sample, per_element=True)
    assert_close(rescored.log_prob, density)
    other = torch.randn(sample.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    scored = sde_step_with_logprob(velocity, sample, sigma, sigma_next, a, prev_sample=other)
    assert_close(scored.log_prob, (-((other - mean) ** 2) / (2 * s**2) - math.log(s) - HALF_LOG_2PI).mean(dim=(1, 2, 3, 4)))


def test_log_prob_gradient_with_respect_to_the_velocity_is_exact():
    """d log p / d v = (prev − mean)/s² · (1 + std_t²(1 − σ)/(2σ))·dt / numel: the learner's signal."""
    velocity, sample = _inputs(7)
    sigma, sigma_next, a = 0.5, 0.4, 0.7
    prev = torch.randn(sample.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    velocity.requires_grad_(True)
    sde_step_with_logprob(velocity, sample, sigma, sigma_next, a, prev_sample=prev).log_prob.sum().backward()
    std_t = a * math.sqrt(sigma / (1 - sigma))
    s2 = std_t**2 * (sigma - sigma_next)
    mean = _flow_grpo_mean(sample, velocity.detach(), sigma, sigma_next, std_t)
    slope = (1 + std_t**2 * (1 - sigma) / (2 * sigma)) * (sigma_next - sigma)
    assert_close(velocity.grad, (prev - mean) / s2 * slope / sample[0].numel())
