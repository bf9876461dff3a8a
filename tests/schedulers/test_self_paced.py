"""Self-Paced curriculum (report §3.4) on scripted reward streams."""

import json

import pytest
import torch

from schedulers.self_paced import PHASES, SelfPacedCurriculum

REWARD_PHASES = {
    "sharpness": "visual_fidelity",
    "no_collapse": "visual_fidelity",
    "smoothness": "temporal_coherence",
    "text_match": "semantic_alignment",
}
_PATTERN = torch.tensor([-1.0, 1.0, -1.0, 1.0])  # population std exactly 1


def _groups(mean: float, std: float, p: int = 3) -> torch.Tensor:
    return (mean + std * _PATTERN).repeat(p, 1)


def _step(visual_std=0.5, visual_mean=0.5, temporal_std=0.5, semantic_std=0.5):
    return {
        "sharpness": _groups(visual_mean, visual_std),
        "no_collapse": _groups(visual_mean, visual_std),
        "smoothness": _groups(0.5, temporal_std),
        "text_match": _groups(0.5, semantic_std),
        "safety": _groups(1.0, 0.0),  # not in the curriculum: ignored
    }


def _curriculum(**kw):
    kw = {"window": 5, "std_threshold": 0.05, "patience": 2, "floor": 0.1} | kw
    return SelfPacedCurriculum(REWARD_PHASES, **kw)


def test_no_transition_while_current_reward_discriminates():
    cur = _curriculum()
    for _ in range(100):
        cur.observe(_step(visual_std=0.3, temporal_std=0.0, semantic_std=0.0))
    assert cur.phase == "visual_fidelity" and cur.transitions == []


def test_transition_after_patience_windows_of_saturation():
    cur = _curriculum()
    for step in range(1, 41):
        cur.observe(_step(visual_std=0.3 if step <= 20 else 0.01))
        # windows close at 25 and 30 with low std; patience 2 -> advance at step 30 exactly
        assert cur.phase == ("visual_fidelity" if step < 30 else "temporal_coherence"), step
    assert [(t["step"], t["from"], t["to"]) for t in cur.transitions] == [
        (30, "visual_fidelity", "temporal_coherence")
    ]
    assert "sharpness" in cur.transitions[0]["reason"]
    for _ in range(30):  # temporal reward still discriminates: stays put, never moves back
        cur.observe(_step(visual_std=0.5, temporal_std=0.3))
    assert cur.phase == "temporal_coherence"


def test_hysteresis_single_low_step_or_window_does_not_trigger():
    cur = _curriculum()
    for step in range(60):
        cur.observe(_step(visual_std=0.0 if step % 10 == 3 else 0.3))
    assert cur.phase == "visual_fidelity"
    per_step = _curriculum(window=1, patience=3)
    for step in range(60):  # low-std single windows, and even pairs, interrupted by a high one
        per_step.observe(_step(visual_std=0.01 if step % 3 != 2 else 0.3))
    assert per_step.phase == "visual_fidelity"
    for _ in range(3):
        per_step.observe(_step(visual_std=0.01))
    assert per_step.phase == "temporal_coherence"


def test_saturation_threshold_requires_high_mean():
    cur = _curriculum(saturation_threshold=0.9)
    for _ in range(30):  # flat at 0: too hard, not mastered
        cur.observe(_step(visual_std=0.0, visual_mean=0.0))
    assert cur.phase == "visual_fidelity"
    for _ in range(10):
        cur.observe(_step(visual_std=0.0, visual_mean=0.95))
    assert cur.phase == "temporal_coherence"


def test_weights_sum_to_one_with_floor_on_earlier_phases():
    cur = _curriculum(window=1, patience=1, floor=0.2)
    seen = []
    for phase in PHASES:
        w = cur.weights()
        assert sum(w.values()) == pytest.approx(1.0, abs=1e-12)
        seen.append(w)
        if phase != PHASES[-1]:
            cur.observe(_step(visual_std=0.0, temporal_std=0.0))
    assert seen[0] == {"sharpness": 0.5, "no_collapse": 0.5, "smoothness": 0.0, "text_match": 0.0}
    assert seen[1] == pytest.approx({"sharpness": 0.1, "no_collapse": 0.1, "smoothness": 0.8, "text_match": 0.0})
    assert seen[2] == pytest.approx({"sharpness": 0.2 / 3, "no_collapse": 0.2 / 3, "smoothness": 0.2 / 3,
                                     "text_match": 0.8})
    cur.set_phase("visual_fidelity", reason="operator reset")  # explicit move back
    assert cur.phase == "visual_fidelity" and cur.transitions[-1]["reason"] == "operator reset"


def test_state_round_trip_continues_identically():
    stream = [_step(visual_std=0.3 if s < 12 else 0.01, temporal_std=0.3 if s < 33 else 0.02) for s in range(60)]
    a = _curriculum(window=4, patience=2)
    for batch in stream[:26]:  # stop mid-window and mid-streak
        a.observe(batch)
    b = _curriculum(window=4, patience=2)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    for batch in stream[26:]:
        a.observe(batch)
        b.observe(batch)
        assert a.phase == b.phase and a.weights() == b.weights()
    assert a.state_dict() == b.state_dict()
    assert [t["to"] for t in a.transitions] == ["temporal_coherence", "semantic_alignment"]
    with pytest.raises(ValueError, match="reward_phases"):
        SelfPacedCurriculum({"sharpness": "visual_fidelity"}).load_state_dict(a.state_dict())


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="'aesthetic'.*'style'"):
        SelfPacedCurriculum({"aesthetic": "style"})
    with pytest.raises(ValueError, match="floor"):
        SelfPacedCurriculum({"a": "visual_fidelity"}, floor=1.0)
    only_semantic = SelfPacedCurriculum({"a": "semantic_alignment"})  # empty phases are skipped
    assert only_semantic.phase == "semantic_alignment" and only_semantic.weights() == {"a": 1.0}
