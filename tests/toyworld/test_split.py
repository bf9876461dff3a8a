"""The held-out split: evaluation prompts that no post-training stage samples."""

import pytest

from toyworld.world import KINDS, ToyWorld, is_held_out


def test_train_and_held_out_splits_partition_the_grammar_deterministically():
    train = ToyWorld(kinds=KINDS, split="train").prompts(300, seed=1)
    held_out = ToyWorld(kinds=KINDS, split="held_out").prompts(60, seed=1)
    assert not any(map(is_held_out, train)) and all(map(is_held_out, held_out))
    assert held_out == ToyWorld(kinds=KINDS, split="held_out").prompts(60, seed=1)  # same everywhere, no list kept
    whole = ToyWorld(kinds=KINDS).prompts(3000, seed=2)
    assert 0.07 < sum(map(is_held_out, whole)) / len(whole) < 0.13  # ~10 % held out
    assert {p.split()[1] for p in held_out} & {p.split()[1] for p in train}  # same vocabulary on both sides


def test_rendered_clips_follow_the_split_and_the_default_is_unchanged():
    clips = ToyWorld(5, 24, 24, split="held_out").sample(4, seed=0)
    assert all(is_held_out(clip.prompt) for clip in clips)
    assert ToyWorld(5, 24, 24).prompts(20, seed=4) == ToyWorld(5, 24, 24, split=None).prompts(20, seed=4)
    with pytest.raises(ValueError, match="split='test' must be one of"):
        ToyWorld(split="test")
