"""BPGO (report §3.3): prior state, RAS weights, CRT advantages, and the GRPO special case."""

import json

import pytest
import torch

from tests.helpers import assert_close

from algorithms.bpgo import (
    RewardPrior,
    bpgo_advantages,
    contrastive_advantages,
    reliability_weights,
)




def _plain_grpo(rewards, eps=1e-6):  # report eq. (1), written out independently
    return (rewards - rewards.mean(-1, keepdim=True)) / (rewards.std(-1, keepdim=True, unbiased=False) + eps)


def _batch(seed=0, p=6, g=8, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randn(p, g, generator=gen, dtype=dtype) * torch.rand(p, 1, generator=gen, dtype=dtype) * 2
    rewards += torch.randn(p, 1, generator=gen, dtype=dtype)
    mu = torch.randn(p, generator=gen, dtype=dtype) * 0.5
    sigma = torch.rand(p, generator=gen, dtype=dtype) + 0.5
    return rewards, mu, sigma


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_both_off_is_exactly_plain_grpo(dtype):
    rewards, mu, sigma = _batch(dtype=dtype)
    out = bpgo_advantages(rewards, mu, sigma, use_ras=False, use_crt=False)
    assert torch.equal(out.advantages, _plain_grpo(rewards))
    assert torch.equal(out.group_weights, torch.ones(rewards.shape[0], dtype=dtype))
    try:  # the shared GRPO module, when it exists, must agree
        from algorithms.grpo import group_advantages
    except ImportError:
        return
    assert_close(out.advantages, group_advantages(rewards, eps=1e-6), rtol=0, atol=1e-6)


def test_ras_down_weights_spread_and_deviation():
    base = torch.tensor([-1.0, -0.5, 0.5, 1.0], dtype=torch.float64)
    mu = torch.zeros(3, dtype=torch.float64)
    sigma = torch.ones(3, dtype=torch.float64)
    spread = torch.stack([0.2 * base, 1.0 * base, 3.0 * base])  # same mean, growing std
    w = reliability_weights(spread, mu, sigma, w_min=0.0, w_max=float("inf"))
    assert w[0] > w[1] > w[2]
    shifted = torch.stack([0.5 * base, 0.5 * base + 1.0, 0.5 * base + 2.5])  # same std, drifting mean
    w = reliability_weights(shifted, mu, sigma, w_min=0.0, w_max=float("inf"))
    assert w[0] > w[1] > w[2]
    # a wider prior excuses the same deviation (spread term off) ...
    wide = torch.tensor([1.0, 3.0], dtype=torch.float64)
    same = shifted[1:2].repeat(2, 1)
    w = reliability_weights(same, mu[:2], wide, gamma=0.0, w_min=0.0, w_max=float("inf"))
    assert w[1] > w[0]
    # ... and marks the prompt as ambiguous (deviation term off)
    w = reliability_weights(same, mu[:2], wide, alpha=0.0, w_min=0.0, w_max=float("inf"))
    assert w[0] > w[1]


def test_ras_separates_noisy_prompts_when_the_prior_comes_from_the_same_critic():
    """The failure the absolute variance term fixes: prior and group both from a critic that is
    noisy on half the prompts. Relative spread (s / sigma) is ~1 everywhere; RAS must still
    down-weight the noisy half clearly."""
    gen = torch.Generator().manual_seed(0)
    clean = 0.05 * torch.randn(4, 8, generator=gen, dtype=torch.float64)
    noisy = 0.05 * torch.randn(4, 8, generator=gen, dtype=torch.float64) + 0.3 * torch.randn(4, 8, generator=gen, dtype=torch.float64)
    rewards = torch.cat([clean, noisy]) + 0.5
    mu = torch.full((8,), 0.5, dtype=torch.float64)
    sigma = torch.tensor([0.05] * 4 + [0.3] * 4, dtype=torch.float64)  # the prior saw the same noise
    w = reliability_weights(rewards, mu, sigma)
    assert w[:4].min() > 2 * w[4:].max()
    assert w.mean().item() == pytest.approx(1.0, abs=1e-9)
    # invariant to a shared shift, unchanged by a shared scale
    assert_close(reliability_weights(rewards + 3.0, mu + 3.0, sigma), w)
    assert_close(reliability_weights(rewards * 10.0, mu * 10.0, sigma * 10.0), w)


def test_ras_mean_one_and_clip_bounds():
    for seed in range(20):
        rewards, mu, sigma = _batch(seed, p=10)
        unclipped = reliability_weights(rewards, mu, sigma, w_min=0.0, w_max=float("inf"), alpha=2.0)
        assert unclipped.mean().item() == pytest.approx(1.0, abs=1e-12)
        clipped = reliability_weights(rewards, mu, sigma, w_min=0.5, w_max=1.5, alpha=2.0)
        assert clipped.min().item() >= 0.5 - 1e-12 and clipped.max().item() <= 1.5 + 1e-12
        assert clipped.mean().item() == pytest.approx(1.0, abs=1e-9)  # renormalised after clipping
        order = torch.argsort(unclipped)
        assert bool((clipped[order].diff() >= -1e-12).all())  # clipping keeps the ranking
    with pytest.raises(ValueError, match="w_min"):
        reliability_weights(rewards, mu, sigma, w_min=1.2, w_max=2.0)


def test_crt_monotone_and_stretches_confident_winners():
    gen = torch.Generator().manual_seed(3)
    rewards = torch.randn(50, 8, generator=gen, dtype=torch.float64) * 2
    mu = torch.randn(50, generator=gen, dtype=torch.float64)
    sigma = torch.rand(50, generator=gen, dtype=torch.float64) + 0.2
    adv = contrastive_advantages(rewards, mu, sigma, margin=1.0, stretch=2.0, compress=0.5)
    order = torch.argsort(rewards, dim=-1)
    assert bool((torch.gather(adv, 1, order).diff(dim=-1) >= -1e-12).all())

    # one prompt: ambiguous samples near the prior, two confident winners
    z = torch.tensor([[-0.5, 0.0, 0.5, 2.5, 3.0]], dtype=torch.float64)
    one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    crt = contrastive_advantages(z, zero, one, margin=1.0, stretch=2.0, compress=0.5)
    plain = _plain_grpo(z)
    assert crt[0, -1] > plain[0, -1] and crt[0, -2] > plain[0, -2]
    assert (crt[0, 2] - crt[0, 0]) < (plain[0, 2] - plain[0, 0])  # ambiguous spread compressed
    # all-ambiguous group: compressed by exactly `compress`; all-winning group: stretched
    amb = torch.tensor([[-0.3, 0.1, 0.4]], dtype=torch.float64)
    assert_close(contrastive_advantages(amb, zero, one, compress=0.5, eps=0.0),
                               0.5 * _plain_grpo(amb, eps=0.0))
    win = amb + 5.0
    assert_close(contrastive_advantages(win, zero, one, stretch=2.0, eps=0.0),
                               2.0 * _plain_grpo(win, eps=0.0))
    # identity transform is plain GRPO
    assert_close(contrastive_advantages(rewards, mu, sigma, stretch=1.0, compress=1.0),
                               _plain_grpo(rewards))


@pytest.mark.parametrize("use_ras,use_crt", [(True, False), (False, True), (True, True)])
def test_shift_invariance(use_ras, use_crt):
    rewards, mu, sigma = _batch(5)
    a = bpgo_advantages(rewards, mu, sigma, use_ras=use_ras, use_crt=use_crt)
    b = bpgo_advantages(rewards + 7.25, mu + 7.25, sigma, use_ras=use_ras, use_crt=use_crt)
    assert_close(a.advantages, b.advantages, rtol=0, atol=1e-10)
    assert_close(a.group_weights, b.group_weights, rtol=0, atol=1e-10)


@pytest.mark.parametrize("rule", ["ema", "bayes", "frozen"])
def test_prior_round_trip_and_rules(rule):
    rewards, _, _ = _batch(1, p=4)
    prior = RewardPrior(default_mu=0.5, default_sigma=2.0)
    prior.update(["a", "b", 7, "a"], rewards, rule=rule, momentum=0.8)
    restored = RewardPrior()
    restored.load_state_dict(json.loads(json.dumps(prior.state_dict())))
    ids = ["a", "b", 7, "unseen"]
    for x, y in zip(prior.get(ids, dtype=torch.float64), restored.get(ids, dtype=torch.float64)):
        assert torch.equal(x, y)
    more, _, _ = _batch(2, p=2)
    prior.update(["b", 7], more, rule=rule)
    restored.update(["b", 7], more, rule=rule)
    assert prior.state_dict() == restored.state_dict()
    assert 7 in prior and "7" in prior and len(prior) == 3


def test_prior_rules_semantics():
    group = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    prior = RewardPrior(default_mu=0.0, default_sigma=1.0)
    mu, sigma = prior.get(["x"], dtype=torch.float64)  # empty prior: defaults
    assert mu.item() == 0.0 and sigma.item() == 1.0
    prior.update(["x"], group, rule="ema")
    mu, sigma = prior.get(["x"], dtype=torch.float64)
    assert mu.item() == pytest.approx(2.0) and sigma.item() == pytest.approx((2 / 3) ** 0.5)
    prior.update(["x"], group + 10.0, rule="ema", momentum=0.9)
    assert prior.get(["x"], dtype=torch.float64).mu.item() == pytest.approx(3.0)
    prior.update(["x"], group + 100.0, rule="frozen")
    assert prior.get(["x"], dtype=torch.float64).mu.item() == pytest.approx(3.0)
    # unseen prompts fall back to the global entry
    assert prior.get(["never"], dtype=torch.float64).mu.item() == pytest.approx(prior.state_dict()["global"]["mu"])

    # bayes: conjugate update from the fallback prior N(0, 1) with known variance 2/3
    bayes = RewardPrior(default_mu=0.0, default_sigma=1.0)
    bayes.update(["x"], group, rule="bayes")
    var = 2.0 / 3.0
    post_var = 1.0 / (1.0 + 3.0 / var)
    post_mu = post_var * (3.0 * 2.0 / var)
    mu, sigma = bayes.get(["x"], dtype=torch.float64)
    assert mu.item() == pytest.approx(post_mu) and sigma.item() == pytest.approx((var + post_var) ** 0.5)
    with pytest.raises(ValueError, match="'median'"):
        bayes.update(["x"], group, rule="median")
