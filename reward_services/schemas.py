"""Wire format of the reward HTTP endpoint: pydantic request/response models and the video decoders.

A request carries videos as base64 `.npy` arrays or MP4 files, one prompt per video and the
names of the critics to run:

    {"videos": [{"format": "npy", "data": "<base64>"}], "prompts": ["..."],
     "critics": ["toy_judges"], "first_frames": null}

`.npy` videos are uint8 [T, H, W, 3] (or float32 in [0, 1]) and are decoded with
`np.load(..., allow_pickle=False)` only AFTER their header has been checked against the limits,
so a tiny file that declares a huge shape never allocates it. MP4 videos must be ISO-BMFF files
(bytes 4..8 are `ftyp`); they are decoded by OpenCV's FFmpeg backend from a private temporary file,
frame count and resolution checked as they decode. MP4 is lossy: use `.npy` uint8 when scores
must match the in-cluster reward actors bit for bit.

Every decoding failure raises `RequestError` naming the offending field as a client would write
it (`videos[0].data`, `prompts`, `first_frames[1].data`) — never anything else, which a property
test checks on random bytes and shapes.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import os
import tempfile
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

# ----------------------------------------------------------------------------------------------
# Limits (part of the server config; the decoder enforces them).


class Limits(BaseModel):
    """Bounds on one request; anything beyond them is refused with a 4xx before any critic runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_body_bytes: int = Field(64 * 2**20, ge=1024, description="request body cap (413 above it)")
    max_batch: int = Field(16, ge=1, description="videos per request")
    max_frames: int = Field(128, ge=1)
    # Critics assume room for their filters and search windows; 1-pixel-wide clips crashed the
    # toy judges' smoothness search, so tiny clips stop here as a 422, not in a critic as a 500.
    min_side: int = Field(8, ge=1, description="smallest accepted height and width")
    max_height: int = Field(1024, ge=1)
    max_width: int = Field(1024, ge=1)
    max_decoded_bytes: int = Field(
        512 * 2**20, ge=1, description="decoded pixels of the whole request, in bytes (MP4 compresses well)"
    )
    max_prompt_chars: int = Field(2000, ge=1)
    request_timeout_s: float = Field(60.0, gt=0, description="decode + scoring; 504 after it")


# ----------------------------------------------------------------------------------------------
# Request / response models.


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EncodedVideo(_Model):
    format: Literal["npy", "mp4"] = Field(description="npy: uint8 [T,H,W,3] or float32 in [0,1]; mp4: ISO-BMFF")
    data: str = Field(description="base64 (standard alphabet, padded) of the file's bytes")


class EncodedFrame(_Model):
    format: Literal["npy"] = Field(description="npy: uint8 [H,W,3] or float32 in [0,1]")
    data: str = Field(description="base64 of the .npy file's bytes")


class ScoreRequest(_Model):
    videos: list[EncodedVideo] = Field(min_length=1)
    prompts: list[str] = Field(description="one prompt per video")
    critics: list[str] | None = Field(
        None, min_length=1, description="critics to run (GET /v1/critics lists them); default: all loaded"
    )
    first_frames: list[EncodedFrame] | None = Field(
        None,
        description="optional conditioning frame per video (image-to-video), same H and W as its video; "
        "critics receive them as float32 [B, H, W, 3] in [0, 1]",
    )


class ScoreResponse(_Model):
    request_id: str
    scores: dict[str, list[float | None]] = Field(
        description='"critic.score" -> one float per video (null where a critic returned NaN/inf)'
    )
    gated: list[bool] | None = Field(
        description="per video: true if any requested critic's `gated` score is set; null if none reports one"
    )
    elapsed_ms: float
    critic_ms: dict[str, float] = Field(description="wall time per critic")
    skipped: dict[str, str] = Field(
        default_factory=dict, description="critics of the default set that cannot judge these prompts, with the reason "
        "(a request that NAMES such a critic is refused with 422 instead)")


class CriticInfo(_Model):
    name: str
    score_names: list[str]
    options: dict
    description: str


class CriticsResponse(_Model):
    critics: list[CriticInfo] = Field(description="critics loaded on this server (requests may name these)")
    registered: list[str] = Field(description="every critic registered in the replica's process")
    limits: Limits


class HealthResponse(_Model):
    status: Literal["ok"]
    critics: list[str]


class ErrorBody(_Model):
    code: str
    message: str
    field: str | None
    request_id: str


class ErrorResponse(_Model):
    error: ErrorBody


class RequestError(Exception):
    """A request the server refuses; becomes `{"error": {...}}` with `status`."""

    def __init__(self, status: int, code: str, field: str | None, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.field, self.message = status, code, field, message
        self.headers = headers or {}

    def body(self, request_id: str) -> dict:
        return {"error": {"code": self.code, "message": self.message, "field": self.field, "request_id": request_id}}


def _invalid(field: str, message: str) -> RequestError:
    return RequestError(422, "invalid_input", field, f"{field}: {message}")


# ----------------------------------------------------------------------------------------------
# Decoding.


@dataclass
class DecodedRequest:
    """Videos as numpy arrays (uint8 or float32 [T, H, W, 3]) with their prompts and first frames."""

    videos: list[np.ndarray]
    prompts: list[str]
    first_frames: list[np.ndarray] | None


class _Budget:
    """Running total of decoded bytes over one request."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0

    def take(self, nbytes: int, field: str) -> None:
        self.used += nbytes
        if self.used > self.limit:
            raise RequestError(
                413, "too_large", field,
                f"{field}: decoded videos reach {self.used} bytes, above max_decoded_bytes={self.limit}",
            )


def decode_base64(data: str, field: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as err:
        raise _invalid(field, f"not valid base64 ({err})") from None


def _check_pixels(array: np.ndarray, field: str) -> np.ndarray:
    if array.dtype == np.float32:
        # The same tolerance as reward_services.base.as_float_video, so HTTP and in-cluster agree.
        if not np.isfinite(array).all():
            raise _invalid(field, "float32 pixels must be finite")
        if array.size and (array.min() < -1e-4 or array.max() > 1 + 1e-4):
            raise _invalid(field, f"float32 pixels must lie in [0, 1], got [{array.min():.4g}, {array.max():.4g}]")
    return array


def decode_npy(
    raw: bytes, field: str, limits: Limits, budget: _Budget | None = None, frame: bool = False
) -> np.ndarray:
    """Decode a `.npy` video [T, H, W, 3] (or, with `frame=True`, an image [H, W, 3]).

    The header is read and checked (dtype, ndim, sizes, byte count) before any pixel buffer exists.
    """
    stream = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise _invalid(field, f"npy format version {version} is not supported (use 1.0 or 2.0)")
    except RequestError:
        raise
    except Exception as err:  # numpy raises ValueError, but the header is attacker-controlled
        raise _invalid(field, f"not a valid .npy file ({type(err).__name__}: {str(err)[:200]})") from None

    if dtype.names is not None or dtype.subdtype is not None or dtype.hasobject or not (
        (dtype.kind == "u" and dtype.itemsize == 1) or (dtype.kind == "f" and dtype.itemsize == 4)
    ):
        raise _invalid(field, f"dtype {dtype.str} is not accepted; send uint8 or float32")
    expected = "[H, W, 3]" if frame else "[T, H, W, 3]"
    if len(shape) != (3 if frame else 4) or shape[-1] != 3:
        raise _invalid(field, f"shape {tuple(shape)} is not {expected}")
    if frame:
        height, width = shape[0], shape[1]
    else:
        frames, height, width = shape[0], shape[1], shape[2]
        if not 1 <= frames <= limits.max_frames:
            raise _invalid(field, f"{frames} frames; accepted: 1..{limits.max_frames} (max_frames)")
    _check_size(height, width, field, limits)

    nbytes = math.prod(shape) * dtype.itemsize
    if len(raw) - stream.tell() != nbytes:
        raise _invalid(field, f"header declares {nbytes} data bytes, file holds {len(raw) - stream.tell()}")
    if budget is not None:
        budget.take(nbytes, field)
    try:
        array = np.load(io.BytesIO(raw), allow_pickle=False)
    except Exception as err:  # checked above; kept so no decoder error escapes as a 5xx
        raise _invalid(field, f"not a valid .npy file ({type(err).__name__})") from None
    array = np.ascontiguousarray(array, dtype=np.uint8 if dtype.kind == "u" else np.float32)
    return _check_pixels(array, field)


def _check_size(height: int, width: int, field: str, limits: Limits) -> None:
    low = limits.min_side
    if not low <= height <= limits.max_height or not low <= width <= limits.max_width:
        raise _invalid(
            field, f"resolution {height}x{width} (HxW); accepted: {low}x{low} (min_side) "
            f"to {limits.max_height}x{limits.max_width}",
        )


def decode_mp4(raw: bytes, field: str, limits: Limits, budget: _Budget | None = None) -> np.ndarray:
    """Decode an MP4 file to uint8 RGB [T, H, W, 3] with OpenCV, checking limits frame by frame."""
    import cv2

    # Only ISO-BMFF: FFmpeg probes formats by content, and some (playlists, concat lists) read
    # other files or URLs; the `ftyp` box pins the demuxer to mov/mp4.
    if len(raw) < 12 or raw[4:8] != b"ftyp":
        raise _invalid(field, "not an MP4 file (no 'ftyp' box at byte 4)")
    os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "protocol_whitelist;file")
    frames: list[np.ndarray] = []
    with tempfile.TemporaryDirectory(prefix="teleboost-mp4-") as folder:
        path = os.path.join(folder, "video.mp4")
        with open(path, "wb") as handle:
            handle.write(raw)
        capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
        try:
            if not capture.isOpened():
                raise _invalid(field, "MP4 could not be opened by the decoder")
            while True:
                ok, frame = capture.read()
                if not ok or frame is None:
                    break
                if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
                    raise _invalid(field, f"decoded frame is {frame.shape} {frame.dtype}, not [H, W, 3] uint8")
                if frames and frame.shape != frames[0].shape:
                    raise _invalid(field, f"frame {len(frames)} is {frame.shape[:2]}, frame 0 is {frames[0].shape[:2]}")
                _check_size(frame.shape[0], frame.shape[1], field, limits)
                if len(frames) == limits.max_frames:
                    raise _invalid(field, f"more than max_frames={limits.max_frames} frames")
                if budget is not None:
                    budget.take(frame.nbytes, field)
                frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        finally:
            capture.release()
    if not frames:
        raise _invalid(field, "MP4 holds no decodable video frames")
    return np.stack(frames)


def decode_video(video: EncodedVideo, field: str, limits: Limits, budget: _Budget | None = None) -> np.ndarray:
    """One encoded video -> uint8 or float32 [T, H, W, 3]; `field` names it in errors (`videos[i]`)."""
    raw = decode_base64(video.data, f"{field}.data")
    if video.format == "npy":
        return decode_npy(raw, f"{field}.data", limits, budget)
    return decode_mp4(raw, f"{field}.data", limits, budget)


def check_request_shape(request: ScoreRequest, limits: Limits) -> None:
    """Cheap checks on counts and prompt lengths, done before any video is decoded."""
    if len(request.videos) > limits.max_batch:
        raise RequestError(
            422, "invalid_input", "videos",
            f"videos: batch of {len(request.videos)} exceeds max_batch={limits.max_batch}",
        )
    if len(request.prompts) != len(request.videos):
        raise _invalid(
            "prompts", f"got {len(request.prompts)} prompts for {len(request.videos)} videos; send one per video"
        )
    for index, prompt in enumerate(request.prompts):
        if len(prompt) > limits.max_prompt_chars:
            raise _invalid(
                f"prompts[{index}]", f"{len(prompt)} characters; at most max_prompt_chars={limits.max_prompt_chars}"
            )
    if request.first_frames is not None and len(request.first_frames) != len(request.videos):
        raise _invalid(
            "first_frames", f"got {len(request.first_frames)} first frames for {len(request.videos)} videos"
        )


def decode_request(request: ScoreRequest, limits: Limits) -> DecodedRequest:
    """Validate and decode a whole request; raises only `RequestError`."""
    check_request_shape(request, limits)
    budget = _Budget(limits.max_decoded_bytes)
    videos = [decode_video(video, f"videos[{index}]", limits, budget) for index, video in enumerate(request.videos)]
    first_frames = None
    if request.first_frames is not None:
        first_frames = []
        for index, encoded in enumerate(request.first_frames):
            field = f"first_frames[{index}].data"
            image = decode_npy(decode_base64(encoded.data, field), field, limits, budget, frame=True)
            if image.shape[:2] != videos[index].shape[1:3]:
                raise _invalid(field, f"frame is {image.shape[:2]} (HxW), its video is {videos[index].shape[1:3]}")
            first_frames.append(image)
    return DecodedRequest(videos=videos, prompts=list(request.prompts), first_frames=first_frames)


def shape_groups(videos: list[np.ndarray]) -> list[list[int]]:
    """Indices of videos that can share one batch tensor (same shape and dtype), in first-seen order."""
    groups: dict[tuple, list[int]] = {}
    for index, video in enumerate(videos):
        groups.setdefault((video.shape, video.dtype.str), []).append(index)
    return list(groups.values())


def field_path(loc: tuple) -> str:
    """Pydantic's error location -> the field as a client writes it: ("body", "videos", 0, "data") -> videos[0].data."""
    parts = [part for part in loc if part != "body"] if len(loc) > 1 else list(loc)
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "body"
