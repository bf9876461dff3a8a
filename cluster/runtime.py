"""The stage-neutral runtime every stage's driver stands on (DESIGN §4 "one base, one loop").

`StageRuntime` owns what SFT, GRPO and DPO share, so a stage driver keeps only its loop:
- the pool and the placement of roles on its bundles, with each role's accelerator share from
  `pool.shares` (`place`), and one data-parallel learner per main bundle (`place_learners`);
- temporal multiplexing (report §6.1.1): `run_phase` wakes the roles of the phase and has every
  other role release its accelerator memory, records the phase on the step's timeline, and when
  an actor dies mid-phase waits for Ray's restart, re-ships the weights and redoes the WHOLE
  phase with the same seeds (its results replace, never add to, the lost ones);
- weight sync from the learners' rank 0 to every actor that samples (`sync_weights`), and, when
  the stage averages its weights (`ema_decay`), the average on them for an evaluation
  (`averaged_rollouts`);
- atomic checksummed checkpoints of the learners and the stage's own state, and `--resume`
  (`save`, `restore`);
- `metrics.jsonl` and `timeline.jsonl`, with each role's accelerator memory while idle next to
  its peak, exported to Prometheus (`cluster.telemetry`) and TensorBoard / W&B
  (`cluster.tracking`) from the same record (`record_step`);
- seeds that are a function of (run seed, step, purpose) only (`step_seed`), so a resumed run or
  a redone phase reproduces bit for bit.

Limits: a learner that dies ends the run (the data-parallel group cannot lose a rank); the run
then resumes from its last checkpoint, recomputing the steps after it.
"""

from __future__ import annotations

import logging
import time
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import ray

from actors.learner import Learner, OptimizerSpec
from cluster.pool import PhaseTimeline, Pool, ensure_ray
from cluster.run_log import MetricsLog
from cluster.telemetry import StageTelemetry
from cluster.tracking import ExperimentTracker
from policy.checkpoint import load_latest, save_checkpoint

log = logging.getLogger("teleboost.runtime")
RESTARTABLE = {"max_restarts": -1, "max_task_retries": 0}
Bundle = tuple[str, int]


class LearnerGroup:
    """One `Learner` per bundle, ranks in bundle order, in one torch.distributed group.

    Every rank holds the same weights and optimizer state (DDP), so rank 0 alone ships weights
    and writes checkpoints, while a restore loads every rank.
    """

    def __init__(self, handles: dict[Bundle, object]):
        self.handles = handles
        ranks = list(handles.values())
        self.rank0 = ranks[0]
        address = ray.get(self.rank0.dist_address.remote()) if len(ranks) > 1 else ""
        ray.get([handle.init_data_parallel.remote(address) for handle in ranks])

    def __len__(self) -> int:
        return len(self.handles)

    def update(self, seed: int, shard_sizes: list[int], shards: list[tuple], **options) -> dict[Bundle, list]:
        """Start every rank's update on its shard (a tuple of that rank's batch arguments, object
        refs resolved where the rank runs — the driver never pulls the data); {bundle: [ref]}."""
        return {bundle: [handle.update.remote(seed, shard_sizes, *shard, **options)]
                for (bundle, handle), shard in zip(self.handles.items(), shards)}

    @staticmethod
    def merge(metrics: list[dict], shard_sizes: list[int]) -> dict[str, float]:
        """One record from every rank's metrics: sample-weighted means; counts from rank 0."""
        total = sum(shard_sizes)
        merged = {key: sum(m[key] * n for m, n in zip(metrics, shard_sizes)) / total for key in metrics[0]}
        for key in ("optimizer_steps", "skipped_updates", "version"):
            merged[key] = metrics[0][key]
        return merged

    def weights(self, averaged: bool = False):
        """(weights ref, version ref) from rank 0; the weights stay in the object store."""
        return self.rank0.get_weights.options(num_returns=2).remote(averaged)

    def state(self):
        return ray.get(self.rank0.state.remote())

    def load_state(self, weights, extra) -> int:
        return ray.get([handle.load_state.remote(weights, extra) for handle in self.handles.values()])[0]


class StageRuntime:
    """Base of every stage driver; see the module docstring. A subclass sets `phase_roles`
    (phase → the roles it runs, for multiplexing), builds its roles in `setup()` after
    `start()`, and writes its loop in `train()`."""

    stage = "stage"
    phase_roles: dict[str, tuple[str, ...]] = {}

    def __init__(self, config, resume: bool = False):
        self.config = config
        self.resume = resume
        self.run_dir = Path(config.run_dir)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.actor_restarts = 0
        self.roles: dict[str, dict[Bundle, object]] = {}
        self.memory: dict[str, dict[str, int]] = {}
        self.learners: LearnerGroup | None = None
        self.version = 0

    # -- setup ------------------------------------------------------------------------------
    def start(self) -> None:
        ensure_ray(self.config.pool.num_bundles)
        self.pool = Pool(self.config.pool)
        self.telemetry = StageTelemetry(self.stage)  # Prometheus, through Ray's metrics agent
        self.tracker = ExperimentTracker(self.run_dir, self.stage, config=self.config.model_dump(mode="json"))
        self.runtime_env = {"env_vars": {"OMP_NUM_THREADS": str(self.config.policy.torch_threads)}}

    def place(self, role: str, cls, *args, bundles: list[Bundle], restartable: bool = True) -> dict[Bundle, object]:
        """One `cls(*args)` actor per bundle with `role`'s accelerator share; registered for phases."""
        options = dict(RESTARTABLE) if restartable else {}
        self.roles[role] = {
            bundle: ray.remote(cls).options(**self.pool.actor_options(role, bundle), **options, runtime_env=self.runtime_env).remote(*args)
            for bundle in bundles
        }
        return self.roles[role]

    def place_learners(self, objective, optimizer: OptimizerSpec) -> LearnerGroup:
        """One learner per main bundle (the data-parallel group), each with the learner share."""
        bundles = self.pool.main_bundles()
        handles = {
            bundle: ray.remote(Learner).options(**self.pool.actor_options("learner", bundle), runtime_env=self.runtime_env)
            .remote(self.config.policy, optimizer, objective, self.config.seed, rank, len(bundles))
            for rank, bundle in enumerate(bundles)
        }
        self.roles["learner"] = handles
        self.learners = LearnerGroup(handles)
        return self.learners

    @property
    def learner(self):
        """The rank-0 learner: the one whose weights ship and whose state is checkpointed."""
        return self.learners.rank0

    # -- phases -----------------------------------------------------------------------------
    def activate(self, phase: str) -> None:
        """Temporal multiplexing (report §6.1.1): on a colocated pool, wake the roles of `phase`
        and have every other role give its accelerator memory back (offload / VLM sleep),
        keeping what each role still holds while idle and its peak while awake."""
        if self.config.pool.placement != "colocated":
            return
        awake = set(self.phase_roles.get(phase, ()))
        calls = {(role, bundle): (actor.wake.remote() if role in awake else actor.release.remote())
                 for role, actors in self.roles.items() for bundle, actor in actors.items()}
        results = dict(zip(calls, ray.get(list(calls.values()))))
        for (role, _), stats in results.items():
            if isinstance(stats, dict):
                held = self.memory.setdefault(role, {})
                for key, value in stats.items():
                    held[key] = max(held.get(key, 0), value) if key == "peak_bytes" else value

    def run_phase(self, timeline: PhaseTimeline, phase: str, submit: Callable[[], dict], restartable: dict) -> dict:
        """Run one phase; if an actor dies, wait for Ray to restart it, re-ship the weights and
        redo the whole phase with the same seeds (so its results replace, never add to, the lost ones)."""
        attempt = 0
        while True:
            try:
                self.activate(phase)
                return timeline.run(phase, submit())
            except ray.exceptions.RayActorError as err:
                attempt += 1
                if not restartable or attempt > self.config.pool.max_phase_retries:
                    raise
                self.actor_restarts += 1
                log.warning("phase %s: an actor died (%s); redoing the phase (attempt %d)",
                            phase, type(err).__name__, attempt + 1)
                self.wait_alive(restartable)
                self.version = self.sync_weights(averaged=self.version < 0)  # what the rollouts held before

    def learner_step(self, timeline: PhaseTimeline, step: int, batch_size: int) -> dict[str, float]:
        """The update phase of stages whose learners draw their own data (SFT's clips, DPO's
        pairs): every rank takes its shard of batch `step` and one synchronised optimizer step;
        the ranks' statistics merged."""
        sizes = [batch_size] * len(self.learners)
        results = self.run_phase(timeline, "update", lambda: self.learners.update(
            self.step_seed(step, "update"), sizes, [(step,)] * len(self.learners)), {})
        update = self.learners.merge([results[bundle][0] for bundle in self.learners.handles], sizes)
        self.version = update["version"]
        return update

    def wait_alive(self, actors: dict, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        for actor in actors.values():
            while True:
                try:
                    ray.get(actor.ping.remote(), timeout=30)
                    break
                except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)

    def sync_weights(self, role: str = "rollout", averaged: bool = False) -> int:
        """Ship rank 0's weights (`averaged`: their average, under the negative version) to every
        `role` actor via the object store; returns the version."""
        weights_ref, version_ref = self.learners.weights(averaged)
        targets = list(self.roles.get(role, {}).values())
        if not targets:
            return ray.get(version_ref)
        versions = ray.get([actor.set_weights.remote(weights_ref, version_ref) for actor in targets])
        if len(set(versions)) != 1:
            raise RuntimeError(f"{role} actors disagree on the weights version: {versions}")
        return versions[0]

    @contextmanager
    def averaged_rollouts(self):
        """The rollout actors hold the learners' weight average for the duration (an evaluation
        of the stage's result), the online weights again after; nothing without an average."""
        stage = getattr(self.config, self.stage)
        if not stage.ema_decay:
            yield
            return
        self.version = self.sync_weights(averaged=True)
        try:
            yield
        finally:
            self.version = self.sync_weights()

    # -- state ------------------------------------------------------------------------------
    def restore(self) -> dict | None:
        """With --resume: load the newest valid checkpoint into every learner and open the logs
        at its step; returns the stage's saved state (None for a fresh run)."""
        checkpoint = load_latest(self.checkpoint_dir) if self.resume else None
        state = None
        if checkpoint is not None:
            tensors, objects, state = checkpoint
            self.learners.load_state(tensors["policy"], objects["learner"])
            log.info("resumed from step %d", state["step"])
        elif self.resume:
            log.warning("--resume given but no valid checkpoint in %s: starting fresh", self.checkpoint_dir)
        resume_step = state["step"] if state else None
        self.metrics = MetricsLog(self.run_dir, resume_step=resume_step)
        self.timelines = MetricsLog(self.run_dir, resume_step=resume_step, name="timeline.jsonl")
        return state

    def save(self, step: int, state: dict, keep: int) -> Path:
        """Checkpoint `step`: rank 0's weights and optimizer state, and the stage's `state` (JSON),
        with the weights this stage started from (`policy.init_from`), so a later stage that
        starts from this one gets the whole chain."""
        weights, learner_state = self.learners.state()
        path = save_checkpoint(self.checkpoint_dir, step, {"policy": weights}, {"learner": learner_state},
                               {"weights_version": self.version, "init_from": self.config.policy.init_from, **state},
                               keep=keep)
        log.info("checkpoint %s", path)
        self.telemetry.checkpoint_written()
        return path

    # -- records ----------------------------------------------------------------------------
    def record_step(self, record: dict, timeline: PhaseTimeline) -> dict:
        """Append the step's record (with the pool's utilisation, restarts and per-role memory)
        to metrics.jsonl and its phase intervals to timeline.jsonl."""
        record = {**record, "actor_restarts": self.actor_restarts, "weights_version": self.version, **timeline.summary(),
                  **{f"memory/{role}/{key}": value for role, held in self.memory.items() for key, value in held.items()}}
        self.metrics.write(record)
        self.timelines.write({"step": record["step"], "intervals": timeline.intervals})
        self.telemetry.export_step(record, timeline.intervals)
        self.tracker.log(record["step"], record)  # TensorBoard / W&B, off the hot path
        return record

    def step_seed(self, step: int | str, purpose: str) -> int:
        """A seed that depends only on (run seed, step, purpose): stable across processes and resumes."""
        return zlib.crc32(f"{self.config.seed}:{step}:{purpose}".encode())

    def shutdown(self) -> None:
        for closer in ("tracker", "telemetry"):
            if hasattr(self, closer):
                getattr(self, closer).close()
        for actors in self.roles.values():
            for actor in actors.values():
                ray.kill(actor, no_restart=True)
        if hasattr(self, "pool"):
            self.pool.shutdown()


def run_stage(driver: StageRuntime) -> list[dict]:
    """setup → train → shutdown, with shutdown in `finally` (setup included)."""
    try:
        driver.setup()
        return driver.train()
    finally:
        driver.shutdown()
