"""The instruction and control kinds (report §2.2): orbit, order, composition — grammar, renders, flow, judges.

Also the structure fields (camera_shift, background) every rigid-background clip carries (§2.3).
"""

import dataclasses
import functools
import itertools
import random
import re

import pytest
import torch
import torch.nn.functional as F

from toyworld.judges import APPLICABLE_JUDGES, JUDGES, judge_all, judge_color, judge_motion, judge_relation, judge_shape
from toyworld.prompts import describe, parse
from toyworld.world import (
    BACKGROUNDS,
    COLORS,
    CORE_KINDS,
    DIRECTION_VECTORS,
    FLUID_SHAPE,
    INSTRUCTION_KINDS,
    KINDS,
    ORBIT_DIRECTIONS,
    PAN_DIRECTIONS,
    RELATIONS,
    SHAPES,
    SceneSpec,
    ToyWorld,
    order_speed,
    order_switch_frame,
    pan_speed,
    render,
    sample_spec,
)

ORBIT = SceneSpec("orbit", "triangle", "white", "brown", "left")
ORDER = SceneSpec("order", "square", "red", "gray", "left", then="up")
COMPOSITION = SceneSpec(
    "composition", "square", "red", "gray", "static", relation="left", other_shape="circle", other_color="blue"
)
EXAMPLES = [ORBIT, ORDER, COMPOSITION]


def _instruction_specs(n_per_kind: int, seed: int = 0) -> list[SceneSpec]:
    rng = random.Random(seed)
    return [sample_spec(rng, (kind,)) for kind in INSTRUCTION_KINDS for _ in range(n_per_kind)]


@functools.lru_cache(maxsize=None)
def _render(spec: SceneSpec, seed: int):
    return render(spec, seed=seed)


def _videos(specs) -> torch.Tensor:
    return torch.stack([_render(s, i).video for i, s in enumerate(specs)])


def box_blur(videos: torch.Tensor) -> torch.Tensor:
    b, t, h, w, c = videos.shape
    x = videos.permute(0, 1, 4, 2, 3).reshape(-1, 1, h, w)
    x = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return x.reshape(b, t, c, h, w).permute(0, 1, 3, 4, 2)


def _warp_next_frame_back(video, flow, mode="bilinear"):
    """Frame t+1 sampled at (x + u, y + v) for every pixel of frame t: [T-1, H, W, C]."""
    t, h, w, _ = video.shape
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    grid = torch.stack([2 * (xs + flow[:, 0]) / (w - 1) - 1, 2 * (ys + flow[:, 1]) / (h - 1) - 1], dim=-1)
    nxt = video[1:].permute(0, 3, 1, 2)
    return F.grid_sample(nxt, grid, mode=mode, align_corners=True).permute(0, 2, 3, 1)


# ---------------------------------------------------------------------------------------------- kinds and grammar


def test_kinds_is_the_one_list_and_the_default_world_stays_the_core():
    assert KINDS == CORE_KINDS + INSTRUCTION_KINDS == ("object", "pan", "fluid", "orbit", "order", "composition")
    assert set(APPLICABLE_JUDGES) == set(KINDS)
    assert {c.spec.kind for c in ToyWorld().sample(30, seed=1)} == set(CORE_KINDS)
    mixed = ToyWorld(num_frames=5, kinds=KINDS).sample(40, seed=2)
    assert {c.spec.kind for c in mixed} == set(KINDS)


@pytest.mark.parametrize(
    "spec, prompt",
    [
        (ORBIT, "the camera orbits left around a white triangle on a brown background"),
        (ORDER, "a red square first moves left, then moves up on a gray background"),
        (COMPOSITION, "a red square is to the left of a blue circle on a gray background"),
        (dataclasses.replace(COMPOSITION, relation="below"), "a red square is below a blue circle on a gray background"),
    ],
)
def test_grammar_examples(spec, prompt):
    assert describe(spec) == prompt and parse(prompt) == spec


def test_round_trip_every_instruction_spec_and_prompts_are_distinct():
    specs = [SceneSpec("orbit", *c) for c in itertools.product(SHAPES, COLORS, BACKGROUNDS, ORBIT_DIRECTIONS)]
    specs += [
        SceneSpec("order", shape, color, background, first, then=then)
        for shape, color, background, first, then in itertools.product(SHAPES, COLORS, BACKGROUNDS, PAN_DIRECTIONS, PAN_DIRECTIONS)
        if first != then
    ]
    specs += [
        SceneSpec("composition", shape, color, background, "static", relation=relation, other_shape=other, other_color=color2)
        for shape, color, background, relation, other, color2 in itertools.product(
            SHAPES, COLORS, BACKGROUNDS, RELATIONS, SHAPES, COLORS
        )
        if color2 != color
    ]
    assert len(specs) == 144 + 864 + 4320
    prompts = [describe(s) for s in specs]
    assert len(set(prompts)) == len(prompts)
    assert all(parse(p) == s for p, s in zip(prompts, specs))
    assert parse("A red square first moves LEFT then moves up on a gray background.") == ORDER  # comma optional


@pytest.mark.parametrize(
    "prompt, reason",
    [
        ("the camera orbits up around a red square on a gray background", "grammar"),
        ("a red square first moves left, then moves left on a gray background", "then"),
        ("a red square is to the left of a red circle on a gray background", "other_color"),
        ("a red square is near a blue circle on a gray background", "grammar"),
    ],
)
def test_parse_errors_name_the_prompt_and_the_broken_rule(prompt, reason):
    with pytest.raises(ValueError, match=re.escape(repr(prompt))) as error:
        parse(prompt)
    if reason != "grammar":
        assert f"SceneSpec.{reason}=" in str(error.value)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(kind="orbit", motion="up"), "motion"),
        (dict(kind="order", motion="left", then=None), "then"),
        (dict(kind="order", motion="static", then="left"), "motion"),
        (dict(kind="composition", motion="static", relation="near", other_shape="circle", other_color="blue"), "relation"),
        (dict(kind="composition", motion="static", relation="left", other_shape="circle", other_color="red"), "other_color"),
        (dict(kind="object", motion="left", then="up"), "then"),
        (dict(kind="pan", motion="left", other_shape="circle"), "other_shape"),
    ],
)
def test_invalid_instruction_spec_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"SceneSpec\.{field}="):
        SceneSpec(**{"shape": "square", "color": "red", "background": "gray", **kwargs})


# ---------------------------------------------------------------------------------------------- renders and flow


@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda s: s.kind)
def test_render_is_deterministic_seeded_and_sized(spec):
    a, b, c = render(spec, seed=7), render(spec, seed=7), render(spec, seed=8)
    for field in ("video", "flow", "camera_shift", "background"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert not torch.equal(a.video, c.video)
    small = render(spec, num_frames=5, height=24, width=40, seed=1)
    assert small.video.shape == (5, 24, 40, 3) and small.flow.shape == (4, 2, 24, 40)
    assert small.camera_shift.shape == (4, 2) and small.background.shape == (5, 24, 40)
    assert small.video.min() >= 0 and small.video.max() <= 1


@pytest.mark.parametrize("direction", ORBIT_DIRECTIONS)
def test_orbit_holds_the_object_centred_while_the_background_moves_with_the_camera(direction):
    clip = render(dataclasses.replace(ORBIT, motion=direction), seed=3)
    step = pan_speed(32, 32)
    expected = torch.tensor([DIRECTION_VECTORS[direction][0] * step, 0.0])
    assert torch.equal(clip.camera_shift, expected.expand(8, 2))
    # the object's core never changes and sits at the centre; the background (a textured layer) slides by
    core = (clip.video[0] - torch.tensor(COLORS["white"])).abs().amax(-1) == 0
    assert 0.02 < core.float().mean() < 0.15 and (clip.background == clip.background[0]).all()
    assert torch.equal(clip.video[:, core], clip.video[:1, core].expand(9, -1, -1))
    assert (clip.video[1:] - clip.video[:-1]).abs()[:, clip.background[0]].mean() > 0.01
    ys, xs = torch.nonzero(core, as_tuple=True)
    assert abs(xs.float().mean() - 15.5) < 1.0 and abs(ys.float().mean() - 15.5) < 1.0
    assert (clip.flow[:, :, core] == 0).all()
    assert torch.equal(clip.flow[:, 0][:, clip.background[0]], expected[0].expand(8, int(clip.background[0].sum())))


@pytest.mark.parametrize("spec", [ORBIT, dataclasses.replace(ORBIT, motion="right", shape="circle")], ids=["left", "right"])
def test_orbit_flow_is_exact_wherever_background_stays_background(spec):
    clip = render(spec, seed=0)
    warped = _warp_next_frame_back(clip.video, clip.flow, mode="nearest")  # integer shifts
    lands_on_background = _warp_next_frame_back(clip.background[:, :, :, None].float(), clip.flow, "nearest")[..., 0] == 1
    inside = (torch.arange(32) + clip.flow[:, 0].long() >= 0) & (torch.arange(32) + clip.flow[:, 0].long() < 32)
    exact = clip.background[:-1] & lands_on_background & inside
    assert exact.float().mean() > 0.7
    assert (warped - clip.video[:-1]).abs()[exact].max() < 1e-6
    # and the check has teeth: the opposite shift misses
    wrong = _warp_next_frame_back(clip.video, -clip.flow, mode="nearest")
    assert (wrong - clip.video[:-1]).abs()[exact].mean() > 0.01


def test_order_moves_one_way_then_the_other_with_exact_flow():
    for first, then in [("left", "up"), ("right", "left"), ("down", "right")]:
        clip = render(dataclasses.replace(ORDER, motion=first, then=then), seed=2)
        speed, switch = order_speed(9, 32, 32, first, then), order_switch_frame(9)
        assert switch == 4 and speed == pytest.approx(1.75)
        on_object = ~clip.background[:-1]
        for t in range(8):
            leg = DIRECTION_VECTORS[first if t < switch else then]
            flow_t = clip.flow[t][:, clip.video[t].norm(dim=-1) > 0.9]  # object core (red on gray)
            assert torch.allclose(flow_t, torch.tensor(leg).mul(speed)[:, None].expand_as(flow_t), atol=1e-9)
        assert (clip.flow.abs().sum(1)[~on_object] == 0).all()
        error = (_warp_next_frame_back(clip.video, clip.flow) - clip.video[:-1]).abs()[on_object]
        assert error.mean() < 0.05  # bilinear interpolation of the anti-aliased rim only
        reversed_ = (_warp_next_frame_back(clip.video, -clip.flow) - clip.video[:-1]).abs()[on_object]
        assert reversed_.mean() > 5 * error.mean()


@pytest.mark.parametrize("relation", RELATIONS)
def test_composition_places_the_first_object_as_named_and_stands_still(relation):
    for seed in range(4):
        clip = render(dataclasses.replace(COMPOSITION, relation=relation), seed=seed)
        assert (clip.flow == 0).all() and (clip.video == clip.video[0]).all()
        red = (clip.video[0] - torch.tensor(COLORS["red"])).norm(dim=-1) < 0.1
        blue = (clip.video[0] - torch.tensor(COLORS["blue"])).norm(dim=-1) < 0.1
        centre = [torch.nonzero(m).float().mean(0) for m in (red, blue)]  # (y, x)
        dy, dx = (centre[1] - centre[0]).tolist()
        along = {"left": dx, "right": -dx, "above": dy, "below": -dy}[relation]
        across = dy if relation in ("left", "right") else dx
        assert along > 9 and abs(across) < 4, (relation, seed, dx, dy)


def test_structure_fields_for_every_kind():
    still = {"object", "order", "composition"}
    for spec in [
        SceneSpec("object", "circle", "white", "black", "right", 2),
        SceneSpec("pan", "square", "red", "gray", "up"),
        SceneSpec("fluid", FLUID_SHAPE, "blue", "navy", "left"),
        *EXAMPLES,
    ]:
        clip = render(spec, seed=1)
        if spec.kind == "fluid":
            assert clip.camera_shift is None and clip.background is None
            continue
        assert clip.camera_shift.dtype == torch.float32 and clip.background.dtype == torch.bool
        if spec.kind in still:
            assert (clip.camera_shift == 0).all()
            # background = pixels no object covers: exactly the background colour
            flat = (clip.video - torch.tensor(BACKGROUNDS[spec.background])).abs().amax(-1) == 0
            assert torch.equal(clip.background, flat)
        if spec.kind == "pan":
            assert clip.background.all() and torch.equal(clip.camera_shift, clip.flow[:, :, 0, 0])


# ---------------------------------------------------------------------------------------------- judges


def _changed(spec: SceneSpec, field: str, value) -> SceneSpec | None:
    try:
        other = dataclasses.replace(spec, **{field: value})
    except ValueError:
        return None  # e.g. the second colour equal to the first
    return None if other == spec else other


def _margins(judge, specs, field, values, blur=False) -> tuple[torch.Tensor, float]:
    """judge(right spec) and the smallest judge(right) - judge(spec with `field` changed)."""
    videos = _videos(specs)
    if blur:
        videos = box_blur(videos)
    right = judge(videos, specs)
    worst = float("inf")
    for value in values:
        others = [_changed(s, field, value) for s in specs]
        changed = torch.tensor([o is not None for o in others])
        if changed.any():
            wrong = judge(videos[changed], [o for o in others if o is not None])
            worst = min(worst, float((right[changed] - wrong).min()))
    return right, worst


@pytest.mark.parametrize("blur", [False, True], ids=["clean", "blurred"])
def test_judges_score_correct_instruction_clips_high(blur):
    specs = _instruction_specs(6)
    videos = _videos(specs)
    scores = judge_all(box_blur(videos) if blur else videos, [describe(s) for s in specs])
    assert set(scores) == {*JUDGES, "overall"}
    assert (scores["overall"] > (0.8 if blur else 0.9)).all(), scores["overall"]
    assert (scores["motion"] > 0.85).all(), scores["motion"]
    relation = judge_relation(videos, specs)
    assert torch.isnan(relation).tolist() == [s.kind != "composition" for s in specs]


@pytest.mark.parametrize("blur", [False, True], ids=["clean", "blurred"])
def test_orbit_judge_wants_the_named_direction_a_still_centred_object_and_a_moving_background(blur):
    specs = [s for s in _instruction_specs(8, seed=1) if s.kind == "orbit"]
    right, worst = _margins(judge_motion, specs, "motion", ORBIT_DIRECTIONS, blur)
    assert (right > 0.85).all() and worst > 0.8
    # the same prompts over a pan (everything moves) or a moving object (background still) score low
    for kind, motion in (("pan", "left"), ("object", "left"), ("object", "static")):
        impostor = _videos([SceneSpec(kind, s.shape, s.color, s.background, motion) for s in specs])
        assert (judge_motion(impostor, specs) < 0.2).all(), kind
    for field, values in (("color", COLORS), ("shape", SHAPES), ("background", BACKGROUNDS)):
        judge = judge_shape if field == "shape" else judge_color
        assert _margins(judge, specs, field, values, blur)[1] > 0.1, field


@pytest.mark.parametrize("blur", [False, True], ids=["clean", "blurred"])
def test_order_judge_checks_each_half(blur):
    specs = [s for s in _instruction_specs(12, seed=2) if s.kind == "order"]
    right, worst_first = _margins(judge_motion, specs, "motion", PAN_DIRECTIONS, blur)
    assert (right > 0.9).all()
    assert worst_first > 0.45 and _margins(judge_motion, specs, "then", PAN_DIRECTIONS, blur)[1] > 0.45
    videos = _videos(specs)
    swapped = [dataclasses.replace(s, motion=s.then, then=s.motion) for s in specs]
    assert (judge_motion(videos, swapped) < 0.3).all()  # right moves, wrong order
    # a single motion for the whole clip only satisfies one half
    one_way = _videos([SceneSpec("object", s.shape, s.color, s.background, s.motion) for s in specs])
    assert (judge_motion(one_way, specs) < 0.55).all()


@pytest.mark.parametrize("blur", [False, True], ids=["clean", "blurred"])
def test_composition_judges_check_the_relation_colours_and_shapes(blur):
    specs = [s for s in _instruction_specs(10, seed=3) if s.kind == "composition"]
    right, worst = _margins(judge_relation, specs, "relation", RELATIONS, blur)
    assert (right > 0.95).all() and worst > 0.9
    # swapping which object comes first flips the relation
    swapped = [
        dataclasses.replace(s, shape=s.other_shape, color=s.other_color, other_shape=s.shape, other_color=s.color)
        for s in specs
    ]
    assert (judge_relation(_videos(specs), swapped) < 0.05).all()
    for field in ("color", "other_color"):
        assert _margins(judge_color, specs, field, COLORS, blur)[1] > 0.4, field
    for field in ("shape", "other_shape"):
        assert _margins(judge_shape, specs, field, SHAPES, blur)[1] > 0.15, field
    assert _margins(judge_color, specs, "background", BACKGROUNDS, blur)[1] > 0.5
