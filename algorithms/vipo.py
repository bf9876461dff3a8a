"""ViPO: spatiotemporal advantage maps (report §3.2, eq. 2).

A scalar GRPO advantage tells the policy THAT a video was worse than its group, not WHERE. ViPO
lifts it to a map: a frozen backbone (the Perceptual Structuring Module; DINOv2/VideoMAE on real
runs, `pixel_feature_extractor` in the toy world) embeds every video of a prompt group, and the
map says where the reward difference most plausibly comes from: where the group's winners and
losers differ (`reward_aligned_map`, the default) or where a video departs from its group's
consensus (`advantage_map_from_features`). The objective then weights each latent element's
log-likelihood by M * A:

    L_ViPO = E[ sum_{t,h,w} M_i^(t,h,w) * A_i * log pi_theta(v_i) ]          (report eq. 2)

inside GRPO's per-sample clipped surrogate (see `map_weighted_log_prob` for why the ratio is
formed from the map-weighted log-prob rather than clipped per element). Pipeline: features ->
reward_aligned_map | advantage_map_from_features -> normalize_and_mix -> resample_to_latent ->
map_weighted_log_prob.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

_CONSENSUS = ("median", "mean")
_METRICS = ("cosine", "l2")


def advantage_map_from_features(
    features: torch.Tensor,
    consensus: str = "median",
    metric: str = "cosine",
    eps: float = 1e-8,
) -> torch.Tensor:
    """Raw map M >= 0 of how far each video departs from its group's consensus, per position.

    features: [G, T, h, w, D] for one prompt group, or [P, G, T, h, w, D] for P groups.
    consensus c^(t,h,w): elementwise median over the G videos (default; one defective video cannot
    drag it, so only the defective video lights up) or mean.
        metric="cosine": M_i = 1 - cos(F_i, c)   in [0, 2]; for backbone features (DINOv2).
        metric="l2":     M_i = ||F_i - c||_2;     for low-dimensional raw features (pixels).
    Returns [G, T, h, w] (or [P, G, T, h, w]).
    """
    if features.dim() not in (5, 6):
        raise ValueError(f"features must be [G,T,h,w,D] or [P,G,T,h,w,D], got shape {tuple(features.shape)}")
    if consensus not in _CONSENSUS:
        raise ValueError(f"unknown consensus {consensus!r}; accepted: {_CONSENSUS}")
    if metric not in _METRICS:
        raise ValueError(f"unknown metric {metric!r}; accepted: {_METRICS}")
    group_dim = features.dim() - 5
    g = features.shape[group_dim]
    if consensus == "mean":
        centre = features.mean(dim=group_dim, keepdim=True)
    else:  # true median (mean of the two middle values for even G); no size limit unlike quantile
        ordered = features.sort(dim=group_dim).values
        centre = 0.5 * (ordered.narrow(group_dim, (g - 1) // 2, 1) + ordered.narrow(group_dim, g // 2, 1))
    if metric == "cosine":
        similarity = F.cosine_similarity(features, centre.expand_as(features), dim=-1, eps=eps)
        return (1.0 - similarity).clamp_min(0.0)
    return (features - centre).norm(dim=-1)


def reward_aligned_map(features: torch.Tensor, advantages: torch.Tensor, metric: str = "l2", eps: float = 1e-3) -> torch.Tensor:
    """Raw map M >= 0 of where a group's winners and losers differ, per position.

    features: [P, G, T, h, w, D]; advantages: [P, G] (the scalar GRPO advantages of eq. 1).
    With centred features d_i = F_i - mean_j F_j at each position (t, h, w):
        S_p^(t,h,w) = || mean_i A_i d_i ||_2 / ( std_i(A) * (sqrt(mean_i ||d_i||^2) + eps * s_p) )
    the correlation between the group's advantages and its features there: 1 where the features
    explain the reward ranking, ~1/sqrt(G) where they vary independently of it. Every video of
    group p gets S_p: each sample's scalar advantage is redistributed to where rewards are
    decided. Correlation, not covariance, so a quiet background region whose small changes track
    the reward is not drowned by the large, reward-irrelevant differences of a moving object;
    eps * s_p (s_p = the group's mean feature spread) only guards constant positions (0 / 0).
    Why not only `advantage_map_from_features` (deviation from the group's consensus)? That map
    lights up wherever samples differ at all, the moving object in the toy world (measured on
    base-model groups scored by `local_defect`: the flickering corner got 0.77-0.95x uniform
    credit from the deviation map, 0.82-1.14x from this one: the base model's flicker is mostly
    global, so neither map can isolate the corner much).
    metric="cosine" unit-normalises features first (backbone tokens). A group without reward
    spread (A = 0) gives S = 0, which `normalize_and_mix` turns into the uniform map.
    Returns [P, G, T, h, w].
    """
    if features.dim() != 6 or advantages.shape != features.shape[:2]:
        raise ValueError(
            f"need features [P,G,T,h,w,D] and advantages [P,G], got {tuple(features.shape)} and {tuple(advantages.shape)}"
        )
    if metric not in _METRICS:
        raise ValueError(f"unknown metric {metric!r}; accepted: {_METRICS}")
    if metric == "cosine":
        features = F.normalize(features, dim=-1, eps=1e-8)
    centred = features - features.mean(dim=1, keepdim=True)
    adv = advantages.to(features.dtype)
    adv = adv - adv.mean(dim=1, keepdim=True)  # GRPO's are centred already; a shared offset carries no "where"
    covariance = (adv.reshape(*adv.shape, 1, 1, 1, 1) * centred).mean(dim=1).norm(dim=-1)  # [P, T, h, w]
    spread = centred.pow(2).sum(dim=-1).mean(dim=1).sqrt()  # [P, T, h, w]
    floor = eps * spread.mean(dim=(1, 2, 3), keepdim=True)
    scale = adv.pow(2).mean(dim=1).sqrt().reshape(-1, 1, 1, 1)
    saliency = covariance / (scale * (spread + floor)).clamp_min(1e-12)
    return saliency[:, None].expand(-1, features.shape[1], -1, -1, -1)


def normalize_and_mix(raw_map: torch.Tensor, lam: float, eps: float = 1e-12) -> torch.Tensor:
    """M = (1 - lam) * 1 + lam * M_norm, with M_norm = raw / mean_{t,h,w}(raw) per video.

    raw_map: [..., T, H, W]. Normalising to mean 1 keeps the total credit of each video equal to
    its scalar advantage (sum_{t,h,w} M A = THW * A), so ViPO only redistributes it; lam blends
    toward the plain uniform GRPO weighting (lam = 0 gives exactly ones). A video whose map is all
    zero (it IS the consensus) gets the uniform map.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1] (larger values can make M negative), got {lam}")
    mean = raw_map.mean(dim=(-3, -2, -1), keepdim=True)
    normalised = torch.where(mean > eps, raw_map / mean.clamp_min(eps), torch.ones_like(raw_map))
    return (1.0 - lam) * torch.ones_like(raw_map) + lam * normalised


def resample_to_latent(
    advantage_map: torch.Tensor, latent_shape: Sequence[int], mode: str = "area", eps: float = 1e-12
) -> torch.Tensor:
    """[B, T, H, W] -> [B, T', H', W'] on the latent grid the policy's log-probs live on.

    "area" averages (mass-preserving on downsampling, the VAE's 4x temporal / 8x spatial case);
    "trilinear" interpolates. Either way each video is re-normalised to mean 1 so the scalar
    advantage's total credit is unchanged by the resampling.
    """
    if mode not in ("area", "trilinear"):
        raise ValueError(f"unknown resample mode {mode!r}; accepted: ('area', 'trilinear')")
    kwargs = {"align_corners": False} if mode == "trilinear" else {}
    resized = F.interpolate(advantage_map[:, None], size=tuple(latent_shape), mode=mode, **kwargs)[:, 0]
    mean = resized.mean(dim=(-3, -2, -1), keepdim=True)
    return torch.where(mean > eps, resized / mean.clamp_min(eps), torch.ones_like(resized))


def map_weighted_log_prob(log_prob_map: torch.Tensor, advantage_map: torch.Tensor) -> torch.Tensor:
    """Per-sample log pi as the M-weighted mean of per-element log-probs (report eq. 2): [B].

    log_prob_map: [B, C, T', H', W'] or [B, T', H', W'], per-element log-probs of one SDE step;
    advantage_map: [B, T', H', W'] with mean 1 per video (broadcast over channels).
        log pi^M(v_i) = mean_{c,t,h,w} M_i^(t,h,w) log pi(v_i)^(c,t,h,w)

    Fed to the ordinary GRPO clipped surrogate in place of the plain mean log-prob, the policy
    gradient at ratio 1 is A_i * mean(M_i * grad log pi): eq. 2's per-position weighting, while
    the trust region stays per SAMPLE, exactly as in GRPO. Why not clip each element's own ratio
    (the literal per-element PPO form)? A single latent element's log-ratio is about
    sqrt(#elements) times noisier than the sample mean, so a per-element surrogate at GRPO's clip
    range clips most elements and throws their gradient away: measured on the toy world, 56% of
    elements clipped at clip 1e-3 and a loss of 0.055 reward over 24 steps that a uniform map
    (lam -> 0) lost equally, i.e. the clipping, not the map. With M = 1 this is the plain mean,
    so lam = 0 is exactly GRPO.
    """
    if log_prob_map.dim() == advantage_map.dim() + 1:  # [B, C, ...]: same map for every channel
        advantage_map = advantage_map[:, None]
    if log_prob_map.dim() != advantage_map.dim() or log_prob_map.shape[0] != advantage_map.shape[0]:
        raise ValueError(
            f"advantage_map {tuple(advantage_map.shape)} does not match log_prob_map {tuple(log_prob_map.shape)}"
        )
    weighted = advantage_map * log_prob_map
    return weighted.mean(dim=tuple(range(1, weighted.dim())))


def pixel_feature_extractor(videos: torch.Tensor, patch: int) -> torch.Tensor:
    """Cheap fixed features for the toy world: [B, T, H, W, 3] -> [B, T, H//patch, W//patch, 5].

    Per patch: mean colour (3), RMS spatial gradient (1, texture/edges) and RMS change from the
    previous frame (1, motion/flicker; 0 on frame 0), all in pixel units so the "l2" metric of
    `advantage_map_from_features` weighs them alike. Trailing pixels beyond a whole patch are
    dropped. Stands in for the frozen DINOv2/VideoMAE backbone of report §3.2 where none is loaded.
    """
    if videos.dim() != 5 or videos.shape[-1] != 3:
        raise ValueError(f"videos must be [B, T, H, W, 3], got shape {tuple(videos.shape)}")
    b, t, h, w, _ = videos.shape
    x = videos.float().permute(0, 1, 4, 2, 3)  # [B, T, 3, H, W]
    grad_x = F.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1))
    grad_y = F.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))
    change = torch.cat([torch.zeros_like(x[:, :1]), x[:, 1:] - x[:, :-1]], dim=1)
    per_pixel = torch.cat(
        [x, (grad_x**2 + grad_y**2).mean(dim=2, keepdim=True), (change**2).mean(dim=2, keepdim=True)], dim=2
    )
    pooled = F.avg_pool2d(per_pixel.reshape(b * t, 5, h, w), patch)
    pooled = torch.cat([pooled[:, :3], pooled[:, 3:].sqrt()], dim=1)  # energies -> RMS magnitudes
    return pooled.reshape(b, t, 5, h // patch, w // patch).permute(0, 1, 3, 4, 2)
