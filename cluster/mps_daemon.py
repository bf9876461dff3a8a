"""NVIDIA MPS control daemon for one node, so reward workers can share a GPU under quotas (report §6.1.2).

`MPSDaemon(run_dir)` starts `nvidia-cuda-mps-control -d` with its pipe and log directories under
`run_dir/mps/{pipe,log}` (private to this run, so two runs on a node never talk to each other's
daemon), and `worker_env(quota)` gives the environment a reward worker's Ray `runtime_env` needs to
join it with `CUDA_MPS_ACTIVE_THREAD_PERCENTAGE` = its quota.

Supports: one daemon per node per run, started and stopped by the process that owns the node's
reward phase; use as a context manager so the daemon is always told to quit.
Does not: change the GPU's compute mode (EXCLUSIVE_PROCESS is recommended by NVIDIA but needs root;
the default mode works with MPS), restart a daemon that dies, or manage MPS on other nodes.
Without the binary or without a visible NVIDIA GPU (every CPU machine) `start()` returns False
with a warning and `worker_env` returns {}: workers then run concurrently without MPS and the quota
becomes a thread share (`cpu_thread_share`), applied by the reward worker itself.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

from schedulers.mps import check_quota, mps_percentage

logger = logging.getLogger(__name__)

MPS_CONTROL_BINARY = "nvidia-cuda-mps-control"
NVIDIA_SMI_BINARY = "nvidia-smi"
# The daemon creates this named pipe in its pipe directory once it accepts clients.
CONTROL_PIPE_NAME = "control"


def visible_gpu_count(timeout_seconds: float = 10.0) -> int:
    """Number of GPUs `nvidia-smi -L` lists ("GPU 0: ..."); 0 without nvidia-smi or on any error."""
    binary = shutil.which(NVIDIA_SMI_BINARY)
    if binary is None:
        return 0
    try:
        result = subprocess.run([binary, "-L"], capture_output=True, text=True, timeout=timeout_seconds)
    except (OSError, subprocess.SubprocessError):
        return 0
    if result.returncode != 0:
        return 0
    return sum(1 for line in result.stdout.splitlines() if line.startswith("GPU "))


class MPSDaemon:
    """One node's MPS control daemon with pipe/log directories under `run_dir/mps/`."""

    def __init__(self, run_dir: str | os.PathLike, startup_timeout_seconds: float = 10.0):
        self.run_dir = Path(run_dir)
        self.pipe_dir = self.run_dir / "mps" / "pipe"
        self.log_dir = self.run_dir / "mps" / "log"
        self.startup_timeout_seconds = startup_timeout_seconds
        self.running = False
        self._unavailable_reason: str | None = None
        self._checked = False

    # -- availability ---------------------------------------------------------------------------

    def unavailable_reason(self) -> str | None:
        """None when MPS can run here, else why not (checked once per object)."""
        if not self._checked:
            if shutil.which(MPS_CONTROL_BINARY) is None:
                self._unavailable_reason = f"{MPS_CONTROL_BINARY} not found on PATH"
            elif visible_gpu_count() < 1:
                self._unavailable_reason = f"`{NVIDIA_SMI_BINARY} -L` lists no NVIDIA GPU"
            self._checked = True
        return self._unavailable_reason

    def available(self) -> bool:
        """True when the MPS control binary is on PATH and `nvidia-smi -L` lists at least one GPU."""
        return self.unavailable_reason() is None

    # -- lifecycle ------------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        return {"CUDA_MPS_PIPE_DIRECTORY": str(self.pipe_dir), "CUDA_MPS_LOG_DIRECTORY": str(self.log_dir)}

    def _control(self, args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [shutil.which(MPS_CONTROL_BINARY) or MPS_CONTROL_BINARY, *args],
            input=stdin,
            env={**os.environ, **self._env()},
            capture_output=True,
            text=True,
            timeout=30,
        )

    def start(self) -> bool:
        """Start the daemon; False (with a warning) when MPS is unavailable on this node.

        Raises RuntimeError if MPS is available but the daemon does not come up (for example a
        daemon already serves this pipe directory), naming the directory and the daemon's output.
        """
        if self.running:
            return True
        reason = self.unavailable_reason()
        if reason is not None:
            logger.warning("MPS unavailable: %s; falling back to plain concurrency", reason)
            return False
        self.pipe_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        result = self._control(["-d"])
        if result.returncode != 0:
            raise RuntimeError(
                f"{MPS_CONTROL_BINARY} -d failed (exit {result.returncode}) for pipe directory {self.pipe_dir}: "
                f"{(result.stdout + result.stderr).strip()!r}; see {self.log_dir}/control.log"
            )
        control = self.pipe_dir / CONTROL_PIPE_NAME
        deadline = time.monotonic() + self.startup_timeout_seconds
        while not control.exists():
            if time.monotonic() > deadline:
                self._control([], stdin="quit\n")  # do not leave a half-started daemon behind
                raise RuntimeError(
                    f"MPS daemon started but {control} did not appear within "
                    f"{self.startup_timeout_seconds} s; see {self.log_dir}/control.log"
                )
            time.sleep(0.05)
        self.running = True
        logger.info("MPS control daemon running, pipe directory %s", self.pipe_dir)
        return True

    def stop(self) -> bool:
        """Tell the daemon to quit (`echo quit | nvidia-cuda-mps-control`); False if it was not running."""
        if not self.running:
            return False
        result = self._control([], stdin="quit\n")
        self.running = False
        if result.returncode != 0:
            logger.warning(
                "MPS daemon quit returned exit %d: %s", result.returncode, (result.stdout + result.stderr).strip()
            )
        return True

    def __enter__(self) -> "MPSDaemon":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- workers --------------------------------------------------------------------------------

    def worker_env(self, quota: float) -> dict[str, str]:
        """Environment variables for a worker's Ray `runtime_env` to run under MPS at `quota`.

        {} while the daemon is not running (MPS unavailable, or not started): pointing a CUDA
        client at a pipe directory with no daemon behind it would not give it a quota.
        """
        quota = check_quota(quota)
        if not self.running:
            return {}
        percentage = mps_percentage(quota)
        return {**self._env(), "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(percentage)}
