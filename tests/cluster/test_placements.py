"""Pool placements and reward execution modes on the session's real Ray cluster."""

import json

import pytest

from cluster.config import parse_config
from tests.cluster.test_grpo_integration import run_driver

pytestmark = pytest.mark.slow


def config(run_dir, pool, rewards=None):
    return parse_config({
        "run_dir": str(run_dir),
        "policy": {"model_path": None},
        "sampling": {"num_steps": 4},
        "clip": {"num_frames": 5, "height": 24, "width": 24},
        "pool": pool,
        "rewards": rewards or {},
        "grpo": {"steps": 1, "prompts_per_step": 2, "group_size": 4, "prompt_pool": 4, "clip_range": 0.2, "eval_every": 0},
    })


@pytest.mark.parametrize("placement", ["colocated", "disaggregated"])
def test_both_placements_complete_a_step_with_a_timeline(ray_cluster, tmp_path, placement):
    records, _, version, rollout_version, _ = run_driver(config(tmp_path, {"num_bundles": 2, "placement": placement}))
    (record,) = records
    assert version == rollout_version == 1
    # colocated: a learner per bundle, each on its bundle's one group (one minibatch of 4);
    # disaggregated: one main bundle, one learner, two groups in minibatches of group_size 4
    assert record["update/optimizer_steps"] == (1 if placement == "colocated" else 2)
    assert 0 < record["utilisation"] <= 1.0
    assert record["seconds/sample"] > 0 and record["seconds/evaluate"] > 0 and record["seconds/update"] > 0
    (timeline,) = [json.loads(line) for line in (tmp_path / "timeline.jsonl").read_text().splitlines()]
    busy = {(i["phase"], i["bundle"]) for i in timeline["intervals"]}
    if placement == "colocated":  # every bundle samples, evaluates and (data-parallel) updates
        assert busy == {("sample", "main/0"), ("sample", "main/1"), ("evaluate", "main/0"),
                        ("evaluate", "main/1"), ("update", "main/0"), ("update", "main/1")}
    else:  # the reward pool only evaluates, the main pool never does
        assert busy == {("sample", "main/0"), ("evaluate", "reward/0"), ("update", "main/0")}
    phases = {i["phase"]: i for i in timeline["intervals"]}
    assert phases["sample"]["end"] <= phases["evaluate"]["start"] + 1e-6 <= phases["update"]["start"] + 1e-6


def test_grouped_joint_reward_scores_like_the_reward_actor(ray_cluster, tmp_path):
    rewards = {"critics": [{"name": "toy_judges"}, {"name": "perceptual"}],
               "components": {"overall": {"score": "toy_judges.overall"}, "sharp": {"score": "perceptual.sharpness"}}}
    actor, *_ = run_driver(config(tmp_path / "actor", {"num_bundles": 1}, rewards))
    grouped, *_ = run_driver(config(tmp_path / "grouped", {"num_bundles": 1}, {**rewards, "execution": "grouped"}))
    score_keys = [k for k in actor[0] if k.startswith("score/")]
    assert "score/perceptual.sharpness" in score_keys
    for key in score_keys:  # workers run under a thread quota: float sums may reorder, nothing more
        assert grouped[0][key] == pytest.approx(actor[0][key], rel=1e-4, abs=1e-9), key
    assert (tmp_path / "grouped" / "reward_profiles.json").exists()
    assert grouped[0]["reward_workers/mps_status"] == "cpu-threads"  # the quota is a thread share here
    assert grouped[0]["reward_workers/profile_measurements"] == 2


def test_colocated_actors_are_awake_only_in_their_phase(ray_cluster, tmp_path):
    import ray

    from cluster.grpo import GRPODriver

    driver = GRPODriver(config(tmp_path, {"num_bundles": 1}))
    driver.setup()
    try:
        rollout = next(iter(driver.rollouts.values()))

        def awake(actor):
            return ray.get(actor.__ray_call__.remote(lambda self: self.awake))

        driver.activate("evaluate")
        assert not awake(rollout) and not awake(driver.learner)
        driver.activate("sample")
        assert awake(rollout) and not awake(driver.learner)
        driver.activate("update")
        assert awake(driver.learner) and not awake(rollout)
    finally:
        driver.shutdown()
