"""Experiment tracking: TensorBoard event files by default, Weights & Biases when installed and
configured, behind one small interface every stage uses (issue 15).

`ExperimentTracker(run_dir, stage)` writes every numeric key of each step record as a scalar
(`log(step, record)`: slashes in keys become TensorBoard's groups) and, every `clip_every` steps,
a few sample clips as animated GIFs with their prompts (`log_clips(step, videos, captions)`).
Both calls only put the item on a queue; one background thread resolves Ray object refs, encodes
GIFs and writes, so the training loop never waits for I/O, and a backend that fails is logged and
switched off rather than ending the run. `close()` drains the queue and closes the backends.

TensorBoard: `run_dir/tensorboard/<stage>` (`tensorboard --logdir run_dir/tensorboard`).
W&B: used when `wandb` imports and `WANDB_API_KEY` or `WANDB_MODE` (online/offline) is set, and
`WANDB_MODE` is not "disabled"; project `WANDB_PROJECT` (default "teleboost"), one W&B run per
stage run, files under `run_dir` (offline runs sync later with `wandb sync`).
Does not: log histograms or model weights, or retry a failed write.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import queue
import threading
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

log = logging.getLogger("teleboost.tracking")

CLIP_FPS = 4


class Tracker(Protocol):
    """The interface a stage's runtime sees."""

    def wants_clips(self, step: int) -> bool: ...

    def log(self, step: int, record: dict) -> None: ...

    def log_clips(self, step: int, videos, captions: Sequence[str]) -> None: ...

    def close(self) -> None: ...


def scalars(record: dict) -> dict[str, float]:
    """The record's numeric values (bools as 0/1; strings and the step itself left out)."""
    return {key: float(value) for key, value in record.items()
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, str)}


def clip_gif(videos: np.ndarray, fps: int = CLIP_FPS) -> bytes:
    """Clips uint8 [N, T, H, W, 3] side by side as one looping animated GIF."""
    from PIL import Image

    strip = np.concatenate(list(videos), axis=2)  # [T, H, N*W, 3]
    frames = [Image.fromarray(frame) for frame in strip]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
    return buffer.getvalue()


class TensorBoardBackend:
    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def clips(self, step: int, gif: bytes, size: tuple[int, int], captions: Sequence[str]) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        # What SummaryWriter.add_video writes, with the GIF encoded by Pillow (add_video needs moviepy).
        image = Summary.Image(height=size[0], width=size[1], colorspace=3, encoded_image_string=gif)
        self.writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag="samples/clips", image=image)]), step)
        self.writer.add_text("samples/prompts", "\n".join(f"{i}. {c}" for i, c in enumerate(captions)), step)

    def close(self) -> None:
        self.writer.close()


class WandbBackend:
    def __init__(self, run_dir: Path, stage: str, config: dict | None):
        import wandb

        self.wandb = wandb
        self.run_dir = run_dir
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "teleboost"), dir=str(run_dir),
                              name=f"{run_dir.name}-{stage}", group=run_dir.name, job_type=stage, config=config or {},
                              reinit="create_new")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def clips(self, step: int, gif: bytes, size: tuple[int, int], captions: Sequence[str]) -> None:
        path = self.run_dir / "clips" / f"step_{step:06d}.gif"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gif)
        self.run.log({"samples/clips": self.wandb.Video(str(path), caption=" | ".join(captions))}, step=step)

    def close(self) -> None:
        self.run.finish()


def wandb_configured() -> bool:
    mode = os.environ.get("WANDB_MODE", "")
    if mode == "disabled":
        return False
    if importlib.util.find_spec("wandb") is None:
        return False
    return bool(os.environ.get("WANDB_API_KEY")) or mode in ("online", "offline")


class ExperimentTracker:
    """See the module docstring. `clip_every` 0 turns clips off; `max_clips` clips per log."""

    def __init__(self, run_dir: str | os.PathLike, stage: str, config: dict | None = None, clip_every: int = 10,
                 max_clips: int = 4):
        run_dir = Path(run_dir)
        self.clip_every = clip_every
        self.max_clips = max_clips
        self.backends: list = [TensorBoardBackend(run_dir / "tensorboard" / stage)]
        if wandb_configured():
            self.backends.append(WandbBackend(run_dir, stage, config))
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._drain, name="teleboost-tracking", daemon=True)
        self._thread.start()

    def wants_clips(self, step: int) -> bool:
        return self.clip_every > 0 and step % self.clip_every == 0

    def log(self, step: int, record: dict) -> None:
        self._queue.put(("scalars", step, scalars(record)))

    def log_clips(self, step: int, videos, captions: Sequence[str]) -> None:
        """`videos`: uint8 [B, T, H, W, 3] as a tensor, an array or a Ray object ref (fetched on
        the tracking thread); the first `max_clips` are logged with their captions."""
        self._queue.put(("clips", step, (videos, list(captions)[: self.max_clips])))

    def close(self, timeout_s: float = 60.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout_s)
        for backend in self.backends:
            backend.close()

    def _drain(self) -> None:
        while (item := self._queue.get()) is not None:
            kind, step, payload = item
            try:
                if kind == "scalars":
                    self._write(lambda b: b.scalars(step, payload))
                else:
                    gif, size, captions = self._encode(*payload)
                    self._write(lambda b: b.clips(step, gif, size, captions))
            except Exception:  # a broken clip must not stop the scalars after it
                log.exception("tracking: could not prepare %s of step %d", kind, step)

    def _encode(self, videos, captions: list[str]) -> tuple[bytes, tuple[int, int], list[str]]:
        import ray

        if isinstance(videos, ray.ObjectRef):
            videos = ray.get(videos)
        clips = np.asarray(videos[: self.max_clips], dtype=np.uint8)
        return clip_gif(clips), (clips.shape[2], clips.shape[3] * clips.shape[0]), captions[: len(clips)]

    def _write(self, call) -> None:
        for backend in list(self.backends):
            try:
                call(backend)
            except Exception:
                log.exception("tracking: %s failed; it is switched off for this run", type(backend).__name__)
                self.backends.remove(backend)
