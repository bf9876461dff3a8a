"""Stage III end to end on the session's real Ray cluster: pairs from all three sources, DPO
steps with held-out accuracy and β's schedule, and an exact resume."""

import json

import numpy as np
import pytest
import ray
import torch

from cluster.config import parse_config
from cluster.dpo import DPODriver
from toyworld.world import ToyWorld

pytestmark = pytest.mark.slow
PROMPT = "a red square moves left on a gray background"


def human_jsonl(tmp_path):
    clip = ToyWorld(5, 24, 24).sample(1, seed=3)[0]
    good = (clip.video * 255).round().to(torch.uint8).numpy()
    np.save(tmp_path / "good.npy", good)
    np.save(tmp_path / "bad.npy", good[::-1].copy())
    rows = [{"prompt": PROMPT, "winner": "good.npy", "loser": "bad.npy", "aspect": "motion_quality", "annotator": "a1"},
            {"prompt": PROMPT, "winner": "missing.npy", "loser": "bad.npy", "aspect": "overall", "annotator": "a1"}]
    path = tmp_path / "human.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def dpo_config(run_dir, human, steps=3):
    return parse_config({
        "run_dir": str(run_dir),
        "clip": {"num_frames": 5, "height": 24, "width": 24},
        "policy": {"model_path": None},
        "sampling": {"num_steps": 3},
        "rewards": {"critics": [{"name": "toy_judges"}, {"name": "perceptual"}]},
        "dpo": {"steps": steps, "batch_size": 2, "learning_rate": 1e-3, "eval_every": 2, "checkpoint_every": 1,
                "beta": {"start": 5000, "floor": 2500, "anneal_steps": 2, "shape": "linear"},
                "pairs": {"temporal": {"clips": 2, "held_out_clips": 1},
                          "on_policy": {"enabled": True, "prompts": 2, "group_size": 4, "agreement_threshold": 0.0,
                                        "gap_threshold": 0.1},
                          "human": str(human)}},
    })


def run_dpo(config, resume=False):
    driver = DPODriver(config, resume=resume)
    driver.setup()
    try:
        records = driver.train()
        weights, _ = ray.get(driver.learner.get_weights.remote())
        return records, weights, driver.pair_counts
    finally:
        driver.shutdown()


def test_dpo_builds_pairs_trains_and_resumes_exactly(ray_cluster, tmp_path):
    human = human_jsonl(tmp_path)
    records, weights, counts = run_dpo(dpo_config(tmp_path / "full", human))
    assert counts["temporal"] == 6 and counts["held_out"] == 3  # 2 and 1 clips x (reverse, shuffle, freeze)
    assert counts["human"] == 1 and counts["human_rejected"] == 1  # the row naming a missing file
    assert counts["on_policy_considered"] == 2 * 6 and counts["on_policy"] <= 2 * 2
    baseline, *steps = records
    assert baseline["step"] == 0 and baseline["held_out/implicit_accuracy"] == 0.0  # policy = reference
    assert baseline["held_out/reward_margin"] == 0.0
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert [r["beta"] for r in steps] == [5000.0, 3750.0, 2500.0]  # linear anneal over 2 steps, then the floor
    assert steps[0]["implicit_accuracy"] == 0.0 and steps[0]["reward_margin"] == 0.0  # first step: policy = reference
    assert any(r["reward_margin"] != 0.0 for r in steps[1:]) and "held_out/implicit_accuracy" in steps[1]
    assert all(np.isfinite(r["loss"]) and r["optimizer_steps"] == 1 for r in steps)

    run_dpo(dpo_config(tmp_path / "split", human, steps=2))
    resumed, resumed_weights, resumed_counts = run_dpo(dpo_config(tmp_path / "split", human), resume=True)
    assert resumed_counts == counts  # the dataset was built once and reused
    assert resumed[-1]["loss"] == steps[-1]["loss"]
    assert all(torch.equal(resumed_weights[name], weights[name]) for name in weights)
