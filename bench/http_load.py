"""Bounded load test of the reward HTTP endpoint: throughput, latency percentiles, errors.

Starts the endpoint on loopback (a private Ray instance, `configs/reward_server.yaml` with the
port replaced by a free one) unless --url names a running server, then sends exactly --requests
POST /v1/score requests, at most --concurrency in flight, each carrying --videos toy clips
(uint8 .npy, 9x32x32) for --critics, and prints:

    requests, concurrency, throughput (req/s and videos/s), p50 / p90 / p99 / max latency (ms),
    the server's own elapsed_ms p50, and the error count (non-200 or transport error).

    python -m bench.http_load                                   # 500 requests, 16 at once
    python -m bench.http_load --url http://127.0.0.1:8000 --token-env TELEBOOST_REWARD_TOKEN

The client runs on the same machine as the server, so on a 2-core box the numbers include the
client's own CPU use; they measure the endpoint's overhead + the critics, not a network.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import socket
import time

import httpx
import numpy as np

from toyworld.world import ToyWorld


def toy_payload(videos_per_request: int, critics: list[str], seed: int = 0) -> dict:
    clips = ToyWorld(kinds=("object", "pan", "fluid")).sample(videos_per_request, seed)
    encoded = []
    for clip in clips:
        buffer = io.BytesIO()
        np.save(buffer, (clip.video.numpy() * 255).round().astype(np.uint8), allow_pickle=False)
        encoded.append({"format": "npy", "data": base64.b64encode(buffer.getvalue()).decode()})
    return {"videos": encoded, "prompts": [clip.prompt for clip in clips], "critics": critics}


async def run_load(url: str, payload: dict, requests: int, concurrency: int, headers: dict) -> dict:
    latencies_ms: list[float] = []
    server_ms: list[float] = []
    errors: dict[str, int] = {}
    remaining = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(timeout=120, limits=limits, headers=headers) as client:

        async def worker():
            for _ in remaining:
                started = time.perf_counter()
                try:
                    response = await client.post(url + "/v1/score", json=payload)
                except httpx.HTTPError as err:
                    errors[type(err).__name__] = errors.get(type(err).__name__, 0) + 1
                    continue
                latencies_ms.append((time.perf_counter() - started) * 1e3)
                if response.status_code == 200:
                    server_ms.append(response.json()["elapsed_ms"])
                else:
                    errors[str(response.status_code)] = errors.get(str(response.status_code), 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall_s = time.perf_counter() - started

    latencies = np.array(latencies_ms) if latencies_ms else np.array([np.nan])
    num_videos = len(payload["videos"])
    return {
        "requests": requests,
        "concurrency": concurrency,
        "videos_per_request": num_videos,
        "critics": payload["critics"],
        "wall_s": round(wall_s, 3),
        "throughput_rps": round(requests / wall_s, 2),
        "throughput_videos_per_s": round(requests * num_videos / wall_s, 2),
        "p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "p90_ms": round(float(np.percentile(latencies, 90)), 2),
        "p99_ms": round(float(np.percentile(latencies, 99)), 2),
        "max_ms": round(float(latencies.max()), 2),
        "server_elapsed_p50_ms": round(float(np.median(server_ms)), 2) if server_ms else None,
        "errors": sum(errors.values()),
        "errors_by_kind": errors,
    }


def start_local_server(config_path: str) -> str:
    import ray

    from reward_services.serve import check_server_config, load_server_config, start_server

    config = load_server_config(config_path)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = config.model_copy(update={"host": "127.0.0.1", "port": port, "app_name": "rewards_bench"})
    check_server_config(config)
    ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    return start_server(config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server's base URL (default: start one on loopback)")
    parser.add_argument("--config", default="configs/reward_server.yaml", help="server config when starting one")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--videos", type=int, default=2, help="toy clips per request")
    parser.add_argument("--critics", default="toy_judges,perceptual")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured requests first")
    parser.add_argument("--token-env", help="environment variable holding the bearer token, if auth is on")
    args = parser.parse_args(argv)

    headers = {}
    if args.token_env:
        headers["Authorization"] = f"Bearer {os.environ[args.token_env]}"
    started_here = args.url is None
    url = args.url.rstrip("/") if args.url else start_local_server(args.config)
    try:
        payload = toy_payload(args.videos, [c for c in args.critics.split(",") if c])
        if args.warmup:
            asyncio.run(run_load(url, payload, args.warmup, 1, headers))
        result = asyncio.run(run_load(url, payload, args.requests, args.concurrency, headers))
    finally:
        if started_here:
            import ray
            from ray import serve

            serve.shutdown()
            ray.shutdown()
    print(
        f"{result['requests']} requests x {result['videos_per_request']} videos, concurrency "
        f"{result['concurrency']}, critics {','.join(result['critics'])}\n"
        f"throughput {result['throughput_rps']} req/s ({result['throughput_videos_per_s']} videos/s) "
        f"in {result['wall_s']} s\n"
        f"latency ms: p50 {result['p50_ms']}  p90 {result['p90_ms']}  p99 {result['p99_ms']}  "
        f"max {result['max_ms']}  (server-side p50 {result['server_elapsed_p50_ms']})\n"
        f"errors {result['errors']} {result['errors_by_kind'] or ''}"
    )
    print(json.dumps(result))
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
