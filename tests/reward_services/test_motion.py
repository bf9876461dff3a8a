"""MotionCritic and farneback_flow on videos whose motion we know exactly."""

import math

import cv2
import numpy as np
import pytest
import torch

from reward_services.critics.motion import MotionCritic, _to_gray_uint8, farneback_flow

SIZE = 32


def texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth high-contrast random RGB texture, [H, W, 3] float32 in [0, 1]."""
    noise = np.random.default_rng(seed).random((height, width, 3)).astype(np.float32)
    return np.clip((cv2.GaussianBlur(noise, (0, 0), 1.5) - 0.5) * 3 + 0.5, 0, 1)


def translating(offsets: list[tuple[int, int]], seed: int = 0) -> np.ndarray:
    """Crops of one large texture; frame t is shifted by offsets[t] = (dx, dy) pixels."""
    margin = 24
    big = texture(SIZE + 2 * margin, SIZE + 2 * margin, seed)
    return np.stack([big[margin - dy : margin - dy + SIZE, margin - dx : margin - dx + SIZE] for dx, dy in offsets])


def square(positions: list[tuple[int, int]], size: int = 8) -> np.ndarray:
    """A red square at positions[t] = (x, y) over a blue background."""
    frames = np.zeros((len(positions), SIZE, SIZE, 3), np.float32)
    frames[..., 2] = 0.6
    for t, (x, y) in enumerate(positions):
        frames[t, y : y + size, x : x + size] = (0.9, 0.1, 0.1)
    return frames


def score(critic: MotionCritic, *videos: np.ndarray) -> dict[str, torch.Tensor]:
    batch = torch.from_numpy(np.stack(videos)).clamp(0, 1)
    return critic.score(batch, ["a video"] * len(videos)).scores


@pytest.fixture(scope="module")
def critic() -> MotionCritic:
    return MotionCritic()


def test_farneback_recovers_translation_within_half_pixel():
    dx, dy = 2, -1
    video = translating([(dx * t, dy * t) for t in range(3)], seed=1)
    flow = farneback_flow(_to_gray_uint8(video))
    assert flow.shape == (2, 2, SIZE, SIZE) and flow.dtype == np.float32
    interior = flow[:, :, 6:-6, 6:-6]  # content entering at the border has no match
    assert np.abs(interior[:, 0] - dx).max() < 0.5  # channel 0 = x
    assert np.abs(interior[:, 1] - dy).max() < 0.5


def test_farneback_still_frames_give_zero_flow():
    frame = _to_gray_uint8(texture(SIZE, SIZE)[None])[0]
    flow = farneback_flow(np.stack([frame, frame, frame]))
    assert np.abs(flow).max() < 0.01  # including the border, where unpadded Farneback gives ~1 px


def test_farneback_rejects_float_frames():
    with pytest.raises(ValueError, match="uint8"):
        farneback_flow(np.zeros((2, 8, 8), np.float32))


def test_frozen_video_scores_lower_than_moving_square(critic):
    moving = square([(2 + 2 * t, 10) for t in range(10)])
    frozen = np.repeat(moving[:1], 10, axis=0)
    scores = score(critic, moving, frozen)
    assert scores["dynamic_degree"][1] < 0.01 < 0.5 < scores["dynamic_degree"][0]
    assert scores["frozen_frames"][1] == 0.0 and scores["frozen_frames"][0] == 1.0


def test_frozen_frames_counts_repeated_pairs(critic):
    moving = square([(2 + 2 * t, 10) for t in range(9)])
    stutter = moving[[0, 1, 1, 2, 3, 3, 4, 5, 6]]  # 2 of 8 pairs repeat a frame
    assert score(critic, stutter)["frozen_frames"][0] == pytest.approx(6 / 8)


def test_constant_velocity_is_smoother_than_jitter(critic):
    steady = square([(2 + 2 * t, 12) for t in range(10)])
    jitter_x = [0, 4, 3, 8, 6, 11, 10, 15, 13, 18]
    jitter_y = [12, 14, 11, 13, 10, 13, 11, 14, 12, 10]
    jittery = square([(2 + x, y) for x, y in zip(jitter_x, jitter_y)])
    scores = score(critic, steady, jittery)
    assert scores["temporal_smoothness"][0] > 0.9
    assert scores["temporal_smoothness"][0] > scores["temporal_smoothness"][1] + 0.2


def test_consistent_motion_has_lower_warp_error_than_shuffled_frames(critic):
    video = translating([(2 * t, t) for t in range(10)])
    shuffled = video[[0, 6, 2, 9, 4, 1, 8, 3, 7, 5]]
    scores = score(critic, video, shuffled)
    assert scores["warp_error"][0] > 0.5
    assert scores["warp_error"][0] > scores["warp_error"][1] + 0.3


def test_time_direction_on_dissipating_content(critic):
    """Blur that grows with t (diffusion) reads forward; reversed reads backward; rigid motion undetermined."""
    moving = translating([(t, 0) for t in range(10)])
    diffusing = np.stack([cv2.GaussianBlur(frame, (0, 0), 0.3 + 0.35 * t) for t, frame in enumerate(moving)])
    reversed_ = diffusing[::-1].copy()
    scores = score(critic, diffusing, reversed_, moving, moving[::-1].copy())
    direction = scores["time_direction"]
    assert direction[0] > 0.8 and direction[1] < 0.2
    assert direction[2] == 0.5 and direction[3] == 0.5


def test_time_direction_can_be_disabled():
    video = translating([(t, 0) for t in range(4)])
    diffusing = np.stack([cv2.GaussianBlur(frame, (0, 0), 0.3 + 0.5 * t) for t, frame in enumerate(video)])
    assert score(MotionCritic(time_direction=False), diffusing)["time_direction"][0] == 0.5


def test_flow_magnitude_map_measures_speed(critic):
    video = translating([(2 * t, t) for t in range(6)])
    out = critic.score(torch.from_numpy(video[None]), ["p"])
    magnitude = out.maps["flow_magnitude"]
    assert magnitude.shape == (1, 5)
    assert torch.allclose(magnitude, torch.full((1, 5), math.sqrt(5.0)), atol=0.3)


def test_scores_are_finite_shape_b_and_batch_independent(critic):
    videos = [
        square([(2 + 2 * t, 10) for t in range(8)]),
        np.repeat(square([(4, 4)]), 8, axis=0),
        translating([(t, -t) for t in range(8)], seed=3),
        np.random.default_rng(0).random((8, SIZE, SIZE, 3)).astype(np.float32),
    ]
    batched = score(critic, *videos)
    assert set(batched) == set(MotionCritic.score_names)
    for name, values in batched.items():
        assert values.shape == (4,) and torch.isfinite(values).all(), name
        assert ((values >= 0) & (values <= 1)).all(), name
        singles = torch.cat([score(critic, video)[name] for video in videos])
        assert torch.equal(values, singles), name


def test_large_frames_are_downscaled_for_flow():
    video = np.repeat(np.repeat(translating([(t, 0) for t in range(4)]), 4, axis=1), 4, axis=2)  # 128 px, 4 px/frame
    critic = MotionCritic(flow_max_side=64, time_direction=False)
    out = critic.score(torch.from_numpy(video[None]), ["p"])
    # flow ran at half size (2 px/frame); the map is reported in input pixels
    assert torch.allclose(out.maps["flow_magnitude"], torch.full((1, 3), 4.0), atol=0.4)


def test_raft_backend_without_torchvision_fails_at_construction():
    try:
        import torchvision.models.optical_flow  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="torchvision"):
            MotionCritic(flow_backend="raft")
    else:
        pytest.skip("torchvision is installed; the error path cannot be exercised")


def test_unknown_backend_names_the_field():
    with pytest.raises(ValueError, match="flow_backend"):
        MotionCritic(flow_backend="lucas-kanade")


def test_single_frame_video_is_rejected(critic):
    with pytest.raises(ValueError, match="2 frames"):
        score(critic, square([(4, 4)]))
