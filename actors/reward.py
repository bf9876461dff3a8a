"""RewardActor: builds the configured critics once and scores batches of videos."""

from __future__ import annotations

import torch

from actors.faults import CrashOnRequest
from cluster.config import RewardsConfig
from reward_services.base import build_critic
from reward_services.critics.safety import apply_gate


class RewardActor(CrashOnRequest):
    """Scores are returned as {"critic.score": Tensor[B]} so any critic output can be a reward."""

    def __init__(self, rewards: RewardsConfig, torch_threads: int = 1):
        torch.set_num_threads(torch_threads)
        self.critics = {spec.name: build_critic(spec.name, **spec.options) for spec in rewards.critics}

    def score(self, videos: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        scores: dict[str, torch.Tensor] = {}
        for name, critic in self.critics.items():
            for key, value in critic.score(videos, prompts).scores.items():
                scores[f"{name}.{key}"] = value.float()
        self._maybe_crash()
        return scores

    def release(self) -> bool:
        """Outside the evaluate phase: critics that hold accelerator memory (the VLM judge) sleep."""
        for critic in self.critics.values():
            if hasattr(critic, "sleep"):
                critic.sleep()
        return False

    def wake(self) -> bool:
        for critic in self.critics.values():
            if hasattr(critic, "wake_up"):
                critic.wake_up()
        return True

    def ping(self) -> bool:
        return True


def component_rewards(scores: dict[str, torch.Tensor], rewards: RewardsConfig) -> tuple[dict[str, torch.Tensor], int]:
    """({component: Tensor[B]}, number of gated samples): each component's configured score, with
    samples flagged by the `gate` score forced to the floor in every component."""
    missing = [c.score for c in rewards.components.values() if c.score not in scores]
    if missing:
        raise KeyError(f"reward components name {missing}, but the critics returned {sorted(scores)}")
    components = {name: scores[c.score].float() for name, c in rewards.components.items()}
    if rewards.gate is None:
        return components, 0
    gated = scores[rewards.gate] > 0.5
    components = {name: apply_gate(value, gated, rewards.gate_floor)[0] for name, value in components.items()}
    return components, int(gated.sum())
