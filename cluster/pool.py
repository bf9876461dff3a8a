"""The accelerator pool: one placement group whose bundles every role shares (report §6.1.1).

Each bundle is `{"CPU": k, ACC: 1}` where ACC is "GPU" on GPU clusters and the custom
resource "accelerator" on CPU machines (a stand-in, so the same placement logic is exercised
without GPUs). Long-lived actors are placed on the SAME bundle with fractional shares of ACC
(overlapping assignment), and the driver moves the pool through phases instead of giving each
role its own hardware.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cluster.config import PoolConfig

log = logging.getLogger("teleboost.pool")

# Fractions of one bundle's accelerator each role holds while colocated; they sum to <= 1 so
# Ray lets all of them live on the bundle at once.
ROLE_SHARES = {"rollout": 0.3, "learner": 0.3, "reward": 0.2, "reward_worker": 0.05}


def ensure_ray(num_accelerators: int = 1) -> None:
    """Connect to a running cluster (RAY_ADDRESS / `ray job submit`) or start a local one."""
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
    else:
        ray.init(resources={"accelerator": num_accelerators}, include_dashboard=False)


@dataclass
class Pool:
    config: PoolConfig

    def __post_init__(self):
        self.accelerator = self._pick_accelerator()
        bundle = {"CPU": self.config.cpus_per_bundle}
        if self.accelerator:
            bundle[self.accelerator] = 1.0
        self.placement_group = placement_group([dict(bundle) for _ in range(self.config.num_bundles)], strategy="PACK")
        ray.get(self.placement_group.ready(), timeout=120)
        log.info("pool ready: %d bundles of %s", self.config.num_bundles, bundle)

    def _pick_accelerator(self) -> str | None:
        available = ray.cluster_resources()
        if self.config.accelerator != "auto":
            if available.get(self.config.accelerator, 0) < self.config.num_bundles:
                raise RuntimeError(
                    f"pool.accelerator={self.config.accelerator!r} but the cluster has "
                    f"{available.get(self.config.accelerator, 0)} of it for {self.config.num_bundles} bundles"
                )
            return self.config.accelerator
        for name in ("GPU", "accelerator"):
            if available.get(name, 0) >= self.config.num_bundles:
                return name
        log.warning("no GPU or 'accelerator' resource in the cluster: bundles hold CPU only")
        return None

    def actor_options(self, role: str, bundle_index: int = 0) -> dict:
        """Ray options placing `role` on a bundle with its fractional share of the accelerator."""
        share = ROLE_SHARES[role]
        options: dict = {
            "num_cpus": self.config.cpus_per_bundle * share,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=self.placement_group, placement_group_bundle_index=bundle_index
            ),
        }
        if self.accelerator == "GPU":
            options["num_gpus"] = share
        elif self.accelerator:
            options["resources"] = {self.accelerator: share}
        return options

    def shutdown(self) -> None:
        remove_placement_group(self.placement_group)
