"""deploy/: generated files are current; KubeRay manifests carry what KubeRay validates and what the
MPS-ready GPU group needs; Prometheus and Grafana config in the layout Ray's generated config uses."""

import configparser
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from cluster.config import load_config, parse_overrides
from deploy.grafana import build
from deploy.kuberay import render
from deploy.local.dashboards import render_prometheus_config

REPO = Path(__file__).resolve().parents[2]
KUBERAY = REPO / "deploy" / "kuberay"
GRAFANA = REPO / "deploy" / "grafana"
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}


def load_all(path):
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.mark.parametrize("module", [render, build], ids=["kuberay", "grafana"])
def test_generated_files_are_current(module):
    for path, text in module.rendered().items():
        assert path.read_text() == text, f"{path} is stale: run python -m {module.__name__}"


def check_cluster_spec(spec):
    """What KubeRay's ValidateRayClusterSpec and the pods' ray start need, and the GPU group's MPS readiness."""
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
    for name, group in groups:
        containers = group["template"]["spec"]["containers"]
        assert containers and containers[0]["image"], name
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), f"{name}: rayStartParams are strings"
        ports = {p["name"]: p["containerPort"] for p in containers[0]["ports"]}
        assert ports["metrics"] == int(group["rayStartParams"]["metrics-export-port"]), name
        assert group["template"]["metadata"]["labels"]["app.kubernetes.io/part-of"] == "teleboost", name
    (gpu,) = spec["workerGroupSpecs"]
    assert gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]
    pod = gpu["template"]["spec"]
    worker = pod["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == worker["resources"]["requests"]["nvidia.com/gpu"]
    env = {e["name"]: e["value"] for e in worker["env"]}
    assert {"compute", "utility"} <= set(env["NVIDIA_DRIVER_CAPABILITIES"].split(","))  # mps-control, nvidia-smi
    anti = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["topologyKey"] == "kubernetes.io/hostname"  # one pod (one MPS daemon) per node
    assert anti["labelSelector"]["matchLabels"].items() <= gpu["template"]["metadata"]["labels"].items()
    shm = {m["mountPath"]: m["name"] for m in worker["volumeMounts"]}["/dev/shm"]
    assert {v["name"]: v for v in pod["volumes"]}[shm]["emptyDir"]["medium"] == "Memory"
    return json.loads(json.loads(gpu["rayStartParams"]["resources"]))  # KubeRay's quoted JSON


def test_raycluster_has_an_mps_ready_gpu_group():
    (cluster,) = load_all(KUBERAY / "raycluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", cluster["metadata"]["name"])  # DNS-1035
    assert check_cluster_spec(cluster["spec"]) == {"teleboost_driver": 1}


@pytest.mark.parametrize("stage", ["sft", "grpo", "dpo", "eval"])
def test_rayjob_per_stage(stage):
    (job,) = load_all(KUBERAY / f"rayjob-{stage}.yaml")
    spec = job["spec"]
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert len(job["metadata"]["name"]) <= 47  # KubeRay's limit for RayJob names
    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["python", "-m", f"cluster.jobs.{stage}"]
    config = REPO / Path(argv[argv.index("--config") + 1]).relative_to("/app")  # the image holds the repo at /app
    overrides = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--set"]
    assert load_config(config, parse_overrides(overrides)).run_dir.startswith("/runs/")  # validates as the job will
    assert (REPO / "cluster" / "jobs" / f"{stage}.py").exists()
    assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict)
    assert spec["submissionMode"] in SUBMISSION_MODES
    # KubeRay refuses a TTL without shutdownAfterJobFinishes, and needs a cluster spec or selector
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] >= 0
    offered = check_cluster_spec(spec["rayClusterSpec"])
    assert json.loads(spec["entrypointResources"]).items() <= offered.items()  # the driver lands on a GPU pod


def test_podmonitors_select_the_ray_pods_and_their_ports():
    (cluster,) = load_all(KUBERAY / "raycluster.yaml")
    spec = cluster["spec"]
    # KubeRay adds ray.io/is-ray-node and ray.io/node-type to every pod it creates
    pods = {"head": spec["headGroupSpec"]} | {"worker": g for g in spec["workerGroupSpecs"]}
    labels = {kind: {**group["template"]["metadata"]["labels"], "ray.io/is-ray-node": "yes", "ray.io/node-type": kind}
              for kind, group in pods.items()}
    ports = {kind: {p["name"] for p in group["template"]["spec"]["containers"][0]["ports"]} for kind, group in pods.items()}
    monitors = {m["metadata"]["name"]: m for m in load_all(KUBERAY / "podmonitor.yaml")}
    for name, selected in (("teleboost-ray", {"head", "worker"}), ("teleboost-reward-http", {"head"})):
        monitor = monitors[name]
        assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
        match = monitor["spec"]["selector"]["matchLabels"].items()
        assert {kind for kind in pods if match <= labels[kind].items()} == selected, name
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            assert all(endpoint["port"] in ports[kind] for kind in selected), (name, endpoint["port"])


def test_prometheus_config_scrapes_ray_discovery_and_the_reward_endpoint(tmp_path):
    config = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["ray"]["file_sd_configs"][0]["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]
    assert jobs["teleboost_reward_http"]["metrics_path"] == "/metrics"
    local = render_prometheus_config(tmp_path / "sd.json", ["127.0.0.1:9"], "1s")
    assert local["global"]["scrape_interval"] == "1s"
    assert local["scrape_configs"][0]["file_sd_configs"][0]["files"] == [str(tmp_path / "sd.json")]
    assert local["scrape_configs"][1]["static_configs"][0]["targets"] == ["127.0.0.1:9"]


def test_grafana_layout_matches_rays_generated_config():
    ini = configparser.ConfigParser()
    ini.read(GRAFANA / "grafana.ini")
    assert ini["security"]["allow_embedding"] == "true" and ini["auth.anonymous"]["enabled"] == "true"
    provisioning = Path(ini["paths"]["provisioning"].replace("${TELEBOOST_DEPLOY}", str(REPO / "deploy")))
    providers = yaml.safe_load((provisioning / "dashboards" / "default.yml").read_text())["providers"]
    paths = {p["name"]: p["options"]["path"] for p in providers}
    assert Path(paths["TeleBoost"].replace("${TELEBOOST_DEPLOY}", str(REPO / "deploy"))) == GRAFANA / "dashboards"
    assert paths["Ray"].endswith("session_latest/metrics/grafana/dashboards")  # where Ray writes its own
    (source,) = yaml.safe_load((provisioning / "datasources" / "default.yml").read_text())["datasources"]
    assert (source["name"], source["type"], source["url"]) == ("Prometheus", "prometheus", "${RAY_PROMETHEUS_HOST}")
    dashboards = [json.loads(path.read_text()) for path in sorted((GRAFANA / "dashboards").glob("*.json"))]
    assert len({d["uid"] for d in dashboards}) == len(dashboards) == 3
    for dashboard in dashboards:
        variables = {v["name"] for v in dashboard["templating"]["list"]}
        for panel in dashboard["panels"]:
            assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}"
            for target in panel["targets"]:
                assert set(re.findall(r"\$(\w+)", target["expr"])) <= variables | {"__rate_interval"}
