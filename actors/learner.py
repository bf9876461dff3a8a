"""PolicyLearner: owns the trainable parameters, the optimizer and the frozen reference."""

from __future__ import annotations

import copy
import math

import torch

from algorithms.flow_sde import sde_step_with_logprob
from algorithms.grpo import clipped_surrogate, gaussian_mean_kl, select_train_timesteps
from cluster.config import TeleBoostConfig
from policy.sampling import Trajectories
from policy.wan import build_policy, select_trainable, trainable_state


class PolicyLearner:
    """GRPO updates on rollouts; weights leave as {name: tensor} with a version number.

    The reference policy for the KL term is a frozen copy of the starting policy, made only
    when kl_beta > 0 (it doubles the transformer's memory).
    """

    def __init__(self, config: TeleBoostConfig):
        torch.set_num_threads(config.policy.torch_threads)
        self.config = config
        self.policy = build_policy(config.policy.preset, config.policy.model_path, config.policy.dtype, seed=config.seed)
        self.reference = copy.deepcopy(self.policy).requires_grad_(False) if config.grpo.kl_beta > 0 else None
        self.params = select_trainable(self.policy, config.policy.trainable, config.policy.lora_rank)
        self.optimizer = torch.optim.AdamW(self.params, lr=config.grpo.learning_rate, weight_decay=0.0)
        self.version = 0

    def get_weights(self) -> tuple[dict[str, torch.Tensor], int]:
        return trainable_state(self.policy), self.version

    def update(
        self,
        trajectories: Trajectories,
        advantages: torch.Tensor,
        seed: int,
        sample_weights: torch.Tensor | None = None,
    ) -> dict[str, float]:
        """One GRPO update on a batch of rollouts (inner epochs × shuffled minibatches of one group each)."""
        cfg = self.config.grpo
        generator = torch.Generator().manual_seed(seed)
        num_steps = trajectories.log_probs.shape[1]
        batch = trajectories.latents.shape[0]
        self.policy.transformer.train()
        totals: dict[str, float] = {"loss": 0.0, "kl": 0.0, "clip_fraction": 0.0, "ratio": 0.0, "grad_norm": 0.0}
        updates = 0
        skipped = 0
        for _ in range(cfg.inner_epochs):
            train_steps = select_train_timesteps(num_steps, cfg.timestep_fraction, generator)
            for minibatch in torch.randperm(batch, generator=generator).split(cfg.group_size):
                self.optimizer.zero_grad(set_to_none=True)
                terms_sum = dict.fromkeys(("loss", "kl", "clip_fraction", "ratio"), 0.0)
                for j in train_steps:
                    terms = self._step_terms(trajectories, advantages, sample_weights, minibatch, j)
                    (terms.loss / len(train_steps)).backward()
                    for key, value in zip(("loss", "kl", "clip_fraction", "ratio"),
                                          (terms.loss, terms.kl, terms.clip_fraction, terms.ratio_mean)):
                        terms_sum[key] += value.item() / len(train_steps)
                grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
                if not math.isfinite(grad_norm.item()) or not math.isfinite(terms_sum["loss"]):
                    skipped += 1  # never let a non-finite update reach the weights
                    self.optimizer.zero_grad(set_to_none=True)
                    continue
                self.optimizer.step()
                updates += 1
                for key, value in terms_sum.items():
                    totals[key] += value
                totals["grad_norm"] += grad_norm.item()
        self.policy.transformer.eval()
        self.version += 1
        metrics = {key: value / max(updates, 1) for key, value in totals.items()}
        metrics.update(optimizer_steps=updates, skipped_updates=skipped, version=self.version)
        return metrics

    def _step_terms(self, trajectories, advantages, sample_weights, index, j):
        x = trajectories.latents[index, j]
        sigma, sigma_next = trajectories.sigmas[j], trajectories.sigmas[j + 1]
        text = trajectories.text_embeds[index]
        velocity = self.policy.velocity(x, sigma, text)
        step = sde_step_with_logprob(
            velocity, x, sigma, sigma_next, trajectories.noise_level, prev_sample=trajectories.latents[index, j + 1]
        )
        kl = None
        if self.reference is not None:
            with torch.no_grad():
                ref_velocity = self.reference.velocity(x, sigma, text)
                ref_mean = sde_step_with_logprob(ref_velocity, x, sigma, sigma_next, trajectories.noise_level,
                                                 prev_sample=trajectories.latents[index, j + 1]).mean
            kl = gaussian_mean_kl(step.mean, ref_mean, step.std)
        cfg = self.config.grpo
        return clipped_surrogate(
            step.log_prob, trajectories.log_probs[index, j], advantages[index], cfg.clip_range, cfg.adv_clip_max,
            kl=kl, kl_beta=cfg.kl_beta, sample_weights=None if sample_weights is None else sample_weights[index],
        )

    # -- state ------------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(trainable weights, optimizer state + version) for a checkpoint."""
        return trainable_state(self.policy), {"optimizer": self.optimizer.state_dict(), "version": self.version}

    def load_state(self, weights: dict[str, torch.Tensor], extra: dict) -> int:
        self.policy.load_state_dict(weights, strict=False)
        self.optimizer.load_state_dict(extra["optimizer"])
        self.version = extra["version"]
        return self.version

    def ping(self) -> int:
        return self.version
