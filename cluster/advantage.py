"""From component rewards to the advantages GRPO trains on — the Stage II stack (report §3).

    component rewards r_i [P, G]
      → reward weights w: static, or the Self-Paced curriculum's                report §3.4
      → objectives: the mix Σ_i w_i r_i (weighted_sum) or each r_i               report §3.5
      → per-objective group advantages, BPGO-anchored if enabled                 report eq. 1, §3.3
      → eq. (5)'s weights c: [1] | w | w-weighted min-norm of the eq. (1) advantages   eqs. 4-5
      → AdvantageResult: A [N, P·G], c [N], trust [N, P·G], combined Σ_i c_i A_i [P·G]

The learner minimises L = Σ_i c_i L_i, one clipped surrogate per objective with the shared ratio
(`algorithms.grpo.clipped_surrogate(..., advantages=A[:, batch], component_weights=c,
sample_weights=trust[:, batch])`). `combined` feeds only ViPO's reward-aligned map (report §3.2:
where a group's winners and losers differ under the objective in force) and the logs.

BPGO's prior (one prior over the reward vector) is pooled from every reference group passed to
`observe_prior` before training and stays fixed (`prior_rule: frozen`); `ema`/`bayes` also fold
in each training batch. Each objective reads its own anchor from it: component i its own, the
weighted_sum mix the exact mean and variance of the mix with the weights in force now.

Holds the stateful parts (the prior, the curriculum) and their checkpoint state; the math lives
in `algorithms/` and `schedulers/`. With every extension off this is `group_advantages(Σ_i w_i r_i)`:
plain GRPO.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from algorithms.bpgo import RewardPrior, bpgo_advantages
from algorithms.grpo import group_advantages
from algorithms.joint_reward import component_weights, weighted_reward_sum
from cluster.config import TeleBoostConfig
from schedulers.self_paced import PHASES, SelfPacedCurriculum

WEIGHTED = "weighted_sum"


class AdvantageResult(NamedTuple):
    advantages: torch.Tensor  # [N, P·G] per-objective advantages A_i; N = 1 under weighted_sum
    component_weights: torch.Tensor  # [N] the c_i of eq. (5)
    sample_weights: torch.Tensor | None  # [N, P·G] BPGO trust, 0 on dropped groups; None if neither
    combined: torch.Tensor  # [P·G] Σ_i c_i A_i: ViPO's reward-aligned map input, never the loss
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
        self.prior = RewardPrior() if self.grpo.bpgo.enabled else None

    def reward_weights(self) -> torch.Tensor:
        if self.curriculum is None:
            return self.static_weights
        weights = self.curriculum.weights()
        return torch.tensor([weights[name] for name in self.names], dtype=torch.float64)

    def observe_prior(self, prompts: list[str], rewards: dict[str, torch.Tensor]) -> None:
        """Fold reference groups {component: [P, G]} into the BPGO prior; call once per reference
        group before training. Every call counts equally ("pooled"; "bayes" pools by its own rule)."""
        if self.prior is not None:
            rule = "bayes" if self.grpo.bpgo.prior_rule == "bayes" else "pooled"
            self.prior.update(prompts, self._stack(rewards), rule=rule)

    def compute(
        self, prompts: list[str], rewards: dict[str, torch.Tensor], kept: torch.Tensor | None = None
    ) -> AdvantageResult:
        """prompts [P], rewards {component: [P, G]}, kept [P] (groups to train on, default all:
        the others, e.g. with non-finite rewards, get advantage 0 and weight 0 and are not observed)."""
        stacked = self._stack(rewards)  # [N, P, G]
        num_prompts, group_size = stacked.shape[1:]
        kept = torch.ones(num_prompts, dtype=torch.bool) if kept is None else kept.to(torch.bool).cpu()
        weights = self.reward_weights()
        logs = {f"reward_weight/{n}": w.item() for n, w in zip(self.names, weights)}
        weighted = self.grpo.joint_reward.mode == WEIGHTED
        num_objectives = 1 if weighted else len(self.names)
        advantages = torch.zeros(num_objectives, num_prompts, group_size, dtype=torch.float64)
        trust = torch.ones(num_objectives, num_prompts, dtype=torch.float64)
        c = torch.full((num_objectives,), 1.0 / num_objectives, dtype=torch.float64)
        if kept.any():
            kept_prompts = [p for p, k in zip(prompts, kept.tolist()) if k]
            advantages[:, kept], trust[:, kept], c = self._kept_advantages(kept_prompts, stacked[:, kept], weights)
            if not weighted:
                logs.update({f"joint_c/{n}": value.item() for n, value in zip(self.names, c)})
            if self.grpo.bpgo.ras:
                logs["bpgo/group_weight_min"] = trust[:, kept].min().item()
                logs["bpgo/group_weight_max"] = trust[:, kept].max().item()
            self._observe(kept_prompts, stacked[:, kept])
        if self.curriculum is not None:
            logs["curriculum/phase_index"] = float(PHASES.index(self.curriculum.phase))

        sample_weights = None
        if self.grpo.bpgo.ras or not kept.all():
            trust[:, ~kept] = 0.0
            sample_weights = trust.repeat_interleave(group_size, dim=1).float()
        flat = advantages.flatten(1)
        combined = torch.tensordot(c, flat, dims=1)
        trained = combined.view(num_prompts, group_size)[kept]  # the samples that reach the loss
        if trained.numel():
            logs.update({"advantage/mean": trained.mean().item(), "advantage/std": trained.std(correction=0).item(),
                         "advantage/abs_max": trained.abs().max().item()})
        return AdvantageResult(flat.float(), c.float(), sample_weights, combined.float(), logs)

    def _kept_advantages(self, prompts, rewards, weights):
        """(A [K, P, G], RAS trust [K, P] (ones when off), c [K]) for the kept groups [N, P, G]."""
        if self.grpo.joint_reward.mode == WEIGHTED:
            objectives, prior_weights = weighted_reward_sum(rewards, weights)[None], weights[None]
        else:
            objectives, prior_weights = rewards, torch.eye(len(self.names), dtype=torch.float64)
        advantages, trust = [], []
        for objective, prior_weight in zip(objectives, prior_weights):
            if self.prior is None:
                advantages.append(group_advantages(objective))
                trust.append(torch.ones(objective.shape[0], dtype=objective.dtype))
                continue
            bpgo = self.grpo.bpgo
            mu, sigma = self.prior.get(prompts, prior_weight, dtype=objective.dtype)
            out = bpgo_advantages(
                objective, mu, sigma, bpgo.ras, bpgo.crt, alpha=bpgo.alpha, gamma=bpgo.gamma, w_min=bpgo.w_min,
                w_max=bpgo.w_max, margin=bpgo.margin, stretch=bpgo.stretch, compress=bpgo.compress,
            )
            advantages.append(out.advantages)
            trust.append(out.group_weights)
        advantages = torch.stack(advantages)
        if self.grpo.joint_reward.mode == WEIGHTED:
            return advantages, torch.stack(trust), torch.ones(1, dtype=torch.float64)
        # eq. (4) on the rewards' own eq. (1) advantages, so BPGO's rescaling survives the balance
        plain = group_advantages(rewards) if self.grpo.bpgo.crt else advantages
        return advantages, torch.stack(trust), component_weights(plain.flatten(1), self.grpo.joint_reward.mode, weights)

    def _observe(self, prompts: list[str], rewards: torch.Tensor) -> None:
        """After a training batch [N, P, G]: the prior follows it under ema/bayes; the curriculum
        always sees it."""
        rule = self.grpo.bpgo.prior_rule
        if self.prior is not None and rule in ("ema", "bayes"):
            self.prior.update(prompts, rewards, rule=rule, momentum=self.grpo.bpgo.prior_momentum)
        if self.curriculum is not None:
            self.curriculum.observe(dict(zip(self.names, rewards)))

    def _stack(self, rewards: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack([torch.as_tensor(rewards[name]).detach().cpu().double() for name in self.names])

    # -- checkpoint state -------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "components": list(self.names),
            "prior": self.prior.state_dict() if self.prior is not None else None,
            "curriculum": self.curriculum.state_dict() if self.curriculum else None,
        }

    def load_state_dict(self, state: dict) -> None:
        if "priors" in state:
            raise ValueError("checkpoint holds per-name BPGO priors from before the reward-vector prior "
                             "(advantage_estimator.priors); it cannot be resumed: start the run afresh")
        if state["components"] != self.names:
            raise ValueError(f"checkpoint reward components {state['components']} differ from the config's {self.names}")
        if self.prior is not None and state.get("prior"):
            self.prior.load_state_dict(state["prior"])
        if self.curriculum is not None and state.get("curriculum"):
            self.curriculum.load_state_dict(state["curriculum"])
