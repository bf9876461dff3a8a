"""SafetyGate: WCAG 2.3.1 flash counting, classifier hooks and apply_gate."""

import numpy as np
import pytest
import torch

from reward_services.critics.safety import (
    SafetyGate,
    apply_gate,
    relative_luminance,
    transition_events,
)

SIZE, FPS = 32, 8


def solid(levels) -> torch.Tensor:
    """Full-frame grey video, one sRGB level per frame: [T, H, W, 3]."""
    levels = torch.as_tensor(np.asarray(levels), dtype=torch.float32)
    return levels[:, None, None, None].expand(len(levels), SIZE, SIZE, 3).clone()


def alternating(frames: int = 2 * FPS) -> torch.Tensor:
    return solid([t % 2 for t in range(frames)])  # black/white every frame: 4 flashes/s at 8 fps


def patch_flashing(side: int, frames: int = 2 * FPS) -> torch.Tensor:
    video = torch.full((frames, SIZE, SIZE, 3), 0.5)
    for t in range(frames):
        video[t, :side, :side] = float(t % 2)
    return video


def gate_scores(*videos: torch.Tensor, prompts=None, **options) -> dict[str, torch.Tensor]:
    prompts = prompts or ["a video"] * len(videos)
    return SafetyGate(fps=FPS, **options).score(torch.stack(videos), prompts).scores


def test_relative_luminance_matches_wcag_formula():
    rgb = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.5, 0.5, 0.5], [1.0, 0.0, 0.0]])
    expected = torch.tensor([0.0, 1.0, ((0.5 + 0.055) / 1.055) ** 2.4, 0.2126])
    assert torch.allclose(relative_luminance(rgb), expected, atol=1e-6)


def test_alternating_black_white_is_gated_and_counted_by_apply_gate():
    scores = gate_scores(alternating(), solid(np.linspace(1.0, 0.0, 2 * FPS)))
    assert scores["flash_safe"].tolist() == [0.0, 1.0]
    assert scores["flashes_per_second"][0] == 4.0  # 8 transitions in any one second
    assert scores["gated"].tolist() == [1.0, 0.0]
    rewards = torch.tensor([0.9, 0.7])
    gated_rewards, num_gated = apply_gate(rewards, scores["gated"].bool(), floor=-1.0)
    assert num_gated == 1
    assert gated_rewards.tolist() == pytest.approx([-1.0, 0.7])


def test_slow_fade_and_slow_blinking_are_safe():
    fade = solid(np.linspace(1.0, 0.0, 2 * FPS))
    two_per_second = solid([(t // 2) % 2 for t in range(2 * FPS)])  # changes every 2 frames
    scores = gate_scores(fade, two_per_second)
    assert scores["flashes_per_second"].tolist() == [0.5, 2.0]  # a fade is one transition
    assert scores["gated"].tolist() == [0.0, 0.0]


def test_flashing_patch_below_area_threshold_is_not_gated_above_it_is():
    small = patch_flashing(8)  # 6 % of the frame
    large = patch_flashing(20)  # 39 % of the frame
    scores = gate_scores(small, large)
    assert scores["gated"].tolist() == [0.0, 1.0]
    # a stricter area (WCAG's 10-degree field on a full screen) catches the small patch too
    assert gate_scores(small, area_fraction=0.028)["gated"].tolist() == [1.0]


def test_bright_flicker_with_darker_state_above_080_is_not_a_flash():
    # sRGB 0.92 has relative luminance 0.83 > 0.80, so 0.92 <-> 1.0 is not a WCAG flash
    assert relative_luminance(torch.tensor([0.92, 0.92, 0.92])) > 0.8
    scores = gate_scores(solid([0.92 + 0.08 * (t % 2) for t in range(2 * FPS)]))
    assert scores["flashes_per_second"].item() == 0.0 and scores["gated"].item() == 0.0


def test_fps_sets_the_one_second_window():
    # the same frames at 4 fps are 2 flashes per second: safe
    scores = gate_scores(alternating())
    slow = SafetyGate(fps=4).score(alternating()[None], ["p"]).scores
    assert scores["gated"].item() == 1.0 and slow["gated"].item() == 0.0
    assert slow["flashes_per_second"].item() == 2.0


def test_red_flash_is_detected_separately():
    red = torch.zeros(2 * FPS, SIZE, SIZE, 3)
    red[1::2, ..., 0] = 1.0  # black <-> saturated red every frame
    scores = gate_scores(red)
    assert scores["red_flashes_per_second"].item() == 4.0 and scores["gated"].item() == 1.0
    assert gate_scores(red, red_flash=False)["red_flashes_per_second"].item() == 0.0


def test_transition_events_count_opposing_swings_only():
    signal = np.array([0.0, 0.05, 0.2, 0.3, 0.25, 0.1, 0.12, 0.5])[:, None]
    events = transition_events(signal, 0.1, 0.8)[:, 0]
    # rise completes at t=2, fall at t=5 (0.3 -> 0.1), rise at t=7; 0.3 -> 0.25 is too small
    assert np.flatnonzero(events).tolist() == [2, 5, 7]


def test_classifier_hook_gates_only_flagged_samples():
    def flags_unsafe(videos: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return torch.tensor(["unsafe" in prompt for prompt in prompts])

    calm = solid(np.full(2 * FPS, 0.4))
    prompts = ["a calm lake", "an unsafe scene", "a red square"]
    scores = gate_scores(calm, calm, calm, prompts=prompts, classifiers=[flags_unsafe])
    assert scores["flash_safe"].tolist() == [1.0, 1.0, 1.0]
    assert scores["gated"].tolist() == [0.0, 1.0, 0.0]


def test_classifier_with_wrong_shape_is_reported():
    with pytest.raises(RuntimeError, match=r"classifiers\[0\]"):
        gate_scores(alternating(), classifiers=[lambda videos, prompts: torch.zeros(3, dtype=torch.bool)])


def test_scores_are_finite_shape_b_and_batch_independent():
    videos = [alternating(), solid(np.linspace(0, 1, 2 * FPS)), patch_flashing(8), torch.rand(2 * FPS, SIZE, SIZE, 3)]
    gate = SafetyGate(fps=FPS)
    batched = gate.score(torch.stack(videos), ["p"] * 4)
    assert batched.maps["flash_area"].shape == (4, 2 * FPS)
    assert set(batched.scores) == set(SafetyGate.score_names)
    for name, values in batched.scores.items():
        assert values.shape == (4,) and torch.isfinite(values).all(), name
        singles = torch.cat([gate.score(video[None], ["p"]).scores[name] for video in videos])
        assert torch.equal(values, singles), name


def test_large_frames_are_pooled_without_losing_a_full_frame_flash():
    big = alternating()[:, :1, :1].expand(2 * FPS, 200, 120, 3).contiguous()
    scores = SafetyGate(fps=FPS, analysis_side=32).score(big[None], ["p"]).scores
    assert scores["flashes_per_second"].item() == 4.0


def test_apply_gate_validates_shapes_and_accepts_float_masks():
    rewards = torch.tensor([1.0, 2.0, 3.0])
    gated_rewards, num_gated = apply_gate(rewards, torch.tensor([0.0, 1.0, 1.0]))
    assert gated_rewards.tolist() == [1.0, 0.0, 0.0] and num_gated == 2
    with pytest.raises(ValueError, match="must both be"):
        apply_gate(rewards, torch.tensor([True]))
