"""The Stage II advantage stack against formulas written out here: plain GRPO with everything off,
the curriculum acting in every joint-reward mode, BPGO's fixed pooled anchor per component."""

import json

import pytest
import torch

from cluster.advantage import AdvantageEstimator
from cluster.config import parse_config
from tests.helpers import assert_close

PROMPTS = ["p0", "p1", "p2"]
PHASES = {"color": "visual_fidelity", "motion": "temporal_coherence"}


def config(mode="weighted_sum", bpgo=None, self_paced=None, weights=(1.0, 1.0)):
    return parse_config({
        "rewards": {
            "critics": [{"name": "toy_judges"}],
            "components": {"color": {"score": "toy_judges.color", "weight": weights[0]},
                           "motion": {"score": "toy_judges.motion", "weight": weights[1]}},
        },
        "grpo": {"group_size": 4, "joint_reward": {"mode": mode}, "bpgo": bpgo or {}, "self_paced": self_paced or {}},
    })


def curriculum(**kw):
    # std_threshold 0: never advances by itself, phases are set explicitly
    return {"enabled": True, "reward_phases": PHASES, "window": 1, "patience": 1, "std_threshold": 0.0, "floor": 0.1} | kw


def rewards(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"color": torch.rand(3, 4, generator=g), "motion": torch.rand(3, 4, generator=g)}


def eq1(r):  # report eq. (1), written out: population std, eps 1e-6
    r = r.double()
    return ((r - r.mean(-1, keepdim=True)) / (r.std(-1, keepdim=True, correction=0) + 1e-6)).flatten()


def two_reward_min_norm(a1, a2):  # closed form of eq. (4) for N = 2
    c1 = float(((a2 - a1) @ a2 / ((a1 - a2) @ (a1 - a2))).clamp(0, 1))
    return [c1, 1 - c1]


def test_all_extensions_off_is_plain_grpo_on_the_weighted_reward():
    r = rewards()
    out = AdvantageEstimator(config(weights=(2.0, 0.5))).compute(PROMPTS, r)
    expected = eq1(2.0 * r["color"] + 0.5 * r["motion"]).float()
    assert out.advantages.shape == (1, 12) and out.component_weights.tolist() == [1.0]
    assert_close(out.advantages[0], expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(out.combined, out.advantages[0])
    assert out.sample_weights is None


@pytest.mark.parametrize("mode", ["weighted_sum", "advantage_sum", "min_norm"])
def test_curriculum_weights_act_in_every_joint_reward_mode(mode):
    """Phase 1 weights (1, 0), phase 2 (0.1, 0.9): the loss's advantages and weights follow them."""
    r = rewards(4)
    estimator = AdvantageEstimator(config(mode, self_paced=curriculum()))
    first = estimator.compute(PROMPTS, r)
    estimator.curriculum.set_phase("temporal_coherence")
    second = estimator.compute(PROMPTS, r)
    a_color, a_motion = eq1(r["color"]), eq1(r["motion"])
    if mode == "weighted_sum":
        expected = [([1.0], eq1(r["color"])[None]), ([1.0], eq1(0.1 * r["color"] + 0.9 * r["motion"])[None])]
    else:
        plain = torch.stack([a_color, a_motion])
        if mode == "advantage_sum":
            c2 = [0.1, 0.9]
        else:  # eq. 4 over both, then the curriculum's weights, renormalised
            m = two_reward_min_norm(a_color, a_motion)
            c2 = [0.1 * m[0] / (0.1 * m[0] + 0.9 * m[1]), 0.9 * m[1] / (0.1 * m[0] + 0.9 * m[1])]
        expected = [([1.0, 0.0], plain), (c2, plain)]  # phase 1: weight 0 -> c = 0 (issue 11)
    for out, (c, advantages) in zip((first, second), expected):
        assert out.component_weights.tolist() == pytest.approx(c, abs=1e-6)
        assert_close(out.advantages, advantages.float(), rtol=1e-5, atol=1e-6)
        assert_close(out.combined, (torch.tensor(c, dtype=torch.float64) @ advantages).float(), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(first.combined, second.combined)
    if mode != "weighted_sum":
        assert second.logs["joint_c/motion"] == pytest.approx(c2[1], abs=1e-6)


def _reference(color_mean, motion_mean):
    pattern = torch.tensor([-0.1, 0.1, -0.1, 0.1])  # population std 0.1
    return {"color": (color_mean + pattern).repeat(3, 1), "motion": (motion_mean + pattern).repeat(3, 1)}


def test_min_norm_keeps_crt_compression():
    """Color sits within the prior's margin (ambiguous: CRT compresses it to exactly ½ of eq. 1),
    motion far above its prior (confident: stretched to exactly 1.5×). c is eq. (4) on the eq. (1)
    advantages, the same as without CRT, so min-norm does not re-inflate the compressed reward."""
    g = torch.Generator().manual_seed(5)
    r = {"color": 0.5 + 0.08 * (torch.rand(3, 4, generator=g) - 0.5), "motion": 0.9 + 0.1 * torch.rand(3, 4, generator=g)}
    with_crt = AdvantageEstimator(config("min_norm", bpgo={"crt": True}))
    with_crt.observe_prior(PROMPTS, _reference(0.5, 0.2))
    out = with_crt.compute(PROMPTS, r)
    a_color, a_motion = eq1(r["color"]), eq1(r["motion"])
    assert_close(out.advantages, torch.stack([0.5 * a_color, 1.5 * a_motion]).float(), rtol=1e-4, atol=1e-5)
    assert out.component_weights.tolist() == pytest.approx(two_reward_min_norm(a_color, a_motion), abs=1e-6)
    without = AdvantageEstimator(config("min_norm")).compute(PROMPTS, r)
    assert_close(out.component_weights, without.component_weights)


def test_prior_is_pooled_from_all_reference_groups_and_fixed():
    estimator = AdvantageEstimator(config("advantage_sum", bpgo={"crt": True, "prior_rule": "frozen"}))
    first, second = _reference(0.5, 0.2), _reference(0.7, 0.0)
    estimator.observe_prior(PROMPTS, first)
    estimator.observe_prior(PROMPTS, second)
    # all eight samples per prompt: color mean 0.6, variance 0.01 + 0.1² (between the groups)
    mu, sigma = estimator.prior.get(PROMPTS, torch.tensor([1.0, 0.0]), dtype=torch.float64)
    assert mu.tolist() == pytest.approx([0.6] * 3) and sigma.tolist() == pytest.approx([0.02**0.5] * 3)
    before = json.dumps(estimator.state_dict())
    for seed in range(3):
        estimator.compute(PROMPTS, rewards(seed))
    assert json.dumps(estimator.state_dict()) == before  # the anchor never moves
    ema = AdvantageEstimator(config("advantage_sum", bpgo={"crt": True, "prior_rule": "ema"}))
    ema.observe_prior(PROMPTS, first)
    ema.observe_prior(PROMPTS, second)
    assert ema.prior.get(PROMPTS, torch.tensor([1.0, 0.0])).mu.tolist() == pytest.approx([0.6] * 3)  # pooled too
    ema.compute(PROMPTS, rewards(0))
    assert json.dumps(ema.state_dict()) != before  # ema follows training


def test_weighted_sum_prior_anchors_the_mix_in_force_now():
    """The prior was recorded in phase 1 (mix = color). In phase 2 the mix 0.1·color + 0.9·motion ≈ 0.5
    would be ambiguous under the stale color anchor (0.5 ± 0.1) but is a confident win over the
    current mix's anchor (0.1·0.5 + 0.9·0.0 = 0.05): CRT stretches it to exactly 1.5× eq. (1)."""
    estimator = AdvantageEstimator(config(bpgo={"crt": True, "prior_rule": "frozen"}, self_paced=curriculum()))
    estimator.observe_prior(PROMPTS, _reference(0.5, 0.0))
    estimator.curriculum.set_phase("temporal_coherence")
    g = torch.Generator().manual_seed(2)
    r = {"color": 0.5 + 0.05 * torch.rand(3, 4, generator=g), "motion": 0.5 + 0.05 * torch.rand(3, 4, generator=g)}
    out = estimator.compute(PROMPTS, r)
    assert_close(out.advantages[0], 1.5 * eq1(0.1 * r["color"] + 0.9 * r["motion"]).float(), rtol=1e-4, atol=1e-5)


def test_ras_trust_is_per_component_and_state_round_trips():
    estimator = AdvantageEstimator(config("min_norm", bpgo={"ras": True, "crt": True}))
    clean = torch.full((3, 4), 0.5) + 0.01 * torch.arange(4.0)
    prior_rewards = {"color": clean, "motion": clean.clone()}
    estimator.observe_prior(PROMPTS, prior_rewards)
    step_rewards = {k: v.clone() for k, v in prior_rewards.items()}
    step_rewards["color"][1] = torch.tensor([0.0, 1.0, 0.0, 1.0])  # prompt 1: noisy for color only
    out = estimator.compute(PROMPTS, step_rewards)
    trust = out.sample_weights.view(2, 3, 4)
    assert trust[0, 1, 0] < 0.5 * trust[0, 0, 0] and trust[0, 1, 0] < 0.5 * trust[0, 2, 0]
    assert torch.equal(trust[1], torch.ones(3, 4))  # motion's groups are all as clean as its prior
    restored = AdvantageEstimator(config("min_norm", bpgo={"ras": True, "crt": True}))
    restored.load_state_dict(json.loads(json.dumps(estimator.state_dict())))
    a, b = restored.compute(PROMPTS, rewards(3)), estimator.compute(PROMPTS, rewards(3))
    assert torch.equal(a.advantages, b.advantages) and torch.equal(a.sample_weights, b.sample_weights)
    with pytest.raises(ValueError, match="priors"):
        restored.load_state_dict({"priors": {"color": {}}, "curriculum": None})


def test_dropped_groups_get_zero_advantage_and_weight_and_are_not_observed():
    r = rewards(6)
    r["motion"][1, 2] = float("nan")
    kept = torch.tensor([True, False, True])
    estimator = AdvantageEstimator(config("advantage_sum", self_paced=curriculum(std_threshold=1.0)))
    out = estimator.compute(PROMPTS, r, kept)
    advantages = out.advantages.view(2, 3, 4)
    assert torch.equal(advantages[:, 1], torch.zeros(2, 4))
    assert_close(advantages[0, [0, 2]].flatten(), eq1(r["color"][[0, 2]]).float(), rtol=1e-5, atol=1e-6)
    assert out.sample_weights.view(2, 3, 4)[:, :, 0].tolist() == [[1.0, 0.0, 1.0]] * 2
    assert estimator.curriculum.last_window["motion"]["mean"] == pytest.approx(r["motion"][[0, 2]].double().mean().item())


def test_curriculum_must_cover_the_components():
    with pytest.raises(ValueError, match="reward_phases"):
        config(self_paced={"enabled": True, "reward_phases": {"color": "visual_fidelity"}})
