"""Parity: the HTTP endpoint and the in-cluster RewardActor give identical scores for identical videos.

uint8 .npy travels without loss, and float32 -> JSON -> Python float round-trips exactly, so the
comparison is equality, not a tolerance.
"""

import base64
import io
import socket

import httpx
import numpy as np
import pytest
import ray
import torch

from actors.reward import RewardActor
from reward_services.config import CriticSpec, RewardsConfig
from reward_services.http_app import ServerConfig
from toyworld.world import ToyWorld

CRITICS = ("toy_judges", "perceptual")


def npy_b64(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def endpoints(ray_cluster):
    from ray import serve

    from reward_services.serve import start_server

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    rewards = RewardsConfig(critics=tuple(CriticSpec(name=n) for n in CRITICS))
    actor = ray_cluster.remote(RewardActor).options(num_cpus=0.25).remote(rewards)
    config = ServerConfig(port=port, app_name="rewards_parity_test", num_cpus=0.25,
                          critics=[{"name": n} for n in CRITICS])
    try:
        url = start_server(config)
        yield actor, url
    finally:
        serve.shutdown()
        ray_cluster.kill(actor)


def parity_batch() -> tuple[np.ndarray, list[str]]:
    """Toy clips of every kind, half of them degraded, so no score sits at a trivial 0 or 1."""
    clips = ToyWorld(kinds=("object", "pan", "fluid")).sample(6, seed=7)
    videos = np.stack([(clip.video.numpy() * 255).round().astype(np.uint8) for clip in clips])
    noise = np.random.default_rng(0).normal(0, 25, videos[::2].shape)
    videos[::2] = np.clip(videos[::2] + noise, 0, 255).astype(np.uint8)
    return videos, [clip.prompt for clip in clips]


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_http_scores_equal_reward_actor_scores(endpoints, dtype):
    actor, url = endpoints
    videos, prompts = parity_batch()
    if dtype == "float32":
        videos = videos.astype(np.float32) / 255
    in_cluster = ray.get(actor.score.remote(torch.from_numpy(videos), prompts), timeout=60)
    payload = {"videos": [{"format": "npy", "data": npy_b64(v)} for v in videos], "prompts": prompts,
               "critics": list(CRITICS)}
    response = httpx.post(url + "/v1/score", json=payload, timeout=60)
    assert response.status_code == 200, response.text
    over_http = response.json()["scores"]
    assert set(over_http) == set(in_cluster)
    for key, value in in_cluster.items():
        assert over_http[key] == value.tolist(), key  # exact float equality
    assert len(set(over_http["toy_judges.overall"])) > 1  # the batch really discriminates
