"""Real-video folders (row-by-row validation, sampling, crop) and the joint real/toy source (§2.4)."""

import json
from collections import Counter

import av
import numpy as np
import pytest
import torch

from data.videos import MixedSource, SFTBatch, VideoFolder, estimate_flow
from toyworld.world import ToyWorld


def write_mp4(path, frames: np.ndarray, fps: int = 8) -> None:
    """frames uint8 [T, H, W, 3] (even sides) -> an MPEG-4 file."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"qscale": "2"}  # near-lossless, so decoded values can be checked
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def counting_clip(num_frames: int, height: int = 40, width: int = 64) -> np.ndarray:
    """Frame i is grey level 12 * i in the middle; a red band on the left and a blue one on the right,
    each 8 px wide, lie outside the centre square a 32x32 crop keeps."""
    frames = np.zeros((num_frames, height, width, 3), np.uint8)
    for i in range(num_frames):
        frames[i] = 12 * i
    frames[:, :, :8] = (200, 0, 0)
    frames[:, :, -8:] = (0, 0, 200)
    return frames


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    (root / "clips").mkdir()
    write_mp4(root / "clips" / "long.mp4", counting_clip(17))
    write_mp4(root / "short.mp4", counting_clip(3))
    write_mp4(root / "other.mp4", counting_clip(9)[:, :, ::-1].copy())
    (root / "garbage.mp4").write_bytes(b"not a video at all" * 10)
    lines = [
        json.dumps({"path": "clips/long.mp4", "caption": "a grey fade"}),  # 1 valid
        json.dumps({"path": "missing.mp4", "caption": "gone"}),  # 2
        '{"path": "clips/long.mp4", "caption": ',  # 3 broken JSON
        json.dumps({"path": "clips/long.mp4"}),  # 4 no caption
        json.dumps({"path": "clips/long.mp4", "captoin": "typo"}),  # 5 unknown field (and no caption)
        json.dumps({"path": "short.mp4", "caption": "too short"}),  # 6
        json.dumps({"path": "garbage.mp4", "caption": "undecodable"}),  # 7
        "",  # 8 blank: skipped
        json.dumps({"path": "other.mp4", "caption": "  a mirrored fade  "}),  # 9 valid
        json.dumps(["clips/long.mp4", "a list"]),  # 10 not an object
    ]
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return VideoFolder(root / "manifest.jsonl", num_frames=9, height=32, width=32)


def test_every_bad_row_is_reported_by_number_and_every_valid_row_kept(folder):
    assert [r.row for r in folder.rows] == [1, 9] and len(folder) == 2
    assert [r.caption for r in folder.rows] == ["a grey fade", "a mirrored fade"]
    assert folder.rows[0].frame_count == 17
    reasons = {e.row: e.reason for e in folder.errors}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7, 10]
    assert "file not found" in reasons[2] and "missing.mp4" in reasons[2]
    assert "not JSON" in reasons[3]
    assert "caption" in reasons[4] and "required" in reasons[4].lower()
    assert "captoin" in reasons[5] and "path, caption" in reasons[5]
    assert "3 frames" in reasons[6] and "num_frames=9" in reasons[6]
    assert "cannot decode garbage.mp4" in reasons[7]
    assert "path, caption" in reasons[10]
    assert str(folder.errors[0]).startswith("row 2: ")


def test_clips_are_sampled_evenly_resized_and_centre_cropped(folder):
    video = folder.load(0)
    assert video.shape == (9, 32, 32, 3) and video.dtype == torch.float32
    assert 0 <= video.min() and video.max() <= 1
    # 17 frames -> frames 0, 2, ..., 16: grey levels 0, 24, ..., 192 (a neighbouring frame is 12 off)
    levels = video[:, 12:20, 12:20].mean(dim=(1, 2, 3)) * 255
    assert torch.allclose(levels, torch.arange(0, 193, 24).float(), atol=5), levels
    # 40x64 scaled by 0.8 to 32x51, centre 32 columns kept: the coloured side bands are cut away
    assert (video[..., 0] - video[..., 2]).abs().max() < 0.2  # a band would show 0.78 (chroma bleeds a little)
    assert folder.load(1).shape == (9, 32, 32, 3)


def test_real_flow_targets_farneback_here_raft_needs_torchvision_and_says_so(folder):
    video = folder.load(0)
    flow = estimate_flow(video, "farneback")
    assert flow.shape == (8, 2, 32, 32) and torch.isfinite(flow).all()
    try:
        import torchvision  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="torchvision"):
            estimate_flow(video, "raft")


def test_mixed_batches_hold_the_configured_ratio_and_are_a_function_of_seed_and_step(folder):
    world = ToyWorld(num_frames=9, height=32, width=32, kinds=("pan", "fluid", "orbit"))
    source = MixedSource(batch_size=4, seed=7, world=world, real=folder, real_fraction=0.3)
    counts = [source.real_count(step) for step in range(10)]
    assert sum(counts) == 12 and set(counts) <= {1, 2}  # 30 % of 40, each batch floor or ceil of 1.2
    batch = source.batch(3)
    assert sum(item.is_real for item in batch) == counts[3] and len(batch) == 4
    again = MixedSource(batch_size=4, seed=7, world=world, real=folder, real_fraction=0.3).batch(3)  # fresh: resume
    assert [i.prompt for i in batch] == [i.prompt for i in again]
    assert all(torch.equal(a.video, b.video) for a, b in zip(batch, again))
    other_seed = MixedSource(batch_size=4, seed=8, world=world, real=folder, real_fraction=0.3).batch(3)
    assert [i.prompt for i in other_seed] != [i.prompt for i in batch]
    # each epoch of real items visits every row once
    captions = Counter(item.prompt for step in range(10) for item in source.batch(step) if item.is_real)
    assert captions == {"a grey fade": 6, "a mirrored fade": 6}


def test_items_carry_what_is_known_and_collate_masks_the_rest(folder):
    world = ToyWorld(num_frames=9, height=32, width=32, kinds=("pan",))
    source = MixedSource(batch_size=4, seed=1, world=world, real=folder, real_fraction=0.5, real_flow="farneback")
    batch = SFTBatch.collate(source.batch(0))
    assert batch.videos.shape == (4, 9, 32, 32, 3) and batch.is_real.sum() == 2
    real, toy = batch.is_real, ~batch.is_real
    assert batch.has_flow.all()  # toy: exact; real: Farneback, as asked
    assert torch.isnan(batch.camera_shift[real]).all() and batch.background[real].all()
    assert (batch.camera_shift[toy].abs() == 2).any(dim=-1).all()  # pans: 2 px per frame at 32x32
    toy_only = SFTBatch.collate(MixedSource(batch_size=2, seed=1, world=ToyWorld(kinds=("fluid",))).batch(0))
    assert toy_only.has_flow.all() and torch.isnan(toy_only.camera_shift).all() and not toy_only.is_real.any()
    unknown_flow = SFTBatch.collate(MixedSource(batch_size=2, seed=1, real=folder, real_fraction=1.0).batch(0))
    assert not unknown_flow.has_flow.any() and (unknown_flow.flow == 0).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(real_fraction=1.5), "real_fraction=1.5"),
        (dict(real_fraction=0.5, real=None), "at least one valid row"),
        (dict(real_fraction=0.5, world=None), "needs a toy world"),
        (dict(real_fraction=0.5, world=ToyWorld(num_frames=5)), r"\(frames, height, width\)=\(5, 32, 32\)"),
        (dict(real_fraction=0.5, real_flow="sift"), "real_flow='sift'"),
        (dict(batch_size=0), "batch_size=0"),
    ],
)
def test_mixed_source_arguments_are_validated(folder, kwargs, message):
    with pytest.raises(ValueError, match=message):
        MixedSource(**{"batch_size": 2, "seed": 0, "world": ToyWorld(), "real": folder, **kwargs})
