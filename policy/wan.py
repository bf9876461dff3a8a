"""The video diffusion policy: diffusers' Wan transformer + Wan VAE + a UMT5 text encoder.

One adapter serves both worlds: the `tiny` preset builds randomly initialised, CPU-sized
instances of the SAME classes (the toy world's base model is trained from them by
`cluster.jobs.pretrain`), while the real presets load Wan2.1/2.2 weights from a local path
or hub id. Nothing here knows about Ray or rewards.

Latent convention: `encode_video` returns *normalised* latents (z − μ) / s using the VAE's
per-channel `latents_mean` / `latents_std`, exactly as diffusers' Wan pipeline expects, so
the transformer always sees unit-scale latents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

TINY_TEXT_LENGTH = 48


@dataclass(frozen=True)
class TinyDims:
    """Sizes of the `tiny` preset: about 0.3M transformer and 0.2M VAE parameters."""

    latent_channels: int = 8
    vae_base_dim: int = 8
    vae_spatial_downsamples: int = 1
    heads: int = 4
    head_dim: int = 16
    layers: int = 2
    ffn_dim: int = 256
    text_dim: int = 32


def build_tiny_components(dims: TinyDims = TinyDims(), seed: int = 0):
    """Randomly initialised tiny Wan transformer, Wan VAE and UMT5 encoder + ByT5 tokenizer.

    The VAE downsamples 2x in space and 2x in time (9 frames -> 5 latent frames, 32x32 -> 16x16):
    a tiny VAE trained for minutes on a CPU keeps the colour and outline of 8 px shapes only at
    this mild compression (at 4x it returned grey blobs), and the transformer still sees only
    5x8x8 tokens after its 2x2 patching.
    ByT5's byte tokenizer needs no vocabulary file, so everything builds offline.
    """
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import ByT5Tokenizer, UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(
        base_dim=dims.vae_base_dim,
        z_dim=dims.latent_channels,
        dim_mult=[1] + [2] * dims.vae_spatial_downsamples,
        num_res_blocks=1,
        temperal_downsample=[True] + [False] * (dims.vae_spatial_downsamples - 1),
        latents_mean=[0.0] * dims.latent_channels,
        latents_std=[1.0] * dims.latent_channels,
        scale_factor_temporal=2,
        scale_factor_spatial=2**dims.vae_spatial_downsamples,
    )
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=dims.heads,
        attention_head_dim=dims.head_dim,
        in_channels=dims.latent_channels,
        out_channels=dims.latent_channels,
        text_dim=dims.text_dim,
        freq_dim=64,
        ffn_dim=dims.ffn_dim,
        num_layers=dims.layers,
        rope_max_seq_len=64,
    )
    tokenizer = ByT5Tokenizer()
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=dims.text_dim,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            dropout_rate=0.0,
        )
    )
    return transformer, vae, text_encoder, tokenizer


def load_pretrained_components(model_path: str, torch_dtype: torch.dtype = torch.bfloat16):
    """Real Wan2.x weights from a local diffusers folder or hub id (transformer/, vae/, text_encoder/, tokenizer/)."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5EncoderModel

    transformer = WanTransformer3DModel.from_pretrained(model_path, subfolder="transformer", torch_dtype=torch_dtype)
    vae = AutoencoderKLWan.from_pretrained(model_path, subfolder="vae", torch_dtype=torch.float32)
    text_encoder = UMT5EncoderModel.from_pretrained(model_path, subfolder="text_encoder", torch_dtype=torch_dtype)
    tokenizer = AutoTokenizer.from_pretrained(model_path, subfolder="tokenizer")
    return transformer, vae, text_encoder, tokenizer


class VideoPolicy(nn.Module):
    """Velocity model v_θ(x_σ, σ, text) with VAE encode/decode and cached text embeddings."""

    def __init__(self, transformer, vae, text_encoder, tokenizer, max_text_length: int = TINY_TEXT_LENGTH):
        super().__init__()
        self.transformer = transformer
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.max_text_length = max_text_length
        for frozen in (self.vae, self.text_encoder):
            frozen.requires_grad_(False)
        self._text_cache: dict[str, torch.Tensor] = {}

    # -- text -------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """[B, L, D] text embeddings; padded positions zeroed as in diffusers' Wan pipeline."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            tokens = self.tokenizer(
                missing, padding="max_length", max_length=self.max_text_length, truncation=True, return_tensors="pt"
            )
            device = next(self.text_encoder.parameters()).device
            hidden = self.text_encoder(
                input_ids=tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device)
            ).last_hidden_state
            hidden = hidden * tokens.attention_mask.to(device).unsqueeze(-1)
            for prompt, embedding in zip(missing, hidden.float()):
                self._text_cache[prompt] = embedding
        return torch.stack([self._text_cache[p] for p in prompts])

    # -- latents ----------------------------------------------------------------------
    def _latent_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1, 1, 1, 1)
        mean = torch.tensor(self.vae.config.latents_mean, dtype=like.dtype, device=like.device).view(shape)
        std = torch.tensor(self.vae.config.latents_std, dtype=like.dtype, device=like.device).view(shape)
        return mean, std

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        cfg = self.vae.config
        t = (num_frames - 1) // cfg.scale_factor_temporal + 1
        return (cfg.z_dim, t, height // cfg.scale_factor_spatial, width // cfg.scale_factor_spatial)

    def encode_video(self, videos: torch.Tensor, sample: bool = False, generator=None) -> torch.Tensor:
        """videos float [B, T, H, W, 3] in [0, 1] → normalised latents [B, C, T', H', W']."""
        pixels = videos.permute(0, 4, 1, 2, 3) * 2 - 1
        posterior = self.vae.encode(pixels).latent_dist
        z = posterior.sample(generator) if sample else posterior.mode()
        mean, std = self._latent_stats(z)
        return (z - mean) / std

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """normalised latents → float videos [B, T, H, W, 3] in [0, 1]."""
        mean, std = self._latent_stats(latents)
        pixels = self.vae.decode(latents * std + mean).sample
        return ((pixels.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 4, 1)

    # -- velocity ---------------------------------------------------------------------
    def velocity(self, latents: torch.Tensor, sigmas: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """Predicted v = ε − x0 at noise level σ (timestep = 1000·σ as in Wan's scheduler)."""
        timesteps = (sigmas * 1000.0).expand(latents.shape[0])
        return self.transformer(latents, timesteps, text_embeds.to(latents.dtype), return_dict=False)[0]


def sampling_sigmas(num_steps: int, shift: float) -> torch.Tensor:
    """num_steps + 1 decreasing sigmas from 1 to 0, taken from diffusers' FlowMatchEulerDiscreteScheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    scheduler.set_timesteps(num_steps)
    return scheduler.sigmas.float()


TrainableMode = Literal["full", "lora", "decoder"]


def select_trainable(policy: VideoPolicy, mode: TrainableMode, lora_rank: int = 8, lora_alpha: int = 16) -> list[nn.Parameter]:
    """Freeze everything, then enable what `mode` trains; returns the trainable parameters.

    full: the whole transformer. lora: peft LoRA adapters on the transformer's attention and
    FFN projections (the base weights stay frozen). decoder: the VAE decoder only (used by the
    SFT motion branch, which fuses into the decoder).
    """
    policy.requires_grad_(False)
    if mode == "full":
        policy.transformer.requires_grad_(True)
    elif mode == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        config = LoraConfig(
            r=lora_rank, lora_alpha=lora_alpha, init_lora_weights=True,
            target_modules=["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"],
        )
        policy.transformer = inject_adapter_in_model(config, policy.transformer)
        for name, param in policy.transformer.named_parameters():
            param.requires_grad_("lora_" in name)
    elif mode == "decoder":
        policy.vae.decoder.requires_grad_(True)
        policy.vae.post_quant_conv.requires_grad_(True)
    else:
        raise ValueError(f"trainable mode must be one of full, lora, decoder; got {mode!r}")
    return [p for p in policy.parameters() if p.requires_grad]


def trainable_state(policy: VideoPolicy) -> dict[str, torch.Tensor]:
    """The trainable tensors by name (what the learner ships to the rollout actor each step)."""
    return {name: p.detach().clone() for name, p in policy.named_parameters() if p.requires_grad}


def build_policy(preset: str = "tiny", model_path: str | None = None, dtype: str = "float32", seed: int = 0) -> VideoPolicy:
    """The policy a config names: random tiny (no path), or weights from a diffusers folder / hub id.

    The toy world's pretrained base is saved in the same diffusers layout as real Wan weights,
    so one loading path serves both.
    """
    if model_path is None:
        if preset != "tiny":
            raise ValueError(f"preset {preset!r} needs a model_path")
        return VideoPolicy(*build_tiny_components(seed=seed))
    torch_dtype = getattr(torch, dtype)
    max_text_length = TINY_TEXT_LENGTH if preset == "tiny" else 512
    return VideoPolicy(*load_pretrained_components(model_path, torch_dtype), max_text_length=max_text_length)


def save_policy(policy: VideoPolicy, path: str) -> None:
    """Write the policy in diffusers layout (transformer/, vae/, text_encoder/, tokenizer/)."""
    policy.transformer.save_pretrained(f"{path}/transformer")
    policy.vae.save_pretrained(f"{path}/vae")
    policy.text_encoder.save_pretrained(f"{path}/text_encoder")
    policy.tokenizer.save_pretrained(f"{path}/tokenizer")
