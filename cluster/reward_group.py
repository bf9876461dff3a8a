"""Grouped joint reward: the driver-side group of reward workers (report §6.1.2).

`RewardWorkerGroup` is what a driver holds for the joint-reward phase; each member is an
`actors.reward_worker.RewardWorker` process running one lightweight critic:

1. `profile()` times every worker alone at each quota of a grid, C_w(q) (median of repeats after a
   warm-up), and caches the result on disk (`run_dir/reward_profiles.json`, keyed by worker,
   input shape and device) so later runs and phases reuse it; `refresh=True` re-measures.
2. `plan()` hands the profiles to `schedulers.mps.plan_reward_groups`, which picks the partition
   into groups and each worker's quota (report eqs. 7-9).
3. `score()` runs the groups one after another and the members of a group at once (every member's
   call is launched, then all are awaited), each member at its planned quota, and returns the scores
   with a wall-clock timeline of who ran when (for the pool's utilisation accounting).

Once an input shape is profiled, a worker allotted q runs at the measured quota <= q that was
fastest (`schedulers.mps.fastest_within`), and the planner sees that envelope;
`fastest_within_quota=False` turns this off.

On NVIDIA GPUs the quota is `CUDA_MPS_ACTIVE_THREAD_PERCENTAGE` under an MPS control daemon this
group starts. MPS reads it when a process creates its CUDA context, so the group replaces a
worker's process, with the new value in its Ray `runtime_env`, whenever its planned quota changes
(before the group's timed run starts); profiling starts one process per (worker, quota) at once,
so their start-ups (~10 s each) overlap, and times them one at a time. Workers hold fractional,
overlapping GPU shares (`num_gpus` < 1) so all of them live on one GPU. When MPS cannot run (no
binary, no GPU, daemon failed) the group falls back to plain concurrency: every worker in ONE
group, no enforced quota; `mps_status` says "fallback: <reason>", a warning is logged and
`metrics["mps_fallback"]` is 1. On CPU a quota is a thread share (`mps_status` "cpu-threads").

Faults: workers are created with `max_restarts=-1` and no automatic task retry. A worker that dies
mid-phase is restarted by Ray (or, if it is dead for good, replaced by the group) and only ITS call
of the current group is submitted again; results are collected per worker and each worker's slot
is filled exactly once, so no sample is lost or counted twice. Every recovery is counted in
`metrics["worker_restarts"]`.

Supports: any registered critic (`reward_services.base.build_critic`, seeded by name, so a
randomly initialised critic scores the same in every process and under every schedule), several
workers of the same critic under distinct worker names, placement on a `cluster.pool.Pool`
bundle with the "reward_worker" share, or explicit Ray options.
Does not: start MPS on other nodes (the daemon runs on the node of the process that builds the
group, so on a multi-node cluster place the workers on that node's bundle), model interference
between co-running workers beyond what the alone-profiles show (see `schedulers.mps`), or notice
that critic options changed under an unchanged worker name (give the worker a new name, or profile
with `refresh=True`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import ray
import torch
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError

from actors.reward_worker import RewardWorker, WorkerRun
from cluster.config import DEFAULT_SHARES
from cluster.mps_daemon import MPSDaemon
from reward_services.base import available_critics
from schedulers.mps import (
    DEFAULT_CUDA_QUOTA_GRID,
    QUOTA_SUM_TOLERANCE,
    ProfileCache,
    RewardPlan,
    cpu_quota_grid,
    fastest_within,
    fastest_within_envelope,
    mps_percentage,
    plan_reward_groups,
    runtime_at,
)

log = logging.getLogger("teleboost.reward_workers")

DEVICES = ("cpu", "cuda")
PROFILE_CACHE_NAME = "reward_profiles.json"
# A failed call is tried this many times in all before the phase gives up.
DEFAULT_MAX_ATTEMPTS = 3
# How long a recovering worker may take to answer a ping before the group replaces it.
DEFAULT_RECOVERY_SECONDS = 120.0


@dataclass(frozen=True)
class WorkerSpec:
    """One reward worker: its name, the critic it builds, and extra `RewardWorker` arguments.

    worker_options: keyword arguments for `RewardWorker` itself (tests pass `_crash_on_call`).
    """

    worker: str
    critic: str
    options: dict = field(default_factory=dict)
    worker_options: dict = field(default_factory=dict)


def worker_spec(spec) -> WorkerSpec:
    """Normalise a spec: a critic name, a `cluster.config.CriticSpec`, a mapping or a WorkerSpec.

    Mappings take "worker" (or "name"), "critic" (default: the worker name), "options" and
    "worker_options".
    """
    if isinstance(spec, WorkerSpec):
        return spec
    if isinstance(spec, str):
        return WorkerSpec(spec, spec)
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"worker", "name", "critic", "options", "worker_options"}
        if unknown:
            raise ValueError(
                f"critic_specs: unknown keys {sorted(unknown)} in {dict(spec)!r}; "
                "accepted: worker (or name), critic, options, worker_options"
            )
        worker = spec.get("worker", spec.get("name"))
        if not worker:
            raise ValueError(f"critic_specs: {dict(spec)!r} names no worker; give 'worker' or 'name'")
        return WorkerSpec(
            str(worker),
            str(spec.get("critic", worker)),
            dict(spec.get("options") or {}),
            dict(spec.get("worker_options") or {}),
        )
    if hasattr(spec, "name") and hasattr(spec, "options"):  # cluster.config.CriticSpec
        return WorkerSpec(spec.name, spec.name, dict(spec.options))
    raise TypeError(f"critic_specs: cannot read a worker spec from {spec!r}")


class ScoredPhase(NamedTuple):
    """What `RewardWorkerGroup.score` returns.

    scores: {"worker.score": Tensor[B]} over all workers.
    timeline: one {worker, group, quota, run_quota, start, end, attempts, pid} per worker, in run
        order; quota is the allotment, run_quota what the worker ran at (see `fastest_within`);
        start/end are wall-clock seconds (time.time()) taken inside the worker around its critic.
    """

    scores: dict[str, torch.Tensor]
    timeline: list[dict]


class RewardWorkerGroup:
    """The joint-reward phase's workers, their profiles and plan; see the module docstring.

    critic_specs: one spec per worker (see `worker_spec`); worker names must be distinct.
    pool: a `cluster.pool.Pool` (workers go on `bundle` — the pool's default bundle when None —
        with the "reward_worker" share, overlapping the other roles), a mapping of Ray actor
        options used as is, or None (a fractional "reward_worker" share of CPU, and of a GPU on "cuda").
    bundle: passed to `pool.actor_options("reward_worker", bundle)` as the pool names bundles.
    run_dir: where the profile cache and the MPS pipe/log directories live.
    quota_grid: quotas to profile and plan with (default: `cpu_quota_grid(total_threads)` on CPU,
        `DEFAULT_CUDA_QUOTA_GRID` on GPU; 1.0 is always added).
    device: "cpu" or "cuda".
    total_threads: threads a quota of 1.0 means (default: this machine's CPU count).
    repeats: timed calls per quota when profiling (the median is kept).
    fastest_within_quota: once this input shape is profiled, run each worker at the measured quota
        <= its allotment that was fastest (`fastest_within`), and plan with that envelope; False
        runs every worker at exactly its allotted quota.
    """

    def __init__(
        self,
        critic_specs: Sequence,
        pool=None,
        run_dir: str | os.PathLike = ".",
        quota_grid: Sequence[float] | None = None,
        device: str = "cpu",
        total_threads: int | None = None,
        bundle=None,
        repeats: int = 3,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        recovery_seconds: float = DEFAULT_RECOVERY_SECONDS,
        fastest_within_quota: bool = True,
    ):
        if device not in DEVICES:
            raise ValueError(f"device={device!r} is not one of {DEVICES}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts={max_attempts} must be >= 1")
        self.specs = {}
        for spec in map(worker_spec, critic_specs):
            if spec.worker in self.specs:
                raise ValueError(f"critic_specs: worker name {spec.worker!r} appears twice; give each worker a distinct name")
            self.specs[spec.worker] = spec
        if not self.specs:
            raise ValueError("critic_specs: expected at least one critic")
        known = available_critics()
        for spec in self.specs.values():  # fail here, not as a dead actor
            if spec.critic not in known:
                raise ValueError(f"critic_specs: worker {spec.worker!r} names unknown critic {spec.critic!r}; available: {known}")
        if quota_grid is not None and not all(0.0 < float(q) <= 1.0 for q in quota_grid):
            raise ValueError(f"quota_grid={tuple(quota_grid)!r}: every quota must lie in (0, 1]")
        self.device = device
        self.run_dir = Path(run_dir)
        self.total_threads = int(total_threads or os.cpu_count() or 1)
        self.quota_grid = tuple(
            sorted({float(q) for q in quota_grid} | {1.0})
            if quota_grid is not None
            else (cpu_quota_grid(self.total_threads) if device == "cpu" else DEFAULT_CUDA_QUOTA_GRID)
        )
        self.repeats = repeats
        self.max_attempts = max_attempts
        self.recovery_seconds = recovery_seconds
        self.fastest_within_quota = fastest_within_quota
        self._pool = pool
        self._bundle = bundle
        self.profile_cache = ProfileCache(self.run_dir / PROFILE_CACHE_NAME)
        self.profiles: dict[str, dict[float, float]] | None = None
        self._profiled_shape: tuple[int, ...] | None = None
        self.metrics: dict[str, Any] = {
            "worker_restarts": 0,
            "worker_replacements": 0,
            "profile_cache_hits": 0,
            "profile_measurements": 0,
        }

        self.mps_daemon: MPSDaemon | None = None
        if device == "cpu":
            self._mps_status = "cpu-threads"
        else:
            self.mps_daemon = MPSDaemon(self.run_dir)
            try:
                started = self.mps_daemon.start()
                reason = None if started else self.mps_daemon.unavailable_reason() or "daemon not started"
            except RuntimeError as error:
                reason = f"daemon failed to start: {error}"
            self._mps_status = "mps" if reason is None else f"fallback: {reason}"
            if reason is not None:
                log.warning("reward workers: MPS cannot run (%s); running workers with plain concurrency", reason)
        self.metrics["mps_status"] = self._mps_status
        self.metrics["mps_fallback"] = int(self._mps_status.startswith("fallback"))

        # The quota each worker PROCESS was started with; under MPS it cannot change in place.
        self._process_quota: dict[str, float] = {}
        self._handles: dict[str, Any] = {}
        self._device_key: str | None = None
        try:
            for name in self.specs:
                self._handles[name] = self._create(name, quota=1.0, first=True)
            ray.get([handle.ping.remote() for handle in self._handles.values()])
        except BaseException:
            self.shutdown()  # no stray workers, no daemon left running
            raise

    # -- status ---------------------------------------------------------------------------------

    @property
    def mps_status(self) -> str:
        """"mps", "fallback: <reason>" (GPU without MPS: plain concurrency) or "cpu-threads"."""
        return self._mps_status

    @property
    def uses_mps(self) -> bool:
        return self._mps_status == "mps"

    @property
    def worker_names(self) -> list[str]:
        return list(self.specs)

    @property
    def workers(self) -> dict[str, Any]:
        """Worker name -> current Ray actor handle (handles change when a worker is replaced)."""
        return dict(self._handles)

    def device_key(self) -> str:
        """The device part of profile-cache keys: the workers' device, plus "+mps"/"+no-mps" on GPUs."""
        if self._device_key is None:
            name = self._call(self.worker_names[0], lambda h: h.device_name.remote())
            if self.device == "cuda":
                name += "+mps" if self.uses_mps else "+no-mps"
            self._device_key = name
        return self._device_key

    # -- worker processes -----------------------------------------------------------------------

    def _actor_options(self, quota: float) -> dict:
        if self._pool is None:
            share = DEFAULT_SHARES["reward_worker"]
            options: dict = {"num_cpus": share}
            if self.device == "cuda":
                options["num_gpus"] = share  # fractional: every worker fits on one GPU at once
        elif isinstance(self._pool, Mapping):
            options = dict(self._pool)
        else:
            options = (
                self._pool.actor_options("reward_worker")
                if self._bundle is None
                else self._pool.actor_options("reward_worker", self._bundle)
            )
        # Ray restarts a dead worker process; the group, not Ray, decides which call to redo.
        options.update(max_restarts=-1, max_task_retries=0)
        if self.uses_mps:
            env = dict(options.get("runtime_env") or {})
            env["env_vars"] = {**env.get("env_vars", {}), **self.mps_daemon.worker_env(quota)}
            options["runtime_env"] = env
        return options

    def _spawn(self, name: str, quota: float, first: bool = False):
        """A new worker process for `name` at `quota` (not yet the group's member)."""
        spec = self.specs[name]
        worker_options = dict(spec.worker_options)
        if not first:
            worker_options.pop("_crash_on_call", None)  # injected failures happen once per worker
        return (
            ray.remote(RewardWorker)
            .options(**self._actor_options(quota))
            .remote(spec.worker, spec.critic, spec.options, total_threads=self.total_threads, quota=quota, **worker_options)
        )

    def _create(self, name: str, quota: float, first: bool = False):
        handle = self._spawn(name, quota, first)
        self._process_quota[name] = quota
        return handle

    def _replace(self, name: str, quota: float) -> None:
        ray.kill(self._handles[name], no_restart=True)
        self._handles[name] = self._create(name, quota)

    def _recover(self, name: str) -> None:
        """Wait for Ray's restart of a dead worker; replace the worker if it stays dead."""
        deadline = time.monotonic() + self.recovery_seconds
        while True:
            try:
                ray.get(self._handles[name].ping.remote(), timeout=max(0.1, deadline - time.monotonic()))
                return
            except ActorUnavailableError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            except (RayActorError, GetTimeoutError):
                break
        log.warning("reward worker %s did not come back; replacing it", name)
        self.metrics["worker_replacements"] += 1
        self._replace(name, self._process_quota[name])
        ray.get(self._handles[name].ping.remote())

    def _call(self, name: str, submit):
        """ray.get(submit(handle)) for one worker, recovering and re-submitting if the worker dies."""
        for attempt in range(1, self.max_attempts + 1):
            try:
                return ray.get(submit(self._handles[name]))
            except RayActorError as error:
                self._note_failure(name, attempt, error)
                self._recover(name)

    def _note_failure(self, name: str, attempt: int, error: Exception) -> None:
        self.metrics["worker_restarts"] += 1
        if attempt >= self.max_attempts:
            raise RuntimeError(
                f"reward worker {name!r} died {attempt} times in one call (max_attempts={self.max_attempts})"
            ) from error
        log.warning("reward worker %s died (attempt %d): %s; restarting it and redoing its call", name, attempt, error)

    def _set_process_quotas(self, quota_by_worker: Mapping[str, float]) -> None:
        """Under MPS, replace each worker whose process runs at another percentage, and wait until
        all are up (start-ups overlap), so process start-up stays outside the timed run."""
        if not self.uses_mps:
            return
        replaced = []
        for name, quota in quota_by_worker.items():
            if mps_percentage(quota) != mps_percentage(self._process_quota[name]):
                self._replace(name, quota)
                replaced.append(name)
        for name in replaced:
            self._call(name, lambda h: h.ping.remote())

    # -- profiles and plan ----------------------------------------------------------------------

    def profile(self, videos: torch.Tensor, prompts: Sequence[str], refresh: bool = False) -> dict[str, dict[float, float]]:
        """{worker: {quota: seconds}} for this input shape, from the cache or measured (and cached).

        Each worker is measured alone, one after another, as C_w(q) is defined. Without MPS on a
        GPU only quota 1.0 is measured: a quota cannot be enforced there.
        """
        quotas = self.quota_grid if (self.device == "cpu" or self.uses_mps) else (1.0,)
        shape = tuple(int(d) for d in videos.shape)
        device_key = self.device_key()
        videos_ref = ray.put(videos)
        prompts = list(prompts)
        profiles: dict[str, dict[float, float]] = {}
        to_measure = []
        for name in self.worker_names:
            cached = None if refresh else self.profile_cache.get((name, shape, device_key))
            if cached is not None and all(q in cached for q in quotas):
                self.metrics["profile_cache_hits"] += 1
                profiles[name] = {q: cached[q] for q in quotas}
            else:
                to_measure.append(name)
        started = time.perf_counter()
        if self.uses_mps:
            measured = self._measure_under_mps(to_measure, videos_ref, prompts, quotas)
        else:
            measured = {name: self._call(name, lambda h: h.profile.remote(videos_ref, prompts, list(quotas), self.repeats))
                        for name in to_measure}
        for name, profile in measured.items():
            profiles[name] = profile
            self.profile_cache.put((name, shape, device_key), profile)
            self.metrics["profile_measurements"] += 1
            log.info("profiled reward worker %s on %s: %s", name, shape, profile)
        if measured:
            self.metrics["profile_seconds"] = time.perf_counter() - started
        self.profiles, self._profiled_shape = profiles, shape
        return profiles

    def _measure_under_mps(self, names: list[str], videos_ref, prompts: list[str], quotas) -> dict[str, dict[float, float]]:
        """Under MPS a quota is a process start (~10 s each): start one process per (worker,
        quota) at once so the start-ups overlap, then time them one at a time (C_w(q) is the
        time ALONE), then let them go. 5 workers x 4 quotas cost about one start-up, not twenty."""
        probes = {(name, quota): self._spawn(name, quota) for name in names for quota in quotas}
        profiles: dict[str, dict[float, float]] = {name: {} for name in names}
        try:
            ray.get([probe.ping.remote() for probe in probes.values()])
            for (name, quota), probe in probes.items():
                profiles[name].update(ray.get(probe.profile.remote(videos_ref, prompts, [quota], self.repeats)))
        finally:
            for probe in probes.values():
                ray.kill(probe, no_restart=True)
        return profiles

    def planning_profiles(self) -> dict[str, dict[float, float]]:
        """The profiles the planner sees: measured, or their `fastest_within_envelope`."""
        if self.profiles is None:
            raise RuntimeError("no profiles yet; call profile(videos, prompts) first")
        if not self.fastest_within_quota:
            return {w: dict(p) for w, p in self.profiles.items()}
        return {w: fastest_within_envelope(p) for w, p in self.profiles.items()}

    def plan(self) -> RewardPlan:
        """The planner's grouping and quotas for the last profiles (report eqs. 7-9).

        Without MPS on a GPU: every worker in one group at quota 1/W (nominal, not enforced),
        i.e. plain concurrency; its `makespan` is then an optimistic prediction, max_w C_w(1).
        """
        if self.profiles is None:
            raise RuntimeError("plan(): no profiles yet; call profile(videos, prompts) first")
        if self.device == "cpu" or self.uses_mps:
            return plan_reward_groups(self.planning_profiles(), quota_grid=self.quota_grid)
        alone = {w: runtime_at(p, 1.0) for w, p in self.profiles.items()}
        share = 1.0 / len(alone)
        return RewardPlan(
            groups=[{w: share for w in alone}],
            group_seconds=[max(alone.values())],
            makespan=max(alone.values()),
            serial_makespan=sum(alone.values()),
            method="concurrent-fallback",
        )

    def _check_groups(self, groups: Sequence[Mapping[str, float]]) -> list[dict[str, float]]:
        seen: list[str] = []
        clean = []
        for index, group in enumerate(groups):
            group = {str(w): float(q) for w, q in group.items()}
            for worker, quota in group.items():
                if worker not in self.specs:
                    raise ValueError(f"plan groups[{index}]: unknown worker {worker!r}; workers are {self.worker_names}")
                if not (math.isfinite(quota) and 0.0 < quota <= 1.0):
                    raise ValueError(f"plan groups[{index}][{worker!r}]: quota {quota!r} is outside (0, 1]")
            if sum(group.values()) > 1.0 + QUOTA_SUM_TOLERANCE:
                raise ValueError(f"plan groups[{index}]: quotas {group} sum to {sum(group.values()):.3g} > 1 (eq. 9)")
            seen.extend(group)
            clean.append(group)
        if sorted(seen) != sorted(self.worker_names):
            raise ValueError(
                f"plan: every worker must appear in exactly one group; got {sorted(seen)}, workers are {sorted(self.worker_names)}"
            )
        return clean

    # -- the phase ------------------------------------------------------------------------------

    def score(
        self,
        videos: torch.Tensor,
        prompts: Sequence[str],
        mode: str = "planned",
        plan: RewardPlan | Sequence[Mapping[str, float]] | None = None,
        fastest_within_quota: bool | None = None,
    ) -> ScoredPhase:
        """Score a batch with every worker; returns `ScoredPhase(scores, timeline)`.

        mode "planned": groups of `plan` (default: `self.plan()`, profiling this input shape first
        if needed, from the cache when possible) in sequence, members of a group at once.
        mode "serial": every worker alone with quota 1.0, one after another (the report's "before").
        `plan` may be a RewardPlan or a list of {worker: quota} groups.
        fastest_within_quota: overrides the group's setting for this call (see the class docstring);
        the timeline's "quota" is the allotment, "run_quota" what the worker ran at.
        """
        fastest = self.fastest_within_quota if fastest_within_quota is None else fastest_within_quota
        if mode not in ("planned", "serial"):
            raise ValueError(f"mode={mode!r} is not one of ('planned', 'serial')")
        batch = int(videos.shape[0])
        if len(prompts) != batch:
            raise ValueError(f"got {batch} videos but {len(prompts)} prompts")
        if mode == "serial":
            groups = [{name: 1.0} for name in self.worker_names]
        else:
            if plan is None:
                if self.profiles is None or self._profiled_shape != tuple(videos.shape):
                    self.profile(videos, prompts)
                plan = self.plan()
            if isinstance(plan, RewardPlan):  # what the planner predicted, for the dashboards beside the measured phase
                self.metrics.update(planned_makespan_seconds=plan.makespan, serial_makespan_seconds=plan.serial_makespan)
            groups = plan.groups if isinstance(plan, RewardPlan) else plan
        groups = self._check_groups(groups)

        videos_ref = ray.put(videos)  # one copy in the object store, read by every worker
        prompts = list(prompts)
        results: dict[str, WorkerRun] = {}
        timeline: list[dict] = []
        # Each worker is in one group, so under MPS every process can take its quota up front:
        # process start-up stays out of the phase, and out of the gaps between groups.
        run_quota = self._run_quotas(
            {name: quota for group in groups for name, quota in group.items()}, videos.shape, fastest
        )
        self._set_process_quotas(run_quota)
        phase_start = time.perf_counter()
        for index, group in enumerate(groups):
            runs, attempts = self._run_group({name: run_quota[name] for name in group}, videos_ref, prompts)
            for name in group:
                run = runs[name]
                assert name not in results, f"worker {name!r} scored twice in one phase"
                results[name] = run
                timeline.append(
                    {"worker": name, "group": index, "quota": group[name], "run_quota": run_quota[name],
                     "start": run.start, "end": run.end, "attempts": attempts[name], "pid": run.pid}
                )
        phase_seconds = time.perf_counter() - phase_start
        assert sorted(results) == sorted(self.worker_names), "every worker scores each sample exactly once"

        scores: dict[str, torch.Tensor] = {}
        for name in self.worker_names:
            for key, value in results[name].scores.items():
                if key in scores:
                    raise RuntimeError(f"score key {key!r} is returned by two workers; rename one of them")
                if value.shape != (batch,):
                    raise RuntimeError(f"worker {name!r} returned {key!r} of shape {tuple(value.shape)}, expected ({batch},)")
                scores[key] = value
        self.metrics.update(
            last_phase_mode=mode,
            last_phase_fastest_within_quota=bool(fastest),
            last_phase_seconds=phase_seconds,
            last_phase_groups=len(groups),
            last_phase_samples=batch,
        )
        return ScoredPhase(scores, timeline)

    def _run_quotas(self, quota_by_worker: dict[str, float], shape, fastest: bool) -> dict[str, float]:
        """The quota each worker runs at: its allotment, or the fastest measured quota within it."""
        if not fastest or self.profiles is None or self._profiled_shape != tuple(shape):
            return dict(quota_by_worker)
        return {name: fastest_within(self.profiles[name], quota) for name, quota in quota_by_worker.items()}

    def _run_group(self, group: Mapping[str, float], videos_ref, prompts: list[str]):
        """Launch every member's call, then collect; a member that dies is recovered and only its
        call is submitted again. Returns ({worker: WorkerRun}, {worker: attempts})."""
        attempts = {name: 0 for name in group}
        pending: dict[Any, str] = {}

        def submit(name: str) -> None:
            attempts[name] += 1
            pending[self._handles[name].run.remote(videos_ref, prompts, group[name])] = name

        for name in group:
            submit(name)
        runs: dict[str, WorkerRun] = {}
        while pending:
            (ready,), _ = ray.wait(list(pending), num_returns=1)
            name = pending.pop(ready)
            try:
                runs[name] = ray.get(ready)
            except RayActorError as error:
                self._note_failure(name, attempts[name], error)
                self._recover(name)
                submit(name)
        return runs, attempts

    # -- lifecycle ------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Kill the worker processes and stop the MPS daemon this group started."""
        for handle in self._handles.values():
            ray.kill(handle, no_restart=True)
        self._handles.clear()
        if self.mps_daemon is not None:
            self.mps_daemon.stop()

    def __enter__(self) -> "RewardWorkerGroup":
        return self

    def __exit__(self, *exc_info) -> None:
        self.shutdown()
