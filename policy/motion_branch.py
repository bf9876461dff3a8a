"""Physics-aware motion branch on the Wan VAE decoder (report §2.4, Figure 2).

"An auxiliary motion prediction branch trained to estimate inter-frame motion ... its intermediate
features are fused into the RGB decoder via a lightweight, zero-initialized module ... only
decoder-level parameters are updated."

Where it reads. diffusers' `AutoencoderKLWan` decodes the latent video one latent frame at a time
(`_decode`: the first call with `first_chunk=True` gives 1 frame, each later call 4 — 2 in the tiny
preset), and its causal convolutions carry the previous chunk's activations in a feature cache.
The branch follows the same rule: a forward hook on the decoder's LAST up block sees that
chunk's features [B, C, t, H', W'] at (or, for Wan2.2's patchified VAE, half) pixel resolution,
and keeps its own one-frame cache, the last frame of the previous chunk, reset on `first_chunk`.

What it computes. For each frame t of the chunk, motion features m_t = encoder(features of frames
t − 1 and t) (a few dilated 3x3 convolutions; the clip's first frame pairs with itself), from
which a 3x3 head predicts the flow from frame t − 1 to t, in units of `flow_scale_px`, and a
zero-initialised 1x1 convolution adds m_t back onto frame t's features: the fused decoder is
causal like the base one, and at initialisation adds exact zeros, so the decoded video is
bit-identical to the base decoder's until training moves the zero convolution (ControlNet's zero
convolution). Gradients reach the fusion through the zero convolution's own weights first.

Attached, the branch is the policy's submodule `motion_branch` (so `trainable_state` ships it with
the decoder), and every decode goes through the fused decoder; `decode_with_flow` also returns
the predicted flow. Supports the untiled decode (with or without `use_slicing`); tiled decoding
splits frames spatially and is refused. Not supported: moving the VAE to another device after
`attach_motion_branch` without moving `policy.motion_branch` too (the hook names the mismatch).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from policy.wan import VideoPolicy, select_trainable


class MotionDecode(NamedTuple):
    video: torch.Tensor  # [B, T, H, W, 3] in [0, 1], from the fused decoder
    flow: torch.Tensor  # [B, T-1, 2, H, W] px, channel 0 = x; maps frame t onto frame t + 1


class MotionBranch(nn.Module):
    """Reads the decoder's last up-block features, predicts inter-frame flow, fuses back (module doc)."""

    def __init__(
        self,
        feature_channels: int,
        hidden_channels: int = 32,
        dilations: tuple[int, ...] = (1, 2, 4),
        flow_scale_px: float = 4.0,
    ):
        super().__init__()
        if flow_scale_px <= 0:
            raise ValueError(f"flow_scale_px={flow_scale_px} must be > 0")
        layers, channels = [], 2 * feature_channels
        for dilation in dilations:  # dilations (1, 2, 4): a 15 px receptive field for a few layers
            layers += [nn.Conv2d(channels, hidden_channels, 3, padding=dilation, dilation=dilation), nn.SiLU()]
            channels = hidden_channels
        self.encoder = nn.Sequential(*layers)
        self.flow_head = nn.Conv2d(hidden_channels, 2, 3, padding=1)
        self.fuse = nn.Conv2d(hidden_channels, feature_channels, 1)
        nn.init.zeros_(self.fuse.weight)
        nn.init.zeros_(self.fuse.bias)
        self.flow_scale_px = flow_scale_px  # the head predicts flow / flow_scale_px (algorithms.sft.motion_errors)
        self._handle = None
        self._previous: torch.Tensor | None = None  # [B, 1, C, H', W'] last frame of the previous chunk
        self._flows: list[list[torch.Tensor]] | None = None  # per decoded clip, per chunk; None = not collecting

    @classmethod
    def for_policy(cls, policy: VideoPolicy, **kwargs) -> "MotionBranch":
        """A branch sized for `policy`'s decoder (its last up block's channels)."""
        return cls(policy.vae.decoder.conv_out.in_channels, **kwargs)

    def extra_repr(self) -> str:
        return f"flow_scale_px={self.flow_scale_px}"

    def _fuse_hook(self, block, args, kwargs, features: torch.Tensor) -> torch.Tensor:
        if next(self.parameters()).device != features.device:
            raise RuntimeError(
                f"motion branch on {next(self.parameters()).device} but the VAE decoder runs on {features.device}: "
                f"move policy.motion_branch with the VAE"
            )
        if kwargs.get("first_chunk"):
            self._previous = None
            if self._flows is not None:
                self._flows.append([])
        b, c, t, h, w = features.shape
        frames = features.permute(0, 2, 1, 3, 4)  # [B, t, C, H', W']
        before = frames[:, :1] if self._previous is None else self._previous
        pairs = torch.cat([torch.cat([before, frames[:, :-1]], dim=1), frames], dim=2)  # [B, t, 2C, H', W']
        motion = self.encoder(pairs.flatten(0, 1).to(self.fuse.weight.dtype))
        fused = features + self.fuse(motion).to(features.dtype).unflatten(0, (b, t)).permute(0, 2, 1, 3, 4)
        if self._flows is not None:
            flow = self.flow_head(motion).unflatten(0, (b, t)) * self.flow_scale_px
            self._flows[-1].append(flow if self._previous is not None else flow[:, 1:])
        self._previous = frames[:, -1:]
        return fused

    @contextmanager
    def _collecting(self):
        self._flows = []
        try:
            yield
        finally:
            self._flows = None
            self._previous = None  # drop the graph of the last chunk

    def _collected_flow(self, height: int, width: int) -> torch.Tensor:
        """[B, T-1, 2, H, W] px from the chunks seen while collecting (one clip per batch slice)."""
        clips = [torch.cat(chunks, dim=1) for chunks in self._flows]
        flow = torch.cat(clips, dim=0)
        h, w = flow.shape[-2:]
        if (h, w) == (height, width):
            return flow
        # a patchified VAE (Wan2.2) reads at reduced resolution: resample, and rescale the vectors
        resized = F.interpolate(flow.flatten(0, 1), size=(height, width), mode="bilinear", align_corners=False)
        scale = torch.tensor([width / w, height / h], device=flow.device, dtype=flow.dtype).view(1, 2, 1, 1)
        return (resized * scale).unflatten(0, flow.shape[:2])


def attach_motion_branch(policy: VideoPolicy, branch: MotionBranch) -> MotionBranch:
    """Hook `branch` into `policy`'s decoder as `policy.motion_branch`, on the VAE's device."""
    if getattr(policy, "motion_branch", None) is not None:
        raise ValueError("policy already has a motion branch attached; detach_motion_branch(policy) first")
    channels = policy.vae.decoder.conv_out.in_channels
    if branch.fuse.out_channels != channels:
        raise ValueError(f"branch made for {branch.fuse.out_channels} decoder channels, this decoder has {channels}")
    branch.to(next(policy.vae.decoder.parameters()).device)
    branch._handle = policy.vae.decoder.up_blocks[-1].register_forward_hook(branch._fuse_hook, with_kwargs=True)
    policy.motion_branch = branch
    return branch


def detach_motion_branch(policy: VideoPolicy) -> MotionBranch:
    """Remove the branch: the decoder is the base decoder again (with its current weights)."""
    branch = _attached(policy)
    branch._handle.remove()
    branch._handle = None
    del policy.motion_branch
    return branch


def motion_branch_parameters(policy: VideoPolicy) -> list[nn.Parameter]:
    """Freeze everything but the decoder level: the VAE decoder (with post_quant_conv) and the branch.

    The transformer, the text encoder and the VAE encoder stay frozen (report §2.4: "the pretrained
    backbone remains frozen and only decoder-level parameters are updated").
    """
    branch = _attached(policy)
    decoder = select_trainable(policy, "decoder")
    branch.requires_grad_(True)
    return decoder + list(branch.parameters())


def decode_with_flow(policy: VideoPolicy, latents: torch.Tensor) -> MotionDecode:
    """Decode normalised latents through the fused decoder; also return the branch's predicted flow."""
    branch = _attached(policy)
    if policy.vae.use_tiling:
        raise ValueError("decode_with_flow needs untiled decoding (tiles split frames in space): vae.disable_tiling()")
    with branch._collecting():
        video = policy.decode_latents(latents)
        flow = branch._collected_flow(*video.shape[2:4])
    return MotionDecode(video, flow)


def _attached(policy: VideoPolicy) -> MotionBranch:
    branch = getattr(policy, "motion_branch", None)
    if branch is None:
        raise ValueError("policy has no motion branch: attach_motion_branch(policy, MotionBranch.for_policy(policy))")
    return branch
