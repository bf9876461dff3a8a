"""RewardActor: builds the configured critics once, on its bundle's device, and scores batches."""

from __future__ import annotations

import inspect

import torch

from actors.device import assigned_device, memory_stats
from actors.faults import CrashOnRequest
from reward_services.base import build_critic, critic_class


def critic_on_device(name: str, options: dict, device: torch.device):
    """Build a critic, giving it `device` when its constructor takes one and its options do not
    already name a device (critics that run on the CPU only, like the toy judges, have none)."""
    options = dict(options)
    if "device" in inspect.signature(critic_class(name)).parameters:
        options.setdefault("device", str(device))
    return build_critic(name, **options)


class RewardActor(CrashOnRequest):
    """Scores are returned as {"critic.score": Tensor[B]} so any critic output can be a reward.

    rewards: the `rewards` config section.
    """

    def __init__(self, rewards, torch_threads: int = 1):
        torch.set_num_threads(torch_threads)
        self.device = assigned_device()
        self.critics = {spec.name: critic_on_device(spec.name, spec.options, self.device) for spec in rewards.critics}
        self.awake = True

    def score(self, videos: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        scores: dict[str, torch.Tensor] = {}
        for name, critic in self.critics.items():
            for key, value in critic.score(videos, prompts).scores.items():
                scores[f"{name}.{key}"] = value.float().cpu()
        self._maybe_crash()
        return scores

    def release(self) -> dict[str, int]:
        """Outside the evaluate phase: critics that hold accelerator memory (the VLM judge) sleep."""
        for critic in self.critics.values():
            if hasattr(critic, "sleep"):
                critic.sleep()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.awake = False
        stats = memory_stats(self.device)
        return {"idle_bytes": stats["allocated_bytes"], "peak_bytes": stats["peak_bytes"]}

    def wake(self) -> bool:
        for critic in self.critics.values():
            if hasattr(critic, "wake_up"):
                critic.wake_up()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.awake = True
        return True

    def ping(self) -> bool:
        return True

