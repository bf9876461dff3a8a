"""Stage I (SFT) losses and the structure-aware reweighting (report §2.2-2.4, Figure 2).

Flow matching. x_σ = (1 − σ) x0 + σ ε and the model predicts v = ε − x0 (DESIGN.md §3, the
convention of `algorithms.flow_sde`). Noise levels are σ = shift·u / (1 + (shift − 1)·u) with
u ~ U(0, 1): the shifted schedule Wan samples with (diffusers' `FlowMatchEulerDiscreteScheduler`
`shift`), drawn uniformly as DiffSynth-Studio trains Wan (a uniform index into the 1000 shifted
training timesteps) and as diffusers' `compute_density_for_timestep_sampling` "uniform" scheme
does. Why this one: training visits noise levels in the proportion sampling does with the same
`shift`, so the high-σ steps where layout, camera path and event order are decided — what §2.2's
instruction data must shape — get their share. No timestep loss weighting (diffusers'
`compute_loss_weighting_for_sd3` "none"; DiffSynth's bell-shaped weight left out): per-sample
weights are reserved for the structure signal, so the weights a run logs are that signal alone.
The per-sample error is the MSE over all latent elements; `weighted_mean` averages it.

Structure-aware reweighting (§2.3). The structural assessment signal of a sample is the
background's warping error under the clip's global camera motion: frame t moved by the camera
shift should reproduce frame t + 1 on background pixels (`background_warp_error`, in pixels of
misalignment so that clips of different contrast compare). The learner
measures it WITHOUT gradient on the model's one-step prediction of the clean video,
x̂0 = x_σ − σ v (`predicted_clean`), decoded to pixels, with the clip's known shift (toy world) or
the shift `estimate_global_shift` reads from the real clip. `structure_weights` maps the signals
to loss weights proportional to them, mean 1 and within [w_min, w_max] at once, so distorted
samples get stronger gradients and stable ones weaker, and the loss keeps its scale.

Motion loss (§2.4). The physics branch's predicted inter-frame flow against the ground-truth flow
(exact in the toy world, Farneback/RAFT on real clips), both divided by one FIXED scale in pixels:
a per-batch maximum would change the target from clip to clip.

Pure torch: tensors in, tensors out; no Ray, no I/O.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------
# Flow matching.


def shifted_sigmas(u: torch.Tensor, shift: float) -> torch.Tensor:
    """σ = shift·u / (1 + (shift − 1)·u): Wan's timestep shift, monotone from [0, 1] onto [0, 1]."""
    return shift * u / (1 + (shift - 1) * u)


def sample_sigmas(batch_size: int, shift: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """[B] noise levels for training, u ~ U(0, 1) then shifted (module doc); on the generator's device."""
    if shift <= 0:
        raise ValueError(f"shift={shift} must be > 0 (1 = no shift; Wan uses 3 to 5)")
    device = generator.device if generator is not None else None
    return shifted_sigmas(torch.rand(batch_size, generator=generator, device=device), shift)


def _per_sample(sigmas: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return sigmas.to(like).reshape(-1, *([1] * (like.ndim - 1)))


def noisy_latents(clean: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """x_σ = (1 − σ) x0 + σ ε, σ [B] per sample."""
    sigma = _per_sample(sigmas, clean)
    return (1 - sigma) * clean + sigma * noise


def predicted_clean(noisy: torch.Tensor, velocity: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """The one-step prediction of the clean latents, x̂0 = x_σ − σ v."""
    return noisy - _per_sample(sigmas, noisy) * velocity


def per_sample_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[B] mean squared error over every non-batch element, in float32 (bf16 models keep fp32 losses)."""
    return (prediction.float() - target.float()).pow(2).flatten(1).mean(dim=1)


def flow_matching_errors(velocity: torch.Tensor, clean: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """[B] per-sample MSE of the predicted velocity against the target ε − x0."""
    return per_sample_mse(velocity, noise - clean)


def weighted_mean(errors: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of per-sample errors, each times its weight (weights of mean 1 keep the loss's scale)."""
    if weights is None:
        return errors.mean()
    if weights.shape != errors.shape:
        raise ValueError(f"weights of shape {tuple(weights.shape)} for errors of shape {tuple(errors.shape)}")
    return (weights.to(errors) * errors).mean()


# ----------------------------------------------------------------------------------------------
# Structure signal (§2.3).


def _pixel_grid(height: int, width: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float32, device=device),
        torch.arange(width, dtype=torch.float32, device=device),
        indexing="ij",
    )
    return xs, ys


def background_warp_error(
    videos: torch.Tensor, camera_shift: torch.Tensor, background: torch.Tensor | None = None
) -> torch.Tensor:
    """[B] how far frame t moved by the camera shift misses frame t + 1 on the background, in px.

    videos [B, T, H, W, 3] in [0, 1]; camera_shift [B, T-1, 2] px, (x, y), how far the background
    moves from frame t to t + 1 (`ToyClip.camera_shift`, or `estimate_global_shift`); background
    [B, T, H, W] bool (None = every pixel). A pixel q of frame t + 1 counts when it is background
    and its source q − shift lies inside frame t and is background there too (moving objects and
    the strip entering the frame have nothing to compare with); bilinear sampling, so integer
    shifts are exact. The signal is sum |error| / sum |gradient of frame t + 1| over those pixels
    (mean over RGB; the gradient floored at one grey level per pixel): to first order a
    misalignment of d px costs |gradient|·d, so the ratio reads as pixels of misalignment
    whatever the background's contrast, and a faint texture counts as much as bold shapes.
    NaN where a sample has no such pixel or its shift is NaN (unknown).
    """
    b, t, h, w, _ = videos.shape
    if camera_shift.shape != (b, t - 1, 2):
        raise ValueError(f"camera_shift must be [B, T-1, 2] = {(b, t - 1, 2)}; got {tuple(camera_shift.shape)}")
    if t < 2:
        return torch.full((b,), float("nan"), device=videos.device)
    if background is None:
        background = torch.ones(b, t, h, w, dtype=torch.bool, device=videos.device)
    xs, ys = _pixel_grid(h, w, videos.device)
    shift = camera_shift.float().reshape(b * (t - 1), 2, 1, 1)
    source_x, source_y = xs - shift[:, 0], ys - shift[:, 1]  # [B(T-1), H, W]
    grid = torch.stack([2 * source_x / (w - 1) - 1, 2 * source_y / (h - 1) - 1], dim=-1)
    earlier = videos[:, :-1].float().reshape(b * (t - 1), h, w, 3).permute(0, 3, 1, 2)
    earlier_background = background[:, :-1].reshape(b * (t - 1), 1, h, w).float()
    predicted = F.grid_sample(earlier, grid, mode="bilinear", align_corners=True)
    source_is_background = F.grid_sample(earlier_background, grid, mode="bilinear", align_corners=True)[:, 0] > 1 - 1e-4
    inside = (source_x >= 0) & (source_x <= w - 1) & (source_y >= 0) & (source_y <= h - 1)
    later = videos[:, 1:].float().reshape(b * (t - 1), h, w, 3).permute(0, 3, 1, 2)
    valid = (inside & source_is_background & background[:, 1:].reshape(b * (t - 1), h, w)).float()
    error = (predicted - later).abs().mean(dim=1)  # [B(T-1), H, W]
    padded = F.pad(later, (1, 1, 1, 1), mode="replicate")
    grad_x = (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]) / 2
    grad_y = (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]) / 2
    gradient = (grad_x**2 + grad_y**2).sqrt().mean(dim=1).clamp_min(1 / 255)
    missed = (error * valid).reshape(b, -1).sum(dim=1)
    scale = (gradient * valid).reshape(b, -1).sum(dim=1)
    signal = missed / scale.clamp_min(1e-12)
    unknown = (valid.reshape(b, -1).sum(dim=1) == 0) | torch.isnan(camera_shift).flatten(1).any(dim=1)
    return torch.where(unknown, torch.full_like(signal, float("nan")), signal)


def estimate_global_shift(videos: torch.Tensor, refine_steps: int = 3) -> torch.Tensor:
    """[B, T-1, 2] px, (x, y): the dominant translation from frame t to t + 1.

    For real clips, whose camera motion nobody wrote down. Two stages on each frame's luma:
    phase correlation finds the whole-pixel shift anywhere up to half the frame (the inverse FFT
    of the normalised cross-power spectrum peaks there, as OpenCV's `phaseCorrelate`; in torch so
    it stays on the learner's device), then Gauss-Newton steps on the brightness-constancy error
    sum_q (I_t+1(q) - I_t(q - d))^2 refine it to sub-pixel (~0.1 px on textured footage). Phase
    correlation needs texture across many frequencies (real footage has it); the refinement
    converges from ~1 px away. A large still foreground can outvote a moving background.
    """
    b, t, h, w, _ = videos.shape
    luma = videos.float() @ torch.tensor([0.299, 0.587, 0.114], device=videos.device)  # [B, T, H, W]
    shift = _phase_correlation_peak(luma)
    earlier = luma[:, :-1].reshape(-1, 1, h, w)
    later = luma[:, 1:].reshape(-1, h, w)
    xs, ys = _pixel_grid(h, w, videos.device)
    shift = shift.reshape(-1, 2)
    for _ in range(refine_steps):
        source_x, source_y = xs - shift[:, 0, None, None], ys - shift[:, 1, None, None]
        grid = torch.stack([2 * source_x / (w - 1) - 1, 2 * source_y / (h - 1) - 1], dim=-1)
        moved = F.grid_sample(earlier, grid, mode="bilinear", align_corners=True)[:, 0]
        # central differences of the moved frame; pixels whose source or stencil leaves the frame drop out
        grad_x = F.pad((moved[:, :, 2:] - moved[:, :, :-2]) / 2, (1, 1))
        grad_y = F.pad((moved[:, 2:] - moved[:, :-2]) / 2, (0, 0, 1, 1))
        valid = (source_x >= 1) & (source_x <= w - 2) & (source_y >= 1) & (source_y <= h - 2)
        valid = F.pad(valid[:, 1:-1, 1:-1], (1, 1, 1, 1)).float()
        residual = later - moved
        gx, gy = grad_x * valid, grad_y * valid
        normal = torch.stack([(gx * gx).sum((1, 2)), (gx * gy).sum((1, 2)), (gy * gy).sum((1, 2))], dim=-1)
        rhs = torch.stack([(gx * residual).sum((1, 2)), (gy * residual).sum((1, 2))], dim=-1)
        det = normal[:, 0] * normal[:, 2] - normal[:, 1] ** 2
        solvable = det > 1e-12  # a flat frame has no gradient to move by
        det = torch.where(solvable, det, torch.ones_like(det))
        # I_t(q - d - delta) ~ I_t(q - d) - grad . delta, so the least-squares step is -(J^T J)^-1 J^T r
        step_x = -(normal[:, 2] * rhs[:, 0] - normal[:, 1] * rhs[:, 1]) / det
        step_y = -(normal[:, 0] * rhs[:, 1] - normal[:, 1] * rhs[:, 0]) / det
        shift = shift + torch.where(solvable[:, None], torch.stack([step_x, step_y], dim=-1), torch.zeros_like(shift))
    return shift.reshape(b, t - 1, 2)


def _phase_correlation_peak(luma: torch.Tensor) -> torch.Tensor:
    """[B, T-1, 2] whole-pixel shift between consecutive frames of luma [B, T, H, W].

    Mean removed and Hann-windowed so the frame border does not read as a still edge; shifts
    past half the frame wrap to negative (the correlation is circular).
    """
    h, w = luma.shape[-2:]
    luma = luma - luma.mean(dim=(-2, -1), keepdim=True)
    window = torch.outer(*(torch.hann_window(n, periodic=False, device=luma.device) for n in (h, w)))
    spectrum = torch.fft.fft2(luma * window)
    cross = spectrum[:, 1:] * spectrum[:, :-1].conj()
    correlation = torch.fft.ifft2(cross / cross.abs().clamp_min(1e-12)).real
    peak = correlation.flatten(-2).argmax(dim=-1)
    peak_x, peak_y = (peak % w).float(), (peak // w).float()
    peak_x = torch.where(peak_x > w / 2, peak_x - w, peak_x)
    peak_y = torch.where(peak_y > h / 2, peak_y - h, peak_y)
    return torch.stack([peak_x, peak_y], dim=-1)


# ----------------------------------------------------------------------------------------------
# Structure weights (§2.3).


def structure_weights(
    signal: torch.Tensor, w_min: float = 0.5, w_max: float = 2.0, iterations: int = 64
) -> torch.Tensor:
    """[B] loss weights w_i = clip(a·s_i, w_min, w_max) with the scale a such that mean(w) = 1.

    Proportional to the signal (a sample twice as distorted weighs twice as much) between the
    bounds, normalised and clipped at the same time: clipping after normalising would break the
    mean, normalising after clipping the bounds. mean(clip(a·s)) grows continuously from w_min
    to w_max as log a sweeps [log(w_min / max s), log(w_max / min s)], so bisection on log a finds
    the scale (64 halvings reach float64 precision). A sample with signal 0 is floored at 1e-6 of
    the batch's largest, so the scale always exists (e.g. one distorted sample at w_max, the rest
    sharing what is left). NaN signals (no structure to judge: a fluid, a still real clip) get
    weight 1 and the others average 1 among themselves; with no positive signal every weight is 1.
    """
    if not 0 < w_min <= 1 <= w_max:
        raise ValueError(f"structure weight bounds need 0 < w_min <= 1 <= w_max; got w_min={w_min}, w_max={w_max}")
    known = ~torch.isnan(signal)
    if (signal[known] < 0).any():
        raise ValueError(f"structure signals must be >= 0 (an error); got {signal[known].min().item()}")
    weights = torch.ones_like(signal, dtype=torch.float32)
    values = signal[known].double()
    if values.numel() == 0 or values.max() <= 0:
        return weights
    values = values.clamp_min(values.max() * 1e-6)
    lo, hi = math.log(w_min / values.max().item()), math.log(w_max / values.min().item())
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if (math.exp(mid) * values).clamp(w_min, w_max).mean() < 1:
            lo = mid
        else:
            hi = mid
    weights[known] = (math.exp(0.5 * (lo + hi)) * values).clamp(w_min, w_max).float()
    return weights


def weight_stats(weights: torch.Tensor, signal: torch.Tensor, w_min: float, w_max: float) -> dict[str, float]:
    """What to log about a batch's structure weights, over the samples with a signal.

    weight_std / weight_min / weight_max: the spread (0 = plain SFT); clipped_fraction: share at a
    bound (near 1 = the bounds, not the signal, decide); signal_mean; weight_signal_corr: Pearson
    correlation of weights and signals (1 when none is clipped; NaN with fewer than two or no spread).
    """
    known = ~torch.isnan(signal)
    w, s = weights[known].double(), signal[known].double()
    if w.numel() == 0:
        nan = float("nan")
        return dict.fromkeys(("weight_std", "weight_min", "weight_max", "clipped_fraction", "signal_mean",
                              "weight_signal_corr"), nan)
    dw, ds = w - w.mean(), s - s.mean()
    denominator = (dw.norm() * ds.norm()).item()
    return {
        "weight_std": w.std(correction=0).item(),
        "weight_min": w.min().item(),
        "weight_max": w.max().item(),
        "clipped_fraction": ((w <= w_min + 1e-6) | (w >= w_max - 1e-6)).double().mean().item(),
        "signal_mean": s.mean().item(),
        "weight_signal_corr": (dw @ ds).item() / denominator if denominator > 0 else float("nan"),
    }


# ----------------------------------------------------------------------------------------------
# Motion loss (§2.4).


def motion_errors(
    predicted_flow: torch.Tensor, target_flow: torch.Tensor, flow_scale_px: float, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """[B] mean |predicted − target| / flow_scale_px over both flow channels (RAFT's L1 on flow).

    Flows [B, T-1, 2, H, W] in pixels. flow_scale_px is FIXED (e.g. the largest motion the data
    holds, in px per frame), so the normalised target of a clip is the same in every batch;
    valid [B, T-1, H, W] bool leaves out pixels without a trustworthy target (occlusions).
    """
    if predicted_flow.shape != target_flow.shape:
        raise ValueError(f"predicted flow {tuple(predicted_flow.shape)} and target {tuple(target_flow.shape)} differ")
    if flow_scale_px <= 0:
        raise ValueError(f"flow_scale_px={flow_scale_px} must be > 0")
    error = (predicted_flow.float() - target_flow.float()).abs().mean(dim=2) / flow_scale_px  # [B, T-1, H, W]
    if valid is None:
        return error.flatten(1).mean(dim=1)
    valid = valid.to(error)
    return (error * valid).flatten(1).sum(dim=1) / valid.flatten(1).sum(dim=1).clamp_min(1)
