"""BPGO (report §3.3): the reward prior, RAS weights, CRT advantages, and the GRPO special case."""

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


def _stats(prior, ids, weights=None):
    mu, sigma = prior.get(ids, weights, dtype=torch.float64)
    return mu.tolist(), sigma.tolist()


def test_pooled_prior_counts_every_reference_group_once_in_any_order():
    """Prompt x seen in two reference groups, [1, 2, 3] and [5, 7]: the anchor is all five samples,
    mean 3.6 and population variance (6.76 + 2.56 + 0.36 + 1.96 + 11.56) / 5 = 4.64. The global
    entry pools both calls' prompts: x's five samples and y's [0, 0]."""
    forward, backward = RewardPrior(), RewardPrior()
    first, second = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[5.0, 7.0], [0.0, 0.0]])
    forward.update(["x"], first)
    forward.update(["x", "y"], second)
    backward.update(["x", "y"], second)
    backward.update(["x"], first)
    for prior in (forward, backward):
        mu, sigma = _stats(prior, ["x", "y", "unseen"])
        everything = torch.tensor([1.0, 2.0, 3.0, 5.0, 7.0, 0.0, 0.0], dtype=torch.float64)
        assert mu == pytest.approx([3.6, 0.0, everything.mean().item()])
        assert sigma == pytest.approx([4.64**0.5, 1e-3, everything.std(correction=0).item()])  # y: sigma_min


def test_prior_of_a_weighted_mix_is_exact_for_any_weights():
    """Two correlated components: the mix w·r reads the mean and std of the mixed reference rewards,
    whatever w was in force when they were recorded; w = e_i reads component i."""
    color = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 0.0, 1.0]])
    motion = torch.tensor([[2.0, 1.0, 4.0, 3.0], [5.0, 5.0, 6.0, 6.0]])
    prior = RewardPrior()
    prior.update(["a", "b"], torch.stack([color, motion]))
    for w in ([0.3, 0.7], [1.0, 0.0], [0.1, 0.9], [2.0, -1.0]):
        mix = w[0] * color.double() + w[1] * motion.double()
        mu, sigma = _stats(prior, ["a", "b"], torch.tensor(w))
        assert mu == pytest.approx(mix.mean(1).tolist())
        assert sigma == pytest.approx(mix.std(1, correction=0).tolist())
    with pytest.raises(ValueError, match="2 reward components"):
        prior.get(["a"])
    with pytest.raises(ValueError, match="2 reward components"):
        prior.update(["a"], color[:1])


def test_ema_rule_follows_the_policy():
    group = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    prior = RewardPrior(default_mu=0.0, default_sigma=1.0)
    assert _stats(prior, ["x"]) == ([0.0], [1.0])  # empty prior: defaults
    prior.update(["x"], group, rule="ema")
    assert _stats(prior, ["x"]) == (pytest.approx([2.0]), pytest.approx([(2 / 3) ** 0.5]))
    prior.update(["x"], group + 10.0, rule="ema", momentum=0.9)
    assert _stats(prior, ["x"])[0] == pytest.approx([3.0])  # 0.9·2 + 0.1·12


def test_bayes_rule_is_the_conjugate_update():
    group = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    bayes = RewardPrior(default_mu=0.0, default_sigma=1.0)
    bayes.update(["x"], group, rule="bayes")
    var = 2.0 / 3.0  # from the fallback prior N(0, 1) with known variance 2/3
    post_var = 1.0 / (1.0 + 3.0 / var)
    post_mu = post_var * (3.0 * 2.0 / var)
    assert _stats(bayes, ["x"]) == (pytest.approx([post_mu]), pytest.approx([(var + post_var) ** 0.5]))
    # two uncorrelated components (sample covariance 0) update as two scalar posteriors
    first = torch.tensor([[[1.0, -1.0, 1.0, -1.0]], [[3.0, 3.0, 1.0, 1.0]]])  # means 0 and 2, variances 1 and 1
    pair = RewardPrior(default_mu=0.5, default_sigma=2.0)
    pair.update(["x"], first, rule="bayes")
    post_var = 1.0 / (1.0 / 4.0 + 4.0 / 1.0)
    for i, mean in enumerate((0.0, 2.0)):
        w = torch.eye(2, dtype=torch.float64)[i]
        assert _stats(pair, ["x"], w) == (pytest.approx([post_var * (0.5 / 4.0 + 4.0 * mean)]),
                                          pytest.approx([(1.0 + post_var) ** 0.5]))
    with pytest.raises(ValueError, match="'median'"):
        bayes.update(["x"], group, rule="median")


@pytest.mark.parametrize("rule", ["pooled", "ema", "bayes"])
def test_prior_state_round_trips_through_json(rule):
    rewards = torch.stack([_batch(1, p=4)[0], _batch(2, p=4)[0]])
    prior = RewardPrior(default_mu=0.5, default_sigma=2.0)
    prior.update(["a", "b", 7, "a"], rewards, rule=rule, momentum=0.8)
    restored = RewardPrior()
    restored.load_state_dict(json.loads(json.dumps(prior.state_dict())))
    ids, w = ["a", "b", 7, "unseen"], torch.tensor([0.4, 0.6])
    assert _stats(prior, ids, w) == _stats(restored, ids, w)
    more = torch.stack([_batch(3, p=2)[0], _batch(4, p=2)[0]])
    prior.update(["b", 7], more, rule=rule)
    restored.update(["b", 7], more, rule=rule)
    assert prior.state_dict() == restored.state_dict()
    assert 7 in prior and "7" in prior and len(prior) == 3
