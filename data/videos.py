"""Real videos for SFT, and the joint real-and-simulated source (report §2.4).

A real set is a folder of MP4s listed by a JSONL manifest, one `{"path": ..., "caption": ...}`
object per line, paths relative to the manifest's folder. `VideoFolder` validates every row up
front (JSON, fields, file present, a video stream that decodes, enough frames) and keeps every
valid row: each bad one becomes a `RowError` naming its 1-based line number and the reason, so one
broken file never hides the rest. Clips decode on demand with PyAV: `num_frames` frames evenly
spaced over the whole clip (its first and last included), resized to cover (height, width) and
centre-cropped, float [T, H, W, 3] in [0, 1].

`MixedSource` draws batches of real and toy-world clips in a fixed ratio — real footage keeps the
model from overfitting the simulator's dynamics, simulation gives exact motion supervision
(§2.4 "joint real-and-simulated training"). Batch `step` is a function of (seed, step) alone, so
a resumed run sees exactly the batches it would have seen. Real rows are visited once per epoch
in a seeded order. Items carry what is known about them: toy clips their exact flow and, for
rigid backgrounds, camera shift and background mask (§2.3); real clips a flow estimated by
Farneback (or RAFT, which needs torchvision) when asked, their camera motion unknown.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Literal

import av
import cv2
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from reward_services.critics.motion import load_raft, raft_flow, farneback_flow
from toyworld.world import ToyClip, ToyWorld

FlowBackend = Literal["none", "farneback", "raft"]


class ManifestRow(BaseModel):
    """One manifest line."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    path: str = Field(min_length=1)
    caption: str = Field(min_length=1)


@dataclass(frozen=True)
class RowError:
    row: int  # 1-based line number in the manifest
    reason: str

    def __str__(self) -> str:
        return f"row {self.row}: {self.reason}"


@dataclass(frozen=True)
class VideoRow:
    row: int  # 1-based line number in the manifest
    path: Path
    caption: str
    frame_count: int


def _describe(error: ValidationError) -> str:
    accepted = ", ".join(ManifestRow.model_fields)
    parts = [f"{'.'.join(str(p) for p in e['loc']) or 'row'}: {e['msg']}" for e in error.errors()]
    return "; ".join(parts) + f" (a row is an object with fields {accepted})"


def _probe(path: Path) -> int:
    """Frames in the file's first video stream; raises ValueError saying why it cannot be used."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            stream = container.streams.video[0]
            frame_count = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
            container.seek(0)
            next(container.decode(stream))  # the codec really decodes it
    except (av.error.FFmpegError, StopIteration) as error:
        raise ValueError(f"cannot decode {path.name}: {error or 'no frame'}") from None
    return frame_count


class VideoFolder:
    """The MP4s a JSONL manifest lists, validated row by row (module doc), decoded on demand."""

    def __init__(self, manifest: str | Path, num_frames: int, height: int, width: int):
        if num_frames < 1 or height < 1 or width < 1:
            raise ValueError(f"num_frames, height, width must be >= 1; got {num_frames}, {height}, {width}")
        self.manifest = Path(manifest)
        self.num_frames, self.height, self.width = num_frames, height, width
        self.rows: list[VideoRow] = []
        self.errors: list[RowError] = []
        lines = self.manifest.read_text().splitlines()
        for number, line in enumerate(lines, start=1):
            if line.strip():
                self._check(number, line)

    def _check(self, number: int, line: str) -> None:
        try:
            fields = json.loads(line)
        except json.JSONDecodeError as error:
            self.errors.append(RowError(number, f"not JSON ({error.msg})"))
            return
        try:
            row = ManifestRow.model_validate(fields)
        except ValidationError as error:
            self.errors.append(RowError(number, _describe(error)))
            return
        path = self.manifest.parent / row.path
        if not path.is_file():
            self.errors.append(RowError(number, f"file not found: {path}"))
            return
        try:
            frame_count = _probe(path)
        except ValueError as error:
            self.errors.append(RowError(number, str(error)))
            return
        if frame_count < self.num_frames:
            reason = f"{path.name} has {frame_count} frames, fewer than num_frames={self.num_frames}"
            self.errors.append(RowError(number, reason))
            return
        self.rows.append(VideoRow(number, path, row.caption, frame_count))

    def __len__(self) -> int:
        return len(self.rows)

    def load(self, index: int) -> torch.Tensor:
        """Row `index`'s clip: [num_frames, height, width, 3] float32 in [0, 1]."""
        row = self.rows[index]
        wanted = np.round(np.linspace(0, row.frame_count - 1, self.num_frames)).astype(int)
        frames, position = [], -1
        with av.open(str(row.path)) as container:
            for position, frame in enumerate(container.decode(container.streams.video[0])):
                while len(frames) < len(wanted) and wanted[len(frames)] == position:
                    frames.append(self._fit(frame.to_ndarray(format="rgb24")))
                if len(frames) == len(wanted):
                    break
        if len(frames) < len(wanted):
            raise ValueError(f"row {row.row}: {row.path.name} decoded only {position + 1} of {row.frame_count} frames")
        return torch.from_numpy(np.stack(frames).astype(np.float32) / 255.0)

    def _fit(self, frame: np.ndarray) -> np.ndarray:
        """Resize so the frame covers (height, width), then crop the centre."""
        h, w = frame.shape[:2]
        scale = max(self.height / h, self.width / w)
        size = (max(self.width, math.ceil(w * scale - 1e-6)), max(self.height, math.ceil(h * scale - 1e-6)))
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        resized = cv2.resize(frame, size, interpolation=interpolation)
        top, left = (size[1] - self.height) // 2, (size[0] - self.width) // 2
        return resized[top : top + self.height, left : left + self.width]


# ----------------------------------------------------------------------------------------------
# Flow targets for real clips.


@lru_cache(maxsize=1)
def _raft_model():
    return load_raft(pretrained=True, device="cpu")


def estimate_flow(video: torch.Tensor, backend: Literal["farneback", "raft"] = "farneback") -> torch.Tensor:
    """[T-1, 2, H, W] px forward flow of a real clip [T, H, W, 3] in [0, 1], channel 0 = x.

    The motion branch's target where no simulator knows the truth: OpenCV Farneback (runs
    anywhere, the motion critic's settings) or torchvision RAFT (better on real footage; raises
    ImportError with what to install where torchvision is missing).
    """
    frames = np.clip(np.rint(video.numpy() * 255.0), 0, 255).astype(np.uint8)
    if backend == "farneback":
        gray = np.stack([cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in frames])
        return torch.from_numpy(farneback_flow(gray))
    if backend == "raft":
        return torch.from_numpy(raft_flow(_raft_model(), video.numpy(), "cpu"))
    raise ValueError(f"flow backend {backend!r} is not one of farneback, raft")


# ----------------------------------------------------------------------------------------------
# Joint real-and-simulated batches.


@dataclass
class SFTItem:
    """One training clip and what is known about its motion."""

    prompt: str
    video: torch.Tensor  # [T, H, W, 3] float in [0, 1]
    is_real: bool
    flow: torch.Tensor | None  # [T-1, 2, H, W] px: exact (toy) or estimated (real, if asked)
    camera_shift: torch.Tensor | None = None  # [T-1, 2] px, (x, y) background motion (toy, rigid background)
    background: torch.Tensor | None = None  # [T, H, W] bool, background pixels (toy, rigid background)

    @classmethod
    def from_clip(cls, clip: ToyClip) -> "SFTItem":
        return cls(clip.prompt, clip.video, False, clip.flow, clip.camera_shift, clip.background)


@dataclass
class SFTBatch:
    """Items stacked for the learner; what an item does not know is masked, never invented."""

    prompts: list[str]
    videos: torch.Tensor  # [B, T, H, W, 3]
    is_real: torch.Tensor  # [B] bool
    flow: torch.Tensor  # [B, T-1, 2, H, W] px, zeros where has_flow is False
    has_flow: torch.Tensor  # [B] bool
    camera_shift: torch.Tensor  # [B, T-1, 2] px, NaN where unknown (algorithms.sft reads NaN as "no signal")
    background: torch.Tensor  # [B, T, H, W] bool, all True where unknown

    @classmethod
    def collate(cls, items: list[SFTItem]) -> "SFTBatch":
        videos = torch.stack([item.video for item in items])
        b, t, h, w, _ = videos.shape
        return cls(
            prompts=[item.prompt for item in items],
            videos=videos,
            is_real=torch.tensor([item.is_real for item in items]),
            flow=torch.stack([item.flow if item.flow is not None else torch.zeros(t - 1, 2, h, w) for item in items]),
            has_flow=torch.tensor([item.flow is not None for item in items]),
            camera_shift=torch.stack([
                item.camera_shift if item.camera_shift is not None else torch.full((t - 1, 2), float("nan"))
                for item in items
            ]),
            background=torch.stack([
                item.background if item.background is not None else torch.ones(t, h, w, dtype=torch.bool)
                for item in items
            ]),
        )


class MixedSource:
    """Batches of real and toy clips in a fixed ratio, each a function of (seed, step) alone.

    Of the first n batches' n·batch_size items, floor(n·batch_size·real_fraction) are real (the
    fraction as a ratio of small integers), so every batch holds floor or ceil of its share and
    the running ratio is exact; the order inside a batch is shuffled. Real rows are drawn in a
    seeded permutation per epoch; toy clips from `world` with a seed derived from (seed, step).
    """

    def __init__(
        self,
        batch_size: int,
        seed: int,
        world: ToyWorld | None = None,
        real: VideoFolder | None = None,
        real_fraction: float = 0.0,
        real_flow: FlowBackend = "none",
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        if not 0.0 <= real_fraction <= 1.0:
            raise ValueError(f"real_fraction={real_fraction} must be in [0, 1]")
        if real_fraction > 0 and (real is None or len(real) == 0):
            raise ValueError(f"real_fraction={real_fraction} needs a video folder with at least one valid row")
        if real_fraction < 1 and world is None:
            raise ValueError(f"real_fraction={real_fraction} < 1 needs a toy world for the simulated share")
        if world is not None and real is not None:
            toy = (world.num_frames, world.height, world.width)
            footage = (real.num_frames, real.height, real.width)
            if toy != footage:
                raise ValueError(
                    f"toy clips are (frames, height, width)={toy} but real clips {footage}; they must match"
                )
        if real_flow not in ("none", "farneback", "raft"):
            raise ValueError(f"real_flow={real_flow!r} is not one of none, farneback, raft")
        self.batch_size, self.seed = batch_size, seed
        self.world, self.real, self.real_flow = world, real, real_flow
        self.real_share = Fraction(real_fraction).limit_denominator(1000)
        self._epoch_orders: dict[int, list[int]] = {}

    def _real_before(self, step: int) -> int:
        """Real items in batches 0 .. step - 1."""
        return math.floor(step * self.batch_size * self.real_share)

    def real_count(self, step: int) -> int:
        return self._real_before(step + 1) - self._real_before(step)

    def _real_row(self, k: int) -> int:
        """The row of the k-th real item of the run: epoch k // N visits every row once, in a seeded order."""
        epoch, position = divmod(k, len(self.real))
        if epoch not in self._epoch_orders:
            order = list(range(len(self.real)))
            random.Random(f"{self.seed}:real-epoch:{epoch}").shuffle(order)
            self._epoch_orders = {epoch: order}  # batches are read in order: one epoch at a time is enough
        return self._epoch_orders[epoch][position]

    def batch(self, step: int) -> list[SFTItem]:
        """The items of batch `step` (the same list for the same (seed, step), whatever came before)."""
        n_real = self.real_count(step)
        first = self._real_before(step)
        items = []
        for k in range(first, first + n_real):
            row = self._real_row(k)
            video = self.real.load(row)
            flow = None if self.real_flow == "none" else estimate_flow(video, self.real_flow)
            items.append(SFTItem(self.real.rows[row].caption, video, True, flow))
        n_toy = self.batch_size - n_real
        if n_toy:
            toy_seed = random.Random(f"{self.seed}:toy:{step}").randrange(2**31)
            items += [SFTItem.from_clip(clip) for clip in self.world.sample(n_toy, toy_seed)]
        random.Random(f"{self.seed}:order:{step}").shuffle(items)
        return items
