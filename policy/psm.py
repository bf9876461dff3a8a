"""Perceptual Structuring Module (report §3.2): frozen spatiotemporal features of videos.

`pixel`: a fixed, cheap extractor (patch colour, edge energy, frame change) — enough for the
toy world. `dinov2`: transformers' `Dinov2Model` from a local path, applied per frame; its patch
tokens form the [T, h, w, D] grid ViPO compares within a group.
"""

from __future__ import annotations

import torch

from algorithms.vipo import (
    advantage_map_from_features,
    normalize_and_mix,
    pixel_feature_extractor,
    resample_to_latent,
    reward_aligned_map,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PerceptualStructuringModule:
    def __init__(self, backbone: str = "pixel", backbone_path: str | None = None, patch: int = 4):
        self.backbone = backbone
        self.patch = patch
        self.model = None
        if backbone == "dinov2":
            from transformers import Dinov2Model

            self.model = Dinov2Model.from_pretrained(backbone_path).eval().requires_grad_(False)
        elif backbone != "pixel":
            raise ValueError(f"backbone must be 'pixel' or 'dinov2', got {backbone!r}")

    @torch.no_grad()
    def features(self, videos: torch.Tensor) -> torch.Tensor:
        """videos float [B, T, H, W, 3] in [0, 1] → features [B, T, h, w, D]."""
        if self.model is None:
            return pixel_feature_extractor(videos, self.patch)
        b, t, h, w, _ = videos.shape
        patch = self.model.config.patch_size
        frames = videos.reshape(b * t, h, w, 3).permute(0, 3, 1, 2)
        frames = torch.nn.functional.interpolate(frames, size=(h // patch * patch, w // patch * patch), mode="bilinear")
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        tokens = self.model(pixel_values=(frames - mean) / std).last_hidden_state[:, 1:]  # drop CLS
        gh, gw = frames.shape[-2] // patch, frames.shape[-1] // patch
        return tokens.reshape(b, t, gh, gw, -1)

    def advantage_maps(
        self,
        videos: torch.Tensor,
        group_size: int,
        lam: float,
        latent_thw: tuple[int, int, int],
        advantages: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-video maps M [B, T', H', W'] on the latent grid, mean 1, mixed with uniform by `lam`.

        With `advantages` [B] the map is reward-aligned (where winners and losers differ), without
        them it is each video's deviation from its group's consensus.
        """
        feats = self.features(videos)
        grouped = feats.reshape(-1, group_size, *feats.shape[1:])
        metric = "l2" if self.model is None else "cosine"
        if advantages is None:
            raw = advantage_map_from_features(grouped, metric=metric)
        else:
            raw = reward_aligned_map(grouped, advantages.reshape(-1, group_size), metric=metric)
        mixed = normalize_and_mix(raw.flatten(0, 1), lam)
        return resample_to_latent(mixed, latent_thw)
