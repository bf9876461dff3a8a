"""Faults: actors dying mid-phase, corrupt checkpoints, non-finite rewards and losses."""

import math

import pytest
import ray
import torch

from actors.learner import Learner, OptimizerSpec
from cluster.grpo import GRPODriver, grpo_objective
from policy.sampling import sample_trajectories
from tests.cluster.test_grpo_integration import run_driver, tiny_config

pytestmark = pytest.mark.slow


def test_actors_killed_mid_phase_are_restarted_and_the_step_matches(ray_cluster, tmp_path):
    """The rollout actor dies mid-sample and then the reward actor mid-evaluate, both in step 1;
    each phase is redone with the same seeds, so the run equals an uninterrupted one."""
    reference, *_ = run_driver(tiny_config(tmp_path / "clean", steps=2))
    driver = GRPODriver(tiny_config(tmp_path / "crash", steps=2))
    driver.setup()
    try:
        for actors in (driver.rollouts, driver.rewards):
            ray.get(next(iter(actors.values())).arm_crash.remote())
        records = driver.train()
    finally:
        driver.shutdown()
    assert records[0]["actor_restarts"] == 2
    for clean, crashed in zip(reference, records):  # the redone phases neither lose nor repeat samples
        assert crashed["reward_mean"] == clean["reward_mean"]
        assert crashed["update/loss"] == clean["update/loss"]


def test_corrupt_newest_checkpoint_resumes_from_the_previous(ray_cluster, tmp_path):
    run_driver(tiny_config(tmp_path / "run", steps=2))
    newest = sorted((tmp_path / "run" / "checkpoints").iterdir())[-1]
    (newest / "policy.safetensors").write_bytes(b"truncated")
    records, _, version, rollout_version, _ = run_driver(tiny_config(tmp_path / "run", steps=2), resume=True)
    assert [r["step"] for r in records] == [1, 2]  # step 2 was recomputed from step 1's checkpoint
    assert version == rollout_version == 2


def test_learner_never_applies_a_non_finite_update():
    config = tiny_config("/tmp/unused")
    learner = Learner(config.policy, OptimizerSpec(1e-3), grpo_objective(config.grpo))
    before, _ = learner.get_weights()
    sigmas = torch.linspace(1.0, 0.0, 5)
    trajectories = sample_trajectories(learner.policy, ["a red square moves left on a gray background"] * 4, sigmas, 0.7,
                                       (5, 24, 24), torch.Generator().manual_seed(0))
    advantages = torch.tensor([[1.0, float("nan"), -1.0, 0.0]])
    metrics = learner.update(0, [4], trajectories, advantages, torch.ones(1), advantages[0])
    after, _ = learner.get_weights()
    assert metrics["skipped_updates"] == 1 and metrics["optimizer_steps"] == 0
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert math.isfinite(metrics["loss"])
