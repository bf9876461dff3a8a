"""Stage I's objective (report §2) for the generic learner: load a batch → one optimizer step.

Each learner draws its own batch from a mixed real + simulated source (`data.videos.MixedSource`,
seeded by (run seed, rank) and indexed by step, so resume is exact) and trains, in one forward
that DDP can wrap (`SFTForward`):

- instruction / control SFT (§2.2): the flow-matching loss on the clip's latents with its
  prompt, target ε − x0 at Wan's shifted noise levels, on the transformer's trainable
  parameters (LoRA or full, `policy.trainable`);
- structure-aware reweighting (§2.3): each sample's loss weighted by its background warping
  error under the clip's camera motion, measured on the model's one-step prediction of the
  clean video (decoded to pixels, no gradient): weights have mean 1 and lie in [w_min, w_max],
  so structurally distorted samples get stronger gradients;
- physics-aware SFT (§2.4): the motion branch fused into the VAE decoder predicts inter-frame
  flow, supervised by ground-truth flow (exact for the toy world's fluid, Farneback for real
  clips), plus the decoder's reconstruction loss; only the decoder level (decoder,
  post_quant_conv, branch) trains — the VAE encoder and the text encoder never do.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterator, NamedTuple

import torch
from torch import nn

from actors.objectives import StepFn, TrainContext
from algorithms.sft import (
    background_warp_error,
    estimate_global_shift,
    flow_matching_errors,
    motion_errors,
    noisy_latents,
    per_sample_mse,
    predicted_clean,
    sample_sigmas,
    structure_weights,
    weight_stats,
    weighted_mean,
)
from data.videos import MixedSource, SFTBatch, VideoFolder
from policy.motion_branch import MotionDecode, decode_with_flow, motion_branch_parameters
from policy.wan import VideoPolicy
from toyworld.world import ToyWorld


class SFTOutputs(NamedTuple):
    velocity: torch.Tensor | None  # [B, C, T', H', W'] when the transformer trains
    decode: MotionDecode | None  # fused decode of the clean latents when the decoder level trains


class SFTForward(nn.Module):
    """Everything SFT trains, as ONE forward for DDP: the transformer's velocity and/or the fused
    decoder's decode. The text encoder is deliberately not a submodule (it stays on the host and
    out of DDP's parameter broadcast)."""

    def __init__(self, policy: VideoPolicy, velocity: bool, decode: bool):
        super().__init__()
        self.transformer, self.vae = policy.transformer, policy.vae
        self.branch = getattr(policy, "motion_branch", None)
        self._policy = (policy,)  # a tuple: not registered as a submodule
        self.velocity, self.decode = velocity, decode

    def forward(self, noisy, sigmas, text, clean) -> SFTOutputs:
        policy = self._policy[0]
        return SFTOutputs(policy.velocity(noisy, sigmas, text) if self.velocity else None,
                          decode_with_flow(policy, clean) if self.decode else None)


@dataclass(frozen=True)
class SFTObjective:
    batch_size: int  # per learner
    clip_shape: tuple[int, int, int]
    kinds: tuple[str, ...]
    seed: int
    shift: float
    train_transformer: bool = True
    structure: bool = True
    w_min: float = 0.5
    w_max: float = 2.0
    physics: bool = False
    motion_weight: float = 1.0
    reconstruction_weight: float = 1.0
    real_manifest: str | None = None
    real_fraction: float = 0.0
    real_flow: str = "farneback"
    needs_reference = False

    def prepare(self, policy: VideoPolicy, params: list[nn.Parameter]) -> list[nn.Parameter]:
        """The parameters SFT trains: the transformer's (unless `policy.trainable: decoder`) and,
        for physics-aware SFT, the decoder level with the motion branch."""
        transformer = [p for p in params if any(p is q for q in policy.transformer.parameters())] if self.train_transformer else []
        if not self.physics:
            return transformer
        decoder_level = motion_branch_parameters(policy)  # freezes everything else...
        for param in transformer:  # ...so give the transformer its trainable parameters back
            param.requires_grad_(True)
        return transformer + decoder_level

    def trained_module(self, policy: VideoPolicy) -> nn.Module:
        return SFTForward(policy, velocity=self.train_transformer, decode=self.physics)

    def source(self, rank: int) -> MixedSource:
        return _source(self, rank)

    def optimizer_steps(self, ctx: TrainContext, seed: int, shard_sizes: list[int], step: int) -> Iterator[StepFn]:
        """One optimizer step on this rank's batch `step` (the same batch on resume)."""
        generator = torch.Generator().manual_seed(seed + 1_000_003 * (ctx.rank + 1))
        batch = SFTBatch.collate(self.source(ctx.rank).batch(step))
        yield lambda: self._step(ctx, batch, generator)

    def _step(self, ctx: TrainContext, batch: SFTBatch, generator: torch.Generator) -> dict[str, float]:
        policy, device = ctx.policy, ctx.device
        videos = batch.videos.to(device)
        with torch.no_grad():
            latents = policy.encode_video(videos)
            text = policy.encode_prompts(batch.prompts).to(device)
        sigmas = sample_sigmas(len(batch.prompts), self.shift, generator).to(device)
        noise = torch.randn(latents.shape, generator=generator).to(device)
        noisy = noisy_latents(latents, noise, sigmas)
        out = ctx.model(noisy, sigmas, text, latents)
        stats: dict[str, float] = {}
        loss = torch.zeros((), device=device)
        if out.velocity is not None:
            weights = self._structure_weights(policy, batch, noisy, out.velocity.detach(), sigmas, stats) if self.structure else None
            flow_matching = weighted_mean(flow_matching_errors(out.velocity, latents, noise), weights)
            loss = loss + flow_matching
            stats["sft/flow_matching"] = flow_matching.item()
        if out.decode is not None:
            has_flow = batch.has_flow.to(device).float()
            motion = (motion_errors(out.decode.flow, batch.flow.to(device), policy.motion_branch.flow_scale_px) * has_flow).sum() \
                / has_flow.sum().clamp_min(1)
            reconstruction = per_sample_mse(out.decode.video, videos).mean()
            loss = loss + self.motion_weight * motion + self.reconstruction_weight * reconstruction
            stats.update({"sft/motion": motion.item(), "sft/reconstruction": reconstruction.item()})
        loss.backward()  # every rank's batch has batch_size samples: the DDP mean is the global mean
        return {"loss": loss.item(), **stats}

    @torch.no_grad()
    def _structure_weights(self, policy, batch, noisy, velocity, sigmas, stats) -> torch.Tensor:
        """§2.3: the background's warping error of the model's one-step clean prediction, under
        the clip's camera motion (known for toy clips, estimated for real ones) → weights."""
        predicted = policy.decode_latents(predicted_clean(noisy, velocity, sigmas)).cpu()
        shift = torch.where(batch.is_real[:, None, None], estimate_global_shift(batch.videos), batch.camera_shift)
        signal = background_warp_error(predicted, shift, batch.background)
        weights = structure_weights(signal, self.w_min, self.w_max)
        stats.update({f"sft/{key}": value for key, value in weight_stats(weights, signal, self.w_min, self.w_max).items()})
        return weights.to(noisy.device)


@functools.lru_cache(maxsize=4)
def _source(objective: SFTObjective, rank: int) -> MixedSource:
    """A learner's batch source, built once per process: toy clips of the configured kinds (the
    training split: evaluation prompts never appear) and,
    when configured, a real video folder (rows validated once; errors logged by the folder)."""
    frames, height, width = objective.clip_shape
    real = VideoFolder(objective.real_manifest, frames, height, width) if objective.real_manifest else None
    return MixedSource(objective.batch_size, seed=objective.seed * 1_000_003 + rank,
                       world=ToyWorld(frames, height, width, kinds=objective.kinds, split="train") if objective.real_fraction < 1 else None,
                       real=real, real_fraction=objective.real_fraction,
                       real_flow=objective.real_flow if objective.physics else "none")
