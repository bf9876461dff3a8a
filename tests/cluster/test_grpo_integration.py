"""GRPO end to end on the session's real Ray cluster, with real actors and a tiny Wan policy."""

import pytest
import ray
import torch

from actors.rollout import StaleWeightsError
from cluster.config import parse_config
from cluster.grpo import GRPODriver
from policy.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow


def tiny_config(run_dir, **grpo):
    return parse_config({
        "run_dir": str(run_dir),
        "policy": {"model_path": None},
        "sampling": {"num_steps": 4},
        "clip": {"num_frames": 5, "height": 24, "width": 24},
        "grpo": {"steps": 3, "prompts_per_step": 2, "group_size": 4, "prompt_pool": 6,
                 "learning_rate": 1e-3, "clip_range": 0.2, "checkpoint_every": 1, "eval_every": 0, **grpo},
    })


def run_driver(config, resume=False):
    driver = GRPODriver(config, resume=resume)
    driver.setup()
    try:
        records = driver.train()
        weights, version = ray.get(driver.learner.get_weights.remote())
        rollout_version = ray.get(next(iter(driver.rollouts.values())).ping.remote())
        return records, weights, version, rollout_version, driver
    finally:
        driver.shutdown()


def test_three_grpo_steps_update_weights_and_ship_them(ray_cluster, tmp_path):
    config = tiny_config(tmp_path / "run", eval_every=2)
    driver = GRPODriver(config)
    driver.setup()
    try:
        initial, version0 = ray.get(driver.learner.get_weights.remote())
        records = driver.train()
        final, version = ray.get(driver.learner.get_weights.remote())
        assert [r["step"] for r in records] == [0, 1, 2, 3]
        assert [r["step"] for r in records if "eval_reward" in r] == [0, 2, 3]  # baseline, every 2, last
        for record in records[1:]:
            assert 0.0 <= record["reward_mean"] <= 1.0 and record["reward_std"] >= 0.0
            assert "score/toy_judges.color" in record and record["update/optimizer_steps"] > 0
        assert version == version0 + 3
        assert ray.get(next(iter(driver.rollouts.values())).ping.remote()) == version  # the rollout actor holds the newest weights
        changed = [name for name in initial if not torch.equal(initial[name], final[name])]
        assert len(changed) > len(initial) // 2
        with pytest.raises(ray.exceptions.RayTaskError) as info:
            ray.get(next(iter(driver.rollouts.values())).sample.remote(["a red square moves left on a gray background"], 2, 0, version - 1))
        assert isinstance(info.value.as_instanceof_cause(), StaleWeightsError)
    finally:
        driver.shutdown()
    assert (tmp_path / "run" / "reward_curve.png").stat().st_size > 0
    assert len(list((tmp_path / "run" / "checkpoints").iterdir())) == 3


@pytest.mark.parametrize("ema_decay", [None, 0.5])
def test_resumed_run_matches_uninterrupted_run(ray_cluster, tmp_path, ema_decay):
    """With a weight average too: the online weights, the average and every record reproduce."""
    full_records, full_weights, *_ = run_driver(tiny_config(tmp_path / "full", steps=4, ema_decay=ema_decay))
    run_driver(tiny_config(tmp_path / "split", steps=2, ema_decay=ema_decay))
    resumed_records, resumed_weights, version, rollout_version, _ = run_driver(
        tiny_config(tmp_path / "split", steps=4, ema_decay=ema_decay), resume=True
    )
    assert [r["step"] for r in resumed_records] == [1, 2, 3, 4]
    for full, resumed in zip(full_records, resumed_records):
        assert full["reward_mean"] == resumed["reward_mean"]
        assert full["update/loss"] == resumed["update/loss"]
    assert version == rollout_version == 4
    for name, tensor in full_weights.items():
        assert torch.equal(tensor, resumed_weights[name]), name
    averages = [load_checkpoint(sorted((tmp_path / run / "checkpoints").iterdir())[-1])[0]["policy"] for run in ("full", "split")]
    assert all(torch.equal(averages[0][name], averages[1][name]) for name in averages[0])
    same_as_online = [torch.equal(averages[0][name], full_weights[name]) for name in full_weights]
    assert all(same_as_online) == (ema_decay is None)  # what a checkpoint delivers: the average, when there is one


def test_fixed_seed_eval_samples_the_weight_average(ray_cluster, tmp_path):
    """grpo.ema_decay: the rollouts hold the average (under the negative version, so it cannot be
    taken for the online weights) for the evaluation only, and the online weights after it."""
    driver = GRPODriver(tiny_config(tmp_path, steps=2, ema_decay=0.5, eval_every=1))
    driver.setup()
    prompt = ["a red square moves left on a gray background"]
    try:
        records = driver.train()
        rollout = next(iter(driver.rollouts.values()))
        assert ray.get(rollout.ping.remote()) == driver.version == 2
        with driver.averaged_rollouts():
            assert ray.get(rollout.ping.remote()) == driver.version == -2
            averaged_videos = ray.get(rollout.sample.options(num_returns=3).remote(prompt, 2, 7, -2)[0])
            with pytest.raises(ray.exceptions.RayTaskError):  # the online version is refused meanwhile
                ray.get(rollout.sample.options(num_returns=3).remote(prompt, 2, 7, 2)[0])
        assert ray.get(rollout.ping.remote()) == driver.version == 2
        online_videos = ray.get(rollout.sample.options(num_returns=3).remote(prompt, 2, 7, 2)[0])
    finally:
        driver.shutdown()
    assert [r["step"] for r in records if "eval_reward" in r] == [0, 1, 2]
    assert not torch.equal(averaged_videos, online_videos)  # same noise, different weights


def test_all_stage_two_extensions_together(ray_cluster, tmp_path):
    """ViPO maps, BPGO prior + trust, min-norm joint reward and the curriculum in one real run."""
    config = parse_config({
        "run_dir": str(tmp_path / "ext"),
        "policy": {"model_path": None},
        "sampling": {"num_steps": 4},
        "clip": {"num_frames": 5, "height": 24, "width": 24},
        "rewards": {"critics": [{"name": "toy_judges"}],
                    "components": {"color": {"score": "toy_judges.color"}, "motion": {"score": "toy_judges.motion"}}},
        "grpo": {"steps": 2, "prompts_per_step": 2, "group_size": 4, "prompt_pool": 2, "clip_range": 0.2, "eval_every": 0,
                 "joint_reward": {"mode": "min_norm"}, "bpgo": {"ras": True, "crt": True, "prior_groups": 1},
                 "vipo": {"lam": 0.5, "patch": 4},
                 "self_paced": {"enabled": True, "reward_phases": {"color": "visual_fidelity", "motion": "semantic_alignment"}}},
    })
    records, weights, version, rollout_version, driver = run_driver(config)
    assert version == rollout_version == 2
    for record in records:
        # 2 steps < the curriculum's window of 4: still in phase 1 (visual fidelity), where motion's
        # weight is 0, and min-norm must respect it (issue 11: it used to give motion c = 0.5)
        assert record["curriculum/phase_index"] == 0.0
        assert record["reward_weight/color"] == 1.0 and record["reward_weight/motion"] == 0.0
        assert record["joint_c/color"] == 1.0 and record["joint_c/motion"] == 0.0
        assert 0 < record["bpgo/group_weight_min"] <= record["bpgo/group_weight_max"]
        assert record["update/optimizer_steps"] > 0 and record["update/skipped_updates"] == 0
    state = __import__("json").loads(sorted((tmp_path / "ext" / "checkpoints").iterdir())[-1].joinpath("state.json").read_text())
    assert state["advantage_estimator"]["components"] == ["color", "motion"]
    assert state["advantage_estimator"]["curriculum"]["phase"] == "visual_fidelity"


def test_drift_budget_raises_the_kl_coefficient_when_the_policy_drifts(ray_cluster, tmp_path):
    """grpo.kl_target_deviation (issue 11 item 5): a step whose velocity drifted from the reference
    by more than 1.5x the budget doubles kl_beta for the next step (never below the configured one)."""
    records, *_ = run_driver(tiny_config(tmp_path, steps=3, kl_beta=0.01, kl_target_deviation=1e-6))
    steps = [r for r in records if "reward_mean" in r]
    assert steps[0]["kl_beta"] == 0.01
    for before, after in zip(steps, steps[1:]):
        assert before["update/velocity_deviation"] > 1.5e-6  # a tiny budget: every step overshoots it
        assert after["kl_beta"] == 2 * before["kl_beta"]
