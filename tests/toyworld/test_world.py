import itertools
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from toyworld.prompts import describe
from toyworld.world import (
    BACKGROUNDS,
    COLORS,
    FLUID_SHAPE,
    KINDS,
    MOTIONS,
    PAN_DIRECTIONS,
    SHAPES,
    SceneSpec,
    ToyWorld,
    all_object_specs,
    object_speed,
    render,
    sample_spec,
)

SPECS_OF_EACH_KIND = [
    SceneSpec("object", "triangle", "red", "gray", "left", 3),
    SceneSpec("pan", "circle", "blue", "black", "up"),
    SceneSpec("fluid", FLUID_SHAPE, "purple", "navy", "right"),
]


def _distance_to_background(video, background):
    return (video - torch.tensor(BACKGROUNDS[background])).norm(dim=-1)


def _warp_next_frame_back(video, flow):
    """Sample frame t+1 at (x + u, y + v) for every pixel of frame t: [T-1, H, W, 3]."""
    t, h, w, _ = video.shape
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    x = xs + flow[:, 0]
    y = ys + flow[:, 1]
    grid = torch.stack([2 * x / (w - 1) - 1, 2 * y / (h - 1) - 1], dim=-1)
    nxt = video[1:].permute(0, 3, 1, 2)
    return F.grid_sample(nxt, grid, mode="bilinear", align_corners=True).permute(0, 2, 3, 1)


def test_palette_is_well_separated():
    assert len(COLORS) == 6 and len(BACKGROUNDS) == 4
    colors = {k: np.array(v) for k, v in COLORS.items()}
    backgrounds = {k: np.array(v) for k, v in BACKGROUNDS.items()}
    for a, b in itertools.combinations(colors.values(), 2):
        assert np.linalg.norm(a - b) > 0.6
    for a, b in itertools.product(colors.values(), backgrounds.values()):
        assert np.linalg.norm(a - b) > 0.5
    for a, b in itertools.combinations(backgrounds.values(), 2):
        assert np.linalg.norm(a - b) > 0.35


@pytest.mark.parametrize("spec", SPECS_OF_EACH_KIND, ids=lambda s: s.kind)
def test_render_is_deterministic_and_seeded(spec):
    a, b, c = render(spec, seed=7), render(spec, seed=7), render(spec, seed=8)
    assert torch.equal(a.video, b.video) and torch.equal(a.flow, b.flow)
    assert not torch.equal(a.video, c.video)
    assert a.prompt == describe(spec) and a.spec == spec


@pytest.mark.parametrize("spec", SPECS_OF_EACH_KIND, ids=lambda s: s.kind)
def test_render_shapes_and_range(spec):
    clip = render(spec, num_frames=5, height=24, width=40, seed=1)
    assert clip.video.shape == (5, 24, 40, 3) and clip.video.dtype == torch.float32
    assert clip.flow.shape == (4, 2, 24, 40) and clip.flow.dtype == torch.float32
    assert clip.video.min() >= 0 and clip.video.max() <= 1
    default = render(spec)
    assert default.video.shape == (9, 32, 32, 3)


def test_all_object_specs_enumerates_every_combination():
    specs = all_object_specs()
    assert len(specs) == len(set(specs)) == len(SHAPES) * len(COLORS) * len(BACKGROUNDS) * len(MOTIONS)
    assert all(s.kind == "object" and s.count == 1 for s in specs)
    assert {s.count for s in all_object_specs(count=3)} == {3}
    assert ToyWorld.all_object_specs(2) == all_object_specs(2)


def test_sample_spec_respects_kinds_and_is_seeded():
    rng_a, rng_b = random.Random(3), random.Random(3)
    drawn = [sample_spec(rng_a, kinds=("pan", "fluid")) for _ in range(50)]
    assert drawn == [sample_spec(rng_b, kinds=("pan", "fluid")) for _ in range(50)]
    assert {s.kind for s in drawn} == {"pan", "fluid"}
    assert {s.kind for s in (sample_spec(rng_a) for _ in range(20))} == {"object"}


def test_toy_world_sample_and_prompts_agree():
    world = ToyWorld(num_frames=5, height=24, width=24)
    clips = world.sample(12, seed=5)
    again = world.sample(12, seed=5)
    assert all(torch.equal(a.video, b.video) for a, b in zip(clips, again))
    assert world.prompts(12, seed=5) == [c.prompt for c in clips]
    assert world.prompts(12, seed=6) != world.prompts(12, seed=5)
    assert {c.spec.kind for c in clips} <= set(KINDS)
    assert all(c.video.shape == (5, 24, 24, 3) for c in clips)
    with pytest.raises(ValueError, match="kinds"):
        ToyWorld(kinds=("object", "smoke"))


@pytest.mark.parametrize("count", [1, 2, 3])
@pytest.mark.parametrize("motion", MOTIONS)
def test_objects_move_as_named_and_stay_separate_and_inside(count, motion):
    for seed in range(4):
        spec = SceneSpec("object", "circle", "white", "black", motion, count)
        clip = render(spec, seed=seed)
        mask = (_distance_to_background(clip.video, "black") > 0.5 * np.sqrt(3)).numpy()
        for frame in mask:
            assert ndimage.label(frame, structure=np.ones((3, 3)))[1] == count
            assert not (frame[0].any() or frame[-1].any() or frame[:, 0].any() or frame[:, -1].any())
        ys, xs = np.mgrid[0:32, 0:32]
        cx = np.array([xs[m].mean() for m in mask])
        cy = np.array([ys[m].mean() for m in mask])
        dx, dy = cx[-1] - cx[0], cy[-1] - cy[0]
        expected = object_speed(9, 32, 32, count, motion) * 8
        ux, uy = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "static": (0, 0)}[motion]
        assert abs(dx - ux * expected) < 0.3 and abs(dy - uy * expected) < 0.3


def test_object_flow_is_the_velocity_on_the_object_and_zero_elsewhere():
    clip = render(SceneSpec("object", "square", "white", "black", "down", 2), seed=2)
    on_object = _distance_to_background(clip.video[:-1], "black") > 0.5 * np.sqrt(3)
    speed = object_speed(9, 32, 32, 2, "down")
    assert torch.allclose(clip.flow[:, 1][on_object], torch.tensor(speed))
    assert torch.all(clip.flow[:, 0] == 0)
    background = _distance_to_background(clip.video[:-1], "black") == 0
    assert torch.all(clip.flow[:, 1][background] == 0)


@pytest.mark.parametrize("direction", PAN_DIRECTIONS)
def test_pan_content_moves_opposite_to_the_camera(direction):
    clip = render(SceneSpec("pan", "square", "yellow", "navy", direction), seed=3)
    u, v = clip.flow[0, 0, 0, 0].item(), clip.flow[0, 1, 0, 0].item()
    expected = {"left": (2, 0), "right": (-2, 0), "up": (0, 2), "down": (0, -2)}[direction]
    assert (u, v) == expected
    assert torch.all(clip.flow[:, 0] == u) and torch.all(clip.flow[:, 1] == v)
    # integer pan: frame t+1 is frame t shifted by the flow (away from the entering edge)
    shifted = torch.roll(clip.video[:-1], shifts=(int(v), int(u)), dims=(1, 2))
    assert torch.equal(shifted[:, 3:-3, 3:-3], clip.video[1:, 3:-3, 3:-3])


@pytest.mark.parametrize(
    "spec",
    [SceneSpec("pan", s, "red", "gray", d) for s, d in zip(SHAPES, ("left", "up", "right"))]
    + [
        SceneSpec("fluid", FLUID_SHAPE, color, background, motion)
        for color, background, motion in zip(
            ("white", "green", "blue", "yellow", "red"), ("black", "brown", "gray", "navy", "black"), MOTIONS
        )
    ],
    ids=lambda s: f"{s.kind}-{s.motion}",
)
def test_flow_warps_frame_t_onto_frame_t_plus_1(spec):
    """The property the physics evaluation relies on: frame t+1 at (x + u, y + v) == frame t at (x, y)."""
    margin = 4
    for seed in (0, 1):
        clip = render(spec, seed=seed)
        warped = _warp_next_frame_back(clip.video, clip.flow)
        error = (warped - clip.video[:-1])[:, margin:-margin, margin:-margin].abs()
        # what is left is bilinear interpolation of the texture, not flow error
        assert error.mean() < 0.02 and error.max() < 0.25
        # the check has teeth: reversing the flow (or, when there is a drift, ignoring it) misses by far more
        reversed_ = (_warp_next_frame_back(clip.video, -clip.flow) - clip.video[:-1]).abs()
        assert reversed_[:, margin:-margin, margin:-margin].mean() > 3 * error.mean()
        if spec.motion != "static":
            unmoved = (clip.video[1:] - clip.video[:-1])[:, margin:-margin, margin:-margin].abs().mean()
            assert unmoved > 3 * error.mean()
        # ... and so does a flow 20 % too short or too long, or one with half the swirl (fluids)
        mean_flow = clip.flow.mean(dim=(2, 3), keepdim=True)
        for wrong in (0.8 * clip.flow, 1.2 * clip.flow, mean_flow + 0.5 * (clip.flow - mean_flow)):
            if torch.equal(wrong, clip.flow):
                continue  # a uniform pan has no swirl to halve
            off = (_warp_next_frame_back(clip.video, wrong) - clip.video[:-1]).abs()
            assert off[:, margin:-margin, margin:-margin].mean() > error.mean()


def test_fluid_flow_is_a_smooth_nonuniform_field_with_the_named_drift():
    clip = render(SceneSpec("fluid", FLUID_SHAPE, "white", "black", "up"), seed=4)
    mean_flow = clip.flow.mean(dim=(0, 2, 3))
    assert mean_flow[1] < -1.0 and abs(mean_flow[0]) < 0.3
    assert clip.flow.std(dim=(2, 3)).min() > 0.05  # swirl: the field is not a plain translation
    assert (clip.flow[:, :, 1:] - clip.flow[:, :, :-1]).abs().max() < 0.2  # smooth in space
    swirl = render(SceneSpec("fluid", FLUID_SHAPE, "white", "black", "static"), seed=4).flow
    assert swirl.mean(dim=(0, 2, 3)).abs().max() < 0.1 and swirl.abs().max() > 0.1


def test_frames_too_small_for_three_objects_are_refused():
    with pytest.raises(ValueError, match="24"):
        ToyWorld(height=16, width=16)
    with pytest.raises(ValueError, match="24"):
        render(SPECS_OF_EACH_KIND[0], height=16, width=32)
