"""Stage 0: train the toy world's base model (tiny Wan VAE, then tiny Wan transformer).

    python -m cluster.jobs.pretrain --config configs/toy.yaml

Real Wan weights are pretrained already; this job exists so the toy world has a base model
that post-training starts from, made by the project's own code (no hand-made weights).
It runs in one process (no Ray): it is small, and its result is cached in
`policy.model_path` — a second call with the same config returns at once.

Supports: VAE reconstruction training, per-channel latent statistics (stored in the VAE
config exactly like real Wan's `latents_mean`/`latents_std`), flow-matching training of the
transformer, and an evaluation that scores base vs randomly initialised samples with the
toy judges (`base_eval.json`). Does not support resuming a half-finished pretraining.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch

from cluster.config import TeleBoostConfig
from algorithms.sft import noisy_latents, sample_sigmas
from cluster.jobs.common import parse_job_args
from cluster.progress import progress_bar
from policy.sampling import sample_trajectories
from policy.wan import VideoPolicy, build_policy, sampling_sigmas, save_policy
from toyworld.judges import judge_all
from toyworld.world import ToyWorld

log = logging.getLogger("teleboost.pretrain")
DONE_MARKER = "base_eval.json"


def _batch(world: ToyWorld, size: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    clips = world.sample(size, seed=seed)
    return torch.stack([c.video for c in clips]), [c.prompt for c in clips]


def _optimizer_step(optimizer, schedule, loss: torch.Tensor, max_grad_norm: float = 1.0) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    for group in optimizer.param_groups:
        torch.nn.utils.clip_grad_norm_(group["params"], max_grad_norm)
    optimizer.step()
    schedule.step()


def train_vae(policy: VideoPolicy, world: ToyWorld, cfg, seed: int) -> None:
    """Reconstruction (L1 + L2) + a small KL, on short clips.

    Clips of `cfg.vae_clip_frames` = 1 + 4 frames exercise exactly the ops of longer clips (Wan's
    causal VAE encodes the first frame, then 4-frame chunks with a feature cache) at a fraction
    of the cost, which is what makes CPU pretraining take minutes instead of an hour.
    """
    vae = policy.vae
    short = ToyWorld(cfg.vae_clip_frames, world.height, world.width, kinds=world.kinds)
    vae.requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(cfg.vae_steps, 1))
    started = time.time()
    with progress_bar("pretrain VAE", cfg.vae_steps) as advance:
        for step in range(cfg.vae_steps):
            videos, _ = _batch(short, cfg.batch_size, seed=seed * 1_000_003 + step)
            pixels = videos.permute(0, 4, 1, 2, 3) * 2 - 1
            posterior = vae.encode(pixels).latent_dist
            recon = vae.decode(posterior.sample()).sample
            recon_loss = (recon - pixels).abs().mean() + (recon - pixels).pow(2).mean()
            _optimizer_step(optimizer, schedule, recon_loss + cfg.kl_weight * posterior.kl().mean())
            if step % 100 == 0 or step == cfg.vae_steps - 1:
                log.info("vae step %d/%d recon %.4f (%.0fs)", step + 1, cfg.vae_steps, recon_loss.item(), time.time() - started)
            advance()
    vae.requires_grad_(False)
    vae.eval()


@torch.no_grad()
def set_latent_statistics(policy: VideoPolicy, world: ToyWorld, seed: int, num_clips: int = 256) -> None:
    """Per-channel mean/std of the VAE's latents, stored in its config as Wan does."""
    videos, _ = _batch(world, num_clips, seed=seed + 17)
    pixels = videos.permute(0, 4, 1, 2, 3) * 2 - 1
    z = torch.cat([policy.vae.encode(chunk).latent_dist.mode() for chunk in pixels.split(32)])
    mean = z.mean(dim=(0, 2, 3, 4))
    std = z.std(dim=(0, 2, 3, 4)).clamp_min(1e-3)
    policy.vae.register_to_config(latents_mean=mean.tolist(), latents_std=std.tolist())


@torch.no_grad()
def encode_dataset(policy: VideoPolicy, world: ToyWorld, size: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """Latents (VAE posterior modes) and prompts of `size` clips, encoded once up front."""
    videos, prompts = _batch(world, size, seed=seed * 1_000_003 + 500_000)
    latents = torch.cat([policy.encode_video(chunk) for chunk in videos.split(64)])
    return latents, prompts


def train_transformer(policy: VideoPolicy, world: ToyWorld, cfg, shift: float, seed: int) -> None:
    """Rectified flow matching: x_σ = (1−σ)x0 + σε, target v = ε − x0, σ from the shifted schedule."""
    dataset, dataset_prompts = encode_dataset(policy, world, cfg.dataset_clips, seed)
    log.info("encoded %d clips to latents %s", len(dataset_prompts), tuple(dataset.shape[1:]))
    transformer = policy.transformer
    transformer.requires_grad_(True)
    transformer.train()
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=cfg.transformer_lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(cfg.transformer_steps, 1))
    generator = torch.Generator().manual_seed(seed)
    started = time.time()
    with progress_bar("pretrain transformer", cfg.transformer_steps) as advance:
        for step in range(cfg.transformer_steps):
            index = torch.randint(len(dataset_prompts), (cfg.transformer_batch_size,), generator=generator)
            x0 = dataset[index]
            text = policy.encode_prompts([dataset_prompts[i] for i in index.tolist()])
            sigma = sample_sigmas(x0.shape[0], shift, generator)  # the same shift the sampler's schedule uses
            noise = torch.randn(x0.shape, generator=generator)
            loss = (policy.velocity(noisy_latents(x0, noise, sigma), sigma, text) - (noise - x0)).pow(2).mean()
            _optimizer_step(optimizer, schedule, loss)
            if step % 200 == 0 or step == cfg.transformer_steps - 1:
                log.info("transformer step %d/%d loss %.4f (%.0fs)", step + 1, cfg.transformer_steps, loss.item(), time.time() - started)
            advance()
    transformer.requires_grad_(False)
    transformer.eval()


@torch.no_grad()
def judge_policy(policy: VideoPolicy, config: TeleBoostConfig, prompts: list[str], seed: int) -> dict[str, float]:
    """Mean toy-judge scores of ODE samples (noise_level 0) for `prompts`."""
    sigmas = sampling_sigmas(config.sampling.num_steps, config.sampling.shift)
    trajectories = sample_trajectories(
        policy, prompts, sigmas, 0.0, config.clip.shape, torch.Generator().manual_seed(seed)
    )
    scores = judge_all(trajectories.videos.float() / 255, prompts)
    return {name: round(value.mean().item(), 4) for name, value in scores.items()}


def pretrain(config: TeleBoostConfig) -> Path:
    if config.policy.preset != "tiny" or not config.policy.model_path:
        raise SystemExit("pretrain builds the toy base model: it needs policy.preset 'tiny' and a policy.model_path to write")
    out = Path(config.policy.model_path)
    if (out / DONE_MARKER).exists():
        log.info("base model cached at %s: %s", out, (out / DONE_MARKER).read_text())
        return out
    world = ToyWorld(*config.clip.shape, kinds=config.world.kinds)
    policy = build_policy("tiny", None, seed=config.seed)
    random_scores_policy = build_policy("tiny", None, seed=config.seed)
    eval_prompts = world.prompts(config.pretrain.eval_prompts, seed=config.seed + 99)

    torch.set_num_threads(os.cpu_count() or 1)  # one process, nothing beside it: use every core
    train_vae(policy, world, config.pretrain, config.seed)
    set_latent_statistics(policy, world, config.seed, config.pretrain.statistics_clips)
    train_transformer(policy, world, config.pretrain, config.sampling.shift, config.seed)

    report = {
        "base": judge_policy(policy, config, eval_prompts, config.seed),
        "random_init": judge_policy(random_scores_policy, config, eval_prompts, config.seed),
    }
    save_policy(policy, str(out))
    (out / DONE_MARKER).write_text(json.dumps(report, indent=1))
    log.info("base model written to %s; judge scores base %s vs random init %s", out, report["base"], report["random_init"])
    return out


def main(argv: list[str] | None = None) -> None:
    config, _ = parse_job_args("Pretrain the toy world's tiny Wan base model.", argv, sections=("pretrain",))
    pretrain(config)


if __name__ == "__main__":
    main()
