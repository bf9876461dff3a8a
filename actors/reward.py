"""RewardActor: builds the configured critics once and scores batches of videos."""

from __future__ import annotations

import torch

from cluster.config import RewardsConfig
from reward_services.base import build_critic


class RewardActor:
    """Scores are returned as {"critic.score": Tensor[B]} so any critic output can be a reward."""

    def __init__(self, rewards: RewardsConfig, torch_threads: int = 1):
        torch.set_num_threads(torch_threads)
        self.critics = {spec.name: build_critic(spec.name, **spec.options) for spec in rewards.critics}

    def score(self, videos: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        scores: dict[str, torch.Tensor] = {}
        for name, critic in self.critics.items():
            for key, value in critic.score(videos, prompts).scores.items():
                scores[f"{name}.{key}"] = value.float()
        return scores

    def ping(self) -> bool:
        return True


def scalar_reward(scores: dict[str, torch.Tensor], rewards: RewardsConfig) -> torch.Tensor:
    """Σ weight · score over the configured critics, each critic contributing its `keys` entry."""
    total = None
    for spec in rewards.critics:
        key = f"{spec.name}.{rewards.keys.get(spec.name, spec.name)}"
        if key not in scores:
            raise KeyError(f"rewards.keys names {key!r}, but the critics returned {sorted(scores)}")
        term = spec.weight * scores[key]
        total = term if total is None else total + term
    return total
