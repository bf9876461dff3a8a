"""RewardWorker: one lightweight critic in its own process, run under a quota (report §6.1.2).

`cluster.reward_group.RewardWorkerGroup` creates, profiles, plans and runs these workers; a
worker only applies its quota and scores. What a quota is depends on the device:
- CPU: the worker's share of the node's threads, `schedulers.mps.cpu_thread_share(quota,
  total_threads)`, applied with `torch.set_num_threads` and `cv2.setNumThreads` before each call.
- NVIDIA GPU: `CUDA_MPS_ACTIVE_THREAD_PERCENTAGE` under an MPS control daemon, read once when the
  process creates its CUDA context, so the group starts a new process for a new quota. The quota
  also sets the thread share, since lightweight critics do part of their work on the CPU.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any, Mapping, NamedTuple, Sequence

import ray
import torch

from actors.device import assigned_device
from actors.reward import critic_on_device
from schedulers.mps import cpu_thread_share, mps_percentage


class WorkerRun(NamedTuple):
    """One scored batch: scores keyed "worker.score", wall-clock start/end (time.time()), pid."""

    scores: dict[str, torch.Tensor]
    start: float
    end: float
    pid: int


class RewardWorker:
    """One lightweight critic in its own process; scores are returned as {"worker.score": Tensor[B]}.

    worker: the name that prefixes the score keys (the critic's name unless two workers share one).
    critic, critic_options: what `build_critic` builds, on the device Ray gave this worker
        (`actors.device`). On a GPU the process's MPS quota is fixed by the
        CUDA_MPS_ACTIVE_THREAD_PERCENTAGE it was started with, and `set_quota` refuses another one.
    total_threads: threads a quota of 1.0 means (default: this node's CPU count).
    quota: the quota to start at.
    _crash_on_call: failure injection for tests only — the process exits (os._exit(1)) on this
        call number of `score` in its first incarnation; a restarted process never crashes again.
    """

    def __init__(
        self,
        worker: str,
        critic: str,
        critic_options: Mapping[str, Any] | None = None,
        total_threads: int | None = None,
        quota: float = 1.0,
        _crash_on_call: int | None = None,
    ):
        self.worker = worker
        self.device = assigned_device()
        self.critic = critic_on_device(critic, dict(critic_options or {}), self.device)
        self.total_threads = int(total_threads or os.cpu_count() or 1)
        percentage = os.environ.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE")
        # set by the group only under a running MPS daemon: the quota this process is held to
        self.mps_percentage = int(percentage) if percentage else None
        self.calls = 0
        self._crash_on_call = _crash_on_call
        self.quota = 1.0
        self.set_quota(quota)

    def set_quota(self, quota: float) -> dict:
        """Apply `quota` as this process's thread share; returns {"quota", "threads", "mps_percentage", "pid"}."""
        threads = cpu_thread_share(quota, self.total_threads)  # validates quota in (0, 1]
        if self.mps_percentage is not None and mps_percentage(quota) != self.mps_percentage:
            raise ValueError(
                f"quota={quota}: this worker joined MPS at CUDA_MPS_ACTIVE_THREAD_PERCENTAGE="
                f"{self.mps_percentage}, which MPS reads only when the CUDA context is created; start a new "
                f"worker with MPSDaemon.worker_env({quota}) instead"
            )
        import cv2  # the flow and perceptual critics run OpenCV; its pool must shrink with torch's

        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)
        self.quota = float(quota)
        return {"quota": self.quota, "threads": threads, "mps_percentage": self.mps_percentage, "pid": os.getpid()}

    def score(self, videos: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """{"worker.score": Tensor[B]} for every score the critic returns (as `RewardActor.score`)."""
        self.calls += 1
        if self._crash_on_call is not None and self.calls == self._crash_on_call and not _reconstructed():
            os._exit(1)
        output = self.critic.score(videos, list(prompts))
        return {f"{self.worker}.{key}": value.float() for key, value in output.scores.items()}

    def run(self, videos: torch.Tensor, prompts: Sequence[str], quota: float) -> WorkerRun:
        """`set_quota(quota)`, then `score`, timed with wall-clock stamps for the phase timeline."""
        self.set_quota(quota)
        start = time.time()
        scores = self.score(videos, prompts)
        return WorkerRun(scores, start, time.time(), os.getpid())

    def profile(
        self, videos: torch.Tensor, prompts: Sequence[str], quotas: Sequence[float], repeats: int = 3, warmup: int = 1
    ) -> dict[float, float]:
        """{quota: seconds}: median of `repeats` timed calls at each quota, after `warmup` calls.

        Profiling calls the critic directly, so it does not count towards `_crash_on_call`.
        The quota in force before the call is restored afterwards.
        """
        if repeats < 1:
            raise ValueError(f"repeats={repeats} must be >= 1")
        previous = self.quota
        prompts = list(prompts)
        for _ in range(warmup):
            self.critic.score(videos, prompts)
        seconds_by_quota: dict[float, float] = {}
        try:
            for quota in quotas:
                self.set_quota(quota)
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    self.critic.score(videos, prompts)
                    times.append(time.perf_counter() - start)
                seconds_by_quota[float(quota)] = statistics.median(times)
        finally:
            self.set_quota(previous)
        return seconds_by_quota

    def device_name(self) -> str:
        """What the profile cache calls this worker's device: "cpu:<N>threads" or "cuda:<GPU name>"."""
        if self.device.type == "cuda":
            return f"cuda:{torch.cuda.get_device_name(self.device)}"
        return f"cpu:{self.total_threads}threads"

    def ping(self) -> int:
        return os.getpid()


def _reconstructed() -> bool:
    """True in a process Ray restarted after a crash (False outside Ray)."""
    try:
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)
    except Exception:  # not inside a Ray actor
        return False


