"""bench/sft_ablation.py: its arms are the configs it claims, its statistics are right, and a
--quick run of the real SFT driver writes a report, results and curves whose numbers are finite."""

import json
import math

import pytest

from bench import sft_ablation


def test_arms_differ_only_in_the_switch_under_test(tmp_path):
    budget = sft_ablation.Budget(seeds=(0,), steps=8, eval_every=2, draws=1, camera_prompts=None, fluid_clips=2,
                                 arms={})
    configs = {(key, arm.name): sft_ablation.arm_config(key, arm, 0, budget, tmp_path / arm.name).model_dump()
               for key, arms in sft_ablation.ABLATIONS.items() for arm in arms}
    unweighted, structure = configs["a", "unweighted"], configs["a", "structure"]
    assert not unweighted["sft"]["structure"]["enabled"] and structure["sft"]["structure"]["enabled"]
    assert unweighted["sft"]["data"]["kinds"] == ("pan", "orbit", "object") and unweighted["policy"]["trainable"] == "full"
    unweighted["sft"]["structure"], structure["sft"]["structure"] = None, None
    assert {k for k in structure if structure[k] != unweighted[k]} == {"run_dir"}
    physics, control = configs["b", "physics"], configs["b", "decoder_only"]
    assert physics["policy"]["trainable"] == "decoder" and physics["sft"]["physics"]["enabled"]
    assert physics["sft"]["physics"]["motion_weight"] == 1.0 and control["sft"]["physics"]["motion_weight"] == 0.0
    assert physics["sft"]["checkpoint_every"] == 2 and budget.eval_steps == [0, 2, 4, 6, 8]


def test_interval_and_paired_difference():
    # mean 2, sample std 1, n = 3: half-width t(0.975, 2) / sqrt(3) = 4.303 / 1.732 = 2.484
    assert sft_ablation.interval([1.0, 2.0, 3.0]) == "2.000 [-0.484, 4.484]"
    assert sft_ablation.interval([0.5]) == "0.500"  # one seed: no interval
    assert sft_ablation.interval([0.1, 0.2], digits=1, percent=True).startswith("15.0% [")
    diff, better = sft_ablation.paired([1.0, 3.0, 2.0], [2.0, 2.0, 2.0], lower_is_better=True)
    assert diff.startswith("0.000 [") and better == "1/3"


@pytest.mark.slow
def test_quick_run_writes_finite_results(ray_cluster, tmp_path):
    sft_ablation.main(["--quick", "--out", str(tmp_path)])
    out = tmp_path / "quick"
    report = (out / "results.md").read_text()
    assert "## (a) Structure-aware vs unweighted SFT" in report and "## (b) Physics-aware SFT vs the base" in report
    for row in ("| camera (pan + orbit) |", "| base decoder, Farneback |", "| physics motion branch's own flow |",
                "| physics − base | epe |", "| 0 | "):  # the last: the structure weights' row of seed 0
        assert row in report, row
    assert (out / "sft_ablation.png").stat().st_size > 10_000
    results = json.loads((out / "results.json").read_text())
    assert results["budget"]["eval_steps"] == [0, 2]
    a = results["a"]["0"]
    assert set(a["arms"]) == {"unweighted", "structure"} and set(a["kinds"]) <= {"pan", "orbit"}
    for arm in a["arms"].values():
        assert all(math.isfinite(v) for step in arm.values() for draw in step for v in draw)
    b = results["b"]["0"]
    numbers = [*b["references"].values(), *(v for step in b["arms"]["physics"].values() for v in step.values())]
    assert len(numbers) > 20 and all(math.isfinite(v) for v in numbers)
    weights = results["a_weights"]["0"]
    assert weights["sft/weight_std"] > 0 and all(math.isfinite(v) for v in weights.values())
