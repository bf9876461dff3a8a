"""Config sections the reward layer reads: which critics score rollouts, and what the reward is.

Critic names and options are checked against the registry when the config is parsed, so a typo
fails at submit time with the field's path instead of in a reward actor's log on the cluster.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from reward_services.base import available_critics, check_critic_options
from reward_services.critics.safety import apply_gate


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def distinct_critics(critics):
    """A critic list's validator (trainer and HTTP server alike): non-empty, each name once."""
    names = [critic.name for critic in critics]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"critics must be non-empty with distinct names, got {names}")
    return critics


class CriticSpec(Section):
    """A critic to build by its registered name, with constructor options."""

    name: str
    options: dict = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_with_fitting_options(self):
        if self.name not in available_critics():
            raise ValueError(f"unknown critic {self.name!r}; available: {available_critics()}")
        check_critic_options(self.name, self.options)
        return self


class RewardComponent(Section):
    """One reward the trainer optimises: a critic's score (`critic.score`) with a weight."""

    score: str
    weight: float = Field(1.0, ge=0)


class RewardsConfig(Section):
    """Which critics score rollouts, and which of their scores are the reward components.

    With one component the reward is that score; with several, `grpo.joint_reward.mode`
    decides how they combine (report §3.5). `gate` names a score (e.g. `safety.gated`) whose
    truthy samples get the reward floor (report §5.1, item 3).
    """

    critics: tuple[CriticSpec, ...] = (CriticSpec(name="toy_judges"),)
    components: dict[str, RewardComponent] = Field(
        default_factory=lambda: {"overall": RewardComponent(score="toy_judges.overall")}
    )
    gate: str | None = None
    gate_floor: float = 0.0
    execution: Literal["actor", "grouped"] = Field(
        "actor",
        description="actor: one RewardActor per bundle runs every critic; grouped: one worker process "
        "per critic, grouped and given quotas by the MPS planner (report §6.1.2)",
    )

    @field_validator("critics")
    @classmethod
    def _distinct(cls, critics):
        return distinct_critics(critics)

    @model_validator(mode="after")
    def _components_name_configured_critics(self):
        names = {spec.name for spec in self.critics}
        if not self.components:
            raise ValueError("rewards.components must name at least one score")
        scores = {label: component.score for label, component in self.components.items()}
        if self.gate:
            scores["gate"] = self.gate
        for label, score in scores.items():
            critic = score.split(".", 1)[0]
            if "." not in score or critic not in names:
                raise ValueError(
                    f"rewards.components.{label}.score={score!r} must be 'critic.score' "
                    f"with critic among the configured critics {sorted(names)}"
                )
        return self


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
