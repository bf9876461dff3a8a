"""Reward-group planner for lightweight reward workers sharing one accelerator (report §6.1.2).

The joint-reward phase runs W reward workers. The planner splits them into groups P = {p_1..p_G}:
the groups run one after another, the members of a group run at once, each under a compute quota
q_w in (0, 1] (on NVIDIA GPUs `CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`, on CPU a share of threads).
With C_w(q) the measured runtime of worker w at quota q, the planner minimises

    T_g = max_{w in p_g} C_w(q_w)                       report eq. (7)
    T_reward = sum_g T_g                                report eq. (8)
    subject to  sum_{w in p_g} q_w <= 1  for every g     report eq. (9)

with a lightweight greedy search over grouping and quota split (see `plan_reward_groups`).

Profiles are plain dicts `{worker: {quota: seconds}}` measured at a few quotas. Between and beyond
the measured quotas a runtime is read by `runtime_at`; every function here uses that one reading,
so the makespan a plan reports is exactly eq. (8) recomputed from its groups.

Supports: any number of workers for the greedy planner (cost grows about cubically), quotas
restricted to a grid (MPS takes whole percentages anyway), a JSON profile cache.
Does not: model interference beyond what the profiles measured (co-running workers are assumed
to run as they did alone at the same quota), or order groups in time (eq. (8) does not depend on
the order).
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping

logger = logging.getLogger(__name__)

DEFAULT_QUOTA_GRID: tuple[float, ...] = (0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 1.0)

# Sums of grid quotas are compared with this slack so 0.1 + 0.2 + 0.7 counts as 1.
QUOTA_SUM_TOLERANCE = 1e-9

# exhaustive_optimum enumerates Bell(n) partitions: Bell(10) = 115,975 is still seconds.
MAX_EXHAUSTIVE_WORKERS = 10

# Local search also tries every split of a group into two parts for groups up to this size.
MAX_BISECTED_GROUP = 10

Profile = Mapping[float, float]


@dataclass(frozen=True)
class RewardPlan:
    """A grouping of reward workers with quotas; `makespan` is report eq. (8) for these groups.

    groups: one `{worker: quota}` dict per group, in the order they run; quotas sum to <= 1.
    group_seconds: T_g of each group (eq. 7), aligned with `groups`.
    makespan: sum of `group_seconds` (eq. 8).
    serial_makespan: every worker alone at quota 1.0, one after another (the report's "before").
    method: "greedy", "serial" (greedy found nothing better than serial) or "exhaustive".
    """

    groups: list[dict[str, float]]
    group_seconds: list[float]
    makespan: float
    serial_makespan: float
    method: str = field(default="greedy")

    @property
    def speedup(self) -> float:
        return self.serial_makespan / self.makespan

    @property
    def quota_by_worker(self) -> dict[str, float]:
        return {worker: quota for group in self.groups for worker, quota in group.items()}


# ---------------------------------------------------------------------------------------------
# Profiles: validation and reading C_w(q) at any quota
# ---------------------------------------------------------------------------------------------


def _validate_quota_grid(quota_grid) -> tuple[float, ...]:
    """Sorted, de-duplicated grid; 1.0 is always added because running alone at full quota is
    the serial baseline every plan must be able to express."""
    grid = set()
    for quota in quota_grid:
        quota = float(quota)
        if not (math.isfinite(quota) and 0.0 < quota <= 1.0):
            raise ValueError(f"quota_grid: quota {quota!r} is outside (0, 1]; grid quotas must lie in (0, 1]")
        grid.add(quota)
    grid.add(1.0)
    return tuple(sorted(grid))


def _validate_profile(worker: str, profile: Mapping) -> dict[float, float]:
    if not isinstance(profile, Mapping) or len(profile) == 0:
        raise ValueError(
            f"profiles[{worker!r}]: expected a non-empty {{quota: seconds}} dict, got {profile!r}"
        )
    clean: dict[float, float] = {}
    for quota, seconds in profile.items():
        try:
            q = float(quota)
        except (TypeError, ValueError):
            raise ValueError(f"profiles[{worker!r}]: quota {quota!r} is not a number; quotas lie in (0, 1]") from None
        if not (math.isfinite(q) and 0.0 < q <= 1.0):
            raise ValueError(f"profiles[{worker!r}]: quota {quota!r} is outside (0, 1]; quotas lie in (0, 1]")
        try:
            s = float(seconds)
        except (TypeError, ValueError):
            raise ValueError(
                f"profiles[{worker!r}][{quota!r}]: seconds {seconds!r} is not a number; expected finite seconds > 0"
            ) from None
        if not (math.isfinite(s) and s > 0.0):
            raise ValueError(
                f"profiles[{worker!r}][{quota!r}]: seconds {seconds!r} is not allowed; expected finite seconds > 0"
            )
        clean[q] = s
    return clean


def validate_profiles(profiles: Mapping[str, Profile]) -> dict[str, dict[float, float]]:
    """Return a float-keyed copy of `profiles`; ValueError naming the worker and quota otherwise."""
    if not isinstance(profiles, Mapping) or len(profiles) == 0:
        raise ValueError(f"profiles: expected a non-empty {{worker: {{quota: seconds}}}} dict, got {profiles!r}")
    return {worker: _validate_profile(worker, profile) for worker, profile in profiles.items()}


def _monotone_points(profile: Mapping[float, float]) -> tuple[list[float], list[float]]:
    """Measured (quotas ascending, seconds) with seconds made non-increasing in quota.

    A measurement where more quota ran slower is noise; we keep the slower reading, i.e. a
    running max from the highest quota down: C(q_i) <- max_{j >= i} C(q_j). (A running *min*
    taken from high to low would do the opposite and make runtime grow with quota.) Planning on
    the slower reading means a plan never promises more than some measurement showed.
    """
    quotas = sorted(profile)
    seconds = [profile[q] for q in quotas]
    for i in range(len(seconds) - 2, -1, -1):
        seconds[i] = max(seconds[i], seconds[i + 1])
    return quotas, seconds


def _runtime_reader(profile: Mapping[float, float]) -> Callable[[float], float]:
    quotas, seconds = _monotone_points(profile)
    inverse = [1.0 / q for q in quotas]  # descending

    def read(quota: float) -> float:
        if quota >= quotas[-1]:
            # More quota than ever measured: assume no further speed-up (the safe side).
            return seconds[-1]
        if quota <= quotas[0]:
            # Less quota than ever measured: work-conserving scaling C(q) = C(q0) q0 / q, the
            # slowest a worker whose speed-up is concave in quota can get.
            return seconds[0] * quotas[0] / quota
        # Piecewise-linear in 1/q between neighbours: exact for Amdahl-like C(q) = a + b/q.
        i = bisect.bisect_right(quotas, quota)  # quotas[i-1] < quota < quotas[i]
        if quotas[i - 1] == quota:
            return seconds[i - 1]
        x0, x1, x = inverse[i - 1], inverse[i], 1.0 / quota
        weight = (x - x1) / (x0 - x1)
        return seconds[i] + weight * (seconds[i - 1] - seconds[i])

    return read


def runtime_at(profile: Profile, quota: float) -> float:
    """C_w(quota) read from a measured profile; non-increasing in quota.

    - measured noise is made monotone by keeping the slower reading (see `_monotone_points`);
    - between measured quotas: piecewise-linear in 1/q (exact for C(q) = a + b/q);
    - below the smallest measured quota q0: C(q0) * q0 / q (work-conserving, pessimistic);
    - above the largest measured quota: flat (no speed-up assumed).
    """
    if not (math.isfinite(quota) and 0.0 < quota <= 1.0):
        raise ValueError(f"quota {quota!r} is outside (0, 1]")
    return _runtime_reader(_validate_profile("profile", profile))(float(quota))


def lower_bound(profiles: Mapping[str, Profile]) -> float:
    """A makespan no plan on any quota grid can beat: max(max_w C_w(1), sum_w min_q q C_w(q)).

    Why it is a lower bound:
    - every member of a group runs at some q_w <= 1 and runtime is non-increasing in quota, so
      T_g >= C_w(q_w) >= C_w(1) for each member, and the makespan is at least its largest group
      time, hence at least max_w C_w(1);
    - work in quota-seconds is conserved: inside a group every member finishes by T_g, so
      q_w C_w(q_w) <= q_w T_g, and summing over members with sum q_w <= 1 (eq. 9) gives
      T_g >= sum_{w in g} q_w C_w(q_w) >= sum_{w in g} min_q q C_w(q); summing over groups
      gives makespan >= sum_w min_q q C_w(q).
    The minimum over q is taken over the measured quotas: with `runtime_at`'s reading q C(q) is
    linear in q between measured points, constant below the smallest and increasing above the
    largest, so that minimum is the minimum over all of (0, 1].
    """
    clean = validate_profiles(profiles)
    longest_alone = 0.0
    total_work = 0.0
    for profile in clean.values():
        quotas, seconds = _monotone_points(profile)
        longest_alone = max(longest_alone, _runtime_reader(profile)(1.0))
        total_work += min(q * s for q, s in zip(quotas, seconds))
    return max(longest_alone, total_work)


# ---------------------------------------------------------------------------------------------
# Splitting one group's quota (eq. 7 under eq. 9)
# ---------------------------------------------------------------------------------------------


class _Tables:
    """C_w(q) on the grid for every worker, with memoised optimal group splits."""

    def __init__(self, profiles: dict[str, dict[float, float]], grid: tuple[float, ...]):
        self.grid = grid
        self.seconds: dict[str, tuple[float, ...]] = {}
        self._negated: dict[str, list[float]] = {}
        for worker, profile in profiles.items():
            read = _runtime_reader(profile)
            row = tuple(read(q) for q in grid)  # non-increasing along the grid
            self.seconds[worker] = row
            self._negated[worker] = [-s for s in row]  # ascending, for bisect
        self._memo: dict[frozenset, tuple[float, dict[str, int]]] = {frozenset(): (0.0, {})}

    def smallest_quota_index(self, worker: str, group_seconds: float) -> int | None:
        """Index of the smallest grid quota with C_w(q) <= group_seconds, None if none."""
        k = bisect.bisect_left(self._negated[worker], -group_seconds)
        return k if k < len(self.grid) else None

    def split(self, members: frozenset) -> tuple[float, dict[str, int]]:
        """(T_g, {worker: grid index}) minimising T_g subject to eq. (9); (inf, {}) if no fit."""
        cached = self._memo.get(members)
        if cached is not None:
            return cached
        result = self._split(members)
        self._memo[members] = result
        return result

    def _quota_indices(self, members, group_seconds: float) -> dict[str, int] | None:
        indices, total = {}, 0.0
        for worker in members:
            k = self.smallest_quota_index(worker, group_seconds)
            if k is None:
                return None
            indices[worker] = k
            total += self.grid[k]
            if total > 1.0 + QUOTA_SUM_TOLERANCE:
                return None
        return indices

    def _split(self, members: frozenset) -> tuple[float, dict[str, int]]:
        # The optimal T_g is one of the tabulated runtimes; feasibility (every member's smallest
        # sufficient quota summing to <= 1) is monotone in T_g, so binary-search the candidates.
        floor = max(self.seconds[w][-1] for w in members)  # nobody beats their quota-1 time
        candidates = sorted({s for w in members for s in self.seconds[w] if s >= floor})
        lo, hi = 0, len(candidates) - 1
        if self._quota_indices(members, candidates[hi]) is None:
            return math.inf, {}
        while lo < hi:
            mid = (lo + hi) // 2
            if self._quota_indices(members, candidates[mid]) is None:
                lo = mid + 1
            else:
                hi = mid
        indices = self._quota_indices(members, candidates[lo])
        group_seconds = max(self.seconds[w][k] for w, k in indices.items())
        return group_seconds, indices

    def min_work(self, worker: str) -> float:
        """min_q q C_w(q) on the grid: the quota-seconds the worker needs at the least."""
        return min(q * s for q, s in zip(self.grid, self.seconds[worker]))

    def cost(self, members: frozenset) -> float:
        return self.split(members)[0]

    def topped_up_quotas(self, members: frozenset) -> dict[str, float]:
        """The optimal split with leftover quota handed out (slowest member first).

        Raising a quota never slows a worker, so T_g stays optimal while less of the
        accelerator sits unassigned.
        """
        _, indices = self.split(members)
        indices = dict(indices)
        left = 1.0 - sum(self.grid[k] for k in indices.values())
        for worker in sorted(indices, key=lambda w: (-self.seconds[w][indices[w]], w)):
            k = indices[worker]
            target = bisect.bisect_right(self.grid, self.grid[k] + left + QUOTA_SUM_TOLERANCE) - 1
            if target > k:
                left -= self.grid[target] - self.grid[k]
                indices[worker] = target
        return {w: self.grid[indices[w]] for w in sorted(indices)}


def optimal_group_split(
    profile_subset: Mapping[str, Profile], quota_grid=DEFAULT_QUOTA_GRID
) -> tuple[float, dict[str, float]]:
    """Best quota split for ONE group running at once: (T_g, {worker: quota}), eq. (7) under (9).

    Each member gets the smallest grid quota that finishes by T_g; T_g is the smallest tabulated
    runtime for which those quotas sum to <= 1 (binary search). Returned quotas are these minimal
    ones (leftover quota is not handed out here). ValueError if the members cannot fit at all.
    """
    tables = _Tables(validate_profiles(profile_subset), _validate_quota_grid(quota_grid))
    group_seconds, indices = tables.split(frozenset(tables.seconds))
    if not indices:
        smallest = tables.grid[0]
        raise ValueError(
            f"profile_subset: {len(tables.seconds)} workers cannot run at once: even the smallest grid quota "
            f"{smallest} each sums to {len(tables.seconds) * smallest:.3g} > 1"
        )
    return group_seconds, {w: tables.grid[indices[w]] for w in sorted(indices)}


# ---------------------------------------------------------------------------------------------
# Plans
# ---------------------------------------------------------------------------------------------


def _make_plan(tables: _Tables, groups: list[frozenset], serial_makespan: float, method: str) -> RewardPlan:
    quota_groups = [tables.topped_up_quotas(g) for g in groups]
    group_seconds = [max(tables.seconds[w][tables.grid.index(q)] for w, q in qg.items()) for qg in quota_groups]
    order = sorted(range(len(groups)), key=lambda i: (-group_seconds[i], sorted(quota_groups[i])))
    return RewardPlan(
        groups=[quota_groups[i] for i in order],
        group_seconds=[group_seconds[i] for i in order],
        makespan=sum(group_seconds),
        serial_makespan=serial_makespan,
        method=method,
    )


def _greedy_groups(tables: _Tables, order: list[str]) -> list[frozenset]:
    groups: list[frozenset] = []
    for worker in order:
        best_delta = tables.cost(frozenset([worker]))  # open a new group
        best_index = None
        for i, group in enumerate(groups):
            delta = tables.cost(group | {worker}) - tables.cost(group)
            if delta <= best_delta:  # ties join: fewer groups, fewer phases
                best_delta, best_index = delta, i
        if best_index is None:
            groups.append(frozenset([worker]))
        else:
            groups[best_index] = groups[best_index] | {worker}
    return groups


def _neighbours(groups: list[frozenset]) -> Iterator[tuple[list[int], list[frozenset]]]:
    """(indices of replaced groups, their replacements) for every move, split, merge and swap."""
    n = len(groups)
    for i in range(n):
        for worker in groups[i]:
            rest = groups[i] - {worker}
            if rest:  # to a group of its own
                yield [i], [rest, frozenset([worker])]
            for j in range(n):
                if j != i:
                    yield [i, j], [rest, groups[j] | {worker}]
    for i in range(n):
        members = sorted(groups[i])
        if 3 < len(members) <= MAX_BISECTED_GROUP:
            # Split in two; single moves cannot leave a local optimum where every member is needed.
            first, rest = members[0], members[1:]
            for mask in range(1 << len(rest)):
                part = frozenset([first] + [w for b, w in enumerate(rest) if mask >> b & 1])
                if len(part) < len(members) - 1 and len(part) > 1:
                    yield [i], [part, groups[i] - part]
        for j in range(i + 1, n):
            yield [i, j], [groups[i] | groups[j]]
            for a in groups[i]:
                for b in groups[j]:
                    yield [i, j], [groups[i] - {a} | {b}, groups[j] - {b} | {a}]


def _improve(tables: _Tables, groups: list[frozenset], max_rounds: int = 1000) -> list[frozenset]:
    """Steepest descent over the `_neighbours` of a grouping until none lowers eq. (8)."""
    groups = list(groups)
    for _ in range(max_rounds):
        total = sum(tables.cost(g) for g in groups)
        best_delta, best = -1e-12 * total, None
        for replaced, replacements in _neighbours(groups):
            delta = sum(tables.cost(g) for g in replacements if g) - sum(tables.cost(groups[i]) for i in replaced)
            if delta < best_delta:
                best_delta, best = delta, (replaced, replacements)
        if best is None:
            break
        replaced, replacements = best
        groups = [g for i, g in enumerate(groups) if i not in replaced] + [g for g in replacements if g]
    return groups


def plan_reward_groups(profiles: Mapping[str, Profile], quota_grid=DEFAULT_QUOTA_GRID) -> RewardPlan:
    """Group reward workers and split quotas to minimise the reward makespan (report eqs. 7-9).

    Greedy search, then local improvement:
    1. Take workers longest-alone first (C_w(1) descending); put each into the existing group
       whose re-split (`optimal_group_split`) grows the makespan least, or into a new group if
       that is cheaper. A second pass orders by least quota-seconds min_q q C_w(q) instead.
    2. Steepest descent from each greedy grouping and from the serial one: move one worker to
       another (or a new) group, split a group in two, merge two groups, or swap two workers
       between groups, while any of these lowers eq. (8). Keep the best of the three.
    3. Return the better of that plan and the serial plan (everyone alone at quota 1.0).
    Quotas come from `quota_grid` (1.0 always included); a group's leftover quota is handed to
    its slowest members, which never slows them.
    """
    clean = validate_profiles(profiles)
    tables = _Tables(clean, _validate_quota_grid(quota_grid))
    serial_groups = [frozenset([w]) for w in clean]
    serial_makespan = sum(tables.seconds[w][-1] for w in clean)

    starts = [
        _greedy_groups(tables, sorted(clean, key=lambda w: (-tables.seconds[w][-1], w))),
        _greedy_groups(tables, sorted(clean, key=lambda w: (-tables.min_work(w), w))),
        serial_groups,
    ]
    candidates = [_improve(tables, start) for start in starts]
    groups = min(candidates, key=lambda gs: sum(tables.cost(g) for g in gs))
    if sum(tables.cost(g) for g in groups) < serial_makespan:
        return _make_plan(tables, groups, serial_makespan, "greedy")
    return _make_plan(tables, serial_groups, serial_makespan, "serial")


def _set_partitions(items: list[str]) -> Iterator[list[list[str]]]:
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for partition in _set_partitions(rest):
        yield [[first]] + partition
        for i in range(len(partition)):
            yield partition[:i] + [[first] + partition[i]] + partition[i + 1 :]


def exhaustive_optimum(profiles: Mapping[str, Profile], quota_grid=DEFAULT_QUOTA_GRID) -> RewardPlan:
    """The best plan over every set partition (Bell(n) of them), each group split optimally.

    A baseline for tests and benchmarks, limited to MAX_EXHAUSTIVE_WORKERS workers.
    """
    clean = validate_profiles(profiles)
    if len(clean) > MAX_EXHAUSTIVE_WORKERS:
        raise ValueError(
            f"profiles: {len(clean)} workers is too many for exhaustive search; "
            f"at most {MAX_EXHAUSTIVE_WORKERS} (Bell numbers grow super-exponentially)"
        )
    tables = _Tables(clean, _validate_quota_grid(quota_grid))
    serial_makespan = sum(tables.seconds[w][-1] for w in clean)
    best_cost, best_groups = math.inf, None
    for partition in _set_partitions(sorted(clean)):
        groups = [frozenset(p) for p in partition]
        cost = sum(tables.cost(g) for g in groups)
        if cost < best_cost:
            best_cost, best_groups = cost, groups
    return _make_plan(tables, best_groups, serial_makespan, "exhaustive")


# ---------------------------------------------------------------------------------------------
# Profile cache
# ---------------------------------------------------------------------------------------------

ProfileKey = tuple[str, tuple[int, ...], str]  # (worker, input_shape, device)


class ProfileCache:
    """Measured profiles on disk, keyed by (worker, input_shape, device) -> {quota: seconds}.

    The file is JSON `{"version": 1, "entries": [{"worker", "input_shape", "device", "profile"}]}`,
    read on every call (so another process's writes are seen) and replaced atomically (temp file in
    the same directory, fsync, os.replace), so a reader never sees half a file. Concurrent writers:
    the last replace wins; a lost entry is simply re-measured. An unreadable file counts as empty.
    """

    VERSION = 1

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @staticmethod
    def _check_key(key) -> ProfileKey:
        try:
            worker, input_shape, device = key
        except (TypeError, ValueError):
            raise ValueError(f"key: expected (worker, input_shape, device), got {key!r}") from None
        if not isinstance(worker, str) or not isinstance(device, str):
            raise ValueError(f"key: worker and device must be strings, got {key!r}")
        try:
            shape = tuple(int(d) for d in input_shape)
        except (TypeError, ValueError):
            raise ValueError(f"key: input_shape must be a tuple of ints, got {input_shape!r}") from None
        return worker, shape, device

    def _load(self) -> list[dict]:
        try:
            data = json.loads(self.path.read_text())
            if data.get("version") != self.VERSION:
                raise ValueError(f"version {data.get('version')!r}")
            return list(data["entries"])
        except FileNotFoundError:
            return []
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            logger.warning("profile cache %s is unreadable (%s); treating it as empty", self.path, error)
            return []

    def _save(self, entries: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"version": self.VERSION, "entries": entries}, indent=1, sort_keys=True)
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @staticmethod
    def _matches(entry: dict, key: ProfileKey) -> bool:
        return (entry["worker"], tuple(entry["input_shape"]), entry["device"]) == key

    def get(self, key) -> dict[float, float] | None:
        key = self._check_key(key)
        for entry in self._load():
            if self._matches(entry, key):
                return {float(q): float(s) for q, s in entry["profile"].items()}
        return None

    def put(self, key, profile: Profile) -> None:
        key = self._check_key(key)
        clean = _validate_profile(key[0], profile)
        entries = [e for e in self._load() if not self._matches(e, key)]
        entries.append(
            {
                "worker": key[0],
                "input_shape": list(key[1]),
                "device": key[2],
                "profile": {repr(q): s for q, s in sorted(clean.items())},
            }
        )
        self._save(entries)

    def invalidate(self, worker: str | None = None) -> int:
        """Drop every entry (worker=None) or one worker's entries; returns how many were dropped."""
        entries = self._load()
        kept = [] if worker is None else [e for e in entries if e["worker"] != worker]
        if len(kept) != len(entries):
            self._save(kept)
        return len(entries) - len(kept)


# ---------------------------------------------------------------------------------------------
# Quota arithmetic: what a quota means on each device, and which quota a worker runs at.
#
# A worker may always use less than its quota, and sometimes should: on a busy CPU a critic can
# run several times slower on all threads than on one (thread pools spin-waiting on taken
# cores). So once an input shape is profiled, a worker allotted q runs at the measured quota
# <= q that was fastest (`fastest_within`), and the planner is given that envelope
# C~(q) = min_{q' <= q} C(q'), which is non-increasing as the planner assumes.
# ---------------------------------------------------------------------------------------------

# MPS fixes a process's quota when it creates its CUDA context, so each profiled quota costs a
# worker process start (~10 s on an H200): four points keep profiling five critics near a minute.
DEFAULT_CUDA_QUOTA_GRID: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)


def check_quota(quota: float) -> float:
    quota = float(quota)
    if not (math.isfinite(quota) and 0.0 < quota <= 1.0):
        raise ValueError(f"quota: {quota!r} is outside (0, 1]; a quota is a share of one accelerator")
    return quota


def cpu_thread_share(quota: float, total_threads: int) -> int:
    """Threads for a worker with `quota` of a CPU node: floor(quota * total_threads), at least 1.

    Flooring keeps a group whose quotas sum to <= 1 within `total_threads` (except where the
    at-least-one rule has to round a tiny quota up).
    """
    quota = check_quota(quota)
    if isinstance(total_threads, bool) or not isinstance(total_threads, int) or total_threads < 1:
        raise ValueError(f"total_threads: {total_threads!r} must be an integer >= 1")
    return max(1, math.floor(quota * total_threads + 1e-9))


def cpu_quota_grid(total_threads: int) -> tuple[float, ...]:
    """Quotas that give distinct thread counts on `total_threads` threads: k / total_threads.

    Any other quota floors to one of these thread counts, so measuring them covers the grid.
    On many-thread nodes only the counts `DEFAULT_QUOTA_GRID` maps to are kept, so profiling
    stays a dozen measurements per worker.
    """
    threads = {cpu_thread_share(q, total_threads) for q in DEFAULT_QUOTA_GRID}
    if total_threads <= len(DEFAULT_QUOTA_GRID):
        threads = set(range(1, total_threads + 1))
    return tuple(sorted(t / total_threads for t in threads))


def mps_percentage(quota: float) -> int:
    """The whole CUDA_MPS_ACTIVE_THREAD_PERCENTAGE for a quota (MPS takes integers >= 1)."""
    return max(1, int(round(100 * check_quota(quota))))


def fastest_within(profile: Mapping[float, float], quota: float) -> float:
    """The measured quota <= `quota` with the least seconds (ties: the larger quota); `quota`
    itself when nothing at or below it was measured.

    A worker allotted `quota` may always use less of it, and on a CPU fewer threads can be much
    faster (oversubscribed or spin-waiting thread pools): a worker runs at this quota instead.
    """
    within = [q for q in profile if q <= quota + QUOTA_SUM_TOLERANCE]
    if not within:
        return quota
    return min(within, key=lambda q: (profile[q], -q))


def fastest_within_envelope(profile: Mapping[float, float]) -> dict[float, float]:
    """C~(q) = min over measured q' <= q of C(q'): the runtime a worker that runs at
    `fastest_within(profile, q)` has when allotted q. Non-increasing in q by construction, which
    is what the planner assumes (`schedulers.mps` otherwise reads a faster low quota as noise)."""
    return {q: profile[fastest_within(profile, q)] for q in sorted(profile)}


