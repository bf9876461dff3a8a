"""Prometheus metrics of every stage, exported through Ray's metrics agent (DESIGN §1, issue 15).

`StageTelemetry(stage)` turns each step record that `StageRuntime.record_step` writes (and the
step's `PhaseTimeline` intervals) into `ray.util.metrics` Counters and Gauges. Ray's agent on the
node serves them on the node's metrics export port with a `ray_` prefix, next to Ray's own node
metrics, and Prometheus finds that port through Ray's service-discovery file
(deploy/prometheus/prometheus.yml). Metrics recorded in a driver process, a `ray job submit`
entrypoint included, are exported like an actor's (checked on Ray 2.60 with a submitted job), so
the driver records them itself: no actor in between, and no extra hop on the step's path — a
record costs a few dozen in-process metric updates.

`CATALOGUE` lists every metric: snake_case names with base units (`_seconds`, `_bytes`,
`_ratio`), counters ending in `_total` (so Ray exports the counter alone, without its deprecated
gauge twin), and labels drawn from `LABELS` only — stage, role, bundle, phase, critic, score,
component and a few fixed enumerations; never prompts, request ids or run names. Which record
key feeds which metric is `step_samples`; the accelerator figures of the nodes themselves
(`ray_node_gpus_utilization`, `ray_node_gram_used`, ...) are Ray's and are not re-exported.

Ray's agent forgets a gauge that no process has reported for two export intervals (~20 s by
default), so a thread re-reports the last value of every gauge every `refresh_s` seconds: a step
that takes minutes keeps its figures on the dashboard, and they fade ~20 s after `close()` or the
driver's end. Counters a record carries are exported from their first record on, at zero when
nothing has happened yet, so a panel of restarts shows 0 rather than no data.

Supports: every stage's record (GRPO; SFT: `loss`, `sft/*` and the update's keys; DPO: `loss`,
`implicit_accuracy`, `reward_margin`, `beta`, `pairs/*`, `held_out/*`), per-bundle utilisation and busy seconds from the timeline, per-role
accelerator memory while idle and at peak, restarts and dropped groups as counters (cumulative
record fields are turned into increments, and a resumed run's restart from zero is counted as
new restarts, never as a negative increment), checkpoints via `checkpoint_written()`.
Does not: export record keys it does not know (they still reach metrics.jsonl and TensorBoard),
or non-finite values (a gauge keeps its last finite value).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Iterable, NamedTuple

COUNTER, GAUGE = "counter", "gauge"
# Every label a TeleBoost metric may carry; each has a small, config-bounded set of values.
LABELS = ("stage", "role", "bundle", "phase", "critic", "score", "component", "statistic", "schedule", "bound",
          "quantity", "split", "source")


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str
    description: str
    labels: tuple[str, ...] = ()


def _specs(*specs: MetricSpec) -> dict[str, MetricSpec]:
    return {spec.name: spec for spec in specs}


CATALOGUE: dict[str, MetricSpec] = _specs(
    # the pool and its phases (report §6.1.1)
    MetricSpec("teleboost_steps_total", COUNTER, "Steps completed"),
    MetricSpec("teleboost_step", GAUGE, "Index of the last step completed"),
    MetricSpec("teleboost_step_seconds", GAUGE, "Wall time of the last step"),
    MetricSpec("teleboost_phase_seconds", GAUGE, "Wall time of each phase in the last step", ("phase",)),
    MetricSpec("teleboost_pool_utilisation_ratio", GAUGE,
               "Busy accelerator-seconds / (bundles x step wall time) in the last step; 1 - it is the idle fraction"),
    MetricSpec("teleboost_bundle_utilisation_ratio", GAUGE, "Busy fraction of each bundle in the last step", ("bundle",)),
    MetricSpec("teleboost_bundle_busy_seconds_total", COUNTER, "Seconds each bundle spent busy in each phase",
               ("bundle", "phase")),
    MetricSpec("teleboost_role_idle_memory_bytes", GAUGE, "Accelerator memory a role still holds while another phase runs",
               ("role",)),
    MetricSpec("teleboost_role_peak_memory_bytes", GAUGE, "Peak accelerator memory of a role while awake", ("role",)),
    MetricSpec("teleboost_role_managed_memory_bytes", GAUGE, "Memory a role's offloader moves off the accelerator while idle",
               ("role",)),
    MetricSpec("teleboost_actor_restarts_total", COUNTER, "Actors that died mid-phase and were restarted (phase redone)"),
    MetricSpec("teleboost_checkpoints_written_total", COUNTER, "Checkpoints written"),
    MetricSpec("teleboost_weights_version", GAUGE, "Version of the weights the sampling actors hold"),
    # the update, any stage
    MetricSpec("teleboost_loss", GAUGE, "Training loss of the last step"),
    MetricSpec("teleboost_grad_norm", GAUGE, "Gradient norm before clipping, mean over the step's optimizer steps"),
    MetricSpec("teleboost_optimizer_steps_total", COUNTER, "Optimizer steps taken"),
    MetricSpec("teleboost_skipped_updates_total", COUNTER, "Optimizer steps skipped for a non-finite loss or gradient"),
    # GRPO (report §3)
    MetricSpec("teleboost_kl", GAUGE, "KL divergence to the reference policy"),
    MetricSpec("teleboost_clip_fraction", GAUGE, "Fraction of importance ratios clipped (0-1)"),
    MetricSpec("teleboost_importance_ratio_mean", GAUGE, "Mean importance ratio pi/pi_old"),
    MetricSpec("teleboost_reward_mean", GAUGE, "Mean reward over the step's kept samples"),
    MetricSpec("teleboost_reward_std", GAUGE, "Reward standard deviation over the step's kept samples"),
    MetricSpec("teleboost_reward_group_std", GAUGE, "Mean within-group reward standard deviation (GRPO's signal)"),
    MetricSpec("teleboost_reward_component_mean", GAUGE, "Mean of each reward component", ("component",)),
    MetricSpec("teleboost_critic_score_mean", GAUGE, "Batch mean of each critic score", ("critic", "score")),
    MetricSpec("teleboost_eval_reward", GAUGE, "Fixed-seed evaluation reward"),
    MetricSpec("teleboost_advantage", GAUGE, "Statistics of the combined advantages", ("statistic",)),
    MetricSpec("teleboost_joint_reward_weight", GAUGE, "Min-norm joint-reward weights c (report eq. 4)", ("component",)),
    MetricSpec("teleboost_reward_weight", GAUGE, "Weight of each reward component in force (curriculum)", ("component",)),
    MetricSpec("teleboost_curriculum_phase_index", GAUGE, "Self-paced curriculum phase (report 3.4)"),
    MetricSpec("teleboost_bpgo_group_weight", GAUGE, "Smallest and largest BPGO group trust weight (report 3.3)",
               ("bound",)),
    MetricSpec("teleboost_dropped_groups_total", COUNTER, "Groups dropped for non-finite rewards"),
    MetricSpec("teleboost_gated_samples_total", COUNTER, "Samples a safety gate zeroed"),
    # the grouped joint reward (report §6.1.2)
    MetricSpec("teleboost_reward_makespan_seconds", GAUGE,
               "Reward phase makespan: measured, planned (eq. 8) and serial-equivalent (every worker alone at quota 1)",
               ("schedule",)),
    MetricSpec("teleboost_reward_worker_groups", GAUGE, "Groups the reward workers ran in"),
    MetricSpec("teleboost_reward_worker_restarts_total", COUNTER, "Reward worker calls redone after the worker died"),
    MetricSpec("teleboost_reward_mps_fallback", GAUGE, "1 when MPS could not run on a GPU and workers ran without quotas"),
    # DPO (report §4, §6.2) and SFT (report §2)
    MetricSpec("teleboost_dpo_implicit_accuracy_ratio", GAUGE,
               "Fraction of pairs whose implicit reward prefers the winner, on the step's (train) or held-out pairs",
               ("split",)),
    MetricSpec("teleboost_dpo_reward_margin", GAUGE, "Mean implicit reward margin, winner minus loser", ("split",)),
    MetricSpec("teleboost_dpo_beta", GAUGE, "DPO beta in force"),
    MetricSpec("teleboost_dpo_pairs", GAUGE, "Preference pairs available, by source", ("source",)),
    MetricSpec("teleboost_sft_quantity", GAUGE, "SFT loss terms and structure-weight statistics (sft/* record keys)",
               ("quantity",)),
)


class Sample(NamedTuple):
    """One update of a catalogue metric: a gauge's value or a counter's increment (0: the
    counter exists, nothing happened)."""

    name: str
    value: float
    tags: dict[str, str]


# Record keys holding a plain number, and the metric each one sets.
SCALAR_KEYS = {
    "step": "teleboost_step",
    "step_seconds": "teleboost_step_seconds",
    "utilisation": "teleboost_pool_utilisation_ratio",
    "weights_version": "teleboost_weights_version",
    "loss": "teleboost_loss",
    "update/loss": "teleboost_loss",
    "update/grad_norm": "teleboost_grad_norm",
    "grad_norm": "teleboost_grad_norm",
    "update/kl": "teleboost_kl",
    "update/clip_fraction": "teleboost_clip_fraction",
    "update/ratio": "teleboost_importance_ratio_mean",
    "reward_mean": "teleboost_reward_mean",
    "reward_std": "teleboost_reward_std",
    "reward_group_std": "teleboost_reward_group_std",
    "eval_reward": "teleboost_eval_reward",
    "curriculum/phase_index": "teleboost_curriculum_phase_index",
    "reward_workers/last_phase_groups": "teleboost_reward_worker_groups",
    "reward_workers/mps_fallback": "teleboost_reward_mps_fallback",
    "beta": "teleboost_dpo_beta",
}
# Per-step counts, added to a counter.
INCREMENT_KEYS = {
    "update/optimizer_steps": "teleboost_optimizer_steps_total",
    "update/skipped_updates": "teleboost_skipped_updates_total",
    "optimizer_steps": "teleboost_optimizer_steps_total",  # SFT and DPO records: the update's keys unprefixed
    "skipped_updates": "teleboost_skipped_updates_total",
    "dropped_groups": "teleboost_dropped_groups_total",
    "gated_samples": "teleboost_gated_samples_total",
}
# Counts the runtime keeps cumulatively; their increase since the last record is added.
CUMULATIVE_KEYS = {
    "actor_restarts": "teleboost_actor_restarts_total",
    "reward_workers/worker_restarts": "teleboost_reward_worker_restarts_total",
}
# "<prefix><rest>" keys: the metric, and the label <rest> fills.
PREFIX_KEYS = {
    "seconds/": ("teleboost_phase_seconds", "phase"),
    "reward/": ("teleboost_reward_component_mean", "component"),
    "advantage/": ("teleboost_advantage", "statistic"),
    "joint_c/": ("teleboost_joint_reward_weight", "component"),
    "reward_weight/": ("teleboost_reward_weight", "component"),
    "sft/": ("teleboost_sft_quantity", "quantity"),
    "pairs/": ("teleboost_dpo_pairs", "source"),
}
# DPO's implicit-reward statistics: the step's pairs, and the held-out pairs where evaluated.
DPO_KEYS = {f"{prefix}{key}": (name, split)
            for prefix, split in (("", "train"), ("held_out/", "held_out"))
            for key, name in (("implicit_accuracy", "teleboost_dpo_implicit_accuracy_ratio"),
                              ("reward_margin", "teleboost_dpo_reward_margin"))}
MAKESPAN_KEYS = {
    "reward_workers/last_phase_seconds": "measured",
    "reward_workers/planned_makespan_seconds": "planned",
    "reward_workers/serial_makespan_seconds": "serial",
}
MEMORY_KEYS = {"idle_bytes": "teleboost_role_idle_memory_bytes", "peak_bytes": "teleboost_role_peak_memory_bytes",
               "managed_bytes": "teleboost_role_managed_memory_bytes"}


def _number(value) -> float | None:
    """The value as a finite float, or None (strings, NaN, inf, missing)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def step_samples(record: dict, intervals: Iterable[dict] = ()) -> list[Sample]:
    """The gauge values and per-step counter increments one step record (and its timeline
    intervals, {phase, bundle, start, end}) maps to; cumulative keys are left to `StageTelemetry`."""
    samples = [Sample("teleboost_steps_total", 1.0, {})]
    for key, raw in record.items():
        value = _number(raw)
        if value is None:
            continue
        if key in SCALAR_KEYS:
            samples.append(Sample(SCALAR_KEYS[key], value, {}))
        elif key in INCREMENT_KEYS:
            samples.append(Sample(INCREMENT_KEYS[key], max(value, 0.0), {}))
        elif key in DPO_KEYS:
            name, split = DPO_KEYS[key]
            samples.append(Sample(name, value, {"split": split}))
        elif key in MAKESPAN_KEYS:
            samples.append(Sample("teleboost_reward_makespan_seconds", value, {"schedule": MAKESPAN_KEYS[key]}))
        elif key.startswith("score/"):
            critic, _, score = key.removeprefix("score/").partition(".")
            samples.append(Sample("teleboost_critic_score_mean", value, {"critic": critic, "score": score}))
        elif key.startswith("bpgo/group_weight_"):
            samples.append(Sample("teleboost_bpgo_group_weight", value, {"bound": key.rpartition("_")[2]}))
        elif key.startswith("memory/"):
            _, role, kind = key.split("/", 2)
            if kind in MEMORY_KEYS:
                samples.append(Sample(MEMORY_KEYS[kind], value, {"role": role}))
        else:
            for prefix, (name, label) in PREFIX_KEYS.items():
                if key.startswith(prefix):
                    samples.append(Sample(name, value, {label: key.removeprefix(prefix)}))
                    break
    samples.extend(_timeline_samples(intervals, _number(record.get("step_seconds"))))
    return samples


def _timeline_samples(intervals: Iterable[dict], step_seconds: float | None) -> list[Sample]:
    busy: dict[tuple[str, str], float] = {}
    for interval in intervals:
        key = (interval["bundle"], interval["phase"])
        busy[key] = busy.get(key, 0.0) + max(0.0, interval["end"] - interval["start"])
    samples = [Sample("teleboost_bundle_busy_seconds_total", seconds, {"bundle": bundle, "phase": phase})
               for (bundle, phase), seconds in busy.items() if seconds > 0]
    if step_seconds:
        per_bundle: dict[str, float] = {}
        for (bundle, _), seconds in busy.items():
            per_bundle[bundle] = per_bundle.get(bundle, 0.0) + seconds
        samples += [Sample("teleboost_bundle_utilisation_ratio", min(1.0, seconds / step_seconds), {"bundle": bundle})
                    for bundle, seconds in per_bundle.items()]
    return samples


class RayMetrics:
    """The catalogue as `ray.util.metrics` objects, created once per process on first use
    (every stage in a process shares them; `stage` is a label)."""

    _metrics: dict[str, object] = {}

    def record(self, sample: Sample, stage: str) -> None:
        from ray.util import metrics

        spec = CATALOGUE[sample.name]
        metric = self._metrics.get(spec.name)
        if metric is None:
            cls = metrics.Counter if spec.kind == COUNTER else metrics.Gauge
            metric = self._metrics[spec.name] = cls(spec.name, description=spec.description,
                                                    tag_keys=("stage", *spec.labels))
        tags = {"stage": stage, **sample.tags}
        if spec.kind == GAUGE:
            metric.set(sample.value, tags=tags)
        elif sample.value > 0:
            metric.inc(sample.value, tags=tags)
        else:  # Counter.inc refuses 0; recording 0 makes the series exist before its first event
            metric._record(0.0, tags=tags)


class StageTelemetry:
    """What a stage's runtime calls: `export_step(record, intervals)` once per recorded step,
    `checkpoint_written()` once per checkpoint, and `close()` at shutdown. `sink` defaults to
    Ray's metrics (tests pass a recorder)."""

    def __init__(self, stage: str, sink=None, refresh_s: float = 5.0):
        self.stage = stage
        self.sink = sink or RayMetrics()
        self._cumulative: dict[str, float] = {}
        self._gauges: dict[tuple, Sample] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        for name in ("teleboost_steps_total", "teleboost_checkpoints_written_total"):
            self.sink.record(Sample(name, 0.0, {}), stage)
        self._refresher = threading.Thread(target=self._refresh, args=(refresh_s,), name="teleboost-telemetry", daemon=True)
        self._refresher.start()

    def export_step(self, record: dict, intervals: Iterable[dict] = ()) -> None:
        samples = step_samples(record, intervals) + self._increments(record)
        with self._lock:
            for sample in samples:
                if CATALOGUE[sample.name].kind == GAUGE:
                    self._gauges[(sample.name, *sorted(sample.tags.items()))] = sample
                self.sink.record(sample, self.stage)

    def checkpoint_written(self) -> None:
        with self._lock:
            self.sink.record(Sample("teleboost_checkpoints_written_total", 1.0, {}), self.stage)

    def close(self) -> None:
        """Stop re-reporting this stage's gauges (they leave the dashboard ~20 s later)."""
        self._closed.set()
        self._refresher.join()

    def _refresh(self, every_s: float) -> None:
        while not self._closed.wait(every_s):
            with self._lock:
                for sample in self._gauges.values():
                    self.sink.record(sample, self.stage)

    def _increments(self, record: dict) -> list[Sample]:
        samples = []
        for key, name in CUMULATIVE_KEYS.items():
            value = _number(record.get(key))
            if value is None:
                continue
            previous = self._cumulative.get(key, 0.0)
            increase = value - previous if value >= previous else value  # the count restarted (a resumed run)
            self._cumulative[key] = value
            samples.append(Sample(name, max(increase, 0.0), {}))
        return samples
