"""GRPO (report §3.1) and the joint objective of eq. (5), against hand-computed values."""

import math

import pytest
import torch

from algorithms.grpo import (
    adapt_kl_beta,
    clipped_surrogate,
    gaussian_mean_kl,
    group_advantages,
    reference_kl,
    select_train_timesteps,
    velocity_deviation,
)


def test_group_advantages_matches_eq_1_with_population_std():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.5, 0.5, 0.5, 0.5]])
    adv = group_advantages(rewards)
    # mean 3, population std sqrt((4 + 1 + 0 + 9) / 4) = sqrt(3.5)
    expected = torch.tensor([-2.0, -1.0, 0.0, 3.0]) / (math.sqrt(3.5) + 1e-6)
    assert torch.allclose(adv[0], expected)
    assert torch.equal(adv[1], torch.zeros(4))  # a group with no spread carries no signal
    assert torch.allclose(group_advantages(rewards[0]), expected)


def test_surrogate_at_ratio_one_is_minus_mean_advantage_and_clips():
    lp = torch.zeros(4)
    adv = torch.tensor([1.0, -1.0, 2.0, 0.5])
    terms = clipped_surrogate(lp, lp, adv, clip_range=0.2)
    assert terms.loss.item() == pytest.approx(-0.625)
    assert terms.clip_fraction == 0
    # Positive advantage, ratio above 1+clip: clipped term (constant) wins, no gradient.
    new = torch.tensor([0.5], requires_grad=True)
    clipped_surrogate(new, torch.zeros(1), torch.tensor([1.0]), clip_range=0.2).loss.backward()
    assert new.grad.item() == 0.0


def test_advantages_are_clipped_and_weights_scale_samples():
    lp = torch.zeros(2)
    terms = clipped_surrogate(lp, lp, torch.tensor([10.0, 0.0]), clip_range=0.2, adv_clip_max=5.0)
    assert terms.loss.item() == pytest.approx(-2.5)
    weighted = clipped_surrogate(lp, lp, torch.tensor([1.0, 1.0]), 0.2, sample_weights=torch.tensor([2.0, 0.0]))
    assert weighted.loss.item() == pytest.approx(-1.0)


def test_eq5_is_a_weighted_sum_of_clipped_surrogates_not_the_surrogate_of_the_sum():
    """Issue 11's case: ratio 1.1, clip 0.01, A = (2, −1), c = ½. Component 1 is clipped (−2·1.01,
    no gradient), component 2 is not (+1·1.1): L = ½(−2.02) + ½(1.1) = −0.46 and
    dL/dlog_prob = ½·1·1.1 = +0.55 (the loss is minimised, so this lowers the sample's
    likelihood). The combined advantage ½·2 − ½·1 = 0.5 is clipped: L = −0.505, gradient 0."""
    log_prob = torch.tensor([math.log(1.1)], requires_grad=True)
    old = torch.zeros(1)
    terms = clipped_surrogate(log_prob, old, torch.tensor([[2.0], [-1.0]]), clip_range=0.01,
                              component_weights=torch.tensor([0.5, 0.5]))
    terms.loss.backward()
    assert terms.loss.item() == pytest.approx(-0.46)
    assert log_prob.grad.item() == pytest.approx(0.55)

    log_prob.grad = None
    combined = clipped_surrogate(log_prob, old, torch.tensor([0.5]), clip_range=0.01)
    combined.loss.backward()
    assert combined.loss.item() == pytest.approx(-0.505)
    assert log_prob.grad.item() == 0.0


def test_eq5_weights_each_components_samples_with_its_own_trust():
    lp = torch.zeros(2)
    advantages = torch.tensor([[1.0, 3.0], [-2.0, 4.0]])
    trust = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    c = torch.tensor([0.25, 0.75])
    terms = clipped_surrogate(lp, lp, advantages, 0.2, sample_weights=trust, component_weights=c)
    # ratio 1: L = −Σ_i c_i mean_b(w_ib A_ib) = −(0.25·(2 + 0)/2 + 0.75·(−2 + 4)/2) = −1.0
    assert terms.loss.item() == pytest.approx(-1.0)
    shared = clipped_surrogate(lp, lp, advantages, 0.2, sample_weights=torch.tensor([0.0, 1.0]), component_weights=c)
    assert shared.loss.item() == pytest.approx(-(0.25 * 3.0 + 0.75 * 4.0) / 2)  # [B] weights apply to every component
    with pytest.raises(ValueError, match="component_weights"):
        clipped_surrogate(lp, lp, advantages, 0.2)
    with pytest.raises(ValueError, match="component_weights"):
        clipped_surrogate(lp, lp, advantages[0], 0.2, component_weights=c)


def test_kl_forms_flow_grpo_divides_by_std_t_squared_and_exact_by_the_step_variance():
    """σ = 0.5, σ' = 0.4, a = 0.7: std_t = 0.7·sqrt(0.5/0.5) = 0.7, |dt| = 0.1. With μ_θ − μ_ref = 0.1
    everywhere, Flow-GRPO's kl_loss is 0.01/(2·0.49) and the exact one-step KL 0.01/(2·0.49·0.1)."""
    mean, ref = torch.full((2, 3, 4), 0.1, dtype=torch.float64), torch.zeros(2, 3, 4, dtype=torch.float64)
    flow_grpo = reference_kl(mean, ref, 0.5, 0.4, 0.7)
    exact = reference_kl(mean, ref, 0.5, 0.4, 0.7, form="exact")
    assert flow_grpo.tolist() == pytest.approx([0.01 / 0.98] * 2)
    assert exact.tolist() == pytest.approx([0.1 / 0.98] * 2)
    # σ = 1 uses Flow-GRPO's guard: std_t² = 0.49 / (1 − 0.9)
    assert reference_kl(mean, ref, 1.0, 0.9, 0.7).tolist() == pytest.approx([0.01 / (2 * 4.9)] * 2)
    per_sample = reference_kl(mean, ref, torch.tensor([0.5, 1.0]), torch.tensor([0.4, 0.9]), 0.7, form="exact")
    assert per_sample.tolist() == pytest.approx([0.1 / 0.98, 0.01 / (2 * 4.9 * 0.1)])
    with pytest.raises(ValueError, match="'nats'"):
        reference_kl(mean, ref, 0.5, 0.4, 0.7, form="nats")
    with pytest.raises(ValueError, match="noise_level"):
        reference_kl(mean, ref, 0.5, 0.4, 0.0)


def test_kl_closed_form_enters_the_loss_with_beta():
    kl = gaussian_mean_kl(torch.ones(2, 3), torch.zeros(2, 3), torch.full((2, 1), 0.5))
    assert kl.tolist() == pytest.approx([2.0, 2.0])  # 1 / (2·0.25)
    lp = torch.zeros(2)
    terms = clipped_surrogate(lp, lp, torch.zeros(2), 0.2, kl=kl, kl_beta=0.1)
    assert terms.loss.item() == pytest.approx(0.2)


def test_timestep_subset_is_sorted_unique_and_sized():
    steps = select_train_timesteps(10, 0.6, torch.Generator().manual_seed(0))
    assert len(steps) == 6 and steps == sorted(set(steps)) and all(0 <= s < 10 for s in steps)


def test_velocity_deviation_is_the_rms_change_relative_to_the_reference():
    ref = torch.tensor([[3.0, 4.0], [0.0, 0.0]])  # RMS sqrt(25 / 4) = 2.5
    moved = ref + torch.tensor([[1.0, -1.0], [1.0, 1.0]])  # change RMS 1
    assert velocity_deviation(moved, ref).item() == pytest.approx(0.4)
    assert velocity_deviation(ref, ref).item() == 0.0


def test_adaptive_kl_doubles_above_the_band_halves_below_it_down_to_the_floor():
    # budget 0.1, band 1.5: double above 0.15, halve below 0.0667, hold in between
    assert adapt_kl_beta(0.04, drift=0.16, target=0.1) == pytest.approx(0.08)
    assert adapt_kl_beta(0.04, drift=0.12, target=0.1) == 0.04
    assert adapt_kl_beta(0.04, drift=0.08, target=0.1) == 0.04
    assert adapt_kl_beta(0.04, drift=0.05, target=0.1) == pytest.approx(0.02)
    assert adapt_kl_beta(0.04, drift=0.05, target=0.1, floor=0.03) == 0.03
    # a drift that stays above the band grows beta geometrically, one doubling per step
    beta = 0.01
    for _ in range(5):
        beta = adapt_kl_beta(beta, drift=0.3, target=0.1, floor=0.01)
    assert beta == pytest.approx(0.32)
