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

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

if TYPE_CHECKING:
    from policy.config import PolicyConfig

TINY_TEXT_LENGTH = 48
WAN_TEXT_LENGTH = 512
# The transformers of the real presets (their diffusers `transformer/config.json`), so that
# `random_init` builds exactly the shapes — and FLOPs and memory — of the released weights.
WAN_TRANSFORMERS: dict[str, dict] = {
    "wan2.1-t2v-1.3b": dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30),
    "wan2.1-t2v-14b": dict(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40),
    "wan2.2-i2v-14b": dict(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40, in_channels=36),
}
# UMT5-XXL, Wan's text encoder (its 256k vocabulary is not built: random models use ByT5's bytes).
WAN_TEXT_ENCODER = dict(d_model=4096, d_kv=64, d_ff=10240, num_heads=64, num_layers=24)


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


def build_random_components(preset: str, seed: int = 0, text_encoder_layers: int | None = None, device=None):
    """Randomly initialised components with the SHAPES of a real preset (nothing to download):
    Wan's transformer, the full Wan2.1 VAE and a UMT5 encoder of Wan's width (`text_encoder_layers`
    deep; a ByT5 byte tokenizer stands in for Wan's, whose vocabulary file cannot be fetched).

    Modules are created directly on `device`, so a 1.3B-parameter model does not spend a minute
    initialising on the host.
    """
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import ByT5Tokenizer, UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    tokenizer = ByT5Tokenizer()
    text_config = {**WAN_TEXT_ENCODER, "num_layers": text_encoder_layers or WAN_TEXT_ENCODER["num_layers"]}
    with torch.device(device or "cpu"):
        transformer = WanTransformer3DModel(**WAN_TRANSFORMERS[preset])
        vae = AutoencoderKLWan()
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), dropout_rate=0.0, **text_config))
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
    """Velocity model v_θ(x_σ, σ, text) with VAE encode/decode and cached text embeddings.

    Precision: `compute_dtype` is the transformer's compute precision (bfloat16 runs it under
    autocast, whatever the dtype of its trainable float32 parameters); the VAE runs in float32 as
    in diffusers' Wan pipeline, and `velocity` always returns float32, so the SDE means and
    log-probs built on it are float32 (as in Flow-GRPO).

    Placement: `place(device)` puts the transformer and the VAE on `device`. The text encoder
    stays in host memory and visits `device` only while it encodes prompts it has not seen
    (`encode_prompts` caches every embedding), so a 5B-parameter UMT5 never occupies the
    accelerator between prompt sets.
    """

    def __init__(self, transformer, vae, text_encoder, tokenizer, max_text_length: int = TINY_TEXT_LENGTH,
                 compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.transformer = transformer
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.max_text_length = max_text_length
        self.compute_dtype = compute_dtype
        self.device = torch.device("cpu")
        for frozen in (self.vae, self.text_encoder):
            frozen.requires_grad_(False)
        self._text_cache: dict[str, torch.Tensor] = {}

    def place(self, device: torch.device | str) -> "VideoPolicy":
        """Transformer, VAE (and an attached motion branch) to `device`; the text encoder stays
        on the host (see the class docstring)."""
        self.device = torch.device(device)
        self.transformer.to(self.device)
        self.vae.to(self.device)
        if getattr(self, "motion_branch", None) is not None:  # fused into the decoder (policy.motion_branch)
            self.motion_branch.to(self.device)
        return self

    def autocast(self):
        """The transformer's compute precision as a context (a no-op in float32)."""
        if self.compute_dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.compute_dtype)

    # -- text -------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """[B, L, D] float32 text embeddings on the host; padded positions zeroed as in diffusers' Wan pipeline."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            tokens = self.tokenizer(
                missing, padding="max_length", max_length=self.max_text_length, truncation=True, return_tensors="pt"
            )
            self.text_encoder.to(self.device)
            try:
                mask = tokens.attention_mask.to(self.device)
                hidden = self.text_encoder(input_ids=tokens.input_ids.to(self.device), attention_mask=mask).last_hidden_state
                hidden = (hidden * mask.unsqueeze(-1)).float().cpu()
            finally:
                self.text_encoder.to("cpu")
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
            for prompt, embedding in zip(missing, hidden):
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
        """videos float [B, T, H, W, 3] in [0, 1] → normalised latents [B, C, T', H', W'] on the policy's device."""
        pixels = videos.to(self.device, torch.float32).permute(0, 4, 1, 2, 3) * 2 - 1
        posterior = self.vae.encode(pixels).latent_dist
        z = posterior.sample(generator) if sample else posterior.mode()
        mean, std = self._latent_stats(z)
        return (z - mean) / std

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """normalised latents → float videos [B, T, H, W, 3] in [0, 1]."""
        latents = latents.to(self.device, torch.float32)
        mean, std = self._latent_stats(latents)
        pixels = self.vae.decode(latents * std + mean).sample
        return ((pixels.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 4, 1)

    # -- velocity ---------------------------------------------------------------------
    def velocity(self, latents: torch.Tensor, sigmas: torch.Tensor, text_embeds: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
        """Predicted v = ε − x0 at noise level σ (timestep = 1000·σ as in Wan's scheduler), float32.

        Inputs are cast to the compute precision (a bfloat16 transformer refuses float32 latents);
        `model` runs the transformer through a wrapper (the learner's DDP module) instead.
        """
        model = model if model is not None else self.transformer
        timesteps = (torch.as_tensor(sigmas, device=latents.device) * 1000.0).expand(latents.shape[0])
        with self.autocast():
            out = model(latents.to(self.compute_dtype), timesteps, text_embeds.to(latents.device, self.compute_dtype),
                        return_dict=False)[0]
        return out.float()


def sampling_sigmas(num_steps: int, shift: float) -> torch.Tensor:
    """num_steps + 1 decreasing sigmas from 1 to 0, taken from diffusers' FlowMatchEulerDiscreteScheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    scheduler.set_timesteps(num_steps)
    return scheduler.sigmas.float()


TrainableMode = Literal["full", "lora", "decoder"]


def select_trainable(policy: VideoPolicy, mode: TrainableMode, lora_rank: int = 8, lora_alpha: int = 16) -> list[nn.Parameter]:
    """Freeze everything, then enable what `mode` trains; returns the trainable parameters (float32).

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
    params = [p for p in policy.parameters() if p.requires_grad]
    for param in params:  # master weights and optimizer state in float32, whatever the compute dtype
        param.data = param.data.float()
    return params


def trainable_state(policy: VideoPolicy) -> dict[str, torch.Tensor]:
    """Host copies of the trainable tensors by name (what the learner ships to the rollout actors
    each step, through the object store)."""
    return {name: p.detach().to("cpu", copy=True) for name, p in policy.named_parameters() if p.requires_grad}


@contextmanager
def adapters_disabled(transformer: nn.Module):
    """The base model inside a LoRA-adapted transformer: within the block every peft adapter is
    off, so the frozen base weights act as the reference policy without a second copy in memory."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in transformer.modules() if isinstance(m, BaseTunerLayer)]
    if not layers:
        raise ValueError("adapters_disabled: the transformer has no LoRA adapters (policy.trainable is not 'lora')")
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield transformer
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def build_policy(
    preset: str = "tiny",
    model_path: str | None = None,
    dtype: str = "float32",
    seed: int = 0,
    *,
    random_init: bool = False,
    text_encoder_layers: int | None = None,
    device: torch.device | str | None = None,
) -> VideoPolicy:
    """The policy a config names: random tiny (no path), random real-preset shapes
    (`random_init`), or weights from a diffusers folder / hub id, with the transformer and text
    encoder in `dtype`, the VAE in float32, placed on `device` (the host when None).

    The toy world's pretrained base is saved in the same diffusers layout as real Wan weights,
    so one loading path serves both.
    """
    compute_dtype = getattr(torch, dtype)
    if model_path is not None:
        components = load_pretrained_components(model_path, compute_dtype)
    elif preset == "tiny":
        components = build_tiny_components(seed=seed)
    elif random_init:
        components = build_random_components(preset, seed, text_encoder_layers, device)
    else:
        raise ValueError(f"preset {preset!r} needs a model_path (or random_init=True)")
    transformer, vae, text_encoder, tokenizer = components
    policy = VideoPolicy(
        cast_keeping_fp32_modules(transformer, compute_dtype), vae.float(), text_encoder.to(compute_dtype), tokenizer,
        max_text_length=TINY_TEXT_LENGTH if preset == "tiny" else WAN_TEXT_LENGTH, compute_dtype=compute_dtype,
    )
    return policy.place(device) if device is not None else policy


def cast_keeping_fp32_modules(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """`model.to(dtype)`, except the parameters diffusers keeps in float32 for this class
    (`_keep_in_fp32_modules`: Wan's norms, time embedder and modulation table), as its
    `from_pretrained(torch_dtype=...)` does."""
    nn.Module.to(model, dtype)  # diffusers' own `to` only warns about what the loop below does
    keep = getattr(model, "_keep_in_fp32_modules", None) or ()
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if any(part in keep for part in name.split(".")):
            tensor.data = tensor.data.float()
    return model


def load_policy(config: "PolicyConfig", seed: int = 0, device: torch.device | str = "cpu") -> tuple[VideoPolicy, list[nn.Parameter]]:
    """What every actor holding a policy builds from its `policy` config section: the model on
    `device`, its trainable parameters selected (float32) and gradient checkpointing as configured.

    Rollout and learner build the same structure, so the weights the learner ships load by name
    and both compute bit-identical velocities (the first inner step's ratio is exactly 1).
    """
    # Every random initialisation here (a motion branch or LoRA adapters on pretrained weights,
    # which load without touching the RNG) is drawn under `seed`: every process and every rerun
    # builds the same model, and the caller's RNG is left as it was.
    accelerators = [torch.device(device)] if torch.device(device).type == "cuda" else []  # LoRA inits there
    with torch.random.fork_rng(devices=accelerators):
        torch.manual_seed(seed)
        policy = build_policy(
            config.preset, config.model_path, config.dtype, seed,
            random_init=config.random_init, text_encoder_layers=config.text_encoder_layers, device=device,
        )
        if config.motion_branch is not None:
            from policy.motion_branch import MotionBranch, attach_motion_branch

            attach_motion_branch(policy, MotionBranch.for_policy(policy, **config.motion_branch.model_dump()))
            policy.motion_branch.to(policy.device)
        params = select_trainable(policy, config.trainable, config.lora_rank, config.lora_alpha)
    if config.init_from:
        load_stage_weights(policy, config.init_from)
    if config.gradient_checkpointing:
        policy.transformer.enable_gradient_checkpointing()
    return policy, params


def load_stage_weights(policy: VideoPolicy, source: str) -> list[str]:
    """Load a stage's trained weights onto `policy` by name; returns the chain of sources applied.

    `source` is a run dir (its newest valid checkpoint), a checkpoint folder or a .safetensors file.
    A checkpoint whose stage itself started `init_from` another is applied on top of that one, so
    a DPO policy holds SFT's motion branch and GRPO's transformer. Every name must exist in the
    policy: a checkpoint from another architecture (or a missing `policy.motion_branch`) fails
    here, not silently.
    """
    from pathlib import Path

    from safetensors.torch import load_file

    from policy.checkpoint import load_checkpoint, load_latest

    path = Path(source)
    if path.suffix == ".safetensors":
        tensors, state = load_file(path), {}
    else:
        found = load_latest(path / "checkpoints") if (path / "checkpoints").is_dir() else load_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"policy.init_from={source!r}: no valid checkpoint under {path / 'checkpoints'}")
        tensors, state = found[0]["policy"], found[2]
    chain = load_stage_weights(policy, state["init_from"]) if state.get("init_from") else []
    unknown = sorted(set(tensors) - set(policy.state_dict()))
    if unknown:
        raise KeyError(f"policy.init_from={source!r} holds weights this policy lacks: {unknown[:5]} "
                       f"(a motion branch needs policy.motion_branch)")
    policy.load_state_dict(tensors, strict=False)
    return [*chain, str(source)]


def save_policy(policy: VideoPolicy, path: str) -> None:
    """Write the policy in diffusers layout (transformer/, vae/, text_encoder/, tokenizer/)."""
    policy.transformer.save_pretrained(f"{path}/transformer")
    policy.vae.save_pretrained(f"{path}/vae")
    policy.text_encoder.save_pretrained(f"{path}/text_encoder")
    policy.tokenizer.save_pretrained(f"{path}/tokenizer")
