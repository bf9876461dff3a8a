import itertools
import re

import pytest

from toyworld.prompts import describe, parse
from toyworld.world import (
    BACKGROUNDS,
    COLORS,
    FLUID_SHAPE,
    MOTIONS,
    PAN_DIRECTIONS,
    SHAPES,
    SceneSpec,
    all_object_specs,
)


def _every_spec():
    specs = [s for count in (1, 2, 3) for s in all_object_specs(count)]
    specs += [
        SceneSpec("pan", shape, color, background, motion)
        for shape, color, background, motion in itertools.product(SHAPES, COLORS, BACKGROUNDS, PAN_DIRECTIONS)
    ]
    specs += [
        SceneSpec("fluid", FLUID_SHAPE, color, background, motion)
        for color, background, motion in itertools.product(COLORS, BACKGROUNDS, MOTIONS)
    ]
    return specs


def test_round_trip_every_spec():
    specs = _every_spec()
    assert len(specs) == 3 * 360 + 288 + 120
    for spec in specs:
        assert parse(describe(spec)) == spec, describe(spec)


def test_prompts_are_distinct():
    prompts = [describe(s) for s in _every_spec()]
    assert len(set(prompts)) == len(prompts)


@pytest.mark.parametrize(
    "spec, prompt",
    [
        (SceneSpec("object", "square", "red", "gray", "left"), "a red square moves left on a gray background"),
        (SceneSpec("object", "circle", "blue", "black", "up", 2), "two blue circles move up on a black background"),
        (SceneSpec("object", "triangle", "yellow", "navy", "static"), "a yellow triangle stays still on a navy background"),
        (SceneSpec("object", "square", "white", "brown", "static", 3), "three white squares stay still on a brown background"),
        (SceneSpec("pan", "square", "red", "gray", "left"), "the camera pans left over red squares on a gray background"),
        (SceneSpec("fluid", FLUID_SHAPE, "purple", "black", "right"), "a purple fluid flows right on a black background"),
        (SceneSpec("fluid", FLUID_SHAPE, "green", "navy", "static"), "a green fluid swirls in place on a navy background"),
    ],
)
def test_grammar_examples(spec, prompt):
    assert describe(spec) == prompt
    assert parse(prompt) == spec


def test_parse_tolerates_case_spacing_and_period():
    expected = SceneSpec("object", "square", "red", "gray", "left")
    assert parse("  A Red  square moves LEFT on a gray background.") == expected


@pytest.mark.parametrize(
    "prompt",
    [
        "",
        "a pink square moves left on a gray background",  # unknown colour
        "a red squares moves left on a gray background",  # plural with one
        "two red square move left on a gray background",  # singular with two
        "four red squares move left on a gray background",  # count out of range
        "a red square moves left",  # no background
        "the camera pans still over red squares on a gray background",  # pans need a direction
        "a red fluid moves left on a gray background",  # fluids flow
        "a red square moves left on a gray background and a blue circle moves up",
    ],
)
def test_parse_error_names_the_prompt(prompt):
    with pytest.raises(ValueError, match=re.escape(repr(prompt))):
        parse(prompt)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(kind="blob", shape="square", color="red", background="gray", motion="left"), "kind"),
        (dict(kind="object", shape="hexagon", color="red", background="gray", motion="left"), "shape"),
        (dict(kind="object", shape="square", color="pink", background="gray", motion="left"), "color"),
        (dict(kind="object", shape="square", color="red", background="pink", motion="left"), "background"),
        (dict(kind="object", shape="square", color="red", background="gray", motion="sideways"), "motion"),
        (dict(kind="object", shape="square", color="red", background="gray", motion="left", count=4), "count"),
        (dict(kind="pan", shape="square", color="red", background="gray", motion="static"), "motion"),
        (dict(kind="pan", shape="square", color="red", background="gray", motion="left", count=2), "count"),
        (dict(kind="fluid", shape="square", color="red", background="gray", motion="left"), "shape"),
    ],
)
def test_invalid_spec_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"SceneSpec\.{field}="):
        SceneSpec(**kwargs)
