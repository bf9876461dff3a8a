"""A real Prometheus on loopback scrapes a real GRPO run (with SFT- and DPO-shaped records) on the
session's Ray cluster and the reward HTTP endpoint; every PromQL query of every dashboard panel must
return finite data, and every exported TeleBoost series must follow the naming and label rules.

Set TELEBOOST_DASHBOARD_PNGS=<dir> to also render each dashboard to a PNG from this run
(TELEBOOST_DASHBOARD_STEPS=<n> for a longer run): that is how docs/dashboards/*.png are made.
"""

import json
import math
import os
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest
import ray

from cluster.config import parse_config
from cluster.grpo import GRPODriver
from cluster.telemetry import CATALOGUE, LABELS, StageTelemetry
from deploy.grafana.build import DASHBOARDS, dashboard_json
from deploy.grafana.render import render, resolve
from deploy.local.dashboards import LocalPrometheus, free_port, render_prometheus_config
from reward_services.http_app import ServerConfig
from tests.reward_services.test_http import body, toy_batch

pytestmark = pytest.mark.slow

RAY_LABELS = {"Component", "NodeAddress", "SessionName", "Version", "WorkerId", "otel_scope_name",
              "otel_scope_schema_url", "otel_scope_version"}
HTTP_LABELS = {"route", "method", "status", "critic", "kind", "score", "le"}
STEPS = int(os.environ.get("TELEBOOST_DASHBOARD_STEPS", "1"))


def grpo_config(run_dir):
    components = {"color": {"score": "toy_judges.color"}, "motion": {"score": "toy_judges.motion"},
                  "sharp": {"score": "perceptual.sharpness"}}
    return parse_config({
        "run_dir": str(run_dir),
        "policy": {"model_path": None},
        "sampling": {"num_steps": 4},
        "clip": {"num_frames": 5, "height": 24, "width": 24},
        "pool": {"num_bundles": 1},
        "rewards": {"critics": [{"name": "toy_judges"}, {"name": "perceptual"}], "components": components,
                    "execution": "grouped"},
        "grpo": {"steps": STEPS, "prompts_per_step": 2, "group_size": 4, "prompt_pool": 2, "clip_range": 0.2,
                 "eval_every": 1, "checkpoint_every": 1, "joint_reward": {"mode": "min_norm"},
                 "bpgo": {"ras": True, "crt": True, "prior_groups": 1},
                 "self_paced": {"enabled": True, "reward_phases": {"color": "visual_fidelity", "motion": "semantic_alignment",
                                                                   "sharp": "visual_fidelity"}}},
    })


def other_stages():
    """SFT and DPO records with the keys their drivers write, through the same telemetry; close
    the returned telemetries when done (a stage's gauges live while its driver does)."""
    timeline = [{"phase": "update", "bundle": "main/0", "start": 0.0, "end": 0.8}]
    common = {"step_seconds": 1.0, "seconds/update": 0.8, "utilisation": 0.8, "actor_restarts": 0, "weights_version": 1,
              "grad_norm": 0.5, "optimizer_steps": 1, "skipped_updates": 0}
    telemetries = []
    for stage, record in (
        ("sft", {"loss": 0.12, "sft/flow_matching": 0.1, "sft/motion": 0.02, "sft/weight_std": 0.3}),
        ("dpo", {"loss": 0.6, "implicit_accuracy": 0.75, "reward_margin": 0.4, "beta": 5000.0, "pairs/on_policy": 16,
                 "pairs/temporal": 32, "held_out/implicit_accuracy": 0.6, "held_out/reward_margin": 0.2}),
    ):
        telemetries.append(StageTelemetry(stage))
        telemetries[-1].export_step({"step": 1, **common, **record}, timeline)
    return telemetries


@pytest.fixture
def reward_endpoint(ray_cluster):
    from ray import serve

    from reward_services.serve import start_server

    config = ServerConfig.model_validate({"port": free_port(), "num_cpus": 0.25, "app_name": "rewards_telemetry_test",
                                          "critics": [{"name": "toy_judges"}, {"name": "safety"}]})
    try:
        yield start_server(config), f"127.0.0.1:{config.port}"
    finally:
        serve.shutdown()


def send_requests(url, count):
    videos, prompts = toy_batch(2)
    with httpx.Client(timeout=60) as client:
        for _ in range(count):
            assert client.post(url + "/v1/score", json=body(videos, prompts)).status_code == 200
        assert client.post(url + "/v1/score", json=body(videos, prompts, ["nope"])).status_code == 422


def panel_queries():
    for dashboard in DASHBOARDS:
        for panel in dashboard_json(dashboard)["panels"]:
            for target in panel["targets"]:
                yield dashboard.uid, panel["title"], resolve(target["expr"])


def missing_panels(prometheus):
    """(dashboard, panel, expr) of each query without a finite value, and of each TeleBoost metric
    a query names that Prometheus has never seen (a fallback after `or` must not hide a typo)."""
    missing = []
    for uid, title, expr in panel_queries():
        values = [float(series["value"][1]) for series in prometheus.query(expr)]
        unknown = [name for name in re.findall(r"\b((?:ray_)?teleboost_\w+)", expr)
                   if not prometheus.query(f"count({{__name__=~\"{name}\"}})")]
        if not any(math.isfinite(v) for v in values) or unknown:
            missing.append((uid, title, expr, unknown))
    return missing


@pytest.mark.skipif(shutil.which("prometheus") is None and not os.environ.get("CI"),
                    reason="needs Debian's prometheus (apt-get install -y prometheus)")
def test_every_dashboard_panel_has_data_from_a_real_run(ray_cluster, reward_endpoint, tmp_path):
    url, reward_target = reward_endpoint
    # The session's cluster runs without Ray's dashboard, which is what writes the discovery file;
    # write the same content (every node's metrics export port) on loopback.
    discovery = tmp_path / "prom_metrics_service_discovery.json"
    targets = [f"127.0.0.1:{node['MetricsExportPort']}" for node in ray.nodes() if node["Alive"]]
    discovery.write_text(json.dumps([{"labels": {"job": "ray"}, "targets": targets}]))
    config = render_prometheus_config(discovery, [reward_target], "1s")
    with LocalPrometheus(config, tmp_path / "prometheus") as prometheus:
        send_requests(url, 1)  # the labelled HTTP series exist before the run, so their rates are defined
        before = counters_now(prometheus)  # earlier runs in this Ray session count into the same counters
        started = time.time()
        driver = GRPODriver(grpo_config(tmp_path / "run"))
        telemetries = []
        try:  # checked before the drivers end: a stage's gauges leave Prometheus once its driver stops
            driver.setup()
            records = driver.train()
            telemetries = other_stages()
            send_requests(url, 3)
            check_dashboards(prometheus, records, started, before)
        finally:
            for telemetry in telemetries:
                telemetry.close()
            driver.shutdown()


COUNTERS = ("ray_teleboost_steps_total", "ray_teleboost_checkpoints_written_total")
BUSY = "ray_teleboost_bundle_busy_seconds_total"


def counters_now(prometheus, settle_s: float = 12.0) -> dict[str, float]:
    """The GRPO counters' values before this run, per series (absent when no run has exported it
    yet); waits one export period (Ray's agent exports every 10 s) so an earlier run's last counts
    are in. Keys are the metric name, with `/bundle` appended for per-bundle series."""
    time.sleep(settle_s)
    return grpo_counters(prometheus)


def grpo_counters(prometheus) -> dict[str, float]:
    values = {}
    for name in COUNTERS + (BUSY,):
        for series in prometheus.query(f'{name}{{stage="grpo"}}'):
            bundle = series["metric"].get("bundle")
            values[f"{name}/{bundle}" if bundle else name] = float(series["value"][1])
    return values


def check_dashboards(prometheus, records, started, before):
    deadline = time.monotonic() + 45  # Ray's agent exports every 10 s; Prometheus scrapes every 1 s
    while (missing := missing_panels(prometheus)) and time.monotonic() < deadline:
        time.sleep(1)
    assert not missing, "panels without data:\n" + "\n".join(map(str, missing))

    assert {t["labels"]["job"]: t["health"] for t in prometheus.api("targets")["activeTargets"]} == {
        "ray": "up", "teleboost_reward_http": "up"}
    after = grpo_counters(prometheus)
    added = {key: value - before.get(key, 0.0) for key, value in after.items()}
    assert added["ray_teleboost_steps_total"] == STEPS == records[-1]["step"]
    # earlier runs in this Ray session leave their bundles' series behind: only this run's pool grew
    assert {key.split("/", 1)[1] for key, value in added.items() if key.startswith(BUSY) and value > 0} == {"main/0"}
    makespan = {s["metric"]["schedule"]: float(s["value"][1])
                for s in prometheus.query('ray_teleboost_reward_makespan_seconds{stage="grpo"}')}
    assert makespan["serial"] >= makespan["planned"] > 0 and makespan["measured"] > 0
    assert added["ray_teleboost_checkpoints_written_total"] == STEPS

    check_names_and_labels(prometheus)
    if os.environ.get("TELEBOOST_DASHBOARD_PNGS"):
        render(prometheus.url, Path(os.environ["TELEBOOST_DASHBOARD_PNGS"]),
               started - 30, time.time())


def check_names_and_labels(prometheus):
    """Every TeleBoost series: a catalogued (or HTTP) snake_case name with its unit suffix rules,
    counters ending in _total, only the allowed labels, and few values per label (no prompts, no ids)."""
    series = prometheus.api("series", **{"match[]": '{__name__=~"(ray_)?teleboost_.+"}'})
    metadata = prometheus.api("metadata")
    values_per_label: dict[str, set] = {}
    for labels in series:
        name = labels.pop("__name__")
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name), name
        base = re.sub(r"_(bucket|sum|count|created)$", "", name)
        kind = (metadata.get(base) or metadata.get(name) or [{"type": "counter"}])[0]["type"]
        if name.startswith("ray_"):
            assert name.removeprefix("ray_") in CATALOGUE, f"{name} is not in cluster.telemetry.CATALOGUE"
            allowed = set(LABELS) | RAY_LABELS
        else:
            allowed = HTTP_LABELS
        if kind == "counter":
            assert name.endswith(("_total", "_created")), f"counter {name} must end in _total"
        assert set(labels) - {"instance", "job"} <= allowed, (name, sorted(labels))
        for key, value in labels.items():
            if key in allowed and key not in RAY_LABELS:
                assert re.fullmatch(r"[\w./+:-]+", value), (name, key, value)  # no free text
                values_per_label.setdefault(key, set()).add(value)
    assert all(len(values) <= 40 for values in values_per_label.values()), {k: len(v) for k, v in values_per_label.items()}
