"""Preference pairs (report §4.2-4.3): temporal negatives are exactly what they claim, the dataset
survives an interrupted append, shards are disjoint and cover, resume replays the same order, and
the human JSONL importer keeps valid rows and names bad ones."""

import itertools
import json

import av
import numpy as np
import pytest
import torch

from data.pairs import (
    PairDataset,
    PairRecord,
    PairWriter,
    PreferencePair,
    freeze_indices,
    import_human_pairs,
    local_shuffle_indices,
    make_temporal_pairs,
    on_policy_pairs,
    read_manifest,
    resample_pair,
    reversal_indices,
)

torch.set_num_threads(1)


def numbered_video(num_frames: int, size: int = 4) -> torch.Tensor:
    """Frame t is filled with the value t, so a clip's frame order can be read back."""
    return torch.arange(num_frames, dtype=torch.uint8).view(-1, 1, 1, 1).expand(num_frames, size, size, 3).contiguous()


def frame_ids(video: torch.Tensor) -> list[int]:
    return video[:, 0, 0, 0].tolist()


# -- temporal negatives ------------------------------------------------------------------------
def test_reversal_and_freeze_are_exact():
    assert reversal_indices(5).tolist() == [4, 3, 2, 1, 0]
    # frame 2 held for 3 frames, then motion resumes at frame 3; the tail is cut, T is unchanged
    assert freeze_indices(7, start=2, length=3).tolist() == [0, 1, 2, 2, 2, 3, 4]
    assert freeze_indices(4, start=2, length=5).tolist() == [0, 1, 2, 2]
    with pytest.raises(ValueError, match="length"):
        freeze_indices(5, start=4, length=2)  # freezing the last frame would change nothing


def test_local_shuffle_permutes_within_windows_and_never_returns_the_identity():
    seen = set()
    for seed in range(200):
        indices = local_shuffle_indices(8, 3, torch.Generator().manual_seed(seed)).tolist()
        for start in range(0, 8, 3):
            assert sorted(indices[start : start + 3]) == list(range(start, min(start + 3, 8)))
        assert indices != list(range(8))
        seen.add(tuple(indices))
    assert len(seen) > 50  # random, not a fixed pattern (71 non-identity permutations exist)
    assert local_shuffle_indices(2, 2, torch.Generator().manual_seed(0)).tolist() == [1, 0]  # the only choice
    same = [local_shuffle_indices(8, 3, torch.Generator().manual_seed(5)) for _ in range(2)]
    assert torch.equal(*same)


def test_temporal_pairs_keep_the_original_as_winner():
    videos = [numbered_video(9), numbered_video(9) + 100]
    pairs = make_temporal_pairs(videos, ["a", "b"], torch.Generator().manual_seed(0), window=3)
    assert [(p.prompt, p.kind, p.source) for p in pairs] == [
        (prompt, kind, "temporal") for prompt in "ab" for kind in ("reverse", "shuffle", "freeze")
    ]
    for pair in pairs:
        assert pair.winner.shape == pair.loser.shape
        offset = 100 if pair.prompt == "b" else 0
        assert frame_ids(pair.winner) == [t + offset for t in range(9)]
        loser = [t - offset for t in frame_ids(pair.loser)]
        if pair.kind == "reverse":
            assert loser == list(range(8, -1, -1))
        elif pair.kind == "shuffle":
            assert loser != list(range(9)) and all(sorted(loser[s : s + 3]) == list(range(s, s + 3)) for s in (0, 3, 6))
        else:  # one frame repeated over a span, consecutive elsewhere
            steps = np.diff(loser)
            assert loser[0] == 0 and set(steps) <= {0, 1} and (steps == 0).sum() == round(0.5 * 9) - 1
            assert "".join(map(str, steps)).count("01") <= 1 and "".join(map(str, steps)).count("10") <= 1  # one stall


# -- the dataset on disk -----------------------------------------------------------------------
def write_pairs(root, count: int) -> list[PairRecord]:
    writer = PairWriter(root)
    return [
        writer.append(PreferencePair(f"prompt {i}", numbered_video(5) + i, numbered_video(3) + i, "temporal", "freeze"))
        for i in range(count)
    ]


def test_writer_roundtrip_and_interrupted_append(tmp_path):
    records = write_pairs(tmp_path, 3)
    dataset = PairDataset(tmp_path)
    assert dataset.records == records
    winner, loser = dataset.load(1)
    assert torch.equal(winner, numbered_video(5) + 1) and torch.equal(loser, numbered_video(3) + 1)
    with pytest.raises(ValueError, match="already in"):
        PairWriter(tmp_path).append(PreferencePair("prompt 0", numbered_video(5), numbered_video(3), "temporal", "freeze"))
    with open(tmp_path / "manifest.jsonl", "ab") as handle:  # a crash in the middle of an append
        handle.write(b'{"id": "temporal-half", "prom')
    assert read_manifest(tmp_path) == records  # readers skip the torn line
    PairWriter(tmp_path)  # a new writer cuts the torn tail
    assert (tmp_path / "manifest.jsonl").read_bytes().endswith(b"}\n")
    PairWriter(tmp_path).append(PreferencePair("new", numbered_video(5), numbered_video(5), "human", "human", "lighting", "ann"))
    assert [r.prompt for r in read_manifest(tmp_path)] == ["prompt 0", "prompt 1", "prompt 2", "new"]
    with pytest.raises(ValueError, match="kind 'freeze' is not a human kind"):
        PairRecord(id="x", prompt="p", source="human", kind="freeze", file="x.safetensors")


def test_shards_are_disjoint_cover_and_are_reshuffled_per_epoch(tmp_path):
    write_pairs(tmp_path, 10)
    dataset = PairDataset(tmp_path)
    for epoch in (0, 1):
        shards = [dataset.shard_indices(seed=7, epoch=epoch, rank=r, world_size=3) for r in range(3)]
        assert sorted(itertools.chain(*shards)) == list(range(10))
        assert [len(s) for s in shards] == [4, 3, 3]
    assert dataset.shard_indices(seed=7, epoch=0) == dataset.shard_indices(seed=7, epoch=0)
    assert dataset.shard_indices(seed=7, epoch=0) != dataset.shard_indices(seed=7, epoch=1)
    with pytest.raises(ValueError, match="rank"):
        dataset.shard_indices(seed=0, epoch=0, rank=3, world_size=3)


def test_batches_are_equal_per_rank_and_resume_in_the_same_order(tmp_path):
    write_pairs(tmp_path, 10)
    dataset = PairDataset(tmp_path)
    assert dataset.batches_per_epoch(batch_size=2, world_size=3) == 1  # every rank steps in lockstep
    stream = list(itertools.islice(dataset.batches(2, seed=3, rank=1, world_size=2), 7))  # 2 epochs and more
    assert [(b.step, b.epoch) for b in stream] == [(s, s // 2) for s in range(7)]
    assert stream[0].winner.shape == (2, 5, 4, 4, 3) and stream[0].loser.shape == (2, 3, 4, 4, 3)
    resumed = list(itertools.islice(dataset.batches(2, seed=3, rank=1, world_size=2, start_step=3), 4))
    assert [[r.id for r in b.records] for b in resumed] == [[r.id for r in b.records] for b in stream[3:]]
    assert all(torch.equal(a.winner, b.winner) for a, b in zip(resumed, stream[3:]))
    other_rank = next(dataset.batches(2, seed=3, rank=0, world_size=2))
    assert not {r.id for r in other_rank.records} & {r.id for r in stream[0].records}
    with pytest.raises(ValueError, match="cannot fill one batch"):
        next(dataset.batches(4, seed=0, world_size=3))


# -- human pairs -------------------------------------------------------------------------------
def write_mp4(path, num_frames: int, size: int = 16) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        for t in range(num_frames):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), 20 * t, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_human_jsonl_import_keeps_valid_rows_and_names_bad_ones(tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    np.save(clips / "good.npy", numbered_video(5, 16).numpy())
    np.save(clips / "bad.npy", numbered_video(5, 16).numpy()[..., 0])  # [T, H, W]: no colour axis
    np.save(clips / "small.npy", numbered_video(5, 8).numpy())
    write_mp4(clips / "good.mp4", 4)
    (clips / "broken.mp4").write_bytes(b"not a video")
    (clips / "good.gif").write_bytes(b"GIF89a")
    row = {"prompt": "a red square moves left", "winner": "clips/good.npy", "loser": "clips/good.mp4",
           "aspect": "lighting", "annotator": "ann-1"}
    rows = [
        json.dumps(row),                                                   # 1 valid: npy vs mp4
        json.dumps({k: v for k, v in row.items() if k != "annotator"}),    # 2 missing field
        json.dumps({**row, "loser": "clips/missing.npy"}),                 # 3 missing file
        "",                                                                # 4 blank: skipped
        json.dumps({**row, "winner": "clips/bad.npy"}),                    # 5 wrong shape
        "{not json",                                                       # 6 not JSON
        json.dumps({**row, "loser": "clips/small.npy"}),                   # 7 height/width differ
        json.dumps({**row, "loser": "clips/broken.mp4"}),                  # 8 unreadable
        json.dumps({**row, "loser": "clips/good.npy", "aspect": "tone"}),  # 9 valid
        json.dumps({**row, "winner": "clips/good.gif"}),                   # 10 unsupported type
        json.dumps(row),                                                   # 11 duplicate of row 1
    ]
    (tmp_path / "pairs.jsonl").write_text("\n".join(rows) + "\n")
    report = import_human_pairs(tmp_path / "pairs.jsonl", PairWriter(tmp_path / "dataset"))
    assert len(report.imported) == 2
    reasons = {r.row: r.reason for r in report.rejected}
    assert sorted(reasons) == [2, 3, 5, 6, 7, 8, 10, 11]
    assert "annotator" in reasons[2] and "missing.npy" in reasons[3] and "[T, H, W, 3]" in reasons[5]
    assert "json" in reasons[6].lower() and "height and width" in reasons[7] and "broken.mp4" in reasons[8]
    assert ".npy, .mp4" in reasons[10] and "duplicate" in reasons[11]
    dataset = PairDataset(tmp_path / "dataset")
    assert [(r.source, r.kind, r.aspect, r.annotator) for r in dataset.records] == [
        ("human", "human", "lighting", "ann-1"), ("human", "human", "tone", "ann-1")]
    winner, loser = dataset.load(0)
    assert torch.equal(winner, numbered_video(5, 16)) and loser.shape == (4, 16, 16, 3) and loser.dtype == torch.uint8


# -- on-policy pairs and training resolution ---------------------------------------------------
def test_on_policy_pairs_take_the_selected_samples(tmp_path):
    videos = torch.stack([numbered_video(3) + 10 * g for g in range(4)])
    pairs = on_policy_pairs("p", videos, [(2, 0), (3, 1)])
    assert [(frame_ids(p.winner)[0], frame_ids(p.loser)[0]) for p in pairs] == [(20, 0), (30, 10)]
    assert {(p.source, p.kind) for p in pairs} == {("on_policy", "hard_negative")}
    writer = PairWriter(tmp_path)  # views into one [G, ...] tensor are written as separate clips
    for pair in pairs:
        writer.append(pair)
    assert [frame_ids(PairDataset(tmp_path).load(i)[0])[0] for i in range(2)] == [20, 30]


def test_resample_keeps_both_clips_on_the_same_source_frames():
    winner, loser = resample_pair(numbered_video(9, 8), numbered_video(5, 8) + 100, frames=5, height=4, width=4)
    assert frame_ids(winner) == [0, 2, 4, 6, 8] and frame_ids(loser) == [100, 102, 104]
    assert winner.shape == (5, 4, 4, 3) and winner.dtype == torch.uint8
    assert torch.equal(winner[:, :, :, 0], torch.tensor([0, 2, 4, 6, 8], dtype=torch.uint8).view(5, 1, 1).expand(5, 4, 4))
    same, _ = resample_pair(numbered_video(9, 8), numbered_video(9, 8), frames=9, height=8, width=8)
    assert torch.equal(same, numbered_video(9, 8))
    with pytest.raises(ValueError, match="subsampling"):
        resample_pair(numbered_video(5), numbered_video(5), frames=6, height=4, width=4)
