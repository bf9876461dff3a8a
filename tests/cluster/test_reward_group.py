"""Grouped joint reward (report §6.1.2) on the session's real Ray cluster: scores, profiles and their
cache, the timeline of a plan, recovery from a worker that dies mid-phase, placement on a pool
bundle, and the GPU path's MPS plumbing with stand-in NVIDIA binaries (the real GPU is `gpu`)."""

import json
import logging
import os
import shutil
import textwrap

import pytest
import ray
import torch

from cluster.reward_group import (
    RewardWorkerGroup,
    cpu_quota_grid,
    fastest_within,
    fastest_within_envelope,
    worker_spec,
)
from reward_services.base import build_critic
from toyworld.world import ToyWorld

SPECS = [
    "toy_judges",
    "perceptual",
    "safety",
    {"worker": "motion_fast", "critic": "motion", "options": {"time_direction": False}},
]


def batch(n, frames, side, seed=0):
    clips = ToyWorld(num_frames=frames, height=side, width=side).sample(n, seed)
    return torch.stack([clip.video for clip in clips]), [clip.prompt for clip in clips]


def direct_scores(spec, videos, prompts):
    spec = worker_spec(spec)
    output = build_critic(spec.critic, **spec.options).score(videos, prompts)
    return {f"{spec.worker}.{key}": value.float() for key, value in output.scores.items()}


def assert_same_scores(got, want):
    assert sorted(got) == sorted(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key


@pytest.fixture(scope="module")
def small():
    return batch(4, 9, 32)


@pytest.fixture(scope="module")
def group(ray_cluster, tmp_path_factory):
    with RewardWorkerGroup(SPECS, run_dir=tmp_path_factory.mktemp("reward_run"), repeats=1) as workers:
        yield workers


def test_scores_equal_direct_critics_in_both_modes(group, small):
    videos, prompts = small
    want = {}
    for spec in SPECS:
        want.update(direct_scores(spec, videos, prompts))
    serial = group.score(videos, prompts, mode="serial")
    planned = group.score(videos, prompts, mode="planned")  # profiles this shape, then plans
    assert_same_scores(serial.scores, want)
    assert_same_scores(planned.scores, want)
    assert all(value.shape == (4,) for value in planned.scores.values())
    assert [entry["group"] for entry in serial.timeline] == [0, 1, 2, 3]
    assert all(entry["quota"] == 1.0 for entry in serial.timeline)
    assert group.mps_status == "cpu-threads"
    assert group.metrics["mps_fallback"] == 0 and group.metrics["worker_restarts"] == 0
    assert group.metrics["last_phase_mode"] == "planned"
    for entry in planned.timeline:  # each worker ran at its fastest measured quota within its allotment
        profile = group.profiles[entry["worker"]]
        assert entry["run_quota"] <= entry["quota"]
        assert profile[entry["run_quota"]] == min(s for q, s in profile.items() if q <= entry["quota"])
    forced = group.score(videos, prompts, mode="serial", fastest_within_quota=False)
    assert all(entry["run_quota"] == 1.0 for entry in forced.timeline)
    assert_same_scores(forced.scores, want)


def test_fastest_within_quota():
    profile = {0.5: 0.8, 1.0: 7.4}
    assert fastest_within(profile, 1.0) == 0.5 and fastest_within(profile, 0.5) == 0.5
    assert fastest_within(profile, 0.25) == 0.25, "nothing measured within: run at the allotment"
    assert fastest_within({0.5: 1.0, 1.0: 1.0}, 1.0) == 1.0, "ties take the larger quota"
    assert fastest_within_envelope(profile) == {0.5: 0.8, 1.0: 0.8}
    assert fastest_within_envelope({0.25: 4.0, 0.5: 2.0, 1.0: 3.0}) == {0.25: 4.0, 0.5: 2.0, 1.0: 2.0}


def test_cpu_quota_is_a_thread_share(group):
    handle = group.workers["perceptual"]
    total = group.total_threads
    assert ray.get(handle.set_quota.remote(1.0))["threads"] == total
    assert ray.get(handle.set_quota.remote(0.1))["threads"] == 1
    assert cpu_quota_grid(2) == (0.5, 1.0)
    assert cpu_quota_grid(4) == (0.25, 0.5, 0.75, 1.0)
    assert len(cpu_quota_grid(64)) <= 12 and cpu_quota_grid(64)[-1] == 1.0
    with pytest.raises(ValueError, match="quota"):
        ray.get(handle.set_quota.remote(1.5))


def test_profile_cache_hit_then_refresh(group):
    videos, prompts = batch(2, 5, 24, seed=3)  # a shape no other test profiles
    n = len(SPECS)
    before = dict(group.metrics)
    first = group.profile(videos, prompts)
    assert group.metrics["profile_measurements"] == before["profile_measurements"] + n
    assert set(first) == set(group.worker_names)
    assert all(set(profile) == set(group.quota_grid) for profile in first.values())
    cache_file = group.profile_cache.path
    entries = json.loads(cache_file.read_text())["entries"]
    keys = {(e["worker"], tuple(e["input_shape"]), e["device"]) for e in entries}
    assert {(w, tuple(videos.shape), group.device_key()) for w in group.worker_names} <= keys
    mtime = cache_file.stat().st_mtime_ns

    second = group.profile(videos, prompts)
    assert second == first
    assert group.metrics["profile_cache_hits"] == before["profile_cache_hits"] + n
    assert group.metrics["profile_measurements"] == before["profile_measurements"] + n, "nothing re-measured"
    assert cache_file.stat().st_mtime_ns == mtime

    group.profile(videos, prompts, refresh=True)
    assert group.metrics["profile_measurements"] == before["profile_measurements"] + 2 * n
    assert group.metrics["profile_cache_hits"] == before["profile_cache_hits"] + n
    plan = group.plan()
    assert sorted(plan.quota_by_worker) == sorted(group.worker_names)


def test_timeline_groups_in_sequence_and_members_overlap(group):
    videos, prompts = batch(8, 17, 32, seed=1)  # ~0.1-0.3 s per critic, so overlap is visible
    plan = [{"motion_fast": 0.5, "toy_judges": 0.5}, {"perceptual": 1.0}, {"safety": 1.0}]
    scores, timeline = group.score(videos, prompts, plan=plan)
    assert [entry["worker"] for entry in timeline] == ["motion_fast", "toy_judges", "perceptual", "safety"]
    by_group = {}
    for entry in timeline:
        by_group.setdefault(entry["group"], []).append(entry)
        assert entry["quota"] == plan[entry["group"]][entry["worker"]]
        assert entry["end"] > entry["start"]
    for k in range(len(plan) - 1):
        assert min(e["start"] for e in by_group[k + 1]) >= max(e["end"] for e in by_group[k])
    pair = by_group[0]
    assert max(e["start"] for e in pair) < min(e["end"] for e in pair), "members of a group run at once"
    assert pair[0]["pid"] != pair[1]["pid"]
    assert all(value.shape == (8,) for value in scores.values())


def test_bad_plans_are_rejected(group, small):
    videos, prompts = small
    with pytest.raises(ValueError, match="unknown worker 'nope'"):
        group.score(videos, prompts, plan=[{"nope": 1.0}])
    with pytest.raises(ValueError, match="sum to"):
        group.score(videos, prompts, plan=[{"toy_judges": 0.75, "perceptual": 0.5}, {"safety": 1.0}, {"motion_fast": 1.0}])
    with pytest.raises(ValueError, match="exactly one group"):
        group.score(videos, prompts, plan=[{"toy_judges": 1.0}])
    with pytest.raises(ValueError, match="mode"):
        group.score(videos, prompts, mode="parallel")
    with pytest.raises(ValueError, match="appears twice"):
        RewardWorkerGroup(["safety", {"name": "safety"}])
    with pytest.raises(ValueError, match="unknown critic 'nope'"):
        RewardWorkerGroup([{"worker": "x", "critic": "nope"}])
    with pytest.raises(ValueError, match="quota_grid"):
        RewardWorkerGroup(["safety"], quota_grid=(0.0, 0.5))


def test_worker_dying_mid_phase_is_restarted_and_only_its_call_redone(ray_cluster, tmp_path, small):
    videos, prompts = small
    specs = [{"worker": "safety", "worker_options": {"_crash_on_call": 1}}, "perceptual"]
    with RewardWorkerGroup(specs, run_dir=tmp_path, repeats=1) as workers:
        first_pid = ray.get(workers.workers["safety"].ping.remote())
        scores, timeline = workers.score(videos, prompts, plan=[{"safety": 0.5, "perceptual": 0.5}])
        assert_same_scores(scores, {**direct_scores("safety", videos, prompts), **direct_scores("perceptual", videos, prompts)})
        attempts = {entry["worker"]: entry["attempts"] for entry in timeline}
        assert attempts == {"safety": 2, "perceptual": 1}
        assert len(timeline) == 2
        assert {e["worker"]: e["pid"] for e in timeline}["safety"] != first_pid, "Ray restarted the process"
        assert workers.metrics["worker_restarts"] == 1
        assert workers.metrics["worker_replacements"] == 0

        # A worker killed for good between phases is replaced by a fresh one.
        ray.kill(workers.workers["perceptual"], no_restart=True)
        again = workers.score(videos, prompts, mode="serial")
        assert_same_scores(again.scores, scores)
        assert workers.metrics["worker_restarts"] == 2
        assert workers.metrics["worker_replacements"] == 1


def test_workers_share_a_pool_bundle(ray_cluster, tmp_path, small):
    from cluster.config import PoolConfig
    from cluster.pool import Pool

    videos, prompts = small
    pool = Pool(PoolConfig(num_bundles=1, accelerator="accelerator", shares={"reward_worker": 0.05}))
    try:
        with RewardWorkerGroup(["safety", "perceptual"], pool=pool, run_dir=tmp_path) as workers:
            options = workers._actor_options(1.0)
            assert options["resources"] == {"accelerator": 0.05}  # the share comes from the config
            pool_default = pool.actor_options("reward_worker")["scheduling_strategy"]
            assert options["scheduling_strategy"].placement_group == pool_default.placement_group
            scores, timeline = workers.score(videos, prompts, plan=[{"safety": 0.5, "perceptual": 0.5}])
            assert len(timeline) == 2 and all(v.shape == (4,) for v in scores.values())
    finally:
        pool.shutdown()


# -- GPU path ---------------------------------------------------------------------------------


@pytest.fixture
def fake_mps_path(tmp_path, monkeypatch):
    """nvidia-smi and nvidia-cuda-mps-control stand-ins (as in tests/cluster/test_mps_daemon.py)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.log"
    scripts = {
        "nvidia-smi": '#!/bin/sh\n[ "$1" = "-L" ] || exit 2\necho "GPU 0: NVIDIA H100 (UUID: GPU-0)"\n',
        "nvidia-cuda-mps-control": textwrap.dedent(
            f"""\
            #!/bin/sh
            if [ "$1" = "-d" ]; then echo start >> {calls}; mkfifo "$CUDA_MPS_PIPE_DIRECTORY/control"; exit 0; fi
            read command
            echo "$command" >> {calls}
            rm -f "$CUDA_MPS_PIPE_DIRECTORY/control"
            """
        ),
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", os.pathsep.join([str(bin_dir), "/usr/bin", "/bin"]))
    return calls


def test_gpu_quota_change_restarts_worker_with_mps_env(ray_cluster, tmp_path, small, fake_mps_path):
    """With an MPS daemon (stand-in) each worker process carries its quota as
    CUDA_MPS_ACTIVE_THREAD_PERCENTAGE, and a new quota means a new process."""
    videos, prompts = small
    no_gpu_here = {"num_cpus": 0.05}  # the test cluster has no GPU resource to ask for
    with RewardWorkerGroup(["safety", "perceptual"], pool=no_gpu_here, run_dir=tmp_path, device="cuda") as workers:
        assert workers.mps_status == "mps" and workers.metrics["mps_fallback"] == 0
        handles = workers.workers
        assert ray.get(handles["safety"].set_quota.remote(1.0))["mps_percentage"] == 100
        with pytest.raises(ValueError, match="CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=100"):
            ray.get(handles["safety"].set_quota.remote(0.5))
        serial = workers.score(videos, prompts, mode="serial")
        assert workers.workers == handles, "quota 1.0 needs no new process"
        planned = workers.score(videos, prompts, plan=[{"safety": 0.6, "perceptual": 0.4}])
        assert_same_scores(planned.scores, serial.scores)
        for name, percentage in (("safety", 60), ("perceptual", 40)):
            assert workers.workers[name] != handles[name]
            assert ray.get(workers.workers[name].set_quota.remote(percentage / 100))["mps_percentage"] == percentage
    assert fake_mps_path.read_text().split() == ["start", "quit"], "daemon started once and stopped"


def test_gpu_without_mps_falls_back_to_plain_concurrency(ray_cluster, tmp_path, small, monkeypatch, caplog):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no NVIDIA tools, as on this machine
    videos, prompts = small
    with caplog.at_level(logging.WARNING, logger="teleboost.reward_workers"):
        workers = RewardWorkerGroup(["safety", "perceptual"], pool={"num_cpus": 0.05}, run_dir=tmp_path, device="cuda", repeats=1)
    with workers:
        assert workers.mps_status == "fallback: nvidia-cuda-mps-control not found on PATH"
        assert "plain concurrency" in caplog.text
        assert workers.metrics["mps_fallback"] == 1
        scores, timeline = workers.score(videos, prompts)
        assert workers.plan().groups == [{"safety": 0.5, "perceptual": 0.5}]
        assert {entry["group"] for entry in timeline} == {0}
        assert all(set(profile) == {1.0} for profile in workers.profiles.values())


@pytest.mark.gpu
def test_real_mps_on_gpu(ray_cluster, tmp_path):
    if shutil.which("nvidia-smi") is None or shutil.which("nvidia-cuda-mps-control") is None:
        pytest.skip("needs an NVIDIA GPU with nvidia-smi and nvidia-cuda-mps-control")
    if ray.cluster_resources().get("GPU", 0) < 1:
        pytest.skip("the session's Ray cluster has no GPU resource")
    videos, prompts = batch(4, 9, 128)  # torchvision's RAFT needs frames of at least 128 px
    specs = [{"worker": "motion_raft", "critic": "motion", "options": {"flow_backend": "raft", "raft_pretrained": False, "device": "cuda"}}, "safety"]
    with RewardWorkerGroup(specs, run_dir=tmp_path, device="cuda", repeats=1) as workers:
        assert workers.mps_status == "mps"
        serial = workers.score(videos, prompts, mode="serial")
        planned = workers.score(videos, prompts, plan=[{"motion_raft": 0.5, "safety": 0.5}])
        for key in serial.scores:
            assert torch.allclose(serial.scores[key], planned.scores[key], atol=1e-4)
