"""VBench-style dimensions on videos whose answer is known, the toy judges, and seed summaries."""

import math

import numpy as np
import pytest
import torch

from evaluation.vbench import (
    DIMENSIONS,
    VBENCH_DIMENSIONS,
    block_matching_midpoint,
    color_histogram_features,
    dynamic_degree,
    evaluate_videos,
    feature_consistency,
    fourier_features,
    motion_smoothness,
    subject_consistency,
    summarize,
    temporal_flickering,
    toy_scores,
)
from toyworld.world import SceneSpec, render

SIZE = 32


def square_video(positions, color=(0.9, 0.1, 0.1), size=8, background=(0.1, 0.1, 0.5)) -> torch.Tensor:
    """[T, 32, 32, 3]: a square at positions[t] = (x, y), or no square where the position is None."""
    video = torch.tensor(background).repeat(len(positions), SIZE, SIZE, 1)
    for t, position in enumerate(positions):
        if position is not None:
            x, y = position
            video[t, y : y + size, x : x + size] = torch.tensor(color)
    return video


def texture(seed=0, side=SIZE) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, side // 4, side // 4, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(side, side), mode="bilinear").squeeze(0).permute(1, 2, 0)


def test_feature_consistency_hand_computed():
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # t=1: cos(prev)=0, cos(first)=0 -> 0;  t=2: cos(prev)=cos(first)=1/sqrt(2) -> 0.7071
    assert feature_consistency(features) == pytest.approx(0.5 / math.sqrt(2))
    # negative cosines count as 0, as VBench's max(0, .)
    assert feature_consistency(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == 0.0
    assert feature_consistency(torch.zeros(3, 4)) == 1.0  # flat frames: nothing changed
    assert feature_consistency(torch.ones(1, 4)) == 1.0


def test_fourier_features_ignore_position_but_see_colour_and_shape():
    moved = fourier_features(square_video([(2, 3), (17, 20)]))
    assert torch.allclose(moved[0], moved[1], atol=1e-4)
    recoloured = fourier_features(square_video([(2, 3)], color=(0.1, 0.9, 0.1)))
    smaller = fourier_features(square_video([(2, 3)], size=4))
    for other in (recoloured[0], smaller[0]):
        assert torch.nn.functional.cosine_similarity(moved[0], other, dim=0) < 0.9


def test_color_histogram_features_hand_computed():
    frame = torch.zeros(1, 2, 2, 3)
    frame[0, 0] = torch.tensor([1.0, 0.0, 0.0])  # top row red, bottom row black
    features = color_histogram_features(frame, bins=2)
    expected = torch.zeros(8)
    expected[0] = expected[4] = math.sqrt(0.5)  # bins (r, g, b) = (0, 0, 0) and (1, 0, 0)
    assert torch.allclose(features[0], expected)


def test_subject_consistency_static_moving_and_vanishing():
    static = square_video([(4, 4)] * 5)
    moving = square_video([(4 + 3 * t, 4) for t in range(5)])
    vanishing = square_video([(4, 4), (4, 4), None, None, None])
    scores = subject_consistency(torch.stack([static, moving, vanishing]))
    assert scores[0] == pytest.approx(1.0) and scores[1] > 0.99
    # pairs 1..4: (1 + 1)/2, (0 + 0)/2, then two flat frames agree with each other but not the first: (1 + 0)/2 twice
    assert scores[2] == pytest.approx((1 + 0 + 0.5 + 0.5) / 4)


def test_temporal_flickering_hand_computed():
    video = torch.full((4, 8, 8, 3), 0.2)
    video[1::2] = 0.3  # alternating brightness, |diff| = 0.1 everywhere
    assert temporal_flickering(video[None]).item() == pytest.approx(0.9)
    as_uint8 = torch.full((1, 3, 8, 8, 3), 51, dtype=torch.uint8)
    as_uint8[0, 1] = 76
    assert temporal_flickering(as_uint8).item() == pytest.approx(1 - (25 + 25) / 2 / 255)


def test_block_matching_midpoint_recovers_a_translation():
    big = texture(seed=1, side=48)
    frames = torch.stack([big[8:40, 8 - dx : 40 - dx] for dx in (0, 1, 2)])  # 1 px/frame to the right
    midpoint = block_matching_midpoint(frames[:1], frames[2:])
    assert (midpoint[0, 4:-4, 4:-4] - frames[1, 4:-4, 4:-4]).abs().max() < 1e-5


def test_motion_smoothness_hand_computed_and_ordering():
    still = texture().repeat(5, 1, 1, 1) * 0.8
    bumped = still.clone()
    bumped[1::2] += 0.1  # odd frames brighter: the even frames interpolate to the unbumped frame
    smooth = square_video([(4 + t, 10) for t in range(9)])
    jerky = smooth[torch.tensor([0, 5, 2, 7, 4, 1, 6, 3, 8])]
    scores = motion_smoothness(torch.stack([still, bumped]))
    assert scores.tolist() == pytest.approx([1.0, 0.9])
    smooth_score, jerky_score = motion_smoothness(torch.stack([smooth, jerky])).tolist()
    assert smooth_score > 0.999 and jerky_score < 0.98
    assert math.isnan(motion_smoothness(still[None, :2]).item())


def constant_flow(magnitudes, moving_fraction=1.0):
    """A flow estimator returning, for pair t, `magnitudes[t]` px on the first `moving_fraction` of pixels."""
    def flow(frames):
        out = np.zeros((frames.shape[0] - 1, 2, SIZE * SIZE), np.float32)
        moving = round(moving_fraction * SIZE * SIZE)
        out[:, 0, :moving] = np.asarray(magnitudes, np.float32)[:, None]
        return out.reshape(-1, 2, SIZE, SIZE)
    return flow


@pytest.mark.parametrize("magnitudes, fps, moving_fraction, expected", [
    ([1.0, 1.0, 0, 0, 0, 0, 0, 0], 8.0, 1.0, 1.0),   # 32 px: threshold 0.75 px; T=9: 2 pairs needed
    ([1.0, 0, 0, 0, 0, 0, 0, 0], 8.0, 1.0, 0.0),     # only one pair moves
    ([0.75] * 8, 8.0, 1.0, 0.0),                     # at the threshold is not above it
    ([1.0] * 8, 4.0, 1.0, 0.0),                      # 4 fps doubles the threshold to 1.5 px
    ([2.0] * 8, 8.0, 51 / 1024, 1.0),                # the fastest 5 % (51 px) move 2 px: top mean 2
    ([2.0] * 8, 8.0, 10 / 1024, 0.0),                # 10 px move 2 px: top-5 % mean 20/51 = 0.39 px
])
def test_dynamic_degree_rule(magnitudes, fps, moving_fraction, expected):
    video = torch.zeros(1, 9, SIZE, SIZE, 3)
    assert dynamic_degree(video, flow=constant_flow(magnitudes, moving_fraction), fps=fps).item() == expected


def test_dynamic_degree_with_farneback_on_toy_clips():
    moving = render(SceneSpec("object", "square", "red", "gray", "right"), seed=0).video
    still = render(SceneSpec("object", "square", "red", "gray", "static"), seed=0).video
    assert dynamic_degree(torch.stack([moving, still])).tolist() == [1.0, 0.0]
    assert dynamic_degree(moving[None, :1]).tolist() == [0.0]  # one frame cannot move


PROMPT_SPECS = [
    SceneSpec("object", "square", "red", "gray", "right"),
    SceneSpec("pan", "triangle", "yellow", "navy", "left"),
    SceneSpec("fluid", "circle", "green", "brown", "down"),
]


@pytest.fixture(scope="module")
def toy_clips():
    clips = [render(spec, seed=i) for i, spec in enumerate(PROMPT_SPECS)]
    return torch.stack([c.video for c in clips]), [c.prompt for c in clips]


def test_toy_scores_and_not_applicable_judges(toy_clips):
    videos, prompts = toy_clips
    scores = toy_scores(videos, prompts)
    assert scores["color"].tolist() == pytest.approx([1.0, 1.0, 1.0], abs=0.01)
    assert scores["direction"].tolist() == pytest.approx([1.0, 1.0, 1.0], abs=0.01)
    assert math.isnan(scores["count"][1]) and math.isnan(scores["count"][2])  # pans and fluids have no count
    assert math.isnan(scores["shape"][2]) and scores["shape"][0] > 0.9
    wrong = toy_scores(videos, ["a blue square moves right on a gray background", prompts[1],
                                "a green fluid flows up on a brown background"])
    assert wrong["color"][0] < 0.1 and wrong["direction"][2] < 0.1


def test_evaluate_videos_runs_every_dimension_and_accepts_uint8(toy_clips):
    videos, prompts = toy_clips
    scores = evaluate_videos(videos, prompts)
    assert list(scores) == list(DIMENSIONS)
    assert all(s.shape == (3,) for s in scores.values())
    assert scores["dynamic_degree"].tolist() == [1.0, 1.0, 1.0]
    vbench_only = evaluate_videos((videos * 255).round().to(torch.uint8), ["any text"] * 3, VBENCH_DIMENSIONS)
    for name in VBENCH_DIMENSIONS:
        assert torch.allclose(vbench_only[name], scores[name], atol=0.01), name
    with pytest.raises(ValueError, match="aesthetic_quality"):
        evaluate_videos(videos, prompts, ["aesthetic_quality"])


def test_summarize_t_interval_over_seeds():
    summary = summarize([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, df=2) * sample std 1 / sqrt(3)
    assert (summary["mean"], summary["low"], summary["high"]) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    assert summary["values"] == [1.0, 2.0, 3.0]
    per_video = summarize(torch.tensor([[1.0, math.nan], [3.0, 5.0]]))  # NaN: a judge that does not apply
    assert per_video["values"] == [1.0, 4.0] and per_video["mean"] == 2.5
    assert summarize([0.7]) == {"mean": 0.7, "low": None, "high": None, "values": [0.7]}
    with pytest.raises(ValueError, match="values_per_seed"):
        summarize([])
