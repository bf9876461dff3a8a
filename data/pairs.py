"""Preference pairs for Stage III (report §4.2): the on-disk dataset and its three sources.

A dataset is a folder:

    manifest.jsonl        one `PairRecord` per line (id, prompt, source, kind, aspect, annotator, file)
    <id>.safetensors      tensors "winner" and "loser": uint8 videos [T, H, W, 3]

`PairWriter` appends (tensor file first, by rename; then one manifest line, fsynced), so an
interrupted append leaves at worst an unterminated last line, which readers ignore and the next
writer cuts off. `PairDataset` reads only the manifest up front and loads tensors batch by batch,
sharded by (rank, world_size) over a per-(seed, epoch) permutation, from any step.

Sources: on-policy hard negatives (`on_policy_pairs`, indices from
`algorithms.dpo.select_hard_negatives`), synthetic temporal negatives (`make_temporal_pairs`:
reversal, local shuffling, freezing) and human pairs (`import_human_pairs` from JSONL).
`resample_pair` brings a pair to the training frames/resolution (report §4.3).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from safetensors.torch import load_file, save_file

MANIFEST = "manifest.jsonl"
Source = Literal["on_policy", "temporal", "human"]
Kind = Literal["hard_negative", "reverse", "shuffle", "freeze", "human"]
TemporalKind = Literal["reverse", "shuffle", "freeze"]
TEMPORAL_KINDS: tuple[TemporalKind, ...] = ("reverse", "shuffle", "freeze")
KINDS_BY_SOURCE: dict[str, tuple[str, ...]] = {"on_policy": ("hard_negative",), "temporal": TEMPORAL_KINDS, "human": ("human",)}


# -- records and in-memory pairs ---------------------------------------------------------------
class PairRecord(BaseModel):
    """One manifest row."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    prompt: str = Field(min_length=1)
    source: Source
    kind: Kind
    aspect: str | None = None  # what the preference is about, e.g. "lighting" (human) or "motion"
    annotator: str | None = None
    file: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*\.safetensors$")  # relative to the dataset folder

    @model_validator(mode="after")
    def _kind_fits_source(self):
        if self.kind not in KINDS_BY_SOURCE[self.source]:
            raise ValueError(f"kind {self.kind!r} is not a {self.source} kind; accepted: {KINDS_BY_SOURCE[self.source]}")
        return self


def check_video(name: str, video) -> None:
    """A video is uint8 [T, H, W, 3] with T ≥ 1; the error names `name` and what was found."""
    if video.dtype not in (torch.uint8, np.uint8) or video.ndim != 4 or video.shape[-1] != 3 or video.shape[0] < 1:
        raise ValueError(f"{name} must be a uint8 video [T, H, W, 3]; got dtype {video.dtype}, shape {tuple(video.shape)}")


@dataclass(frozen=True)
class PreferencePair:
    """A pair in memory. Frame counts may differ; height and width may not (they share one noise draw)."""

    prompt: str
    winner: torch.Tensor  # uint8 [T_w, H, W, 3]
    loser: torch.Tensor  # uint8 [T_l, H, W, 3]
    source: Source
    kind: Kind
    aspect: str | None = None
    annotator: str | None = None

    def __post_init__(self):
        check_video("winner", self.winner)
        check_video("loser", self.loser)
        if self.winner.shape[1:] != self.loser.shape[1:]:
            raise ValueError(
                f"winner is {tuple(self.winner.shape[1:3])} (HxW) but loser is {tuple(self.loser.shape[1:3])}; "
                "a pair's clips must share height and width (frame counts may differ)"
            )

    def content_id(self) -> str:
        """Hash of what the pair says, so writing or importing the same pair twice is detected."""
        digest = hashlib.sha256()
        for part in (self.prompt, self.source, self.kind, self.aspect or "", self.annotator or ""):
            digest.update(part.encode() + b"\0")
        for video in (self.winner, self.loser):
            digest.update(str(tuple(video.shape)).encode())
            digest.update(video.contiguous().numpy().tobytes())
        return f"{self.source}-{digest.hexdigest()[:20]}"


# -- the dataset on disk -----------------------------------------------------------------------
def read_manifest(root: str | Path) -> list[PairRecord]:
    """All complete rows of root/manifest.jsonl; a bad row raises with its 1-based line number."""
    path = Path(root) / MANIFEST
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")[:-1]  # the piece after the last newline is a torn append
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(PairRecord.model_validate_json(line))
        except ValidationError as error:
            raise ValueError(f"{path} line {number}: {error}") from None
    return records


class PairWriter:
    """Appends pairs to a dataset folder (one writer at a time)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        manifest = self.root / MANIFEST
        if manifest.exists():
            data = manifest.read_bytes()
            complete = data.rfind(b"\n") + 1
            if complete < len(data):  # an interrupted append: drop its partial line
                with open(manifest, "r+b") as handle:
                    handle.truncate(complete)
        self._ids = {record.id for record in read_manifest(self.root)}

    def __contains__(self, pair_id: str) -> bool:
        return pair_id in self._ids

    def append(self, pair: PreferencePair) -> PairRecord:
        pair_id = pair.content_id()
        if pair_id in self._ids:
            raise ValueError(f"pair {pair_id} is already in {self.root}")
        record = PairRecord(
            id=pair_id, prompt=pair.prompt, source=pair.source, kind=pair.kind,
            aspect=pair.aspect, annotator=pair.annotator, file=f"{pair_id}.safetensors",
        )
        tensors = self.root / record.file
        staging = tensors.with_suffix(".tmp")
        save_file({"winner": pair.winner.contiguous(), "loser": pair.loser.contiguous()}, str(staging))
        os.replace(staging, tensors)
        with open(self.root / MANIFEST, "ab") as handle:
            handle.write(record.model_dump_json().encode() + b"\n")  # one write: a crash tears only this line
            handle.flush()
            os.fsync(handle.fileno())
        self._ids.add(pair_id)
        return record


@dataclass(frozen=True)
class PairBatch:
    step: int  # global batch index from the start of training; pass it back as start_step to resume
    epoch: int
    records: list[PairRecord]
    winner: torch.Tensor  # uint8 [B, T_w, H, W, 3]
    loser: torch.Tensor  # uint8 [B, T_l, H, W, 3]


class PairDataset:
    """Streams batches of pairs; only the manifest is held in memory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.records = read_manifest(self.root)

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        tensors = load_file(str(self.root / self.records[index].file))
        return tensors["winner"], tensors["loser"]

    def shard_indices(self, *, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> list[int]:
        """This rank's pairs for `epoch`: every world_size-th entry of a (seed, epoch) permutation."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        order = np.random.default_rng([seed, epoch]).permutation(len(self.records))
        return order[rank::world_size].tolist()

    def batches_per_epoch(self, batch_size: int, world_size: int = 1) -> int:
        """Full batches every rank gets per epoch — the same on all ranks, so DDP steps stay in lockstep."""
        return (len(self.records) // world_size) // batch_size

    def batches(
        self, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1, start_step: int = 0
    ) -> Iterator[PairBatch]:
        """Endless batches from global step `start_step` on; a rank's leftover pairs wait for a later epoch's shuffle.

        The order is a function of (manifest, seed, rank, world_size), so resuming at a step replays
        exactly what an uninterrupted run would have seen — for the same manifest.
        """
        per_epoch = self.batches_per_epoch(batch_size, world_size)
        if per_epoch == 0:
            raise ValueError(
                f"{len(self.records)} pairs in {self.root} cannot fill one batch of {batch_size} on each of {world_size} ranks"
            )
        epoch, first = divmod(start_step, per_epoch)
        while True:
            indices = self.shard_indices(seed=seed, epoch=epoch, rank=rank, world_size=world_size)
            for position in range(first, per_epoch):
                chosen = indices[position * batch_size : (position + 1) * batch_size]
                winners, losers = zip(*(self.load(i) for i in chosen))
                records = [self.records[i] for i in chosen]
                yield PairBatch(epoch * per_epoch + position, epoch, records,
                                _stack(winners, records, "winner"), _stack(losers, records, "loser"))
            epoch, first = epoch + 1, 0


def _stack(videos: Sequence[torch.Tensor], records: Sequence[PairRecord], role: str) -> torch.Tensor:
    shapes = {tuple(v.shape) for v in videos}
    if len(shapes) > 1:
        found = ", ".join(f"{r.id}: {tuple(v.shape)}" for r, v in zip(records, videos))
        raise ValueError(f"{role} clips of one batch differ in shape ({found}); resample the pairs (resample_pair) first")
    return torch.stack(list(videos))


# -- source 1: on-policy hard negatives --------------------------------------------------------
def on_policy_pairs(prompt: str, videos: torch.Tensor, index_pairs: Sequence[tuple[int, int]], aspect: str | None = None) -> list[PreferencePair]:
    """Pairs from one prompt's G samples [G, T, H, W, 3], for (winner, loser) indices chosen by select_hard_negatives."""
    return [PreferencePair(prompt, videos[w], videos[l], "on_policy", "hard_negative", aspect) for w, l in index_pairs]


# -- source 2: synthetic temporal negatives (report §4.2 item 2) -------------------------------
def reversal_indices(num_frames: int) -> torch.Tensor:
    """Frames in reverse order: water flows up, smoke condenses."""
    return torch.arange(num_frames - 1, -1, -1)


def local_shuffle_indices(num_frames: int, window: int, generator: torch.Generator) -> torch.Tensor:
    """A random permutation within each window of `window` consecutive frames, never the identity.

    Redrawing until not the identity samples uniformly among the non-identity permutations.
    """
    if window < 2 or num_frames < 2:
        raise ValueError(f"shuffling needs window >= 2 and num_frames >= 2, got window={window}, num_frames={num_frames}")
    identity = torch.arange(num_frames)
    while True:
        indices = torch.cat([start + torch.randperm(min(window, num_frames - start), generator=generator)
                             for start in range(0, num_frames, window)])
        if not torch.equal(indices, identity):
            return indices


def freeze_indices(num_frames: int, start: int, length: int) -> torch.Tensor:
    """Frame `start` held for `length` frames, then motion resumes where it stopped; the tail is cut to keep T.

    A pure stall (the slide-show failure), with no jump after it.
    """
    if length < 2 or not 0 <= start <= num_frames - 2:
        raise ValueError(f"freeze needs length >= 2 and 0 <= start <= num_frames - 2; got start={start}, length={length}, num_frames={num_frames}")
    indices = torch.cat([torch.arange(start), torch.full((length,), start), torch.arange(start + 1, num_frames)])
    return indices[:num_frames]


def temporal_negative_indices(
    num_frames: int, kind: TemporalKind, generator: torch.Generator, window: int = 3, freeze_fraction: float = 0.5
) -> torch.Tensor:
    """Frame indices of one perturbation; a freeze holds a random frame for max(2, round(fraction·T)) frames,
    starting early enough that the whole stall is in the clip."""
    if kind == "reverse":
        return reversal_indices(num_frames)
    if kind == "shuffle":
        return local_shuffle_indices(num_frames, window, generator)
    if kind == "freeze":
        if not 0 < freeze_fraction <= 1:
            raise ValueError(f"freeze_fraction must be in (0, 1], got {freeze_fraction}")
        length = max(2, round(freeze_fraction * num_frames))
        start = int(torch.randint(num_frames - length + 1, (1,), generator=generator))
        return freeze_indices(num_frames, start, length)
    raise ValueError(f"kind must be one of {TEMPORAL_KINDS}, got {kind!r}")


def make_temporal_pairs(
    videos: Sequence[torch.Tensor],
    prompts: Sequence[str],
    generator: torch.Generator,
    kinds: Sequence[TemporalKind] = TEMPORAL_KINDS,
    window: int = 3,
    freeze_fraction: float = 0.5,
) -> list[PreferencePair]:
    """One pair per (good video, kind): winner = the video, loser = its temporal perturbation."""
    if len(videos) != len(prompts):
        raise ValueError(f"got {len(videos)} videos but {len(prompts)} prompts")
    pairs = []
    for video, prompt in zip(videos, prompts):
        for kind in kinds:
            indices = temporal_negative_indices(video.shape[0], kind, generator, window, freeze_fraction)
            pairs.append(PreferencePair(prompt, video, video[indices], "temporal", kind, aspect="temporal"))
    return pairs


# -- source 3: human pairs from JSONL ----------------------------------------------------------
class HumanPairRow(BaseModel):
    """One JSONL row; video paths are relative to the JSONL file's folder (or absolute)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = Field(min_length=1)
    winner: str = Field(min_length=1)
    loser: str = Field(min_length=1)
    aspect: str = Field(min_length=1)
    annotator: str = Field(min_length=1)


VIDEO_SUFFIXES = (".npy", ".mp4")


def load_video(path: Path) -> torch.Tensor:
    """uint8 [T, H, W, 3] from .npy (stored as such) or .mp4 (decoded with PyAV to RGB)."""
    if path.suffix == ".npy":
        video = np.load(path, allow_pickle=False)
    elif path.suffix == ".mp4":
        import av

        with av.open(str(path)) as container:
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        video = np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8)
    else:
        raise ValueError(f"unsupported video file {path.name}; accepted: {', '.join(VIDEO_SUFFIXES)}")
    check_video(path.name, video)
    return torch.from_numpy(np.ascontiguousarray(video))


@dataclass(frozen=True)
class RejectedRow:
    row: int  # 1-based line number in the JSONL file
    reason: str


@dataclass(frozen=True)
class ImportReport:
    imported: list[str]  # pair ids written
    rejected: list[RejectedRow]


def import_human_pairs(jsonl_path: str | Path, writer: PairWriter) -> ImportReport:
    """Validate each row and write every valid one; bad rows are reported with row number and reason."""
    jsonl_path = Path(jsonl_path)
    imported, rejected = [], []
    with open(jsonl_path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = HumanPairRow.model_validate_json(line)
                clips = {}
                for role in ("winner", "loser"):
                    path = jsonl_path.parent / getattr(row, role)
                    if not path.is_file():
                        raise ValueError(f"{role}: no such file {path}")
                    try:
                        clips[role] = load_video(path)
                    except Exception as error:  # an unreadable file of any kind is this row's problem
                        raise ValueError(f"{role}: cannot read {path}: {error}") from None
                pair = PreferencePair(row.prompt, clips["winner"], clips["loser"], "human", "human", row.aspect, row.annotator)
                if pair.content_id() in writer:
                    raise ValueError(f"duplicate of pair {pair.content_id()} already in {writer.root}")
                imported.append(writer.append(pair).id)
            except (ValidationError, ValueError) as error:
                rejected.append(RejectedRow(number, _reason(error)))
    return ImportReport(imported, rejected)


def _reason(error: Exception) -> str:
    if isinstance(error, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'row'}: {e['msg']}" for e in error.errors())
    return str(error)


# -- training resolution (report §4.3) ---------------------------------------------------------
def resample_pair(
    winner: torch.Tensor, loser: torch.Tensor, frames: int, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Subsample time and resize space; both clips keep the SAME source frame times.

    The longer clip's T frames map to `frames` evenly spaced indices; the shorter clip takes the
    indices that exist in it, so frame i of both outputs shows the same moment.
    """
    longest = max(winner.shape[0], loser.shape[0])
    if not 1 <= frames <= longest:
        raise ValueError(f"frames must be in [1, {longest}] (subsampling only), got {frames}")
    indices = torch.linspace(0, longest - 1, frames).round().long()
    return tuple(_resize(video[indices[indices < video.shape[0]]], height, width) for video in (winner, loser))


def _resize(video: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if tuple(video.shape[1:3]) == (height, width):
        return video
    pixels = video.permute(0, 3, 1, 2).float()
    resized = F.interpolate(pixels, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
