"""The Stage II advantage stack: extensions off is plain GRPO; each switch changes what it should."""

import json

import pytest
import torch

from algorithms.grpo import group_advantages
from algorithms.joint_reward import min_norm_weights
from cluster.advantage import AdvantageEstimator
from cluster.config import parse_config

PROMPTS = ["p0", "p1", "p2"]


def config(mode="weighted_sum", bpgo=None, self_paced=None, weights=(1.0, 1.0)):
    return parse_config({
        "rewards": {
            "critics": [{"name": "toy_judges"}],
            "components": {"color": {"score": "toy_judges.color", "weight": weights[0]},
                           "motion": {"score": "toy_judges.motion", "weight": weights[1]}},
        },
        "grpo": {"group_size": 4, "joint_reward": {"mode": mode}, "bpgo": bpgo or {}, "self_paced": self_paced or {}},
    })


def rewards(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"color": torch.rand(3, 4, generator=g), "motion": torch.rand(3, 4, generator=g)}


def test_all_extensions_off_is_plain_grpo_on_the_weighted_reward():
    r = rewards()
    out = AdvantageEstimator(config(weights=(2.0, 0.5))).compute(PROMPTS, r)
    expected = group_advantages(2.0 * r["color"].double() + 0.5 * r["motion"].double()).flatten().float()
    assert torch.equal(out.advantages, expected)
    assert out.sample_weights is None


def test_bpgo_switches_off_equal_grpo_and_constant_shift_changes_nothing():
    r = rewards(1)
    plain = AdvantageEstimator(config()).compute(PROMPTS, r).advantages
    shifted = AdvantageEstimator(config()).compute(PROMPTS, {k: v + 3.0 for k, v in r.items()}).advantages
    torch.testing.assert_close(plain, shifted, atol=1e-5, rtol=1e-5)
    bpgo_off = AdvantageEstimator(config(bpgo={"ras": False, "crt": False})).compute(PROMPTS, r).advantages
    assert torch.equal(plain, bpgo_off)


def test_min_norm_uses_the_exact_simplex_weights():
    r = rewards(2)
    out = AdvantageEstimator(config(mode="min_norm")).compute(PROMPTS, r)
    per_reward = torch.stack([group_advantages(r[n].double()).flatten() for n in ("color", "motion")])
    c = min_norm_weights(per_reward)
    torch.testing.assert_close(out.advantages, (c @ per_reward).float())
    assert abs(out.logs["joint_c/color"] + out.logs["joint_c/motion"] - 1) < 1e-9


def test_bpgo_ras_down_weights_the_noisy_group_and_state_round_trips():
    estimator = AdvantageEstimator(config(bpgo={"ras": True, "crt": True}))
    prior_rewards = {"color": torch.full((3, 4), 0.5) + 0.01 * torch.arange(4.0), "motion": torch.full((3, 4), 0.5) + 0.01 * torch.arange(4.0)}
    estimator.observe_prior(PROMPTS, prior_rewards)
    step_rewards = {k: v.clone() for k, v in prior_rewards.items()}
    step_rewards["color"][1] = torch.tensor([0.0, 1.0, 0.0, 1.0])  # prompt 1: an ambiguous, noisy group
    step_rewards["motion"][1] = torch.tensor([1.0, 0.0, 1.0, 0.0])
    out = estimator.compute(PROMPTS, step_rewards)
    weights = out.sample_weights.view(3, 4)[:, 0]
    assert weights[1] < weights[0] and weights[1] < weights[2]
    restored = AdvantageEstimator(config(bpgo={"ras": True, "crt": True}))
    restored.load_state_dict(json.loads(json.dumps(estimator.state_dict())))
    assert torch.equal(restored.compute(PROMPTS, rewards(3)).advantages, estimator.compute(PROMPTS, rewards(3)).advantages)


def test_self_paced_weights_move_to_the_next_phase_after_saturation():
    cfg = config(self_paced={"enabled": True, "reward_phases": {"color": "visual_fidelity", "motion": "temporal_coherence"},
                             "window": 2, "patience": 1, "std_threshold": 0.05, "floor": 0.1})
    estimator = AdvantageEstimator(cfg)
    assert estimator.reward_weights()[0] > 0.8
    saturated = {"color": torch.full((3, 4), 0.99), "motion": torch.rand(3, 4)}
    for _ in range(4):
        out = estimator.compute(PROMPTS, saturated)
    assert out.logs["curriculum/phase_index"] >= 1
    assert estimator.reward_weights()[1] > estimator.reward_weights()[0]


def test_curriculum_must_cover_the_components():
    with pytest.raises(ValueError, match="reward_phases"):
        config(self_paced={"enabled": True, "reward_phases": {"color": "visual_fidelity"}})
