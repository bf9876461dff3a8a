"""bench/ablations.py is wired correctly: every arm is a valid config whose reward components
name scores its critics really produce, and the metrics compute what they say."""

import json
import math
from pathlib import Path

import pytest

from bench import ablations
from reward_services.base import build_critic


@pytest.mark.parametrize("key", sorted(ablations.ABLATIONS))
def test_every_arm_is_a_valid_config_with_real_scores(key, tmp_path):
    ablation = ablations.ABLATIONS[key]
    produced = set()
    for spec in ablation.rewards["critics"]:
        critic = build_critic(spec["name"], **spec.get("options", {}))
        produced |= {f"{critic.name}.{score}" for score in critic.score_names}
    for component in ablation.rewards["components"].values():
        assert component["score"] in produced
    configs = [ablation.config(arm, seed=0, steps=4, run_dir=tmp_path / arm) for arm in [*ablation.arms, *ablation.legacy]]
    baseline, *others = (c.model_dump() for c in configs)
    for other in others:  # arms differ only in the switch under test
        assert {k for k in other if other[k] != baseline[k]} <= {"grpo", "run_dir"}
    for curve in ablation.curves:
        assert curve.startswith(("reward", "score/")) and (
            curve == "reward_mean" or curve.split("/", 1)[1] in produced | set(ablation.rewards["components"]))


def test_metrics_on_scripted_records():
    records = [{"step": i + 1, "reward_mean": 0.1 + 0.01 * i, "reward/smoothness": 0.5, "reward/warp": 0.5 + 0.02 * i,
                "reward/count": 0.5 - 0.01 * i} for i in range(20)]
    k = ablations.window(records)
    assert k == 5
    assert ablations.improvement(records, "reward_mean") == pytest.approx(0.15)
    assert ablations.final(records, "reward_mean") == pytest.approx(0.1 + 0.01 * 17)
    assert ablations.worst_improvement(records) == pytest.approx(-0.15)
    # the trailing 3-step mean first reaches step 1 + 0.05 = 0.15 at step 7 (steps 5-7: 0.14, 0.15, 0.16)
    assert ablations.steps_to_target(records) == 7.0
    assert ablations.steps_to_target(records, delta=1.0) == 21.0  # never: budget + 1
    assert math.isnan(ablations.phase_switch_step(records))
    assert math.isnan(ablations.count_share(records))  # weighted_sum logs no joint weights
    for r in records:
        r.update({"joint_c/smoothness": 0.25, "joint_c/warp": 0.25, "joint_c/count": 1.0})
    assert ablations.count_share(records) == pytest.approx(2 / 3)
    records[9]["curriculum/phase_index"] = 1.0
    assert ablations.phase_switch_step(records) == 10.0


def test_paired_evidence_interval_and_win_count():
    # mean 0.1, sample std 0.2 / sqrt(3), n = 4: half-width t(0.975, 3) * std / 2 = 3.182 * 0.0577 = 0.184
    diffs = [0.0, 0.2, 0.0, 0.2]
    assert ablations.paired_evidence(diffs, higher_is_better=True, digits=3) == "[-0.084, +0.284]; better on 2/4"
    assert ablations.paired_evidence(diffs, higher_is_better=False, digits=3).endswith("better on 0/4")
    assert ablations.paired_evidence([0.5, math.nan], higher_is_better=True, digits=3) == "n/a"


def test_resume_reuses_a_finished_run_whatever_the_spelling_of_out(tmp_path, monkeypatch):
    """A run stored under `--out runs/x` is found again under its absolute spelling (and the
    reverse); a run whose training config differs is not (it would start a driver: here, fail)."""
    ablation = ablations.ABLATIONS["a"]
    monkeypatch.chdir(tmp_path)
    relative = ablation.config("GRPO", seed=0, steps=4, run_dir=Path("out") / "a" / "GRPO" / "seed0")
    Path(relative.run_dir).mkdir(parents=True)
    records = [{"step": 1, "reward_mean": 0.5}]
    stored = {"config": relative.model_dump(mode="json"), "records": records}
    (Path(relative.run_dir) / "bench_run.json").write_text(json.dumps(stored))

    monkeypatch.setattr("cluster.grpo.GRPODriver", _NoDriver)
    assert ablations.run_arm(ablation, "GRPO", 0, 4, tmp_path / "out", resume=True) == (records, True)
    stored["config"]["grpo"]["learning_rate"] *= 2
    (Path(relative.run_dir) / "bench_run.json").write_text(json.dumps(stored))
    with pytest.raises(_Recomputed):
        ablations.run_arm(ablation, "GRPO", 0, 4, tmp_path / "out", resume=True)


class _Recomputed(Exception):
    pass


class _NoDriver:
    def __init__(self, config):
        raise _Recomputed(config.run_dir)


def test_legacy_arms_restore_what_issue_11_replaced():
    for key in ("a", "a2", "a3"):
        (label, (overrides, combined)), = ablations.ABLATIONS[key].legacy.items()
        config = ablations.ABLATIONS[key].config(label, seed=0, steps=4, run_dir=Path("x"))
        assert config.grpo.bpgo.prior_rule == "ema" and config.grpo.bpgo.ras and config.grpo.bpgo.crt and not combined
    assert ablations.ABLATIONS["a"].config("BPGO", 0, 4, Path("x")).grpo.bpgo.prior_rule == "frozen"
    for key in ("c", "d"):
        assert all(combined for _, combined in ablations.ABLATIONS[key].legacy.values())
    # every ablation issue 11 touched has its README figures, and only those
    assert {k for k, _ in ablations.BEFORE_ISSUE_11} == {"a", "a2", "a3", "c", "d"}
    for key, arm in ablations.BEFORE_ISSUE_11:
        assert arm in ablations.ABLATIONS[key].arms


def test_combined_surrogate_driver_trains_one_surrogate_of_the_combined_advantage():
    import torch

    from cluster.advantage import AdvantageResult

    seen = {}

    class Base:
        def update(self, timeline, step, shards, trajectory_refs, advantages):
            seen["advantages"] = advantages
            return {}

    driver = ablations.combined_surrogate_driver(Base)()
    per_component = torch.tensor([[1.0, -1.0, 2.0, 0.0], [0.0, 2.0, -2.0, 0.0]])
    c = torch.tensor([0.25, 0.75])
    combined = c @ per_component
    kept = torch.tensor([[1.0, 1.0, 0.0, 0.0]] * 2)  # a dropped group: weight 0 in every component
    driver.update(None, 1, {}, [], AdvantageResult(per_component, c, kept, combined, {}))
    out = seen["advantages"]
    assert torch.equal(out.advantages, combined[None]) and out.component_weights.tolist() == [1.0]
    assert torch.equal(out.sample_weights, kept[:1])
    with pytest.raises(ValueError, match="trust"):
        driver.update(None, 1, {}, [], AdvantageResult(per_component, c, torch.tensor([[1.0] * 4, [2.0] * 4]), combined, {}))


def test_before_after_table_pairs_the_readme_figures_with_this_run():
    records = lambda gain: [{"step": i + 1, "reward_mean": 0.1, "score/noisy_toy.clean": 0.1 + gain * i / 9,
                             "reward/noisy": 0.1} for i in range(10)]
    results = {"a": {"GRPO": [records(0.1), records(0.2)], "BPGO": [records(0.2), records(0.2)]}}
    lines = ablations.before_after(results)
    assert any(line.startswith("| a | GRPO | +0.306 ± 0.098 |") for line in lines)
    bpgo = next(line for line in lines if line.startswith("| a | BPGO |"))
    assert "(−0.002 ± 0.090, [−0.060, +0.055], 6/12)" in bpgo and "better on 1/2" in bpgo
