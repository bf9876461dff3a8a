"""The critic registry: an explicit table, options checked early, random critics seeded by name."""

import pytest
import torch

from reward_services.base import (
    BUILTIN_CRITICS,
    Critic,
    CriticOutput,
    available_critics,
    build_critic,
    check_critic_options,
    critic_class,
    register_critic,
)


@register_critic
class RandomProjection(Critic):
    """Scores with a randomly initialised layer, like a RAFT or a judge without weights."""

    name = "random_projection_test"
    score_names = ("projection",)

    def __init__(self, width: int = 3):
        self.layer = torch.nn.Linear(width, 1)

    def _score(self, videos, prompts, first_frames) -> CriticOutput:
        with torch.no_grad():
            return CriticOutput(scores={"projection": self.layer(videos.mean(dim=(1, 2, 3))).squeeze(1)})


def test_random_critics_get_the_same_weights_whatever_the_callers_rng_state():
    """Every worker process builds the same weights, so scores never depend on which process
    or which schedule of the reward phase (serial or planned groups) computed them."""
    videos = torch.rand(2, 3, 8, 8, 3)
    torch.manual_seed(1)
    first = build_critic("random_projection_test").score(videos, ["a", "b"]).scores["projection"]
    torch.manual_seed(12345)
    torch.rand(100)
    second = build_critic("random_projection_test").score(videos, ["a", "b"]).scores["projection"]
    assert torch.equal(first, second)
    unseeded = torch.nn.Linear(3, 1)(videos.mean(dim=(1, 2, 3))).squeeze(1)
    assert not torch.equal(first, unseeded.detach())  # the seed is the name's, not the process's


def test_building_a_critic_leaves_the_callers_rng_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    build_critic("random_projection_test")
    assert torch.equal(torch.rand(3), expected)


def test_builtin_table_resolves_every_name_and_options_are_checked():
    assert set(BUILTIN_CRITICS) <= set(available_critics())
    for name in BUILTIN_CRITICS:
        assert critic_class(name).__name__ == BUILTIN_CRITICS[name].split(":")[1]
    check_critic_options("perceptual", {"noise_scale": 0.05})
    with pytest.raises(ValueError, match=r"critic 'perceptual': .*noise_scal.*accepted options: \['sharpness_scale'"):
        check_critic_options("perceptual", {"noise_scal": 0.05})
    with pytest.raises(KeyError, match="unknown critic 'nope'"):
        critic_class("nope")
