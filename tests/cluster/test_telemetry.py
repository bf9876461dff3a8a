"""cluster.telemetry without Ray: which record key feeds which metric, counters from cumulative
counts, gauges kept alive, and the catalogue's naming rules (the real export is tests/deploy)."""

import re
import time

from cluster.telemetry import (
    CATALOGUE,
    COUNTER,
    CUMULATIVE_KEYS,
    DPO_KEYS,
    GAUGE,
    INCREMENT_KEYS,
    LABELS,
    MAKESPAN_KEYS,
    MEMORY_KEYS,
    PREFIX_KEYS,
    SCALAR_KEYS,
    StageTelemetry,
    step_samples,
)

GRPO_RECORD = {
    "step": 3, "reward_mean": 0.5, "reward_std": float("nan"), "reward/motion": 0.4, "score/toy_judges.color": 0.9,
    "score/vlm.judge.text_alignment": 0.7, "joint_c/motion": 1.0, "bpgo/group_weight_min": 0.2, "dropped_groups": 1,
    "gated_samples": 0, "update/loss": -0.01, "update/optimizer_steps": 2, "reward_workers/mps_status": "cpu-threads",
    "reward_workers/last_phase_seconds": 0.04, "reward_workers/serial_makespan_seconds": 0.09,
    "memory/rollout/idle_bytes": 1024, "memory/rollout/managed_bytes": 4096, "memory/rollout/unknown": 7,
    "step_seconds": 2.0, "seconds/sample": 1.0, "utilisation": 0.6, "last_phase_fastest_within_quota": True,
}
INTERVALS = [
    {"phase": "sample", "bundle": "main/0", "start": 0.0, "end": 1.0},
    {"phase": "update", "bundle": "main/0", "start": 1.25, "end": 1.5},
    {"phase": "sample", "bundle": "main/1", "start": 0.0, "end": 0.5},
]


class Recorder:
    def __init__(self):
        self.calls = []

    def record(self, sample, stage):
        self.calls.append((stage, sample))

    def total(self, name, **tags):
        return sum(s.value for _, s in self.calls if s.name == name and s.tags == tags)


def as_dict(samples):
    return {(s.name, tuple(sorted(s.tags.items()))): s.value for s in samples}


def test_grpo_record_maps_to_the_catalogue():
    got = as_dict(step_samples(GRPO_RECORD, INTERVALS))
    assert got[("teleboost_loss", ())] == -0.01
    assert got[("teleboost_critic_score_mean", (("critic", "toy_judges"), ("score", "color")))] == 0.9
    # the critic is the part before the first dot; a score name may hold dots
    assert got[("teleboost_critic_score_mean", (("critic", "vlm"), ("score", "judge.text_alignment")))] == 0.7
    assert got[("teleboost_bpgo_group_weight", (("bound", "min"),))] == 0.2
    assert got[("teleboost_reward_makespan_seconds", (("schedule", "measured"),))] == 0.04
    assert got[("teleboost_reward_makespan_seconds", (("schedule", "serial"),))] == 0.09
    assert got[("teleboost_role_managed_memory_bytes", (("role", "rollout"),))] == 4096
    assert got[("teleboost_phase_seconds", (("phase", "sample"),))] == 1.0
    assert got[("teleboost_dropped_groups_total", ())] == 1 and got[("teleboost_gated_samples_total", ())] == 0
    assert got[("teleboost_bundle_busy_seconds_total", (("bundle", "main/0"), ("phase", "update")))] == 0.25
    assert got[("teleboost_bundle_utilisation_ratio", (("bundle", "main/0"),))] == 1.25 / 2.0
    assert got[("teleboost_bundle_utilisation_ratio", (("bundle", "main/1"),))] == 0.25
    names = {name for name, _ in got}
    assert "teleboost_reward_std" not in names  # NaN: the gauge keeps its last finite value
    assert not any("mps_status" in name or "fastest" in name for name in names)  # strings and bools are not figures


def test_sft_and_dpo_records_use_their_own_keys():
    got = as_dict(step_samples({"step": 1, "loss": 0.3, "grad_norm": 2.0, "optimizer_steps": 1, "sft/weight_std": 0.1,
                                "implicit_accuracy": 0.7, "held_out/implicit_accuracy": 0.6, "pairs/temporal": 32}))
    assert got[("teleboost_loss", ())] == 0.3 and got[("teleboost_grad_norm", ())] == 2.0
    assert got[("teleboost_optimizer_steps_total", ())] == 1
    assert got[("teleboost_sft_quantity", (("quantity", "weight_std"),))] == 0.1
    assert got[("teleboost_dpo_implicit_accuracy_ratio", (("split", "train"),))] == 0.7
    assert got[("teleboost_dpo_implicit_accuracy_ratio", (("split", "held_out"),))] == 0.6
    assert got[("teleboost_dpo_pairs", (("source", "temporal"),))] == 32


def test_every_sample_carries_exactly_its_metrics_labels():
    record = {**GRPO_RECORD, "implicit_accuracy": 0.5, "held_out/reward_margin": 0.1, "pairs/human": 3,
              "sft/motion": 0.2, "advantage/std": 1.0, "reward_weight/motion": 0.5}
    for sample in step_samples(record, INTERVALS):
        assert set(sample.tags) == set(CATALOGUE[sample.name].labels), sample


def test_cumulative_counts_become_increments_across_a_resume():
    sink = Recorder()
    telemetry = StageTelemetry("grpo", sink=sink, refresh_s=60)
    for restarts in (0, 2, 3, 1):  # 1: a resumed run counts again from zero
        telemetry.export_step({"step": 1, "actor_restarts": restarts})
    telemetry.close()
    assert sink.total("teleboost_actor_restarts_total") == 2 + 1 + 1
    assert sink.total("teleboost_steps_total") == 4


def test_counters_exist_from_the_start_and_gauges_are_re_reported_until_close():
    sink = Recorder()
    telemetry = StageTelemetry("dpo", sink=sink, refresh_s=0.01)
    assert {(s.name, s.value) for _, s in sink.calls} == {("teleboost_steps_total", 0.0),
                                                          ("teleboost_checkpoints_written_total", 0.0)}
    telemetry.export_step({"step": 1, "beta": 5000.0})
    telemetry.checkpoint_written()
    time.sleep(0.2)
    telemetry.close()
    reported = sum(1 for _, s in sink.calls if s.name == "teleboost_dpo_beta")
    assert reported > 3  # re-reported by the refresh thread, not only by export_step
    assert sink.total("teleboost_steps_total") == 1 and sink.total("teleboost_checkpoints_written_total") == 1
    assert all(stage == "dpo" for stage, _ in sink.calls)
    calls = len(sink.calls)
    time.sleep(0.05)
    assert len(sink.calls) == calls  # closed: nothing more


def test_catalogue_names_follow_prometheus_conventions():
    for name, spec in CATALOGUE.items():
        assert re.fullmatch(r"teleboost_[a-z0-9_]+", name), name
        assert (spec.kind == COUNTER) == name.endswith("_total"), name
        assert spec.kind in (COUNTER, GAUGE)
        assert set(spec.labels) <= set(LABELS) and "stage" not in spec.labels, name  # stage is added to all
        assert spec.description.isascii(), name  # Ray's exporter encodes descriptions as ASCII
        if "seconds" in name or "bytes" in name:
            assert re.search(r"_(seconds|bytes)(_total)?$", name), f"{name}: the unit goes last"
    targets = [*SCALAR_KEYS.values(), *INCREMENT_KEYS.values(), *CUMULATIVE_KEYS.values(), *MEMORY_KEYS.values(),
               *(name for name, _ in PREFIX_KEYS.values()), *(name for name, _ in DPO_KEYS.values())]
    assert set(targets) <= set(CATALOGUE)
    assert set(MAKESPAN_KEYS.values()) == {"measured", "planned", "serial"}
