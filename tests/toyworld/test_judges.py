import dataclasses
import functools
import itertools
import time

import pytest
import torch
import torch.nn.functional as F

from toyworld.judges import (
    APPLICABLE_JUDGES,
    JUDGES,
    judge_all,
    judge_color,
    judge_count,
    judge_motion,
    judge_shape,
    judge_smoothness,
)
from toyworld.prompts import describe
from toyworld.world import (
    BACKGROUNDS,
    COLORS,
    FLUID_SHAPE,
    MOTIONS,
    PAN_DIRECTIONS,
    SHAPES,
    SceneSpec,
    ToyWorld,
    render,
)

# a spread of looks, so a judge cannot pass on one lucky colour pair
LOOKS = [
    ("red", "gray"),
    ("white", "black"),
    ("blue", "brown"),
    ("yellow", "navy"),
    ("purple", "black"),
    ("green", "gray"),
]


def box_blur(videos: torch.Tensor) -> torch.Tensor:
    """3x3 box blur of [B, T, H, W, 3] — generated videos are blurry."""
    b, t, h, w, c = videos.shape
    x = videos.permute(0, 1, 4, 2, 3).reshape(-1, 1, h, w)
    x = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return x.reshape(b, t, c, h, w).permute(0, 1, 3, 4, 2)


@functools.lru_cache(maxsize=None)
def _render(spec: SceneSpec, seed: int) -> torch.Tensor:
    return render(spec, seed=seed).video  # cached: clean and blurred variants share renders


def _videos(specs, seed=0):
    return torch.stack([_render(s, seed + i) for i, s in enumerate(specs)])


def _assert_matching_beats_every_mismatch(judge, specs, field, values, blur=False):
    """judge(video of spec) > judge(same video, spec with `field` changed) for every other value."""
    videos = _videos(specs)
    if blur:
        videos = box_blur(videos)
    right = judge(videos, specs)
    for value in values:
        others = [dataclasses.replace(s, **{field: value}) for s in specs]
        changed = torch.tensor([getattr(s, field) != value for s in specs])
        wrong = judge(videos, others)
        margin = (right - wrong)[changed]
        failing = [s for s, c in zip(specs, changed) if c]
        assert (margin > 0.1).all(), f"{field}={value}: margins {margin.tolist()} for {failing}"
    return right


# ---------------------------------------------------------------------------------------------- contract


def test_judge_all_returns_bounded_scores_of_shape_b_for_every_kind():
    clips = ToyWorld().sample(12, seed=11)
    videos = torch.stack([c.video for c in clips])
    scores = judge_all(videos, [c.prompt for c in clips])
    assert set(scores) == {*JUDGES, "overall"}
    assert {c.spec.kind for c in clips} == {"object", "pan", "fluid"}
    for name, value in scores.items():
        assert value.shape == (12,) and value.dtype == torch.float32, name
        assert torch.isfinite(value).all() and (value >= 0).all() and (value <= 1).all(), name
    assert (scores["overall"] > 0.7).all(), scores["overall"]


def test_each_judge_returns_shape_b_in_unit_interval_and_accepts_prompts():
    specs = [
        SceneSpec("object", shape, color, background, motion, count)
        for shape, (color, background), motion, count in zip(SHAPES * 2, LOOKS, MOTIONS + ("left",), (1, 2, 3) * 2)
    ]
    videos = _videos(specs)
    for judge in (judge_color, judge_shape, judge_motion, judge_count):
        by_spec, by_prompt = judge(videos, specs), judge(videos, [describe(s) for s in specs])
        assert by_spec.shape == (6,) and torch.equal(by_spec, by_prompt)
        assert (by_spec >= 0).all() and (by_spec <= 1).all()
    assert judge_smoothness(videos).shape == (6,)
    as_bytes = (videos * 255).round().to(torch.uint8)
    assert torch.allclose(judge_color(as_bytes, specs), judge_color(videos, specs), atol=0.02)
    with pytest.raises(ValueError, match="5 specs/prompts for a batch of 6"):
        judge_color(videos, specs[:5])
    with pytest.raises(ValueError, match=r"\[B, T, H, W, 3\]"):
        judge_color(videos[0], specs)


def test_judges_that_do_not_apply_are_nan_alone_and_the_overall_in_judge_all():
    specs = [
        SceneSpec("pan", "square", "red", "gray", "left"),
        SceneSpec("fluid", FLUID_SHAPE, "white", "black", "down"),
        SceneSpec("object", "circle", "blue", "brown", "up"),
    ]
    videos = _videos(specs)
    assert torch.isnan(judge_shape(videos, specs)).tolist() == [False, True, False]
    assert torch.isnan(judge_count(videos, specs)).tolist() == [True, True, False]
    scores = judge_all(videos, [describe(s) for s in specs])
    for i, spec in enumerate(specs):
        for name in set(JUDGES) - set(APPLICABLE_JUDGES[spec.kind]):
            assert scores[name][i] == scores["overall"][i]


def test_judge_all_handles_a_batch_of_64_quickly():
    clips = ToyWorld().sample(16, seed=3)
    videos = torch.stack([c.video for c in clips]).repeat(4, 1, 1, 1, 1)
    prompts = [c.prompt for c in clips] * 4
    judge_all(videos[:2], prompts[:2])  # warm caches
    start = time.process_time()  # CPU time of this process: other jobs on the machine do not count
    judge_all(videos, prompts)
    assert time.process_time() - start < 1.0  # ~0.35 s on one core


# ---------------------------------------------------------------------------------------------- colour


@pytest.mark.parametrize("blur", [False, True], ids=["clean", "blurred"])
def test_color_prefers_the_rendered_colour_and_background(blur):
    specs = [
        SceneSpec("object", shape, color, background, "right", 1 + i % 3)
        for i, (shape, color, background) in enumerate(itertools.product(SHAPES, COLORS, BACKGROUNDS))
        if i % 3 == 0
    ]
    right = _assert_matching_beats_every_mismatch(judge_color, specs, "color", COLORS, blur)
    assert (right > 0.8).all()
    _assert_matching_beats_every_mismatch(judge_color, specs, "background", BACKGROUNDS, blur)


def test_color_also_works_on_pans_and_fluids():
    specs = [SceneSpec("pan", s, c, b, d) for s, (c, b), d in zip(SHAPES, LOOKS, PAN_DIRECTIONS)]
    specs += [SceneSpec("fluid", FLUID_SHAPE, c, b, m) for (c, b), m in zip(LOOKS, MOTIONS)]
    _assert_matching_beats_every_mismatch(judge_color, specs, "color", COLORS, blur=True)
    _assert_matching_beats_every_mismatch(judge_color, specs, "background", BACKGROUNDS, blur=True)


def test_color_is_graded_and_low_without_an_object():
    spec = SceneSpec("object", "square", "red", "black", "static")
    clip = render(spec, seed=0)
    blue = torch.tensor(COLORS["blue"])
    on_object = clip.video.norm(dim=-1, keepdim=True) > 0.5
    amounts = (0.0, 0.1, 0.2, 0.3, 0.5)
    drifted = torch.stack([torch.where(on_object, (1 - a) * clip.video + a * blue, clip.video) for a in amounts])
    scores = judge_color(drifted, [spec] * 5)
    assert (scores[:-1] > scores[1:]).all(), scores  # monotone in how far the colour drifts
    assert 0.05 < scores[2] < 0.95  # and graded, not pass/fail
    empty = torch.zeros(1, 9, 32, 32, 3)
    assert judge_color(empty, [spec]) < 0.05


# ---------------------------------------------------------------------------------------------- shape


@pytest.mark.parametrize("blur", [False, True], ids=["clean", "blurred"])
@pytest.mark.parametrize("count", [1, 3])
def test_shape_prefers_the_rendered_shape_over_every_other(blur, count):
    specs = [
        SceneSpec("object", shape, color, background, motion, count)
        for shape in SHAPES
        for (color, background), motion in zip(LOOKS, MOTIONS + ("left",))
    ]
    right = _assert_matching_beats_every_mismatch(judge_shape, specs, "shape", SHAPES, blur)
    assert (right > (0.45 if blur else 0.85)).all(), right  # blur rounds triangles most


@pytest.mark.parametrize("blur", [False, True], ids=["clean", "blurred"])
def test_shape_works_on_pans(blur):
    specs = [SceneSpec("pan", shape, *look, d) for shape in SHAPES for look, d in zip(LOOKS, PAN_DIRECTIONS * 2)]
    _assert_matching_beats_every_mismatch(judge_shape, specs, "shape", SHAPES, blur)


# ---------------------------------------------------------------------------------------------- motion


@pytest.mark.parametrize("blur", [False, True], ids=["clean", "blurred"])
def test_motion_prefers_the_rendered_motion_over_every_other(blur):
    specs = [
        SceneSpec("object", shape, *LOOKS[(j + k) % len(LOOKS)], motion, count)
        for j, motion in enumerate(MOTIONS)
        for k, (shape, count) in enumerate(zip(SHAPES, (1, 2, 3)))
    ]
    right = _assert_matching_beats_every_mismatch(judge_motion, specs, "motion", MOTIONS, blur)
    assert (right > 0.8).all(), right


@pytest.mark.parametrize("blur", [False, True], ids=["clean", "blurred"])
def test_motion_reads_camera_pans(blur):
    specs = [SceneSpec("pan", s, c, b, d) for d in PAN_DIRECTIONS for s, (c, b) in zip(SHAPES, LOOKS[1:])]
    right = _assert_matching_beats_every_mismatch(judge_motion, specs, "motion", PAN_DIRECTIONS, blur)
    assert (right > 0.8).all(), right


@pytest.mark.parametrize("blur", [False, True], ids=["clean", "blurred"])
def test_motion_reads_fluid_drift(blur):
    specs = [
        SceneSpec("fluid", FLUID_SHAPE, *LOOKS[(j + k) % len(LOOKS)], motion)
        for j, motion in enumerate(MOTIONS)
        for k in range(2)
    ]
    right = _assert_matching_beats_every_mismatch(judge_motion, specs, "motion", MOTIONS, blur)
    assert (right > 0.6).all(), right


def test_motion_is_graded_by_how_far_the_object_travels():
    # the same clip replayed at 0, 1/4, 1/2 and full speed (frames repeated)
    clip = render(SceneSpec("object", "square", "white", "black", "right"), seed=1)
    replays = torch.stack([clip.video[(torch.arange(9) * k // 4).clamp(max=8)] for k in (0, 1, 2, 4)])
    scores = judge_motion(replays, ["a white square moves right on a black background"] * 4)
    assert (scores[:-1] < scores[1:]).all() and scores[0] < 0.05 and scores[-1] > 0.9, scores
    still = judge_motion(replays, ["a white square stays still on a black background"] * 4)
    assert (still[:-1] > still[1:]).all() and still[0] > 0.95, still


# ---------------------------------------------------------------------------------------------- count


@pytest.mark.parametrize("blur", [False, True], ids=["clean", "blurred"])
def test_count_prefers_the_rendered_count(blur):
    specs = [
        SceneSpec("object", shape, color, background, motion, count)
        for count in (1, 2, 3)
        for shape, (color, background), motion in zip(SHAPES * 2, LOOKS, MOTIONS + ("up",))
    ]
    right = _assert_matching_beats_every_mismatch(judge_count, specs, "count", (1, 2, 3), blur)
    assert (right > 0.9).all(), right


# ---------------------------------------------------------------------------------------------- smoothness


def test_smoothness_is_high_for_rendered_clips_of_every_kind():
    clips = ToyWorld().sample(15, seed=21)
    # plus the hardest case: high-contrast fluid, whose texture enters across the border
    fluids = [SceneSpec("fluid", FLUID_SHAPE, "white", "black", m) for m in MOTIONS]
    videos = torch.cat([torch.stack([c.video for c in clips]), _videos(fluids)])
    assert (judge_smoothness(videos) > 0.8).all()
    assert (judge_smoothness(box_blur(videos)) > 0.8).all()


def test_smoothness_penalises_noise_flicker_and_shuffled_frames():
    specs = [
        SceneSpec(kind, shape if kind != "fluid" else FLUID_SHAPE, *look, motion)
        for kind in ("object", "pan", "fluid")
        for shape, look, motion in zip(SHAPES, LOOKS, PAN_DIRECTIONS)
    ]
    videos = _videos(specs)
    clean = judge_smoothness(videos)
    generator = torch.Generator().manual_seed(0)
    noisy = judge_smoothness((videos + 0.05 * torch.randn(videos.shape, generator=generator)).clamp(0, 1))
    shuffled = judge_smoothness(videos[:, [0, 5, 2, 7, 4, 1, 8, 3, 6]])
    assert (clean - noisy > 0.3).all(), (clean, noisy)
    assert (clean - shuffled > 0.3).all(), (clean, shuffled)
    # graded: more noise, lower score
    louder = judge_smoothness((videos + 0.1 * torch.randn(videos.shape, generator=generator)).clamp(0, 1))
    assert (louder < noisy).all()


# ---------------------------------------------------------------------------------------------- overall


def test_overall_prefers_the_true_prompt_of_a_blurred_clip_over_one_changed_attribute():
    specs = [
        SceneSpec("object", "triangle", "green", "gray", "down", 2),
        SceneSpec("object", "circle", "yellow", "navy", "static", 1),
        SceneSpec("pan", "square", "purple", "black", "right"),
        SceneSpec("fluid", FLUID_SHAPE, "blue", "brown", "left"),
    ]
    videos = box_blur(_videos(specs))
    right = judge_all(videos, [describe(s) for s in specs])["overall"]
    changes = {"color": "red", "background": "gray", "motion": "up", "shape": "square", "count": 3}
    for field, value in changes.items():
        for i, spec in enumerate(specs):
            try:
                other = dataclasses.replace(spec, **{field: value})
            except ValueError:
                continue  # that field is fixed for this kind
            if other == spec:
                continue
            wrong = judge_all(videos[i : i + 1], [describe(other)])["overall"]
            assert right[i] > wrong[0] + 0.05, (spec, field, right[i], wrong)


def test_judges_scale_with_resolution():
    specs = [
        SceneSpec("object", "triangle", "green", "gray", "left", 3),
        SceneSpec("object", "square", "red", "navy", "static", 1),
        SceneSpec("pan", "circle", "white", "brown", "down"),
        SceneSpec("fluid", FLUID_SHAPE, "yellow", "black", "up"),
    ]
    videos = torch.stack([render(s, num_frames=9, height=48, width=64, seed=i).video for i, s in enumerate(specs)])
    scores = judge_all(videos, [describe(s) for s in specs])
    assert (scores["overall"] > 0.85).all(), scores
    wrong_motion = [dataclasses.replace(s, motion="right") for s in specs]
    assert (judge_motion(videos, specs) - judge_motion(videos, wrong_motion) > 0.5).all()
    wrong_shape = [dataclasses.replace(s, shape="circle") for s in specs[:2]]
    assert (judge_shape(videos[:2], specs[:2]) - judge_shape(videos[:2], wrong_shape) > 0.5).all()


def test_count_is_graded_specks_count_a_little_and_merged_objects_more_than_one():
    spec = SceneSpec("object", "square", "white", "black", "static", 1)
    video = _render(spec, 0)
    speck = video.clone()
    speck[:, 0:2, 0:2] = 1.0  # a 4-pixel speck in the corner
    bar = torch.zeros_like(video)
    bar[:, 10:19, 6:24] = 1.0  # two 9x9 squares fused into one blob
    videos = torch.stack([video, speck, bar, bar, bar])
    specs = [spec, spec] + [dataclasses.replace(spec, count=n) for n in (1, 2, 3)]
    scores = judge_count(videos, specs)
    assert scores[0] > 0.99
    assert 0.8 < scores[1] < scores[0]  # a speck costs a little, not a whole object
    assert 0.1 < scores[2] < 0.6 and 0.1 < scores[3] < 0.6  # the blob reads as 1.5 objects
    assert scores[4] < 0.05


def test_frames_too_small_to_judge_are_refused_with_a_value_error():
    import pytest
    import torch

    from toyworld.judges import judge_all

    with pytest.raises(ValueError, match="at least 3x3"):
        judge_all(torch.zeros(1, 9, 1, 8, 3), ["a red square moves left on a gray background"])
