"""Fuzz the reward HTTP endpoint and assert it never answers 5xx to client input.

Two bounded phases against one server (started on loopback unless --url is given):

1. schemathesis on the served /openapi.json: every operation, positive and negative examples
   from the schema, check `not_a_server_error` only (the CLI command is printed).
2. hypothesis over near-valid requests the schema cannot describe: real .npy files with random
   dtypes, shapes, truncations and corrupted header bytes, MP4 boxes with random content, random
   prompt counts and critic names — each must get 200 or a 4xx naming a field.

    python -m bench.fuzz_http                       # 200 schemathesis examples per operation, 300 hypothesis
    python -m bench.fuzz_http --max-examples 50 --hypothesis-examples 100 --seed 1

Exits 1 if either phase saw a 5xx (or any other failure).
"""

from __future__ import annotations

import argparse
import base64
import io
import subprocess
import sys
import tempfile
import time

import httpx
import hypothesis
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.http_load import start_local_server


def schemathesis_phase(url: str, max_examples: int, seed: int) -> int:
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json",
        "--checks", "not_a_server_error", "--max-examples", str(max_examples), "--workers", "1",
        "--seed", str(seed), "--generation-database", "none", "--request-timeout", "30", "--no-color",
    ]
    print("$ python " + " ".join(command[1:]), flush=True)
    with tempfile.TemporaryDirectory() as scratch:  # schemathesis keeps a crash cache in its cwd
        completed = subprocess.run(command, capture_output=True, text=True, cwd=scratch)
    lines = completed.stdout.strip().splitlines()
    summary_start = next((i for i, line in enumerate(lines) if "SUMMARY" in line), max(0, len(lines) - 25))
    print("\n".join(lines[summary_start:]))
    if completed.returncode:
        print(completed.stdout[-4000:], completed.stderr[-2000:], sep="\n")
    print(f"schemathesis exit code {completed.returncode}", flush=True)
    return completed.returncode


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@st.composite
def encoded_video(draw) -> dict:
    kind = draw(st.sampled_from(["valid", "valid", "valid", "npy-odd", "npy-corrupt", "mp4-box", "bytes"]))
    if kind == "valid":
        # Plausible videos of odd sizes (1 frame, 1x1, ...) reach the critics themselves.
        side = st.integers(1, 40) if draw(st.integers(0, 4)) == 0 else st.integers(8, 40)
        shape = (draw(st.integers(1, 9)), draw(side), draw(side), 3)
        if draw(st.booleans()):
            array = np.random.default_rng(draw(st.integers(0, 99))).integers(0, 256, shape, dtype=np.uint8)
        else:
            array = np.full(shape, draw(st.sampled_from([0.0, 0.5, 1.0])), np.float32)
        return {"format": "npy", "data": base64.b64encode(_npy(array)).decode()}
    if kind.startswith("npy"):
        dtype = draw(st.sampled_from(["|u1", "<f4", ">f4", "<i8", "<f8", "|b1"]))
        shape = tuple(draw(st.lists(st.integers(0, 40), min_size=0, max_size=5)))
        if draw(st.booleans()):
            shape = shape[:3] + (draw(st.sampled_from([3, 1, 4])),)
        size = int(np.prod(shape, dtype=np.int64))
        array = np.zeros(shape if size <= 30000 else (1,), dtype)
        if array.dtype.kind == "f" and array.size:
            array.reshape(-1)[0] = draw(st.sampled_from([0.5, 2.0, -1.0, float("nan"), float("inf")]))
        raw = _npy(array)
        if kind == "npy-corrupt":
            cut = draw(st.integers(-16, 16))
            raw = raw[:cut] if cut < 0 else raw + bytes(cut)
            position = draw(st.integers(0, 127))
            raw = raw[:position] + bytes([draw(st.integers(0, 255))]) + raw[position + 1:]
        return {"format": "npy", "data": base64.b64encode(raw).decode()}
    if kind == "mp4-box":
        raw = b"\x00\x00\x00\x18ftypisom" + draw(st.binary(max_size=300))
        return {"format": "mp4", "data": base64.b64encode(raw).decode()}
    raw = draw(st.binary(max_size=200))
    return {"format": draw(st.sampled_from(["npy", "mp4"])), "data": base64.b64encode(raw).decode()}


def hypothesis_phase(url: str, examples: int, critics: list[str], seed: int) -> int:
    statuses: dict[int, int] = {}
    failures: list[str] = []
    client = httpx.Client(timeout=60)

    @hypothesis.seed(seed)
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(
        st.lists(encoded_video(), min_size=1, max_size=3),
        st.sampled_from([0, 0, 0, -1, 1]),
        st.none() | st.lists(st.sampled_from(critics), min_size=1, max_size=3)
        | st.lists(st.sampled_from(critics + ["no_such_critic"]), min_size=1, max_size=3),
    )
    def probe(videos, prompt_offset, chosen):
        prompts = ["a red square moves left on a gray background"] * max(0, len(videos) + prompt_offset)
        payload = {"videos": videos, "prompts": prompts}
        if chosen is not None:
            payload["critics"] = chosen
        response = client.post(url + "/v1/score", json=payload)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        ok = response.status_code == 200 or (
            400 <= response.status_code < 500 and response.json()["error"]["field"]
        )
        if not ok:
            failures.append(f"{response.status_code}: {response.text[:300]}")

    print(f"$ hypothesis: {examples} near-valid POST /v1/score requests (seed {seed})", flush=True)
    started = time.perf_counter()
    probe()
    client.close()
    print(f"hypothesis statuses {dict(sorted(statuses.items()))} in {time.perf_counter() - started:.1f} s; "
          f"failures {len(failures)}")
    for failure in failures[:5]:
        print("  " + failure)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server's base URL (default: start one on loopback)")
    parser.add_argument("--config", default="configs/reward_server.yaml")
    parser.add_argument("--max-examples", type=int, default=200, help="schemathesis examples per operation")
    parser.add_argument("--hypothesis-examples", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    started_here = args.url is None
    url = args.url.rstrip("/") if args.url else start_local_server(args.config)
    try:
        critics = [c["name"] for c in httpx.get(url + "/v1/critics").json()["critics"]]
        failed = schemathesis_phase(url, args.max_examples, args.seed)
        failed |= hypothesis_phase(url, args.hypothesis_examples, critics, args.seed)
    finally:
        if started_here:
            import ray
            from ray import serve

            serve.shutdown()
            ray.shutdown()
    print("RESULT: " + ("FAIL (a 5xx or other failure above)" if failed else "no 5xx"))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
