"""A private Ray head on loopback: every port chosen free, its own temp dir, stopped exactly.

    python -m cluster.local_head up [--dir runs/head] [--accelerators 2]   # make cluster-up
    python -m cluster.local_head down [--dir runs/head]                    # make cluster-down

The pipeline holds one for its run (`with LocalHead(...) as head`); `up` keeps one running in the
background for `ray job submit` by hand and writes its address to `<dir>/head.json`; `down` stops
exactly that head. Never `ray stop`, which ends every Ray process on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


class LocalHead:
    """A Ray head on 127.0.0.1 owned by this process: `ray start --head --block` in its own
    session, with EVERY port (GCS, dashboard, dashboard agent, metrics, ...) chosen free and its
    own temp dir, so it never collides with another Ray instance on the machine; leaving the
    block stops exactly the processes it started (never `ray stop`, which ends every Ray
    process on the machine). Token authentication stays on (`RAY_AUTH_MODE=token`)."""

    PORTS = ("port", "dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
             "runtime-env-agent-port", "ray-client-server-port", "node-manager-port", "object-manager-port")

    def __init__(self, accelerators: int, cpus: int):
        self.accelerators, self.cpus = accelerators, cpus

    def __enter__(self) -> "LocalHead":
        os.environ.setdefault("RAY_AUTH_MODE", "token")  # read when ray is imported: set it first
        from ray.job_submission import JobSubmissionClient

        self.temp_dir = tempfile.mkdtemp(prefix="teleboost-ray-")
        ports = {name: _free_port() for name in self.PORTS}
        command = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                   "--dashboard-host=127.0.0.1", f"--temp-dir={self.temp_dir}", f"--num-cpus={self.cpus}",
                   f"--resources={json.dumps({'accelerator': self.accelerators})}", "--disable-usage-stats",
                   *[f"--{name}={port}" for name, port in ports.items()]]
        self.log = Path(self.temp_dir) / "head.log"
        # Ray's dashboard queries this Prometheus for its Metrics tab (`make dashboards` serves it)
        env = {**os.environ, "RAY_PROMETHEUS_HOST": os.environ.get("RAY_PROMETHEUS_HOST", "http://127.0.0.1:9095")}
        self.process = subprocess.Popen(command, stdout=self.log.open("w"), stderr=subprocess.STDOUT, start_new_session=True, env=env)
        self.address = f"http://127.0.0.1:{ports['dashboard-port']}"
        deadline = time.monotonic() + 120
        while True:  # the job server and its agent come up a few seconds after the head
            try:
                self.client = JobSubmissionClient(self.address)
                self.client.list_jobs()
                return self
            except Exception as err:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    raise RuntimeError(f"the local Ray head did not come up ({err}); see {self.log}") from None
                time.sleep(1)

    def submit(self, entrypoint: str) -> str:
        deadline = time.monotonic() + 60
        while True:  # "No available agent to submit job" right after start-up: retry briefly
            try:
                return self.client.submit_job(entrypoint=entrypoint, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
            except RuntimeError as err:
                if "No available agent" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def __exit__(self, *exc) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("up", "down"))
    parser.add_argument("--dir", default="runs/head", help="where head.json (address, pid) lives")
    parser.add_argument("--accelerators", type=int, default=2, help="stand-in accelerators on a CPU machine")
    args = parser.parse_args(argv)
    state = Path(args.dir) / "head.json"
    if args.action == "up":
        if state.exists():
            raise SystemExit(f"a head is already up ({state}: {state.read_text()}); `down` it first")
        head = LocalHead(args.accelerators, os.cpu_count() or 2).__enter__()
        state.parent.mkdir(parents=True, exist_ok=True)
        state.write_text(json.dumps({"address": head.address, "pid": head.process.pid, "temp_dir": head.temp_dir}))
        print(f"Ray head up: {head.address} (RAY_ADDRESS for `ray job submit`); stop it with `make cluster-down`")
        return
    if not state.exists():
        raise SystemExit(f"no head recorded in {state}")
    pid = json.loads(state.read_text())["pid"]
    try:
        os.kill(pid, signal.SIGTERM)  # `ray start --block` stops the processes it started
        for _ in range(60):
            os.kill(pid, 0)
            time.sleep(1)
    except ProcessLookupError:
        pass
    state.unlink()
    print(f"Ray head {pid} stopped")


if __name__ == "__main__":
    main()
