"""SFT losses and structure-aware reweighting (report §2.3-2.4) against formulas and toy-world clips."""

import math

import pytest
import torch

from algorithms.sft import (
    background_warp_error,
    estimate_global_shift,
    flow_matching_errors,
    motion_errors,
    noisy_latents,
    per_sample_mse,
    predicted_clean,
    sample_sigmas,
    shifted_sigmas,
    structure_weights,
    weight_stats,
    weighted_mean,
)
from toyworld.world import FLUID_SHAPE, SceneSpec, render

PAN = SceneSpec("pan", "square", "yellow", "navy", "left")


def _clip_batch(*clips):
    return (
        torch.stack([c.video for c in clips]),
        torch.stack([c.camera_shift for c in clips]),
        torch.stack([c.background for c in clips]),
    )


def _wobble(video: torch.Tensor, amplitude_px: float) -> torch.Tensor:
    """Non-rigid distortion growing over time: rows slide sideways by a sine of their height (a
    background that bends instead of translating — the "spatial collapse" of report §7.3.1)."""
    t, h, w, _ = video.shape
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    frames = []
    for i in range(t):
        dx = amplitude_px * i / (t - 1) * torch.sin(2 * math.pi * ys / 11)
        grid = torch.stack([2 * (xs + dx) / (w - 1) - 1, 2 * ys / (h - 1) - 1], dim=-1)[None]
        frames.append(torch.nn.functional.grid_sample(video[i].permute(2, 0, 1)[None], grid, align_corners=True))
    return torch.cat(frames).permute(0, 2, 3, 1)


# ---------------------------------------------------------------------------------------------- flow matching


def test_sigmas_follow_the_shifted_uniform_schedule_and_are_seeded():
    a = sample_sigmas(4000, shift=3.0, generator=torch.Generator().manual_seed(0))
    b = sample_sigmas(4000, shift=3.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (4000,) and (a >= 0).all() and (a < 1).all()
    # the shift is monotone, so quantiles map through it: median = shift(0.5) = 3 / 4
    assert a.median().item() == pytest.approx(0.75, abs=0.02)
    assert shifted_sigmas(torch.tensor([0.0, 0.25, 1.0]), 1.0).tolist() == [0.0, 0.25, 1.0]
    assert shifted_sigmas(torch.tensor(0.5), 5.0).item() == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="shift=0"):
        sample_sigmas(2, 0.0)


def test_flow_matching_target_is_noise_minus_clean_and_the_one_step_prediction_inverts_it():
    g = torch.Generator().manual_seed(1)
    clean, noise = torch.randn(3, 4, 2, 5, 5, generator=g), torch.randn(3, 4, 2, 5, 5, generator=g)
    sigmas = torch.tensor([0.1, 0.5, 0.9])
    noisy = noisy_latents(clean, noise, sigmas)
    assert torch.allclose(noisy[1], 0.5 * clean[1] + 0.5 * noise[1])
    exact = noise - clean
    assert torch.equal(flow_matching_errors(exact, clean, noise), torch.zeros(3))
    assert torch.allclose(predicted_clean(noisy, exact, sigmas), clean, atol=1e-6)
    off = exact + torch.tensor([0.0, 1.0, 2.0]).view(3, 1, 1, 1, 1)
    assert torch.allclose(flow_matching_errors(off, clean, noise), torch.tensor([0.0, 1.0, 4.0]))
    assert per_sample_mse(off.bfloat16(), exact).dtype == torch.float32


def test_weighted_mean_with_mean_one_weights_keeps_the_scale():
    errors = torch.tensor([1.0, 2.0, 3.0, 6.0])
    assert weighted_mean(errors).item() == 3.0
    assert weighted_mean(errors, torch.tensor([0.5, 0.5, 1.0, 2.0])).item() == pytest.approx((0.5 + 1 + 3 + 12) / 4)
    with pytest.raises(ValueError, match=r"weights of shape \(3,\)"):
        weighted_mean(errors, torch.ones(3))


# ---------------------------------------------------------------------------------------------- structure signal


def test_warp_error_is_zero_for_clean_camera_motion_and_grows_with_distortion():
    pan, orbit = render(PAN, seed=0), render(SceneSpec("orbit", "circle", "white", "brown", "right"), seed=0)
    moving = render(SceneSpec("object", "square", "white", "black", "right"), seed=0)
    videos, shifts, background = _clip_batch(pan, orbit, moving)
    clean = background_warp_error(videos, shifts, background)
    assert clean.tolist() == [0.0, 0.0, 0.0]  # integer shifts, exact renders
    # a bending background (pan: shapes; orbit: texture) is not explained by the camera's shift
    distorted = torch.stack([_wobble(v, 2.0) for v in videos[:2]])
    worse = background_warp_error(distorted, shifts[:2], background[:2])
    assert (worse > 0.05).all(), worse
    more = background_warp_error(torch.stack([_wobble(v, 4.0) for v in videos[:2]]), shifts[:2], background[:2])
    assert (more > 1.2 * worse).all(), (worse, more)
    # without the mask, the moving object and the orbit's fixed object are compared as if background
    unmasked = background_warp_error(videos, shifts)
    assert unmasked[0] == 0 and (unmasked[1:] > 0.5).all()
    # the wrong camera motion does not explain the frames: ~px of misalignment, whatever the contrast
    assert (background_warp_error(videos[:2], -shifts[:2], background[:2]) > 1.0).all()


def test_warp_error_is_nan_without_a_known_shift_or_comparable_pixels():
    videos, shifts, background = _clip_batch(render(PAN, seed=1), render(PAN, seed=2))
    shifts[1, 3] = float("nan")
    signal = background_warp_error(videos, shifts, background)
    assert signal[0] == 0 and torch.isnan(signal[1])
    assert torch.isnan(background_warp_error(videos, shifts, torch.zeros_like(background))).all()
    with pytest.raises(ValueError, match=r"\[B, T-1, 2\]"):
        background_warp_error(videos, shifts[:, :3], background)


@pytest.mark.parametrize("direction", ["left", "right", "up", "down"])
def test_global_shift_estimate_recovers_camera_pans(direction):
    clip = render(SceneSpec("pan", "triangle", "green", "brown", direction), seed=3)
    estimate = estimate_global_shift(clip.video[None])[0]
    assert torch.allclose(estimate, clip.camera_shift, atol=0.05), (estimate, clip.camera_shift)
    # and, used in place of the known shift, gives (nearly) the same signal
    assert background_warp_error(clip.video[None], estimate[None]).item() < 0.01


@pytest.mark.parametrize("shift_fifths", [(32, 15), (-12, 7), (3, -4), (60, 0)])
def test_global_shift_estimate_is_sub_pixel_on_textured_footage(shift_fifths):
    """Footage-like texture (smoothed noise) filmed at 5x and box-downsampled, so whole-pixel
    moves at 5x are exact fifth-pixel moves of the frames; up to 12 px per frame."""
    big = torch.rand(1, 1, 48 * 5 + 400, 64 * 5 + 400, generator=torch.Generator().manual_seed(1))
    big = torch.nn.functional.avg_pool2d(big, 9, stride=1, padding=4)
    frames = []
    for t in range(4):
        left, top = 200 - shift_fifths[0] * t, 200 - shift_fifths[1] * t
        frames.append(torch.nn.functional.avg_pool2d(big[:, :, top : top + 240, left : left + 320], 5)[0, 0])
    video = torch.stack(frames)[..., None].expand(-1, -1, -1, 3)
    estimate = estimate_global_shift(video[None])[0]
    true = torch.tensor(shift_fifths) / 5
    assert torch.allclose(estimate, true.expand(3, 2), atol=0.15), (estimate, true)
    # a still camera reads as no motion
    assert estimate_global_shift(video[:1].expand(3, -1, -1, -1)[None]).abs().max() < 1e-3


# ---------------------------------------------------------------------------------------------- weights


@pytest.mark.parametrize("w_min, w_max", [(0.5, 2.0), (0.2, 5.0), (0.9, 1.1)])
def test_weights_have_mean_one_stay_in_bounds_and_follow_the_signal(w_min, w_max):
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        signal = torch.rand(8, generator=g) ** 3
        if trial % 4 == 1:
            signal[: 6] = 0.0  # mostly perfect samples
        if trial % 4 == 2:
            signal[torch.randperm(8, generator=g)[:3]] = float("nan")  # no structure to judge
        weights = structure_weights(signal, w_min, w_max)
        known = ~torch.isnan(signal)
        assert weights[known].double().mean().item() == pytest.approx(1.0, abs=1e-6), (signal, weights)
        assert (weights >= w_min - 1e-6).all() and (weights <= w_max + 1e-6).all()
        assert (weights[~known] == 1).all()
        order = signal[known].argsort()
        assert (weights[known][order].diff() >= -1e-6).all()  # more distortion, never less weight


def test_weights_are_proportional_between_the_bounds():
    weights = structure_weights(torch.tensor([0.1, 0.2, 0.0, 5.0, float("nan"), 0.3]), 0.5, 2.0)
    # the 5.0 sample is capped, 0.0 and 0.1 floored; the free samples share a = 4: 0.2 -> 0.8, 0.3 -> 1.2
    assert torch.allclose(weights, torch.tensor([0.5, 0.8, 0.5, 2.0, 1.0, 1.2]), atol=1e-5)
    one_distorted = structure_weights(torch.tensor([0.0, 0.0, 0.0, 1.0]), 0.5, 2.0)
    assert torch.allclose(one_distorted, torch.tensor([2 / 3, 2 / 3, 2 / 3, 2.0]), atol=1e-5)
    for flat in (torch.zeros(4), torch.full((4,), float("nan")), torch.full((4,), 0.3)):
        assert torch.allclose(structure_weights(flat), torch.ones(4))


def test_weight_bounds_and_signals_are_validated():
    with pytest.raises(ValueError, match="w_min=1.5"):
        structure_weights(torch.ones(2), 1.5, 2.0)
    with pytest.raises(ValueError, match=">= 0"):
        structure_weights(torch.tensor([0.1, -0.2]))


def test_distorted_samples_get_stronger_gradients_end_to_end():
    pan = render(PAN, seed=4)
    videos, shifts, background = _clip_batch(pan, pan, pan, pan)
    videos = torch.stack([videos[0], _wobble(videos[1], 0.5), _wobble(videos[2], 1.5), _wobble(videos[3], 3.0)])
    signal = background_warp_error(videos, shifts, background)
    weights = structure_weights(signal, 0.25, 4.0)
    assert (weights.diff() > 0).all() and weights[0] == 0.25
    stats = weight_stats(weights, signal, 0.25, 4.0)
    assert stats["weight_min"] == 0.25 and stats["clipped_fraction"] == 0.25
    assert stats["weight_signal_corr"] > 0.95 and stats["weight_std"] > 0.3
    assert math.isnan(weight_stats(torch.ones(2), torch.full((2,), float("nan")), 0.5, 2.0)["weight_std"])


# ---------------------------------------------------------------------------------------------- motion loss


def test_motion_errors_use_a_fixed_scale_so_a_clip_scores_the_same_in_any_batch():
    fluid = render(SceneSpec("fluid", FLUID_SHAPE, "white", "black", "down"), seed=0).flow
    pan = render(PAN, seed=0).flow
    prediction = 0.5 * fluid
    alone = motion_errors(prediction[None], fluid[None], flow_scale_px=4.0)
    with_a_fast_clip = motion_errors(torch.stack([prediction, pan]), torch.stack([fluid, 10 * pan]), 4.0)
    assert alone[0] == with_a_fast_clip[0]
    assert alone[0].item() == pytest.approx((0.5 * fluid).abs().mean().item() / 4.0, rel=1e-5)
    assert motion_errors(fluid[None], fluid[None], 4.0).item() == 0.0
    valid = torch.zeros(1, *fluid.shape[:1], *fluid.shape[2:], dtype=torch.bool)
    valid[..., :16, :] = True
    top_only = motion_errors(prediction[None], fluid[None], 4.0, valid)
    assert top_only.item() == pytest.approx((0.5 * fluid[:, :, :16]).abs().mean().item() / 4.0, rel=1e-5)
    with pytest.raises(ValueError, match="differ"):
        motion_errors(prediction[None], fluid[None, :-1], 4.0)
