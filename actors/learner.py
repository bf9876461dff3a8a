"""PolicyLearner: owns the trainable parameters, the optimizer and the frozen reference."""

from __future__ import annotations

import copy
import math

import torch

from actors.offload import Offloadable
from algorithms.flow_sde import sde_step_with_logprob
from algorithms.grpo import SurrogateTerms, clipped_surrogate, gaussian_mean_kl, select_train_timesteps
from algorithms.vipo import map_weighted_log_prob
from cluster.config import TeleBoostConfig
from policy.psm import PerceptualStructuringModule
from policy.sampling import Trajectories
from policy.wan import build_policy, select_trainable, trainable_state


class PolicyLearner(Offloadable):
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
        self.psm: PerceptualStructuringModule | None = None

    def get_weights(self) -> tuple[dict[str, torch.Tensor], int]:
        """(weights, version); call with `num_returns=2` so the weights stay in the object store."""
        return trainable_state(self.policy), self.version

    def update(
        self, advantages: torch.Tensor, seed: int, sample_weights: torch.Tensor | None, *shards: Trajectories
    ) -> dict[str, float]:
        """One GRPO update: inner epochs × shuffled minibatches of `group_size` samples, each
        accumulating the surrogate over a random subset of denoising steps before one optimizer step.

        Non-finite losses or gradients skip that optimizer step (counted), so they never reach
        the weights.
        """
        cfg = self.config.grpo
        trajectories = Trajectories.concat(list(shards))
        generator = torch.Generator().manual_seed(seed)
        num_steps = trajectories.log_probs.shape[1]
        batch = trajectories.latents.shape[0]
        advantage_maps = self._advantage_maps(trajectories, advantages)
        self.policy.transformer.train()
        keys = ("loss", "kl", "clip_fraction", "ratio")
        totals = dict.fromkeys((*keys, "grad_norm"), 0.0)
        updates = skipped = 0
        for _ in range(cfg.inner_epochs):
            train_steps = select_train_timesteps(num_steps, cfg.timestep_fraction, generator)
            for minibatch in torch.randperm(batch, generator=generator).split(cfg.group_size):
                self.optimizer.zero_grad(set_to_none=True)
                step_sums = dict.fromkeys(keys, 0.0)
                for j in train_steps:
                    terms = self._step_terms(trajectories, advantages, sample_weights, advantage_maps, minibatch, j)
                    (terms.loss / len(train_steps)).backward()
                    for key, value in zip(keys, (terms.loss, terms.kl, terms.clip_fraction, terms.ratio_mean)):
                        step_sums[key] += value.item() / len(train_steps)
                grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm).item()
                if not (math.isfinite(grad_norm) and math.isfinite(step_sums["loss"])):
                    skipped += 1
                    self.optimizer.zero_grad(set_to_none=True)
                    continue
                self.optimizer.step()
                updates += 1
                for key, value in step_sums.items():
                    totals[key] += value
                totals["grad_norm"] += grad_norm
        self.policy.transformer.eval()
        self.version += 1
        metrics = {key: value / max(updates, 1) for key, value in totals.items()}
        metrics.update(optimizer_steps=updates, skipped_updates=skipped, version=self.version)
        return metrics

    def _advantage_maps(self, trajectories: Trajectories, advantages: torch.Tensor) -> torch.Tensor | None:
        """ViPO maps on the latent grid (report §3.2), or None when lam = 0 (plain GRPO exactly)."""
        vipo = self.config.grpo.vipo
        if vipo.lam == 0:
            return None
        if self.psm is None:
            self.psm = PerceptualStructuringModule(vipo.backbone, vipo.backbone_path, vipo.patch)
        latent_thw = tuple(trajectories.latents.shape[-3:])
        return self.psm.advantage_maps(trajectories.videos.float() / 255, self.config.grpo.group_size, vipo.lam, latent_thw,
                                       advantages if vipo.map == "reward_aligned" else None)

    def _step_terms(self, trajectories, advantages, sample_weights, advantage_maps, index, j) -> SurrogateTerms:
        x = trajectories.latents[index, j]
        sigma, sigma_next = trajectories.sigmas[j], trajectories.sigmas[j + 1]
        text = trajectories.text_embeds[index]
        per_element = advantage_maps is not None
        step = sde_step_with_logprob(
            self.policy.velocity(x, sigma, text), x, sigma, sigma_next, trajectories.noise_level,
            prev_sample=trajectories.latents[index, j + 1], per_element=per_element,
        )
        kl = None
        if self.reference is not None:
            with torch.no_grad():
                ref_velocity = self.reference.velocity(x, sigma, text)
            ref_mean = sde_step_with_logprob(ref_velocity, x, sigma, sigma_next, trajectories.noise_level,
                                             prev_sample=trajectories.latents[index, j + 1]).mean
            kl = gaussian_mean_kl(step.mean, ref_mean, step.std)
        cfg = self.config.grpo
        log_prob, old_log_prob = step.log_prob, trajectories.log_probs[index, j]
        if per_element:  # ViPO: the map-weighted per-sample log-prob (report eq. 2)
            log_prob = map_weighted_log_prob(step.log_prob, advantage_maps[index])
            old_log_prob = map_weighted_log_prob(trajectories.log_prob_maps[index, j], advantage_maps[index])
        weights = None if sample_weights is None else sample_weights[index]
        return clipped_surrogate(log_prob, old_log_prob, advantages[index], cfg.clip_range, cfg.adv_clip_max,
                                 kl=kl, kl_beta=cfg.kl_beta, sample_weights=weights)

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
