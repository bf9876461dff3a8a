"""Rollouts: run the flow-SDE sampler over a policy and keep what GRPO needs to re-score it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from algorithms.flow_sde import sde_step_with_logprob
from policy.wan import VideoPolicy


@dataclass
class Trajectories:
    """A batch of rollouts. latents[:, j] is the state before step j; latents[:, -1] is x0."""

    prompts: list[str]
    text_embeds: torch.Tensor  # [B, L, D]
    latents: torch.Tensor  # [B, S + 1, C, T', H', W']
    log_probs: torch.Tensor  # [B, S] log-density of each step under the sampling policy
    sigmas: torch.Tensor  # [S + 1]
    videos: torch.Tensor  # uint8 [B, T, H, W, 3]
    noise_level: float
    weights_version: int = -1
    log_prob_maps: torch.Tensor | None = None  # [B, S, C, T', H', W'] per-element, kept for ViPO

    def shard(self, start: int, stop: int) -> "Trajectories":
        """Samples [start, stop) as their own batch (one learner's share of a step)."""
        return Trajectories(
            prompts=self.prompts[start:stop], text_embeds=self.text_embeds[start:stop], latents=self.latents[start:stop],
            log_probs=self.log_probs[start:stop], sigmas=self.sigmas, videos=self.videos[start:stop],
            noise_level=self.noise_level, weights_version=self.weights_version,
            log_prob_maps=None if self.log_prob_maps is None else self.log_prob_maps[start:stop],
        )

    @classmethod
    def concat(cls, shards: list["Trajectories"]) -> "Trajectories":
        """Join rollouts sampled on several bundles, in order, into one batch."""
        first = shards[0]
        if len(shards) == 1:
            return first
        if len({s.weights_version for s in shards}) != 1:
            raise ValueError(f"shards sampled with different weights: {[s.weights_version for s in shards]}")
        cat = lambda name: torch.cat([getattr(s, name) for s in shards])  # noqa: E731
        return cls(
            prompts=[p for s in shards for p in s.prompts],
            text_embeds=cat("text_embeds"), latents=cat("latents"), log_probs=cat("log_probs"),
            sigmas=first.sigmas, videos=cat("videos"), noise_level=first.noise_level,
            weights_version=first.weights_version,
            log_prob_maps=cat("log_prob_maps") if first.log_prob_maps is not None else None,
        )


@torch.no_grad()
def sample_trajectories(
    policy: VideoPolicy,
    prompts: list[str],
    sigmas: torch.Tensor,
    noise_level: float,
    video_shape: tuple[int, int, int],
    generator: torch.Generator,
    decode: bool = True,
    keep_log_prob_maps: bool = False,
) -> Trajectories:
    """Sample one video per prompt with the reverse SDE (noise_level=0: the deterministic ODE).

    Runs on the policy's device; the initial noise is drawn on the host from `generator`, so a
    seed gives the same rollout on any device. Returned tensors are on the host: they travel to
    the reward and learner actors through Ray's object store.
    """
    text_embeds = policy.encode_prompts(prompts)
    device_text = text_embeds.to(policy.device)
    latent_shape = policy.latent_shape(*video_shape)
    x = torch.randn((len(prompts), *latent_shape), generator=generator).to(policy.device)
    states, log_probs, log_prob_maps = [x], [], []
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        velocity = policy.velocity(x, sigma, device_text)
        x, log_prob, _, _ = sde_step_with_logprob(
            velocity, x, sigma, sigma_next, noise_level, generator=generator, per_element=keep_log_prob_maps
        )
        states.append(x)
        if keep_log_prob_maps:
            log_prob_maps.append(log_prob)
            log_prob = log_prob.mean(dim=tuple(range(1, log_prob.ndim)))
        log_probs.append(log_prob)
    videos = policy.decode_latents(x) if decode else torch.zeros((len(prompts), *video_shape, 3))
    return Trajectories(
        prompts=list(prompts),
        text_embeds=text_embeds,
        latents=torch.stack(states, dim=1).cpu(),
        log_probs=torch.stack(log_probs, dim=1).cpu(),
        sigmas=sigmas.cpu(),
        videos=(videos * 255).round().to(torch.uint8).cpu(),
        noise_level=noise_level,
        log_prob_maps=torch.stack(log_prob_maps, dim=1).cpu() if keep_log_prob_maps else None,
    )
