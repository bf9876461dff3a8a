"""Automatic GSB judge: the comparison rule by hand, and aspect scores on degraded toy clips."""

import math

import pytest
import torch

from evaluation.gsb import ASPECTS, GSBCounts
from evaluation.judge import ASPECT_SCORES, AutoJudge, compare_scores
from toyworld.world import SceneSpec, render

SHUFFLE = torch.tensor([0, 5, 2, 7, 4, 1, 6, 3, 8])


def test_compare_scores_hand_computed():
    a = {"overall": torch.tensor([0.5, 0.5, 0.5, math.nan, 0.5])}
    b = {"overall": torch.tensor([0.4, 0.49, 0.6, 0.5, 0.52])}
    # +0.1 good, +0.01 within the margin, -0.1 bad, NaN same, -0.02 exactly the margin: same
    assert compare_scores(a, b, tie_margin=0.02) == {"overall": GSBCounts(good=1, same=3, bad=1)}
    assert compare_scores(a, b, tie_margin=0.0)["overall"] == GSBCounts(good=2, same=1, bad=2)
    with pytest.raises(ValueError, match="tie_margin"):
        compare_scores(a, b, tie_margin=-1)


@pytest.fixture(scope="module")
def judge():
    return AutoJudge()


@pytest.fixture(scope="module")
def clips():
    specs = [
        SceneSpec("object", "square", "red", "gray", "right"),
        SceneSpec("pan", "triangle", "yellow", "navy", "left"),
        SceneSpec("fluid", "circle", "green", "brown", "down"),
    ]
    rendered = [render(spec, seed=i) for i, spec in enumerate(specs)]
    return torch.stack([c.video for c in rendered]), [c.prompt for c in rendered]


def test_aspect_scores_average_the_applicable_critic_scores(judge, clips):
    videos, prompts = clips
    critic = judge.critic_scores(videos, prompts)
    aspects = judge.aspect_scores(videos, prompts)
    assert list(aspects) == list(ASPECTS)
    # the fluid (index 2) has no shape or count judge: its text alignment is the mean of colour and motion
    assert math.isnan(critic["toy_judges.shape"][2]) and math.isnan(critic["toy_judges.count"][2])
    expected = (critic["toy_judges.color"][2] + critic["toy_judges.motion"][2]) / 2
    assert aspects["text_alignment"][2].item() == pytest.approx(expected.item())
    expected_visual = sum(critic[key][0] for key in ASPECT_SCORES["visual_quality"]) / 3
    assert aspects["visual_quality"][0].item() == pytest.approx(expected_visual.item())
    four = torch.stack([aspects[a] for a in ASPECTS[:4]]).mean(dim=0)
    assert torch.allclose(aspects["overall"], four)


def test_identical_videos_are_all_same(judge, clips):
    videos, prompts = clips
    assert judge.compare(videos, videos, prompts) == {aspect: GSBCounts(good=0, same=3, bad=0) for aspect in ASPECTS}


def test_clean_beats_noisy_and_shuffled_videos(judge, clips):
    videos, prompts = clips
    noisy = (videos + 0.05 * torch.randn(videos.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    against_noise = judge.compare(videos, noisy, prompts)
    for aspect in ("visual_quality", "motion_quality", "preservation", "overall"):
        assert against_noise[aspect] == GSBCounts(good=3, same=0, bad=0), aspect
    against_shuffle = judge.compare(videos, videos[:, SHUFFLE], prompts)
    for aspect in ("motion_quality", "text_alignment", "preservation", "overall"):
        assert against_shuffle[aspect] == GSBCounts(good=3, same=0, bad=0), aspect
    assert against_shuffle["visual_quality"].bad == 0  # the same frames, in another order
    assert judge.compare(videos[:, SHUFFLE], videos, prompts)["overall"] == GSBCounts(good=0, same=0, bad=3)


def test_compare_refuses_unpaired_batches(judge, clips):
    videos, prompts = clips
    with pytest.raises(ValueError, match="pair up"):
        judge.compare(videos, videos[:2], prompts)
