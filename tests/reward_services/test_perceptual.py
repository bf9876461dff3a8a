"""PerceptualCritic: each artifact, added to a clean video, lowers its own score."""

import cv2
import numpy as np
import pytest
import torch

from reward_services.critics.perceptual import PerceptualCritic, block_discontinuity, noise_sigma

SIZE, FRAMES = 32, 8


def clean_video(seed: int = 0) -> np.ndarray:
    """Two crisp rectangles over a smooth texture sliding right 1 px per frame: [T, H, W, 3] in [0, 1].

    The rectangles' edges avoid the 8 px block grid, so a clean frame has no block structure.
    """
    noise = np.random.default_rng(seed).random((SIZE + 16, SIZE + 16, 3)).astype(np.float32)
    big = np.clip((cv2.GaussianBlur(noise, (0, 0), 1.5) - 0.5) * 2 + 0.5, 0, 1)
    video = np.stack([big[8:-8, 8 - t : 8 - t + SIZE] for t in range(FRAMES)])
    video[:, 5:20, 3:14] = (0.95, 0.9, 0.1)
    video[:, 18:29, 19:30] = (0.1, 0.2, 0.9)
    return video


def scores_of(*videos: np.ndarray, critic: PerceptualCritic | None = None) -> dict[str, torch.Tensor]:
    critic = critic or PerceptualCritic()
    batch = torch.from_numpy(np.stack(videos).astype(np.float32)).clamp(0, 1)
    return critic.score(batch, ["p"] * len(videos)).scores


def blocky(video: np.ndarray, block: int) -> np.ndarray:
    """Replace each block by its mean (a DC-only codec)."""
    t, h, w, c = video.shape
    means = video.reshape(t, h // block, block, w // block, block, c).mean(axis=(2, 4), keepdims=True)
    return np.broadcast_to(means, (t, h // block, block, w // block, block, c)).reshape(video.shape)


def test_blur_lowers_sharpness():
    sharp = clean_video()
    gaussian = np.stack([cv2.GaussianBlur(frame, (0, 0), 1.0) for frame in sharp])
    box = np.stack([cv2.blur(frame, (3, 3)) for frame in sharp])
    scores = scores_of(sharp, gaussian, box)["sharpness"]
    assert scores[0] > 0.7
    assert scores[1] < scores[0] - 0.3 and scores[2] < scores[0] - 0.3


def test_sharpness_ignores_contrast_and_flat_video_scores_zero():
    sharp = clean_video()
    low_contrast = 0.5 + 0.2 * (sharp - 0.5)  # same edges, 5x less contrast: raw VL drops 25x
    scores = scores_of(sharp, low_contrast, np.full_like(sharp, 0.3))["sharpness"]
    assert scores[1] == pytest.approx(scores[0].item(), abs=0.03)
    assert scores[2] == 0.0  # no edges: nothing to be sharp, and no reward for emptiness


def test_gaussian_noise_lowers_noise_score():
    clean = clean_video()
    rng = np.random.default_rng(1)
    noisy = np.clip(clean + rng.normal(0, 0.03, clean.shape), 0, 1)
    scores = scores_of(clean, noisy)["noise"]
    assert scores[0] > 0.8 and scores[1] < 0.5


def test_noise_sigma_estimates_the_added_std():
    flat = np.full((64, 64), 0.5, np.float32)
    noisy = flat + np.random.default_rng(2).normal(0, 0.04, flat.shape).astype(np.float32)
    assert noise_sigma(flat) == 0.0
    assert noise_sigma(noisy) == pytest.approx(0.04, rel=0.1)


def test_blocky_video_scores_lower_blockiness():
    clean = clean_video()
    scores = scores_of(clean, blocky(clean, 8))["blockiness"]
    assert scores[0] > 0.9 and scores[1] < 0.1


def test_block_size_option_finds_4x4_blocks():
    clean = clean_video()
    four = blocky(clean, 4)
    assert scores_of(four, critic=PerceptualCritic(block_size=4))["blockiness"][0] < 0.1
    assert block_discontinuity(np.zeros((16, 16), np.float32), 8) == 0.0  # flat image: no blocks, no NaN


def test_alternating_brightness_lowers_flicker_but_a_fade_does_not():
    clean = clean_video()
    offsets = np.array([0.05 if t % 2 else -0.05 for t in range(FRAMES)], np.float32)[:, None, None, None]
    flickering = np.clip(clean + offsets, 0, 1)
    fading = clean * np.linspace(1.0, 0.4, FRAMES, dtype=np.float32)[:, None, None, None]
    scores = scores_of(clean, flickering, fading)["flicker"]
    assert scores[0] > 0.9 and scores[2] > 0.9
    assert scores[1] < 0.1


def test_scores_are_finite_shape_b_in_unit_interval_and_batch_independent():
    clean = clean_video()
    videos = [
        clean,
        np.zeros_like(clean),
        np.random.default_rng(3).random(clean.shape).astype(np.float32),
        blocky(clean, 8),
    ]
    critic = PerceptualCritic()
    batched = scores_of(*videos, critic=critic)
    assert set(batched) == set(PerceptualCritic.score_names)
    for name, values in batched.items():
        assert values.shape == (4,) and torch.isfinite(values).all(), name
        assert ((values >= 0) & (values <= 1)).all(), name
        singles = torch.cat([scores_of(video, critic=critic)[name] for video in videos])
        assert torch.allclose(values, singles, atol=1e-6), name
    out = critic.score(torch.from_numpy(clean[None]), ["p"])
    for name in ("laplacian_variance", "gradient_energy", "noise_sigma", "luma_mean"):
        assert out.maps[name].shape == (1, FRAMES), name


def test_bad_option_names_the_field():
    with pytest.raises(ValueError, match="noise_scale"):
        PerceptualCritic(noise_scale=0)
