"""ViPO (report §3.2, eq. 2): advantage maps and the map-weighted log-prob in GRPO's surrogate."""

import pytest
import torch

from tests.helpers import assert_close

from algorithms.vipo import (
    advantage_map_from_features,
    map_weighted_log_prob,
    normalize_and_mix,
    pixel_feature_extractor,
    resample_to_latent,
    reward_aligned_map,
)
from algorithms.grpo import clipped_surrogate




def _group_features(g=4, t=3, h=6, w=6, d=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(t, h, w, d, generator=gen)
    return base + 0.05 * torch.randn(g, t, h, w, d, generator=gen)


@pytest.mark.parametrize("channels", [False, True])
def test_lam_zero_is_plain_grpo_log_prob(channels):
    """A uniform map (lam = 0) gives exactly the per-sample mean log-prob plain GRPO uses."""
    gen = torch.Generator().manual_seed(1)
    shape = (4, 2, 3, 5, 5) if channels else (4, 3, 5, 5)
    log_prob_map = torch.randn(shape, generator=gen)
    raw = advantage_map_from_features(_group_features(g=4, t=3, h=5, w=5))
    ones = normalize_and_mix(raw, lam=0.0)
    assert torch.equal(ones, torch.ones_like(raw))
    assert torch.equal(map_weighted_log_prob(log_prob_map, ones), log_prob_map.mean(dim=tuple(range(1, len(shape)))))
    with pytest.raises(ValueError, match="does not match"):
        map_weighted_log_prob(log_prob_map, ones[:2])


def test_map_weights_the_policy_gradient():
    """Through GRPO's surrogate at ratio 1, the gradient wrt each element's log-prob is
    -M * A / (elements * B): eq. 2's per-position weighting of the scalar advantage."""
    advantages = torch.tensor([1.5, -0.5])
    adv_map = normalize_and_mix(torch.rand(2, 2, 3, 3), lam=0.7)
    log_prob_map = torch.randn(2, 2, 3, 3).requires_grad_(True)
    old = map_weighted_log_prob(log_prob_map.detach(), adv_map)
    terms = clipped_surrogate(map_weighted_log_prob(log_prob_map, adv_map), old, advantages, clip_range=0.2)
    terms.loss.backward()
    expected = -adv_map * advantages[:, None, None, None] / (18 * 2)
    assert_close(log_prob_map.grad, expected)


def test_normalized_map_has_mean_one():
    raw = advantage_map_from_features(_group_features(g=5).unsqueeze(0).repeat(2, 1, 1, 1, 1, 1))
    assert raw.shape == (2, 5, 3, 6, 6) and raw.min() >= 0
    for lam in (0.0, 0.3, 1.0):
        mixed = normalize_and_mix(raw, lam)
        assert_close(mixed.mean(dim=(-3, -2, -1)), torch.ones(2, 5))
    flat = normalize_and_mix(torch.zeros(2, 3, 4, 4), lam=1.0)  # no deviation at all -> uniform
    assert torch.equal(flat, torch.ones_like(flat))
    with pytest.raises(ValueError, match="lam"):
        normalize_and_mix(raw, lam=1.5)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("consensus", ["median", "mean"])
def test_localized_defect_lights_up(metric, consensus):
    feats = _group_features(g=5)
    gen = torch.Generator().manual_seed(9)
    feats[2, 1, 2:4, 3:5] = torch.randn(2, 2, 16, generator=gen)  # video 2, frame 1, a 2x2 patch
    raw = advantage_map_from_features(feats, consensus=consensus, metric=metric)
    region = torch.zeros(3, 6, 6, dtype=torch.bool)
    region[1, 2:4, 3:5] = True
    peak = torch.zeros(3 * 6 * 6, dtype=torch.bool)
    peak[raw[2].flatten().argmax()] = True
    assert bool((peak.reshape(3, 6, 6) & region).any())
    assert raw[2][region].min() > raw[2][~region].max()
    if consensus == "median":  # the robust consensus keeps the others dark there
        others = raw[[0, 1, 3, 4]]
        assert raw[2][region].min() > 5 * others.max()


def test_pixel_features_find_the_blob():
    videos = torch.full((4, 3, 16, 16, 3), 0.5)
    videos[..., 0] = torch.linspace(0, 1, 16)  # shared horizontal ramp in red
    videos[1, 2, 8:12, 4:8] = torch.tensor([1.0, 0.0, 0.0])  # a defect in video 1, frame 2
    feats = pixel_feature_extractor(videos, patch=4)
    assert feats.shape == (4, 3, 4, 4, 5)
    raw = advantage_map_from_features(feats, metric="l2")
    flat = int(raw[1].argmax())
    assert (flat // 16, flat % 16 // 4, flat % 4) == (2, 2, 1)  # frame 2, patch row 2, patch col 1
    assert raw[[0, 2, 3]].max() == 0


@pytest.mark.parametrize("mode", ["area", "trilinear"])
def test_resample_keeps_mean_one_and_shape(mode):
    adv_map = normalize_and_mix(torch.rand(3, 9, 16, 16) ** 4, lam=0.8)
    latent = resample_to_latent(adv_map, (3, 4, 4), mode=mode)
    assert latent.shape == (3, 3, 4, 4)
    assert_close(latent.mean(dim=(-3, -2, -1)), torch.ones(3))
    up = resample_to_latent(adv_map, (9, 32, 32), mode=mode)
    assert_close(up.mean(dim=(-3, -2, -1)), torch.ones(3))


def test_reward_aligned_map_finds_where_the_reward_is_decided():
    """Features vary everywhere (a large, reward-irrelevant moving object in one region), but
    only one small quiet patch tracks the advantages: that patch gets the credit."""
    gen = torch.Generator().manual_seed(4)
    p, g = 3, 8
    feats = 0.01 * torch.randn(p, g, 3, 6, 6, 5, generator=gen)
    feats[:, :, :, 3:, 3:] += 2.0 * torch.randn(p, g, 3, 3, 3, 5, generator=gen)  # loud, irrelevant
    advantages = torch.randn(p, g, generator=gen)
    feats[:, :, 1, 0, 0, 0] += 0.2 * advantages  # quiet, but decides the reward
    raw = reward_aligned_map(feats, advantages)
    assert raw.shape == (p, g, 3, 6, 6)
    assert torch.equal(raw[:, 0], raw[:, 5])  # one map per group
    for group in raw[:, 0]:
        assert group.flatten().argmax().item() == 1 * 36  # (t=1, h=0, w=0)
        assert group[1, 0, 0] > 0.9  # correlation ~1 there
    mixed = normalize_and_mix(raw.flatten(0, 1), lam=1.0)
    assert mixed.reshape(p, g, 3, 6, 6)[:, :, 1, 0, 0].min() > 2.0  # over twice the uniform credit
    # invariant to the advantages' and the features' scale
    assert_close(reward_aligned_map(feats, 3.0 * advantages), raw)
    assert_close(reward_aligned_map(10.0 * feats, advantages), raw, rtol=1e-4, atol=1e-6)
    # the deviation map, blind to the reward, puts the credit on the loud region instead
    deviation = normalize_and_mix(advantage_map_from_features(feats, metric="l2").flatten(0, 1), lam=1.0)
    assert deviation.reshape(p, g, 3, 6, 6)[:, :, 1, 0, 0].mean() < 0.5


def test_reward_aligned_map_without_reward_spread_is_uniform():
    feats = torch.randn(2, 4, 2, 3, 3, 5)
    raw = reward_aligned_map(feats, torch.zeros(2, 4))
    assert torch.equal(raw, torch.zeros_like(raw))
    assert torch.equal(normalize_and_mix(raw.flatten(0, 1), lam=0.8), torch.ones(8, 2, 3, 3))
    with pytest.raises(ValueError, match="advantages"):
        reward_aligned_map(feats, torch.zeros(2, 3))
