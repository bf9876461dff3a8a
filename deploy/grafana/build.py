"""The TeleBoost Grafana dashboards, written as data here and rendered to deploy/grafana/dashboards/*.json.

    python -m deploy.grafana.build          # rewrite the JSON files (a test checks they are current)

Three dashboards: the pool (utilisation, the phase timeline per bundle, memory held per role, Ray's
node metrics), training progress per stage (GRPO, SFT, DPO side by side by the `stage` label), and
the reward services (the grouped joint reward's makespan, the HTTP endpoint). Every query names
only metrics the system exports — `ray_teleboost_*` from `cluster.telemetry` (Ray adds the `ray_`
prefix), `teleboost_reward_*` from the HTTP endpoint, and Ray's own `ray_node_*` — and a test
runs each one against a Prometheus that scraped a real run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RUN = 'SessionName=~"$SessionName",stage=~"$stage"'  # every ray_teleboost_* query
NODE = 'SessionName=~"$SessionName"'  # Ray's node metrics
RATE = "$__rate_interval"


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    targets: list[tuple[str, str]]  # (PromQL, legend)
    unit: str = "short"
    stacked: bool = False
    bars: bool = False


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    panels: list[Panel] = field(default_factory=list)


def m(name: str, extra: str = "") -> str:
    """A ray_teleboost_* selector filtered by the dashboard's session and stage."""
    return f"ray_teleboost_{name}{{{RUN}{',' + extra if extra else ''}}}"


def makespan(schedule: str) -> str:
    return m("reward_makespan_seconds", f'schedule="{schedule}"')


DASHBOARDS = [
    Dashboard(
        "teleboost-pool", "TeleBoost / Pool utilisation and timeline",
        "Temporal multiplexing (report §6.1.1): how busy each bundle of the pool is, in which phase, "
        "and what each role holds while it sleeps.",
        [
            Panel("Pool utilisation and idle fraction",
                  "Busy accelerator-seconds / (bundles × step wall time) of the last step, and its complement: "
                  "the fraction of the pool's accelerators idle during the step.",
                  [(m("pool_utilisation_ratio"), "utilisation {{stage}}"),
                   (f"1 - {m('pool_utilisation_ratio')}", "idle {{stage}}")], unit="percentunit"),
            Panel("Utilisation per bundle", "Busy fraction of each bundle in the last step.",
                  [(m("bundle_utilisation_ratio"), "{{stage}} {{bundle}}")], unit="percentunit"),
            Panel("Timeline: share of time per bundle and phase",
                  "Seconds each bundle spent in each phase per second of wall time (stacked); the gap to 1 is idle.",
                  [(f"sum by (stage, bundle, phase) (rate({m('bundle_busy_seconds_total')}[{RATE}]))",
                    "{{bundle}} {{phase}}")], unit="percentunit", stacked=True, bars=True),
            Panel("Phase and step seconds", "Wall time of each phase and of the whole last step.",
                  [(m("phase_seconds"), "{{stage}} {{phase}}"), (m("step_seconds"), "{{stage}} step")], unit="s"),
            Panel("Accelerator memory held while idle, per role",
                  "What each role keeps on its accelerator while another phase runs, next to its peak while "
                  "awake and the bytes its offloader moves out while it sleeps.",
                  [(m("role_idle_memory_bytes"), "idle {{role}}"), (m("role_peak_memory_bytes"), "peak {{role}}"),
                   (m("role_managed_memory_bytes"), "offloaded while idle {{role}}")],
                  unit="bytes"),
            Panel("Node accelerators (Ray node metrics)",
                  "GPU utilisation per node from Ray's node metrics; CPU utilisation on nodes without a GPU.",
                  [(f"avg by (instance) (ray_node_gpus_utilization{{{NODE}}}) "
                    f"or avg by (instance) (ray_node_cpu_utilization{{{NODE}}})", "{{instance}}")], unit="percent"),
            Panel("Node accelerator memory (Ray node metrics)",
                  "GPU memory used per node (GRAM, MiB → bytes); host memory on nodes without a GPU.",
                  [(f"sum by (instance) (ray_node_gram_used{{{NODE}}}) * 1048576 "
                    f"or sum by (instance) (ray_node_mem_used{{{NODE}}})", "{{instance}}")], unit="bytes"),
            Panel("Restarts and checkpoints",
                  "Actors restarted mid-phase (the phase is redone), reward-worker calls redone, checkpoints written.",
                  [(m("actor_restarts_total"), "actor restarts {{stage}}"),
                   (m("reward_worker_restarts_total"), "reward worker restarts {{stage}}"),
                   (m("checkpoints_written_total"), "checkpoints {{stage}}")]),
        ],
    ),
    Dashboard(
        "teleboost-training", "TeleBoost / Training progress per stage",
        "SFT, GRPO and DPO side by side (the stage label); GRPO's reward, advantage and trust statistics.",
        [
            Panel("Loss", "Training loss of the last step per stage.", [(m("loss"), "{{stage}}")]),
            Panel("Steps", "Last step completed, and steps per minute.",
                  [(m("step"), "step {{stage}}"), (f"60 * rate({m('steps_total')}[{RATE}])", "steps/min {{stage}}")]),
            Panel("Reward (GRPO)",
                  "Mean and spread of the step's reward over kept samples; mean within-group std is GRPO's signal; "
                  "the fixed-seed eval reward where the run evaluates.",
                  [(m("reward_mean"), "mean"), (m("reward_std"), "std"), (m("reward_group_std"), "within-group std"),
                   (m("eval_reward"), "eval (fixed seed)")]),
            Panel("Reward components and critic scores (GRPO)", "Mean of each reward component and each critic score.",
                  [(m("reward_component_mean"), "{{component}}"), (m("critic_score_mean"), "{{critic}}.{{score}}")]),
            Panel("Advantages (GRPO)", "Statistics of the combined advantages fed to the update.",
                  [(m("advantage"), "{{statistic}}")]),
            Panel("KL, clip fraction, importance ratio",
                  "KL to the reference policy, fraction of clipped ratios, mean ratio π/π_old.",
                  [(m("kl"), "KL {{stage}}"), (m("clip_fraction"), "clip fraction {{stage}}"),
                   (m("importance_ratio_mean"), "ratio {{stage}}")]),
            Panel("Joint reward and curriculum (GRPO)",
                  "Min-norm weights c (report eq. 4), the weights in force, the curriculum phase and BPGO's trust bounds.",
                  [(m("joint_reward_weight"), "c {{component}}"), (m("reward_weight"), "weight {{component}}"),
                   (m("curriculum_phase_index"), "curriculum phase"), (m("bpgo_group_weight"), "BPGO trust {{bound}}")]),
            Panel("Gradient norm and optimizer steps",
                  "Gradient norm before clipping; optimizer steps taken and skipped (non-finite) per minute.",
                  [(m("grad_norm"), "grad norm {{stage}}"),
                   (f"60 * rate({m('optimizer_steps_total')}[{RATE}])", "optimizer steps/min {{stage}}"),
                   (m("skipped_updates_total"), "skipped {{stage}}")]),
            Panel("Dropped groups and gated samples (GRPO)",
                  "Groups dropped for non-finite rewards, samples zeroed by a safety gate (totals).",
                  [(m("dropped_groups_total"), "dropped groups"), (m("gated_samples_total"), "gated samples")]),
            Panel("DPO: implicit accuracy and margin",
                  "Fraction of pairs whose implicit reward prefers the winner and the mean margin, on the step's "
                  "pairs and on held-out pairs where the run evaluates.",
                  [(m("dpo_implicit_accuracy_ratio"), "implicit accuracy {{split}}"),
                   (m("dpo_reward_margin"), "reward margin {{split}}")]),
            Panel("DPO: beta and preference pairs", "β in force, and the preference pairs available per source.",
                  [(m("dpo_beta"), "beta"), (m("dpo_pairs"), "pairs {{source}}")]),
            Panel("SFT: loss terms and structure weights", "The sft/* record keys (loss terms, weight statistics).",
                  [(m("sft_quantity"), "{{quantity}}")]),
        ],
    ),
    Dashboard(
        "teleboost-rewards", "TeleBoost / Reward services",
        "The grouped joint reward (report §6.1.2) and the reward HTTP endpoint.",
        [
            Panel("Reward makespan: measured, planned, serial-equivalent",
                  "Measured wall time of the grouped reward phase, the planner's makespan (eq. 8) and the "
                  "serial-equivalent: every worker alone at quota 1, one after another (the report's 'before').",
                  [(m("reward_makespan_seconds"), "{{schedule}}")], unit="s"),
            Panel("Reward speed-up over serial",
                  "Serial-equivalent makespan / measured and / planned.",
                  [(f"{makespan('serial')} / ignoring(schedule) {makespan('measured')}", "measured"),
                   (f"{makespan('serial')} / ignoring(schedule) {makespan('planned')}", "planned")], unit="x"),
            Panel("Reward worker groups and MPS",
                  "Groups the workers ran in (1 = all at once) and whether MPS fell back to plain concurrency.",
                  [(m("reward_worker_groups"), "groups"), (m("reward_mps_fallback"), "MPS fallback")]),
            Panel("HTTP requests by route and status", "Requests per second on the reward endpoint.",
                  [(f"sum by (route, status) (rate(teleboost_reward_http_requests_total[{RATE}]))",
                    "{{route}} {{status}}")], unit="reqps"),
            Panel("HTTP errors by status", "4xx and 5xx responses per second.",
                  [(f'sum by (status) (rate(teleboost_reward_http_requests_total{{status=~"4..|5.."}}[{RATE}]))',
                    "{{status}}")], unit="reqps"),
            Panel("HTTP latency", "Median and 95th percentile request latency per route.",
                  [(f"histogram_quantile(0.5, sum by (le, route) (rate(teleboost_reward_http_request_seconds_bucket[{RATE}])))",
                    "p50 {{route}}"),
                   (f"histogram_quantile(0.95, sum by (le, route) (rate(teleboost_reward_http_request_seconds_bucket[{RATE}])))",
                    "p95 {{route}}")], unit="s"),
            Panel("Critic latency", "95th percentile time each critic spends on a request.",
                  [(f"histogram_quantile(0.95, sum by (le, critic) (rate(teleboost_reward_critic_seconds_bucket[{RATE}])))",
                    "{{critic}}")], unit="s"),
            Panel("Critic score distribution", "Median and 10th/90th percentiles of each served score, per video.",
                  [(f"histogram_quantile({q}, sum by (le, critic, score) (rate(teleboost_reward_critic_score_bucket[{RATE}])))",
                    f"p{round(q * 100)} {{{{critic}}}}.{{{{score}}}}") for q in (0.1, 0.5, 0.9)]),
            Panel("Videos scored and gated", "Videos per second scored, and gated by a safety critic.",
                  [(f"rate(teleboost_reward_videos_scored_total[{RATE}])", "scored"),
                   (f"rate(teleboost_reward_gated_samples_total[{RATE}])", "gated")], unit="reqps"),
        ],
    ),
]


def _variables() -> list[dict]:
    def query(name: str, expr: str, description: str) -> dict:
        return {"name": name, "type": "query", "datasource": DATASOURCE, "definition": expr,
                "query": {"query": expr, "refId": f"{name}-variable"}, "description": description, "refresh": 2,
                "includeAll": True, "multi": True, "allValue": ".+", "current": {"text": "All", "value": "$__all"},
                "sort": 1, "hide": 0}

    return [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "description": "The Prometheus to query.",
         "hide": 0, "current": {}},
        query("SessionName", "label_values(ray_teleboost_steps_total, SessionName)", "Ray sessions (clusters)."),
        query("stage", 'label_values(ray_teleboost_steps_total{SessionName=~"$SessionName"}, stage)', "Stages."),
    ]


def _panel(panel: Panel, index: int) -> dict:
    custom = {"drawStyle": "bars" if panel.bars else "line", "lineWidth": 1, "fillOpacity": 60 if panel.bars else 10,
              "showPoints": "auto", "stacking": {"mode": "normal" if panel.stacked else "none", "group": "A"}}
    return {
        "id": index + 1, "type": "timeseries", "title": panel.title, "description": panel.description,
        "datasource": DATASOURCE, "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
        "fieldConfig": {"defaults": {"unit": panel.unit, "custom": custom}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "none"}},
        "targets": [{"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend,
                     "range": True} for i, (expr, legend) in enumerate(panel.targets)],
    }


def dashboard_json(dashboard: Dashboard) -> dict:
    return {
        "uid": dashboard.uid, "title": dashboard.title, "description": dashboard.description, "tags": ["teleboost"],
        "editable": True, "schemaVersion": 39, "version": 1, "refresh": "10s", "graphTooltip": 1,
        "time": {"from": "now-30m", "to": "now"}, "timezone": "", "annotations": {"list": []}, "links": [],
        "templating": {"list": _variables()},
        "panels": [_panel(panel, i) for i, panel in enumerate(dashboard.panels)],
    }


def rendered() -> dict[Path, str]:
    """{file: JSON text} for every dashboard."""
    return {OUT / f"{d.uid.replace('-', '_')}.json": json.dumps(dashboard_json(d), indent=2, ensure_ascii=False) + "\n"
            for d in DASHBOARDS}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for path, text in rendered().items():
        path.write_text(text)
        print(path)


if __name__ == "__main__":
    main()
