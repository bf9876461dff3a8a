"""Request decoding: every bad input is a RequestError naming its field, never another exception."""

import base64
import io

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reward_services.schemas import (
    EncodedVideo,
    Limits,
    RequestError,
    ScoreRequest,
    _Budget,
    decode_base64,
    decode_mp4,
    decode_npy,
    decode_request,
    field_path,
    shape_groups,
)

LIMITS = Limits(max_batch=4, max_frames=16, max_height=64, max_width=64, max_decoded_bytes=2**20)
FIELD = "videos[0].data"


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def video(frames=5, height=16, width=16, dtype=np.uint8, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == np.uint8:
        return rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
    return rng.random((frames, height, width, 3)).astype(dtype)


def mp4_bytes(frames: np.ndarray, tmp_path, fps: float = 8.0) -> bytes:
    path = str(tmp_path / "clip.mp4")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (frames.shape[2], frames.shape[1]))
    assert writer.isOpened()
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    with open(path, "rb") as handle:
        return handle.read()


def rejects(fn, *args, field=FIELD, status=422, **kwargs) -> RequestError:
    with pytest.raises(RequestError) as info:
        fn(*args, **kwargs)
    assert info.value.field == field, info.value.message
    assert info.value.status == status
    return info.value


# ----------------------------------------------------------------------------------------------
# .npy


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_npy_round_trips_exactly(dtype):
    array = video(dtype=dtype)
    decoded = decode_npy(npy_bytes(array), FIELD, LIMITS)
    assert decoded.dtype == dtype and np.array_equal(decoded, array)


def test_npy_big_endian_and_fortran_order_are_normalised():
    array = video(dtype=np.float32)
    assert np.array_equal(decode_npy(npy_bytes(array.astype(">f4")), FIELD, LIMITS), array)
    decoded = decode_npy(npy_bytes(np.asfortranarray(array)), FIELD, LIMITS)
    assert decoded.flags.c_contiguous and np.array_equal(decoded, array)


@pytest.mark.parametrize("dtype", [np.int64, np.float64, np.int8, np.uint16, np.bool_, np.complex64])
def test_npy_wrong_dtype_names_field_and_dtype(dtype):
    err = rejects(decode_npy, npy_bytes(np.zeros((3, 8, 8, 3), dtype)), FIELD, LIMITS)
    assert "dtype" in err.message and "uint8 or float32" in err.message


def test_npy_object_and_structured_arrays_are_refused_without_unpickling():
    objects = np.empty((2, 8, 8, 3), dtype=object)
    buffer = io.BytesIO()
    np.save(buffer, objects, allow_pickle=True)
    rejects(decode_npy, buffer.getvalue(), FIELD, LIMITS)
    rejects(decode_npy, npy_bytes(np.zeros((2, 8, 8, 3), [("a", "u1")])), FIELD, LIMITS)


@pytest.mark.parametrize("shape", [(8, 8, 3), (2, 8, 8, 4), (2, 8, 8, 3, 1), (2, 8, 8, 1), (0, 8, 8, 3), (2, 0, 8, 3)])
def test_npy_wrong_shape(shape):
    rejects(decode_npy, npy_bytes(np.zeros(shape, np.uint8)), FIELD, LIMITS)


def test_npy_limits_on_frames_and_resolution():
    assert "max_frames" in rejects(decode_npy, npy_bytes(np.zeros((17, 8, 8, 3), np.uint8)), FIELD, LIMITS).message
    assert "64x64" in rejects(decode_npy, npy_bytes(np.zeros((2, 65, 8, 3), np.uint8)), FIELD, LIMITS).message
    rejects(decode_npy, npy_bytes(np.zeros((2, 8, 65, 3), np.uint8)), FIELD, LIMITS)
    # 1-pixel-wide clips crashed a critic (found by bench/fuzz_http.py): refused at decode time
    assert "min_side" in rejects(decode_npy, npy_bytes(np.zeros((9, 1, 8, 3), np.uint8)), FIELD, LIMITS).message
    rejects(decode_npy, npy_bytes(np.zeros((9, 8, 7, 3), np.uint8)), FIELD, LIMITS)


def forged_npy(shape, descr="|u1", data=b"") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + data


def test_npy_header_declaring_a_huge_array_is_refused_before_allocation():
    assert "max_frames" in rejects(decode_npy, forged_npy((10**12, 64, 64, 3)), FIELD, LIMITS).message
    rejects(decode_npy, forged_npy((16, 64, 64, 3)), FIELD, LIMITS)  # 196608 bytes declared, none sent
    full = forged_npy((16, 64, 64, 3), data=bytes(16 * 64 * 64 * 3))
    assert decode_npy(full, FIELD, LIMITS).shape == (16, 64, 64, 3)
    err = rejects(decode_npy, full, FIELD, LIMITS, budget=_Budget(1000), status=413)
    assert "max_decoded_bytes" in err.message


def test_npy_truncated_or_padded_data_is_refused():
    raw = npy_bytes(video())
    rejects(decode_npy, raw[:-1], FIELD, LIMITS)
    rejects(decode_npy, raw + b"\0", FIELD, LIMITS)


@pytest.mark.parametrize("value", [np.nan, np.inf, -0.5, 1.5])
def test_npy_float_pixels_must_be_finite_and_in_unit_range(value):
    array = video(dtype=np.float32)
    array[0, 0, 0, 0] = value
    rejects(decode_npy, npy_bytes(array), FIELD, LIMITS)


def test_npy_version_3_is_refused():
    raw = bytearray(npy_bytes(video()))
    raw[6] = 3
    assert "version" in rejects(decode_npy, bytes(raw), FIELD, LIMITS).message


def test_first_frame_decoding_wants_hw3():
    assert decode_npy(npy_bytes(np.zeros((8, 8, 3), np.uint8)), "f", LIMITS, frame=True).shape == (8, 8, 3)
    rejects(decode_npy, npy_bytes(np.zeros((1, 8, 8, 3), np.uint8)), "f", LIMITS, frame=True, field="f")


# ----------------------------------------------------------------------------------------------
# base64 and MP4


@pytest.mark.parametrize("text", ["!!!", "abc", "ab=c", "é", "YWJj\n"])
def test_malformed_base64(text):
    rejects(decode_base64, text, FIELD)


def test_mp4_round_trip(tmp_path):
    frames = np.zeros((6, 32, 48, 3), np.uint8)
    for t in range(6):
        frames[t, 8:20, 4 + 4 * t : 16 + 4 * t] = (220, 40, 30)
    decoded = decode_mp4(mp4_bytes(frames, tmp_path), FIELD, LIMITS)
    assert decoded.shape == frames.shape and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - frames).mean() < 8  # lossy, but the same picture and colour order


def test_mp4_limits(tmp_path):
    long = np.zeros((17, 16, 16, 3), np.uint8)
    assert "max_frames" in rejects(decode_mp4, mp4_bytes(long, tmp_path), FIELD, LIMITS).message
    wide = np.zeros((2, 16, 80, 3), np.uint8)
    rejects(decode_mp4, mp4_bytes(wide, tmp_path), FIELD, LIMITS)
    rejects(decode_mp4, mp4_bytes(np.zeros((8, 64, 64, 3), np.uint8), tmp_path), FIELD, LIMITS,
            budget=_Budget(3 * 64 * 64 * 3), status=413)


def test_mp4_must_be_iso_bmff(tmp_path):
    assert "ftyp" in rejects(decode_mp4, b"#EXTM3U\nfile:///etc/passwd\n", FIELD, LIMITS).message
    raw = mp4_bytes(np.zeros((3, 16, 16, 3), np.uint8), tmp_path)
    rejects(decode_mp4, raw[:40], FIELD, LIMITS)  # a header and nothing else


# ----------------------------------------------------------------------------------------------
# Whole requests


def request(videos, prompts=None, **extra) -> ScoreRequest:
    encoded = [{"format": "npy", "data": b64(npy_bytes(v))} for v in videos]
    return ScoreRequest.model_validate({"videos": encoded, "prompts": prompts or ["p"] * len(videos), **extra})


def test_decode_request_keeps_order_and_groups_by_shape():
    videos = [video(seed=0), video(frames=3, seed=1), video(seed=2), video(dtype=np.float32, seed=3)]
    decoded = decode_request(request(videos), LIMITS)
    assert all(np.array_equal(a, b) for a, b in zip(decoded.videos, videos))
    assert shape_groups(decoded.videos) == [[0, 2], [1], [3]]


def test_decode_request_counts_and_fields():
    rejects(decode_request, request([video()], prompts=["a", "b"]), LIMITS, field="prompts")
    rejects(decode_request, request([video()] * 5), LIMITS, field="videos")
    rejects(decode_request, request([video()], prompts=["x" * 2001]), LIMITS, field="prompts[0]")
    bad = request([video(), video()])
    bad.videos[1] = EncodedVideo(format="npy", data="%%%")
    rejects(decode_request, bad, LIMITS, field="videos[1].data")
    frame = {"format": "npy", "data": b64(npy_bytes(np.zeros((8, 8, 3), np.uint8)))}
    rejects(decode_request, request([video()], first_frames=[frame]), LIMITS, field="first_frames[0].data")
    rejects(decode_request, request([video()], first_frames=[frame, frame]), LIMITS, field="first_frames")
    many = [video(frames=16, height=64, width=64, seed=i) for i in range(4)]  # 196608 B each
    budget = LIMITS.model_copy(update={"max_decoded_bytes": 500_000})
    rejects(decode_request, request(many), budget, field="videos[2].data", status=413)


def test_field_path_matches_client_spelling():
    assert field_path(("body", "videos", 0, "data")) == "videos[0].data"
    assert field_path(("body", "prompts")) == "prompts"
    assert field_path(("body",)) == "body"


# ----------------------------------------------------------------------------------------------
# Properties: arbitrary input never raises anything but RequestError (so never a 5xx).

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes_never_escape_as_other_errors(raw):
    for decoder in (decode_npy, decode_mp4):
        with pytest.raises(RequestError):
            decoder(raw, FIELD, LIMITS)
    with pytest.raises(RequestError):
        decode_npy(b"\x93NUMPY" + raw, FIELD, LIMITS)


@FUZZ
@given(st.text(max_size=200))
def test_random_base64_text_is_bytes_or_request_error(text):
    try:
        assert isinstance(decode_base64(text, FIELD), bytes)
    except RequestError as err:
        assert err.field == FIELD


dtypes = st.sampled_from(["|u1", "<f4", ">f4", "<i8", "<f8", "|b1", "<u2", "<c8", "|i1"])
shapes = st.lists(st.integers(0, 70), min_size=0, max_size=5).map(tuple)


@FUZZ
@given(dtypes, shapes, st.integers(-3, 3), st.data())
def test_random_npy_headers_and_sizes(dtype, shape, size_error, data):
    array = np.zeros(shape, dtype) if np.prod(shape, dtype=np.int64) <= 20000 else np.zeros((1,), dtype)
    raw = npy_bytes(array)
    if size_error > 0:
        raw += bytes(size_error)
    elif size_error < 0:
        raw = raw[:size_error]
    if data.draw(st.booleans()):  # corrupt one header byte
        position = data.draw(st.integers(0, min(len(raw), 127) - 1))
        raw = raw[:position] + bytes([data.draw(st.integers(0, 255))]) + raw[position + 1:]
    try:
        decoded = decode_npy(raw, FIELD, LIMITS)
    except RequestError as err:
        assert err.field == FIELD and err.status in (413, 422)
    else:
        assert decoded.ndim == 4 and decoded.shape[-1] == 3 and decoded.dtype in (np.uint8, np.float32)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["npy", "mp4"]), st.binary(max_size=120)), min_size=1, max_size=6),
       st.lists(st.text(max_size=20), max_size=6))
def test_random_requests_decode_or_name_a_field(videos, prompts):
    body = ScoreRequest(videos=[EncodedVideo(format=f, data=b64(raw)) for f, raw in videos], prompts=prompts)
    with pytest.raises(RequestError) as info:
        decode_request(body, LIMITS)
    assert info.value.field and info.value.status in (413, 422)


@pytest.fixture(scope="module")
def real_mp4(tmp_path_factory) -> bytes:
    frames = np.stack([np.full((16, 16, 3), 30 * t, np.uint8) for t in range(6)])
    return mp4_bytes(frames, tmp_path_factory.mktemp("mp4"))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8), st.integers(12, 10**6))
def test_corrupted_mp4_decodes_or_is_refused(real_mp4, edits, cut):
    raw = bytearray(real_mp4[:cut])
    for position, value in edits:
        raw[8 + position % (len(raw) - 8)] = value  # keep the ftyp box so FFmpeg really parses it
    try:
        decoded = decode_mp4(bytes(raw), FIELD, LIMITS)
    except RequestError as err:
        assert err.field == FIELD
    else:
        assert decoded.ndim == 4 and decoded.shape[-1] == 3 and decoded.dtype == np.uint8
