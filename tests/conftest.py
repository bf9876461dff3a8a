"""Shared fixtures: ONE local Ray cluster per test session (the machine has 2 cores)."""

import os

import pytest
import torch

torch.set_num_threads(1)  # tests run beside Ray workers on 2 cores; keep each process to one thread


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A real local Ray cluster with a custom 'accelerator' resource standing in for GPUs."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(
        address="local",  # never attach to a head a developer started with `make cluster-up`
        num_cpus=4,
        resources={"accelerator": 2},
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
    )
    yield ray
    ray.shutdown()
