import math

import torch

from algorithms.flow_sde import sde_step_with_logprob


def _inputs(seed=0, shape=(3, 4, 2, 5, 5)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)


def test_noise_level_zero_is_the_euler_ode_step():
    velocity, sample = _inputs()
    out = sde_step_with_logprob(velocity, sample, 0.8, 0.6, noise_level=0.0)
    assert torch.equal(out.prev_sample, sample + velocity * (0.6 - 0.8))
    assert torch.equal(out.log_prob, torch.zeros(3, dtype=torch.float64))


def test_mean_and_std_follow_the_flow_grpo_formula():
    velocity, sample = _inputs(1)
    sigma, sigma_next, a = 0.7, 0.5, 0.7
    out = sde_step_with_logprob(velocity, sample, sigma, sigma_next, a, generator=torch.Generator().manual_seed(0))
    dt = sigma_next - sigma
    std_t = a * math.sqrt(sigma / (1 - sigma))
    mean = sample * (1 + std_t**2 * dt / (2 * sigma)) + velocity * (1 + std_t**2 * (1 - sigma) / (2 * sigma)) * dt
    torch.testing.assert_close(out.mean, mean)
    torch.testing.assert_close(out.std.flatten(), torch.full((3,), std_t * math.sqrt(-dt), dtype=torch.float64))


def test_log_prob_is_the_exact_gaussian_density():
    velocity, sample = _inputs(2)
    out = sde_step_with_logprob(velocity, sample, 0.9, 0.75, 0.5, generator=torch.Generator().manual_seed(3))
    normal = torch.distributions.Normal(out.mean, out.std.expand_as(out.mean))
    expected = normal.log_prob(out.prev_sample).mean(dim=(1, 2, 3, 4))
    torch.testing.assert_close(out.log_prob, expected)
    per_element = sde_step_with_logprob(velocity, sample, 0.9, 0.75, 0.5, prev_sample=out.prev_sample, per_element=True)
    torch.testing.assert_close(per_element.log_prob, normal.log_prob(out.prev_sample))


def test_rescoring_a_sampled_step_gives_ratio_one():
    """The learner re-scores stored steps: on the first inner step (same weights) the ratio is 1."""
    velocity, sample = _inputs(4)
    sampled = sde_step_with_logprob(velocity, sample, 0.5, 0.4, 0.7, generator=torch.Generator().manual_seed(5))
    rescored = sde_step_with_logprob(velocity, sample, 0.5, 0.4, 0.7, prev_sample=sampled.prev_sample)
    assert torch.equal(torch.exp(rescored.log_prob - sampled.log_prob), torch.ones(3, dtype=torch.float64))


def test_sigma_one_is_guarded_and_per_sample_sigmas_broadcast():
    velocity, sample = _inputs(6)
    out = sde_step_with_logprob(velocity, sample, torch.ones(3, dtype=torch.float64), torch.full((3,), 0.9, dtype=torch.float64), 0.7,
                                generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.prev_sample).all() and torch.isfinite(out.log_prob).all()
    torch.testing.assert_close(out.std.flatten(), torch.full((3,), 0.7 * math.sqrt(0.9 / 0.1) * math.sqrt(0.1), dtype=torch.float64))


def test_log_prob_gradient_reaches_the_velocity():
    velocity, sample = _inputs(7)
    velocity.requires_grad_(True)
    sampled = sde_step_with_logprob(velocity.detach(), sample, 0.5, 0.4, 0.7, generator=torch.Generator().manual_seed(1))
    rescored = sde_step_with_logprob(velocity + 0.01, sample, 0.5, 0.4, 0.7, prev_sample=sampled.prev_sample)
    rescored.log_prob.sum().backward()
    assert velocity.grad is not None and velocity.grad.abs().sum() > 0
