"""bench/dpo_toy.py: its configs are what it claims, its reversal/freeze tests see known cases,
and a --quick run of the real DPO driver writes a report, results and curves with finite numbers."""

import json
import math

import pytest
import torch

from bench import dpo_toy
from reward_services.base import build_critic


def budget(**changes):
    values = dict(seeds=(0,), steps=6, eval_every=2, grpo_steps=3, stage2="grpo", draws=1, prompts=None, clips=4,
                  held_out_clips=2)
    return dpo_toy.Budget(**{**values, **changes})


def test_configs_train_on_temporal_negatives_from_the_stage_ii_checkpoint(tmp_path):
    config = dpo_toy.dpo_config(budget(), 1, str(tmp_path / "stage2"), tmp_path / "dpo")
    assert config.policy.init_from == str(tmp_path / "stage2") and config.seed == 1
    pairs = config.dpo.pairs
    assert pairs.temporal.enabled and not pairs.on_policy.enabled and pairs.human is None
    assert config.dpo.eval_every == 2 and config.dpo.beta.anneal_steps == 6
    grpo = dpo_toy.grpo_config(budget(), tmp_path / "grpo")
    assert grpo.grpo.steps == 3 and grpo.policy.init_from is None and grpo.world.kinds == ("object",)


def test_moving_prompts_are_held_out_and_moving(tmp_path):
    from toyworld.prompts import parse
    from toyworld.world import is_held_out

    prompts = dpo_toy.moving_prompts(dpo_toy.dpo_config(budget(), 0, None, tmp_path), None)
    assert len(prompts) >= 20 and len(set(prompts)) == len(prompts)
    assert all(is_held_out(p) and parse(p).kind == "object" and parse(p).motion != "static" for p in prompts)


def test_reversal_and_freeze_flags_on_known_clips(tmp_path):
    config = dpo_toy.dpo_config(budget(), 0, None, tmp_path)
    calibration = dpo_toy.calibration(config, build_critic("motion"), count=4)
    assert calibration["rendered"]["reversed_judge"] == 0 and calibration["reversed"]["reversed_judge"] == 1
    assert calibration["rendered"]["frozen"] == 0 and calibration["frozen"]["frozen"] == 1
    still = torch.zeros(1, 5, 32, 32, 3, dtype=torch.uint8)
    flags = dpo_toy.motion_flags(still, ["a red square moves left on a gray background"], build_critic("motion"))
    assert flags["frozen"].item() == 1 and flags["reversed_judge"].item() == 0  # a still clip is frozen, not reversed


@pytest.mark.slow
def test_quick_run_writes_finite_results(ray_cluster, tmp_path):
    dpo_toy.main(["--quick", "--out", str(tmp_path)])
    out = tmp_path / "quick"
    report = (out / "results.md").read_text()
    for row in ("| held-out implicit accuracy (driver, vs the reference) |", "| reachable maximum of the accuracy",
                "| critic: reversed (time_direction < 0.5) or frozen (frozen_frames < 1) |",
                "| direction judge: plays better backwards |", "| reversed |"):
        assert row in report, row
    assert (out / "dpo_toy.png").stat().st_size > 10_000
    results = json.loads((out / "results.json").read_text())
    seed = results["seeds"]["0"]
    assert seed["held_out_accuracy_step0"] == 0.0  # policy = reference: every margin is exactly 0
    numbers = [seed["held_out_accuracy"], seed["held_out_margin"], *seed["start_preference"].values(),
               *seed["dpo_preference"].values(), *seed["start_samples"].values(), *seed["dpo_samples"].values()]
    assert all(math.isfinite(v) for v in numbers)
    assert [r["step"] for r in seed["records"] if "held_out/implicit_accuracy" in r] == [0, 1, 2]
