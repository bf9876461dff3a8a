"""The ablation bench's critics do what the benchmark relies on (bench/ablations.py)."""

import pytest
import torch

from reward_services.base import build_critic
from reward_services.critics.ablation import flicker_map, spurious_readout, video_seed
from toyworld.judges import judge_all

CLEAR = "a red square moves up on a black background"
AMBIGUOUS = "a red square moves left on a black background"


def clips(prompt: str, n: int = 3, size: int = 24, frames: int = 5) -> torch.Tensor:
    """n distinct renderings (different seeds) of one prompt, [n, T, H, W, 3] in [0, 1]."""
    from toyworld.prompts import parse
    from toyworld.world import render

    return torch.stack([render(parse(prompt), frames, size, size, seed=s).video for s in range(n)])


def test_noise_only_on_the_ambiguous_subset():
    critic = build_critic("noisy_toy", noise_std=0.3)
    videos = torch.cat([clips(CLEAR), clips(AMBIGUOUS)])
    prompts = [CLEAR] * 3 + [AMBIGUOUS] * 3
    scores = critic.score(videos, prompts).scores
    clean = judge_all(videos, prompts)
    for key, value in clean.items():
        assert torch.allclose(scores[key], value.float()), key
    assert torch.equal(scores["noisy"][:3], scores["overall"][:3])  # clear prompts: exactly the clean score
    assert (scores["noisy"][3:] - scores["overall"][3:]).abs().min() > 1e-4  # ambiguous: perturbed
    assert scores["ambiguous"].tolist() == [0.0] * 3 + [1.0] * 3


def test_noise_is_deterministic_per_video_and_differs_between_videos():
    critic = build_critic("noisy_toy", noise_std=0.3)
    videos = clips(AMBIGUOUS, n=4)
    first = critic.score(videos, [AMBIGUOUS] * 4).scores["noisy"]
    again = build_critic("noisy_toy", noise_std=0.3).score(videos.flip(0), [AMBIGUOUS] * 4).scores["noisy"]
    assert torch.equal(first, again.flip(0))  # same video -> same noise, whatever the batch order
    from_uint8 = critic.score((videos * 255).round().to(torch.uint8), [AMBIGUOUS] * 4).scores
    from_float = critic.score(videos, [AMBIGUOUS] * 4).scores
    # the trainer ships uint8 videos: they draw the same noise as their float originals
    assert torch.allclose(from_uint8["noisy"] - from_uint8["overall"], from_float["noisy"] - from_float["overall"], atol=1e-6)
    assert len(set(first.tolist())) == 4
    assert video_seed(videos[0]) != video_seed(videos[0], salt=1)


def test_noise_is_zero_mean_with_the_configured_spread():
    critic = build_critic("noisy_toy", noise_std=0.3)
    base = clips(AMBIGUOUS, n=1)
    # 400 distinct videos: the same clip with one pixel nudged
    videos = base.repeat(400, 1, 1, 1, 1)
    for i in range(400):
        videos[i, 0, i // 24, i % 24, 0] = (videos[i, 0, i // 24, i % 24, 0] + 0.5) % 1.0
    scores = critic.score(videos, [AMBIGUOUS] * 400).scores
    noise = scores["noisy"] - scores["overall"]
    assert abs(noise.mean().item()) < 0.05
    assert 0.25 < noise.std().item() < 0.35


def test_clean_score_is_selectable():
    critic = build_critic("noisy_toy", noise_std=0.3, clean_score="smoothness")
    videos = torch.cat([clips(CLEAR), clips(AMBIGUOUS)])
    scores = critic.score(videos, [CLEAR] * 3 + [AMBIGUOUS] * 3).scores
    assert torch.equal(scores["clean"], scores["smoothness"])
    assert torch.equal(scores["noisy"][:3], scores["smoothness"][:3])
    assert (scores["noisy"][3:] - scores["smoothness"][3:]).abs().min() > 1e-4
    with pytest.raises(ValueError, match="clean_score"):
        build_critic("noisy_toy", clean_score="brightness")


def test_spurious_error_is_a_consistent_learnable_preference():
    """error=spurious: the same video always gets the same error, it is a smooth function of the
    pixels (a small change moves it a little), and it has unit scale across distinct videos."""
    critic = build_critic("noisy_toy", noise_std=1.0, error="spurious", clean_score="smoothness")
    videos = torch.cat([clips(AMBIGUOUS, n=8), clips(CLEAR, n=2)])
    prompts = [AMBIGUOUS] * 8 + [CLEAR] * 2
    scores = critic.score(videos, prompts).scores
    error = scores["noisy"] - scores["clean"]
    assert torch.equal(error[8:], torch.zeros(2))  # clear prompts untouched
    assert torch.allclose(error[:8], spurious_readout(videos[:8]), atol=1e-6)
    assert torch.equal(critic.score(videos, prompts).scores["noisy"], scores["noisy"])
    nudged = spurious_readout((videos[:1] + 0.002).clamp(0, 1))
    assert (nudged - spurious_readout(videos[:1])).abs().item() < 0.05
    other = spurious_readout(torch.rand(64, 5, 24, 24, 3, generator=torch.Generator().manual_seed(0)))
    assert 0.5 < other.std().item() < 2.0
    with pytest.raises(ValueError, match="error"):
        build_critic("noisy_toy", error="biased")


def test_ambiguous_subset_is_configurable():
    critic = build_critic("noisy_toy", ambiguous_motions=[], ambiguous_backgrounds=["gray"])
    assert critic.is_ambiguous("a red square moves up on a gray background")
    assert not critic.is_ambiguous(AMBIGUOUS)


def flicker(video: torch.Tensor, rows: slice, cols: slice, amount: float = 0.4) -> torch.Tensor:
    """The video with a patch that brightens and darkens on alternate frames."""
    out = video.clone()
    for t in range(out.shape[0]):
        out[t, rows, cols] = (out[t, rows, cols] + (amount if t % 2 else 0.0)).clamp(0, 1)
    return out


def test_local_defect_responds_to_flicker_in_its_region_only():
    critic = build_critic("local_defect")
    video = clips("a red square stays still on a gray background", n=1)[0]  # 24x24, 5 frames
    rows, cols = critic.region_slices(24, 24)
    assert (rows, cols) == (slice(0, 6), slice(0, 6))  # 8 px at 32 -> 6 px at 24
    inside = flicker(video, rows, cols)
    elsewhere = flicker(video, slice(18, 24), slice(18, 24))  # same flicker, opposite corner
    prompts = ["a red square stays still on a gray background"] * 3
    scores = critic.score(torch.stack([video, inside, elsewhere]), prompts).scores
    assert scores["stability"][0] > 0.99  # a static, clean render does not flicker
    assert scores["stability"][1] < 0.1 * scores["stability"][0]
    assert torch.isclose(scores["stability"][2], scores["stability"][0])
    assert scores["score"][1] < scores["score"][2]
    expected = 0.5 * scores["stability"] + 0.5 * scores["overall"]
    assert torch.allclose(scores["score"], expected)


def test_flicker_map_ignores_constant_motion_and_stillness():
    ramp = torch.linspace(0, 1, 5)[None, :, None, None, None].expand(1, 5, 4, 4, 3)
    assert flicker_map(ramp).abs().max() < 1e-6
    assert flicker_map(torch.full((1, 5, 4, 4, 3), 0.3)).abs().max() == 0


def test_stillness_conflicts_with_the_prompted_direction():
    prompt = "a red square moves right on a black background"
    moving = clips(prompt, n=1, size=32)
    still = moving[:, :1].expand_as(moving).clone()  # the first frame held
    videos = torch.cat([moving, still])
    stillness = build_critic("stillness").score(videos, [prompt] * 2).scores["still"]
    motion = judge_all(videos, [prompt] * 2)["motion"]
    assert stillness[1] > 0.9 > 0.1 > stillness[0]
    assert motion[0] > 0.5 > motion[1]


def test_stillness_agrees_with_motion_on_a_still_prompt():
    prompt = "a red square stays still on a black background"
    videos = clips(prompt, n=2, size=32)
    stillness = build_critic("stillness").score(videos, [prompt] * 2).scores["still"]
    assert torch.allclose(stillness, judge_all(videos, [prompt] * 2)["motion"])


def test_coarse_smoothness_saturates_to_noise_above_its_threshold():
    critic = build_critic("coarse_smoothness", threshold=0.45, noise_std=0.02)
    prompt = "a red square moves right on a black background"
    smooth = clips(prompt, n=4, size=32)  # clean renders: smoothness ~ 1, far above the threshold
    rough = smooth + 0.15 * torch.randn(smooth.shape, generator=torch.Generator().manual_seed(0))
    scores = critic.score(torch.cat([smooth, rough.clamp(0, 1)]), [prompt] * 8).scores
    assert (scores["smoothness"][:4] > 0.45).all() and (scores["smoothness"][4:] < 0.45).all()
    saturated = scores["fidelity"][:4]
    assert ((saturated - 1.0).abs() < 0.1).all() and saturated.std() > 0  # only noise is left to compare
    below = scores["fidelity"][4:] - scores["smoothness"][4:] / 0.45
    assert below.abs().max() < 0.1  # below the threshold it follows the judge (plus the same small noise)
    again = build_critic("coarse_smoothness", threshold=0.45, noise_std=0.02).score(smooth, [prompt] * 4).scores
    assert torch.equal(again["fidelity"], saturated)  # deterministic per video
