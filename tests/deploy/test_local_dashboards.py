"""`make dashboards` (python -m deploy.local.dashboards): Prometheus on loopback on its own port, scraping
the discovery file of the head `make cluster-up` recorded, URLs printed, and Ctrl-C stops exactly the
Prometheus it started."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from deploy.local.dashboards import free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("prometheus") is None and not os.environ.get("CI"),
                    reason="needs Debian's prometheus (apt-get install -y prometheus)")
def test_runs_prometheus_on_loopback_and_stops_only_it(tmp_path):
    bystander = subprocess.Popen(["sleep", "60"])  # another process of this user: must survive
    port = free_port()
    state = tmp_path / "state"
    head = tmp_path / "head.json"  # what `make cluster-up` records
    head.write_text(json.dumps({"address": "http://127.0.0.1:1", "pid": 1, "temp_dir": str(tmp_path / "ray")}))
    command = [sys.executable, "-m", "deploy.local.dashboards", "--head", str(head), "--port", str(port),
               "--state-dir", str(state), "--reward-target", "127.0.0.1:9", "--scrape-interval", "2s"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = process.stdout.readline()
        assert first.startswith(f"Prometheus   http://127.0.0.1:{port}"), first + process.stderr.read()
        prometheus_pid = int(first.rsplit("pid ", 1)[1].rstrip(")\n"))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/status/config", timeout=10) as response:
            config = yaml.safe_load(json.load(response)["data"]["yaml"])
        jobs = {job["job_name"]: job for job in config["scrape_configs"]}
        assert jobs["ray"]["file_sd_configs"][0]["files"] == [str(tmp_path / "ray" / "prom_metrics_service_discovery.json")]
        assert jobs["teleboost_reward_http"]["static_configs"][0]["targets"] == ["127.0.0.1:9"]
        assert "does not exist yet" in process.stderr.readline()  # no Ray dashboard here: told, not fatal
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        deadline = time.monotonic() + 5
        while Path(f"/proc/{prometheus_pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not Path(f"/proc/{prometheus_pid}").exists()
        assert bystander.poll() is None
    finally:
        process.kill()
        bystander.kill()
        bystander.wait()
