"""The accelerator pool and its two placements (report §6.1.1).

Bundles are `{"CPU": k, ACC: 1}` where ACC is "GPU" on GPU clusters and the custom resource
"accelerator" on CPU machines (a stand-in, so the same placement logic runs without GPUs).
Which roles a stage places where is the stage driver's; what share of a bundle's accelerator a
role holds comes from `pool.shares` in the config. An actor placed with a GPU share is given
that GPU by Ray and computes on it (`actors.device`).

- `colocated` (default): ONE placement group of N bundles. Every bundle hosts the stage's
  roles (e.g. GRPO: a rollout actor, a reward actor and a learner per bundle), each with a
  fractional share of the bundle's accelerator (overlapping assignment). The driver moves all N
  bundles through its phases, so no bundle waits for another role's hardware.
- `disaggregated` (the report's "before" picture): the same N bundles split into a main pool
  and a reward pool of `reward_bundles`, each role only ever using its own.

`PhaseTimeline` records, per step, when each bundle was busy in which phase, giving the
utilisation = busy accelerator-seconds / (pool size × wall time).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cluster.config import PoolConfig

log = logging.getLogger("teleboost.pool")

def ensure_ray(num_accelerators: int = 1) -> None:
    """Connect to a running cluster (RAY_ADDRESS / `ray job submit`) or start a local one."""
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
    else:
        ray.init(address="local", resources={"accelerator": num_accelerators}, include_dashboard=False)


@dataclass
class Pool:
    config: PoolConfig
    groups: dict[str, object] = field(default_factory=dict, init=False)

    def __post_init__(self):
        cfg = self.config
        self.accelerator = self._pick_accelerator()
        bundle = {"CPU": cfg.cpus_per_bundle}
        if self.accelerator:
            bundle[self.accelerator] = 1.0
        if cfg.placement == "colocated":
            sizes = {"main": cfg.num_bundles}
        else:  # the config validated num_bundles > reward_bundles
            sizes = {"main": cfg.num_bundles - cfg.reward_bundles, "reward": cfg.reward_bundles}
        for name, size in sizes.items():
            self.groups[name] = placement_group([dict(bundle) for _ in range(size)], strategy="PACK")
        ray.get([pg.ready() for pg in self.groups.values()], timeout=180)
        log.info("pool ready (%s): %s bundles of %s", cfg.placement, sizes, bundle)

    def _pick_accelerator(self) -> str | None:
        available = ray.cluster_resources()
        wanted = self.config.num_bundles
        if self.config.accelerator != "auto":
            if available.get(self.config.accelerator, 0) < wanted:
                raise RuntimeError(
                    f"pool.accelerator={self.config.accelerator!r} but the cluster has "
                    f"{available.get(self.config.accelerator, 0)} of it for {wanted} bundles"
                )
            return self.config.accelerator
        for name in ("GPU", "accelerator"):
            if available.get(name, 0) >= wanted:
                return name
        log.warning("no GPU or 'accelerator' resource for %d bundles: bundles hold CPU only", wanted)
        return None

    # -- where each role lives ---------------------------------------------------------------
    def main_bundles(self) -> list[tuple[str, int]]:
        """The bundles that sample and train (all of them when colocated)."""
        return [("main", i) for i in range(self._size("main"))]

    def reward_bundles(self) -> list[tuple[str, int]]:
        if "reward" in self.groups:
            return [("reward", i) for i in range(self._size("reward"))]
        return self.main_bundles()

    def all_bundles(self) -> list[tuple[str, int]]:
        return [(name, i) for name in self.groups for i in range(self._size(name))]

    def _size(self, name: str) -> int:
        return len(self.groups[name].bundle_specs)

    def actor_options(self, role: str, bundle: tuple[str, int] = ("main", 0)) -> dict:
        """Ray options placing `role` on `bundle` with its fractional share of the accelerator."""
        group, index = bundle
        share = self.config.shares[role]
        options: dict = {
            "num_cpus": self.config.cpus_per_bundle * share,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=self.groups[group], placement_group_bundle_index=index
            ),
        }
        if self.accelerator == "GPU":
            options["num_gpus"] = share
        elif self.accelerator:
            options["resources"] = {self.accelerator: share}
        return options

    def shutdown(self) -> None:
        for pg in self.groups.values():
            remove_placement_group(pg)


class PhaseTimeline:
    """Busy intervals per (phase, bundle) within one step, and the step's utilisation."""

    def __init__(self, bundles: list[tuple[str, int]]):
        self.bundles = bundles
        self.started = time.perf_counter()
        self.intervals: list[dict] = []

    def run(self, phase: str, calls: dict[tuple[str, int], list]) -> dict[tuple[str, int], list]:
        """Wait for each bundle's object refs, recording each bundle busy from the phase start
        until its last ref resolves; returns the resolved values per bundle."""
        start = time.perf_counter()
        pending = {ref: bundle for bundle, refs in calls.items() for ref in refs}
        finished: dict[tuple[str, int], float] = {}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                finished[pending.pop(ref)] = time.perf_counter()
        for bundle, end in finished.items():
            self.add(phase, bundle, start, end)
        return {bundle: ray.get(refs) for bundle, refs in calls.items()}

    def add(self, phase: str, bundle: tuple[str, int], start: float, end: float) -> None:
        """Record a busy interval measured elsewhere (perf_counter seconds)."""
        self.intervals.append({"phase": phase, "bundle": f"{bundle[0]}/{bundle[1]}",
                               "start": start - self.started, "end": end - self.started})

    def summary(self) -> dict[str, float]:
        wall = time.perf_counter() - self.started
        busy = sum(i["end"] - i["start"] for i in self.intervals)
        out = {"utilisation": busy / (len(self.bundles) * wall) if wall > 0 else 0.0, "step_seconds": wall}
        for phase in dict.fromkeys(i["phase"] for i in self.intervals):
            spans = [i for i in self.intervals if i["phase"] == phase]
            out[f"seconds/{phase}"] = max(i["end"] for i in spans) - min(i["start"] for i in spans)
        return out
