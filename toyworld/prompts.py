"""The toy world's prompt grammar: `describe(spec)` and its exact inverse `parse(prompt)`.

Grammar (lower case, single spaces, no final period; ``<dir>`` is left | right | up | down):

    object, one     a <color> <shape> moves <dir> on a <background> background
                    a <color> <shape> stays still on a <background> background
    object, 2 or 3  two|three <color> <shape>s move <dir> on a <background> background
                    two|three <color> <shape>s stay still on a <background> background
    pan             the camera pans <dir> over <color> <shape>s on a <background> background
    fluid           a <color> fluid flows <dir> on a <background> background
                    a <color> fluid swirls in place on a <background> background
    orbit           the camera orbits left|right around a <color> <shape> on a <background> background
    order           a <color> <shape> first moves <dir>, then moves <dir2> on a <background> background
    composition     a <color> <shape> is <where> a <color2> <shape2> on a <background> background
                    (<where> is to the left of | to the right of | above | below; <color2> != <color>)

For pans <dir> is where the CAMERA goes; the picture moves the other way (see toyworld.world).
`parse` accepts any letter case, extra spaces, "an" for "a", a missing comma before "then" and a
trailing period, and
`parse(describe(s)) == s` for every valid spec.
"""

from __future__ import annotations

import re

from toyworld.world import BACKGROUNDS, COLORS, FLUID_SHAPE, ORBIT_DIRECTIONS, PAN_DIRECTIONS, SHAPES, SceneSpec

_COUNT_WORDS = {2: "two", 3: "three"}
_RELATION_WORDS = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}


def describe(spec: SceneSpec) -> str:
    """The canonical prompt for `spec`."""
    where = f"on a {spec.background} background"
    if spec.kind == "object":
        if spec.count == 1:
            verb = "stays still" if spec.motion == "static" else f"moves {spec.motion}"
            return f"a {spec.color} {spec.shape} {verb} {where}"
        verb = "stay still" if spec.motion == "static" else f"move {spec.motion}"
        return f"{_COUNT_WORDS[spec.count]} {spec.color} {spec.shape}s {verb} {where}"
    if spec.kind == "pan":
        return f"the camera pans {spec.motion} over {spec.color} {spec.shape}s {where}"
    if spec.kind == "fluid":
        verb = "swirls in place" if spec.motion == "static" else f"flows {spec.motion}"
        return f"a {spec.color} fluid {verb} {where}"
    if spec.kind == "orbit":
        return f"the camera orbits {spec.motion} around a {spec.color} {spec.shape} {where}"
    if spec.kind == "order":
        return f"a {spec.color} {spec.shape} first moves {spec.motion}, then moves {spec.then} {where}"
    if spec.kind == "composition":
        relation = _RELATION_WORDS[spec.relation]
        return f"a {spec.color} {spec.shape} is {relation} a {spec.other_color} {spec.other_shape} {where}"
    raise ValueError(f"SceneSpec.kind={spec.kind!r} has no grammar rule")


def _alternatives(words) -> str:
    return "(" + "|".join(re.escape(w) for w in words) + ")"


_COLOR = _alternatives(COLORS)
_SHAPE = _alternatives(SHAPES)
_DIR = _alternatives(PAN_DIRECTIONS)
_WHERE = rf"on an? {_alternatives(BACKGROUNDS)} background"

_ONE_OBJECT = re.compile(rf"an? {_COLOR} {_SHAPE} (?:moves {_DIR}|(stays still)) {_WHERE}")
_MANY_OBJECTS = re.compile(rf"(two|three) {_COLOR} {_SHAPE}s (?:move {_DIR}|(stay still)) {_WHERE}")
_PAN = re.compile(rf"the camera pans {_DIR} over {_COLOR} {_SHAPE}s {_WHERE}")
_FLUID = re.compile(rf"an? {_COLOR} fluid (?:flows {_DIR}|(swirls in place)) {_WHERE}")
_ORBIT = re.compile(rf"the camera orbits {_alternatives(ORBIT_DIRECTIONS)} around an? {_COLOR} {_SHAPE} {_WHERE}")
_ORDER = re.compile(rf"an? {_COLOR} {_SHAPE} first moves {_DIR},? then moves {_DIR} {_WHERE}")
_COMPOSITION = re.compile(
    rf"an? {_COLOR} {_SHAPE} is {_alternatives(_RELATION_WORDS.values())} an? {_COLOR} {_SHAPE} {_WHERE}"
)
_RELATION_OF_WORDS = {words: relation for relation, words in _RELATION_WORDS.items()}


def parse(prompt: str) -> SceneSpec:
    """The spec a grammar prompt describes; raises ValueError naming the prompt otherwise."""
    text = " ".join(str(prompt).lower().split()).rstrip(".").strip()
    if m := _ONE_OBJECT.fullmatch(text):
        color, shape, direction, still, background = m.groups()
        return SceneSpec("object", shape, color, background, "static" if still else direction, 1)
    if m := _MANY_OBJECTS.fullmatch(text):
        number, color, shape, direction, still, background = m.groups()
        count = 2 if number == "two" else 3
        return SceneSpec("object", shape, color, background, "static" if still else direction, count)
    if m := _PAN.fullmatch(text):
        direction, color, shape, background = m.groups()
        return SceneSpec("pan", shape, color, background, direction)
    if m := _FLUID.fullmatch(text):
        color, direction, still, background = m.groups()
        return SceneSpec("fluid", FLUID_SHAPE, color, background, "static" if still else direction)
    if m := _ORBIT.fullmatch(text):
        direction, color, shape, background = m.groups()
        return SceneSpec("orbit", shape, color, background, direction)
    if m := _ORDER.fullmatch(text):
        color, shape, first, then, background = m.groups()
        return _spec_or_error(prompt, "order", shape, color, background, first, then=then)
    if m := _COMPOSITION.fullmatch(text):
        color, shape, words, other_color, other_shape, background = m.groups()
        return _spec_or_error(
            prompt, "composition", shape, color, background, "static",
            relation=_RELATION_OF_WORDS[words], other_shape=other_shape, other_color=other_color,
        )
    raise ValueError(
        f"prompt {prompt!r} does not follow the toy-world grammar, e.g. "
        f"'a red square moves left on a gray background' (see toyworld.prompts)"
    )


def _spec_or_error(prompt: str, *args, **kwargs) -> SceneSpec:
    """A spec the grammar matched but the world forbids (same direction twice, two objects of one
    colour) is an error about the prompt, naming it and the rule."""
    try:
        return SceneSpec(*args, **kwargs)
    except ValueError as error:
        raise ValueError(f"prompt {prompt!r} names no valid scene: {error}") from None
