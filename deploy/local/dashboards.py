"""`make dashboards`: a local Prometheus on loopback scraping the local Ray cluster and the reward
endpoint; prints the URLs and runs until Ctrl-C, then stops the Prometheus it started (by PID) and
nothing else.

    python -m deploy.local.dashboards [--head runs/head/head.json | --ray-temp-dir DIR] [--port 9095]
        [--reward-target 127.0.0.1:8000] [--scrape-interval 5s] [--state-dir runs/prometheus]

It renders deploy/prometheus/prometheus.yml for this machine (the service-discovery file of the
Ray temp dir, the reward targets, the interval) into the state dir and runs Debian's `prometheus`
(`apt-get install -y prometheus`) with its data there. The Ray temp dir is `--ray-temp-dir`, else
the one `make cluster-up` recorded in `--head` (runs/head/head.json), else Ray's default /tmp/ray.
Ray's dashboard writes the discovery file, so the head must run one (`make cluster-up` does); a
Ray started by a stage's own `ray.init` has no dashboard and no file. Grafana is not bundled (it is not a Debian package): point one at the
printed Prometheus with deploy/grafana/ (see its grafana.ini), or render the dashboards' panels
to PNGs with `python -m deploy.grafana.render --prometheus <url>`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "deploy" / "prometheus" / "prometheus.yml"
SERVICE_DISCOVERY_FILE = "prom_metrics_service_discovery.json"


def render_prometheus_config(service_discovery: str | Path, reward_targets: list[str], scrape_interval: str,
                             template: Path = TEMPLATE) -> dict:
    """deploy/prometheus/prometheus.yml with this machine's discovery file, reward targets and interval."""
    config = yaml.safe_load(template.read_text())
    config["global"] = {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval}
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    jobs["ray"]["file_sd_configs"] = [{"files": [str(service_discovery)]}]
    jobs["teleboost_reward_http"]["static_configs"] = [{"targets": list(reward_targets)}]
    return config


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalPrometheus:
    """A `prometheus` process on 127.0.0.1:`port` with its config and data under `state_dir`;
    `stop()` ends exactly that process."""

    def __init__(self, config: dict, state_dir: str | Path, port: int | None = None):
        self.binary = shutil.which("prometheus")
        if self.binary is None:
            raise FileNotFoundError("no `prometheus` on PATH; install Debian's package: apt-get install -y prometheus")
        self.state_dir = Path(state_dir)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = self.state_dir / "prometheus.yml"
        self.config = config
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 30.0) -> str:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        log = open(self.state_dir / "prometheus.log", "ab")
        self.process = subprocess.Popen(
            [self.binary, f"--config.file={self.config_path}", f"--storage.tsdb.path={self.state_dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.process.returncode}; see {self.state_dir / 'prometheus.log'}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return self.url
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"prometheus not ready on {self.url} after {timeout_s} s")
            time.sleep(0.2)

    def api(self, path: str, **params) -> dict:
        """GET /api/v1/<path>; the response's `data`, or RuntimeError with Prometheus's error."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as err:
            body = json.load(err)
        if body.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> "LocalPrometheus":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head", default="runs/head/head.json", help="head.json written by `make cluster-up`")
    parser.add_argument("--ray-temp-dir", help="the Ray head's --temp-dir (default: from --head, else /tmp/ray)")
    parser.add_argument("--port", type=int, default=9095, help="Prometheus's port on 127.0.0.1")
    parser.add_argument("--reward-target", action="append", default=None, metavar="HOST:PORT",
                        help="the reward endpoint to scrape (default 127.0.0.1:8000; repeat for more)")
    parser.add_argument("--scrape-interval", default="5s")
    parser.add_argument("--state-dir", default="runs/prometheus", help="rendered config, data and log")
    args = parser.parse_args(argv)

    head = json.loads(Path(args.head).read_text()) if Path(args.head).exists() else {}
    discovery = Path(args.ray_temp_dir or head.get("temp_dir", "/tmp/ray")) / SERVICE_DISCOVERY_FILE
    if not discovery.exists():
        print(f"warning: {discovery} does not exist yet; Ray's dashboard writes it (start the head with "
              "`make cluster-up`); Prometheus picks it up when it appears", file=sys.stderr)
    config = render_prometheus_config(discovery, args.reward_target or ["127.0.0.1:8000"], args.scrape_interval)
    prometheus = LocalPrometheus(config, args.state_dir, args.port)
    stop = {"now": False}
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.update(now=True))
    url = prometheus.start()
    try:
        print(f"Prometheus   {url}  (targets: {url}/targets, pid {prometheus.process.pid})")
        if head.get("address"):
            print(f"Ray          {head['address']}  (its Metrics tab queries Prometheus if the head ran with "
                  f"RAY_PROMETHEUS_HOST={url})")
        print(f"Dashboards   python -m deploy.grafana.render --prometheus {url} --out docs/dashboards")
        print(f"Grafana      RAY_PROMETHEUS_HOST={url} grafana server --config deploy/grafana/grafana.ini "
              f"(with TELEBOOST_DEPLOY={REPO / 'deploy'}); see deploy/grafana/grafana.ini")
        print("Ctrl-C stops this Prometheus (and only it).", flush=True)
        while not stop["now"] and prometheus.process.poll() is None:
            time.sleep(0.5)
    finally:
        prometheus.stop()


if __name__ == "__main__":
    main()
