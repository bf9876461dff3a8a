"""From component rewards to the advantages GRPO trains on — the Stage II stack (report §3).

    component rewards r_i [P, G]
      → (Self-Paced) curriculum weights w_i                        report §3.4
      → per-component group advantages, BPGO-anchored if enabled    report eq. 1, §3.3
      → joint combination: weighted_sum | advantage_sum | min_norm  report §3.5, eqs. 4-5
      → advantages [P·G] and per-sample trust weights [P·G]

Holds the stateful parts (the BPGO reward prior, the curriculum) and their checkpoint state;
the math lives in `algorithms/` and `schedulers/`. With every extension off this reduces to
`group_advantages(Σ_i w_i r_i)`: plain GRPO.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from algorithms.bpgo import RewardPrior, bpgo_advantages
from algorithms.grpo import group_advantages
from algorithms.joint_reward import combine_advantages, weighted_reward_sum
from cluster.config import TeleBoostConfig
from schedulers.self_paced import PHASES, SelfPacedCurriculum

WEIGHTED = "weighted_sum"  # the prior's key for the scalarised reward in weighted_sum mode


class AdvantageResult(NamedTuple):
    advantages: torch.Tensor  # [P·G]
    sample_weights: torch.Tensor | None  # [P·G] BPGO trust, None when RAS is off
    logs: dict[str, float]


class AdvantageEstimator:
    def __init__(self, config: TeleBoostConfig):
        self.grpo = config.grpo
        self.names = list(config.rewards.components)
        self.static_weights = torch.tensor([c.weight for c in config.rewards.components.values()], dtype=torch.float64)
        curriculum = self.grpo.self_paced
        self.curriculum = (
            SelfPacedCurriculum(
                curriculum.reward_phases, window=curriculum.window, std_threshold=curriculum.std_threshold,
                saturation_threshold=curriculum.saturation_threshold, patience=curriculum.patience, floor=curriculum.floor,
            )
            if curriculum.enabled else None
        )
        self.priors: dict[str, RewardPrior] = {}

    def reward_weights(self) -> torch.Tensor:
        if self.curriculum is None:
            return self.static_weights
        weights = self.curriculum.weights()
        return torch.tensor([weights[name] for name in self.names], dtype=torch.float64)

    def _anchored_rewards(self, rewards: dict[str, torch.Tensor], weights: torch.Tensor) -> dict[str, torch.Tensor]:
        """The rewards group advantages are taken of: the scalarised one, or each component."""
        stacked = torch.stack([rewards[name].double() for name in self.names])  # [N, P, G]
        if self.grpo.joint_reward.mode == "weighted_sum":
            return {WEIGHTED: weighted_reward_sum(stacked, weights)}
        return dict(zip(self.names, stacked))

    def observe_prior(self, prompts: list[str], rewards: dict[str, torch.Tensor]) -> None:
        """Fold groups [P, G] per component into the BPGO priors (reference samples before training)."""
        if not self.grpo.bpgo.enabled:
            return
        for name, anchored in self._anchored_rewards(rewards, self.reward_weights()).items():
            prior = self.priors.setdefault(name, RewardPrior())
            prior.update(prompts, anchored, rule=self.grpo.bpgo.prior_rule, momentum=self.grpo.bpgo.prior_momentum)

    def compute(self, prompts: list[str], rewards: dict[str, torch.Tensor]) -> AdvantageResult:
        """prompts [P], rewards {component: [P, G]} → advantages for the P·G samples."""
        weights = self.reward_weights()
        logs = {f"reward_weight/{n}": w.item() for n, w in zip(self.names, weights)}
        anchored = self._anchored_rewards(rewards, weights)
        per_reward, trust = {}, {}
        for name, reward in anchored.items():
            per_reward[name], trust[name] = self._group_advantages(prompts, reward, name)

        if self.grpo.joint_reward.mode == "weighted_sum":
            advantages, group_weights = per_reward[WEIGHTED], trust[WEIGHTED]
        else:
            combined = combine_advantages(
                torch.stack([per_reward[n] for n in self.names]).flatten(1), self.grpo.joint_reward.mode, weights
            )
            advantages = combined.advantages.view(len(prompts), -1)
            logs.update({f"joint_c/{n}": c.item() for n, c in zip(self.names, combined.weights)})
            group_weights = None
            if self.grpo.bpgo.ras:  # each group's trust, averaged with the advantages' own weights
                c = combined.weights / combined.weights.sum().clamp_min(1e-12)
                group_weights = torch.tensordot(c, torch.stack([trust[n] for n in self.names]), dims=1)

        sample_weights = None
        if group_weights is not None and self.grpo.bpgo.ras:
            sample_weights = group_weights.float().repeat_interleave(advantages.shape[1])
            logs["bpgo/group_weight_min"] = group_weights.min().item()
            logs["bpgo/group_weight_max"] = group_weights.max().item()
        if self.grpo.bpgo.prior_rule != "frozen":
            self.observe_prior(prompts, rewards)
        if self.curriculum is not None:
            self.curriculum.observe({name: rewards[name] for name in self.names})
            logs["curriculum/phase_index"] = float(PHASES.index(self.curriculum.phase))
        return AdvantageResult(advantages.flatten().float(), sample_weights, logs)

    def _group_advantages(self, prompts, group_rewards, prior_name):
        bpgo = self.grpo.bpgo
        if not bpgo.enabled:
            return group_advantages(group_rewards), None
        prior = self.priors.setdefault(prior_name, RewardPrior())
        mu, sigma = prior.get(prompts, dtype=group_rewards.dtype)
        out = bpgo_advantages(
            group_rewards, mu, sigma, bpgo.ras, bpgo.crt, alpha=bpgo.alpha, gamma=bpgo.gamma, w_min=bpgo.w_min,
            w_max=bpgo.w_max, margin=bpgo.margin, stretch=bpgo.stretch, compress=bpgo.compress,
        )
        return out.advantages, out.group_weights

    # -- checkpoint state -------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "priors": {name: prior.state_dict() for name, prior in self.priors.items()},
            "curriculum": self.curriculum.state_dict() if self.curriculum else None,
        }

    def load_state_dict(self, state: dict) -> None:
        for name, prior_state in state.get("priors", {}).items():
            self.priors.setdefault(name, RewardPrior()).load_state_dict(prior_state)
        if self.curriculum is not None and state.get("curriculum"):
            self.curriculum.load_state_dict(state["curriculum"])
