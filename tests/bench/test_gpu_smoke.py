"""bench/gpu_smoke.py on the CPU (--tiny), so the GPU benchmark's code path cannot rot."""

import pytest

from bench import gpu_smoke

pytestmark = pytest.mark.slow


def test_gpu_smoke_tiny_runs_two_grpo_steps_of_the_real_driver(ray_cluster, tmp_path, capsys):
    result = gpu_smoke.main(["--tiny", "--out", str(tmp_path)])
    assert result["steps"] == 2 and result["weights_version"] == 2
    assert all(len(seconds) == 2 and min(seconds) > 0 for seconds in result["seconds"].values())
    roles = {key.split("/")[0] for key in result["memory_bytes"]}
    assert roles == {"rollout", "reward", "learner"}  # every multiplexed role reports what it holds
    assert result["memory_bytes"]["rollout/idle_bytes"] == 0  # no accelerator memory on a CPU pool
    assert result["memory_bytes"]["learner/managed_bytes"] > 0
    assert result["forward_tflop"] > 0 and result["tflops_per_second"] > 0
    assert (tmp_path / "gpu_smoke.json").exists() and "TFLOP/s" in capsys.readouterr().out
