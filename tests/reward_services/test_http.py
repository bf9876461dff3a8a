"""The reward HTTP endpoint over real HTTP: a real Serve app on loopback, called with httpx.

Two apps share one Serve HTTP proxy: "open" at / (no auth, small body cap) and "locked" at /auth
(bearer token from a file, 1 s request timeout). The failure-injection critic lives in
failing_critic.py and reaches the replicas through `extra_critic_modules`.
"""

import base64
import io
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reward_services.base import build_critic
from reward_services.http_app import AuthConfig, ServerConfig, resolve_token
from reward_services.serve import ServerConfigError, check_server_config, main, parse_server_config
from tests.reward_services.failing_critic import SLOW_SECONDS
from toyworld.world import ToyWorld

REPO = Path(__file__).resolve().parents[2]
FAILING = "tests.reward_services.failing_critic"
TOKEN = "s3cret-token-for-tests"


def npy_b64(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return base64.b64encode(buffer.getvalue()).decode()


def toy_batch(n: int = 2, seed: int = 0) -> tuple[list[np.ndarray], list[str]]:
    clips = ToyWorld(kinds=("object", "pan", "fluid")).sample(n, seed)
    return [(clip.video.numpy() * 255).round().astype(np.uint8) for clip in clips], [clip.prompt for clip in clips]


def body(videos, prompts, critics=None, **extra) -> dict:
    payload = {"videos": [{"format": "npy", "data": npy_b64(v)} for v in videos], "prompts": prompts, **extra}
    if critics is not None:
        payload["critics"] = critics
    return payload


def direct_scores(videos, prompts, critics) -> dict[str, list[float]]:
    batch = torch.from_numpy(np.stack(videos))
    scores = {}
    for name in critics:
        for key, value in build_critic(name).score(batch, prompts).scores.items():
            scores[f"{name}.{key}"] = value.float().tolist()
    return scores


def error_of(response: httpx.Response, status: int, field=None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "field", "request_id"}
    assert error["request_id"] and error["request_id"] == response.headers["x-request-id"]
    if field is not None:
        assert error["field"] == field, error
    return error


# ----------------------------------------------------------------------------------------------
# Config (no server needed).


def test_config_refuses_unknown_keys_and_ambiguous_auth(tmp_path):
    with pytest.raises(ServerConfigError, match="limits.max_batchx"):
        parse_server_config({"limits": {"max_batchx": 3}})
    with pytest.raises(ServerConfigError, match="at most one"):
        parse_server_config({"auth": {"token_env": "A", "token_file": "b"}})
    with pytest.raises(ServerConfigError, match=r"critics\[0\].name: unknown critic 'nope'"):
        check_server_config(parse_server_config({"critics": [{"name": "nope"}]}))
    bad = tmp_path / "bad.yaml"
    bad.write_text("port: 0\n")
    assert main(["--config", str(bad), "--check"]) == 2
    assert main(["--config", str(REPO / "configs" / "reward_server.yaml"), "--check"]) == 0


def test_token_sources(tmp_path, monkeypatch):
    assert resolve_token(AuthConfig()) is None
    monkeypatch.setenv("TELEBOOST_TEST_TOKEN", " abc \n")
    assert resolve_token(AuthConfig(token_env="TELEBOOST_TEST_TOKEN")) == "abc"
    monkeypatch.setenv("TELEBOOST_TEST_TOKEN", "")
    with pytest.raises(ValueError, match="unset or empty"):
        resolve_token(AuthConfig(token_env="TELEBOOST_TEST_TOKEN"))
    path = tmp_path / "token"
    path.write_text("xyz\n")
    assert resolve_token(AuthConfig(token_file=str(path))) == "xyz"
    with pytest.raises(ValueError, match="cannot be read"):
        resolve_token(AuthConfig(token_file=str(tmp_path / "missing")))


# ----------------------------------------------------------------------------------------------
# The served apps.


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def servers(ray_cluster, tmp_path_factory):
    from ray import serve

    from reward_services.serve import start_server

    port = free_port()
    token_file = tmp_path_factory.mktemp("auth") / "token"
    token_file.write_text(TOKEN + "\n")
    common = {"port": port, "num_cpus": 0.25, "extra_critic_modules": [FAILING]}
    open_config = ServerConfig.model_validate({
        **common, "app_name": "rewards_open_test", "route_prefix": "/",
        "critics": [{"name": n} for n in ("toy_judges", "perceptual", "safety", "failing")],
        "limits": {"max_body_bytes": 2**20, "max_batch": 16, "max_frames": 16, "max_height": 64, "max_width": 64},
    })
    locked_config = ServerConfig.model_validate({
        **common, "app_name": "rewards_locked_test", "route_prefix": "/auth",
        "critics": [{"name": "failing"}], "auth": {"token_file": str(token_file)},
        "limits": {"request_timeout_s": 1.0},
    })
    try:
        urls = {"open": start_server(open_config), "locked": start_server(locked_config)}
        with httpx.Client(timeout=60) as client:
            client.post(urls["open"] + "/v1/score", json=body(*toy_batch()))  # warm the critics once
            yield urls
    finally:
        serve.shutdown()  # Serve only; the session's Ray cluster stays up


@pytest.fixture
def url(servers):
    return servers["open"]


# ----------------------------------------------------------------------------------------------
# Happy paths.


def test_scores_equal_direct_critic_calls(url):
    videos, prompts = toy_batch(3, seed=1)
    response = httpx.post(url + "/v1/score", json=body(videos, prompts, ["toy_judges", "perceptual"]), timeout=30)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["scores"] == direct_scores(videos, prompts, ["toy_judges", "perceptual"])
    assert result["request_id"] == response.headers["x-request-id"]
    assert result["gated"] is None and result["elapsed_ms"] > 0
    assert set(result["critic_ms"]) == {"toy_judges", "perceptual"}


def test_free_text_prompt_skips_grammar_critics_unless_named(url):
    """A new user's first request: any prompt. The default set scores it with every critic that
    can judge it and says why the toy judges stepped aside; naming them gets a 422 naming the prompt."""
    videos, _ = toy_batch(1, seed=2)
    response = httpx.post(url + "/v1/score", json=body(videos, ["a dog runs on a beach at sunset"]), timeout=30)
    assert response.status_code == 200, response.text
    result = response.json()
    assert set(result["skipped"]) == {"toy_judges"} and "prompts[0] is not a toy-world prompt" in result["skipped"]["toy_judges"]
    assert set(result["critic_ms"]) == {"perceptual", "safety", "failing"}
    assert result["scores"]["perceptual.sharpness"] == direct_scores(videos, ["x"], ["perceptual"])["perceptual.sharpness"]
    named = httpx.post(url + "/v1/score", json=body(videos, ["a dog runs on a beach at sunset"], ["toy_judges"]), timeout=30)
    assert named.status_code == 422 and named.json()["error"]["field"] == "prompts"


def test_the_readmes_request_example_works_as_written(url, capsys):
    """README's Python request, executed as written (only the server's address differs)."""
    import re

    (example,) = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    exec(example.replace("http://127.0.0.1:8000", url), {})
    status, sharpness, skipped = capsys.readouterr().out.split(" ", 2)
    assert status == "200" and 0.0 <= float(sharpness.strip("[]")) <= 1.0 and "toy_judges" in skipped


def test_client_request_id_is_echoed(url):
    videos, prompts = toy_batch(1)
    response = httpx.post(url + "/v1/score", json=body(videos, prompts, ["perceptual"]),
                          headers={"X-Request-ID": "client-id-42"})
    assert response.json()["request_id"] == "client-id-42"


def test_safety_fills_gated(url):
    calm, prompts = toy_batch(1)
    flashing = np.zeros_like(calm[0])
    flashing[1::2] = 255  # black/white every frame: 4 flashes per second at 8 fps
    videos = [calm[0], flashing]
    response = httpx.post(url + "/v1/score", json=body(videos, prompts * 2, ["safety"]))
    assert response.status_code == 200, response.text
    assert response.json()["gated"] == [False, True]
    assert response.json()["scores"] == direct_scores(videos, prompts * 2, ["safety"])


def test_mixed_shapes_are_scored_per_shape_group(url):
    videos, prompts = toy_batch(3, seed=2)
    videos[1] = videos[1][:5]  # fewer frames
    response = httpx.post(url + "/v1/score", json=body(videos, prompts, ["perceptual"]))
    assert response.status_code == 200, response.text
    scores = response.json()["scores"]
    same = direct_scores([videos[0], videos[2]], [prompts[0], prompts[2]], ["perceptual"])
    alone = direct_scores([videos[1]], [prompts[1]], ["perceptual"])
    for key in scores:
        assert scores[key] == [same[key][0], alone[key][0], same[key][1]]


def test_mp4_and_float32_videos(url, tmp_path):
    import cv2

    from reward_services.schemas import Limits, decode_mp4

    videos, prompts = toy_batch(1, seed=3)
    path = str(tmp_path / "clip.mp4")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 8, (32, 32))
    for frame in videos[0]:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    raw = open(path, "rb").read()
    float_video = videos[0].astype(np.float32) / 255
    payload = {
        "videos": [{"format": "mp4", "data": base64.b64encode(raw).decode()},
                   {"format": "npy", "data": npy_b64(float_video)}],
        "prompts": prompts * 2, "critics": ["perceptual"],
    }
    response = httpx.post(url + "/v1/score", json=payload)
    assert response.status_code == 200, response.text
    decoded = decode_mp4(raw, "mp4", Limits())  # what the server decoded, frame for frame
    scores = response.json()["scores"]
    expected_mp4 = direct_scores([decoded], prompts, ["perceptual"])
    expected_float = direct_scores([float_video], prompts, ["perceptual"])
    assert {k: v[0] for k, v in scores.items()} == {k: v[0] for k, v in expected_mp4.items()}
    assert {k: v[1] for k, v in scores.items()} == {k: v[0] for k, v in expected_float.items()}


def test_first_frames_are_accepted_and_checked(url):
    videos, prompts = toy_batch(2, seed=5)
    frames = [{"format": "npy", "data": npy_b64(v[0])} for v in videos]
    response = httpx.post(url + "/v1/score", json=body(videos, prompts, ["perceptual"], first_frames=frames))
    assert response.status_code == 200, response.text
    frames[1]["data"] = npy_b64(videos[1][0, :16])
    response = httpx.post(url + "/v1/score", json=body(videos, prompts, first_frames=frames))
    error_of(response, 422, "first_frames[1].data")


def test_critics_healthz_openapi(url):
    critics = httpx.get(url + "/v1/critics").json()
    names = [c["name"] for c in critics["critics"]]
    assert names == ["toy_judges", "perceptual", "safety", "failing"]
    assert critics["critics"][0]["score_names"][-1] == "overall"
    assert "failing" in critics["registered"] and critics["limits"]["max_batch"] == 16
    assert httpx.get(url + "/healthz").json() == {"status": "ok", "critics": names}
    schema = httpx.get(url + "/openapi.json").json()
    assert {"/v1/score", "/v1/critics", "/healthz", "/metrics"} <= set(schema["paths"])
    assert "ScoreRequest" in schema["components"]["schemas"]
    assert httpx.get(url + "/docs").status_code == 200


def test_metrics_count_requests_and_critic_latency(url):
    videos, prompts = toy_batch(1)
    httpx.post(url + "/v1/score", json=body(videos, prompts, ["toy_judges"]))
    httpx.post(url + "/v1/score", json=body(videos, prompts, ["nope"]))
    response = httpx.get(url + "/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'teleboost_reward_http_requests_total{method="POST",route="/v1/score",status="200"}' in text
    assert 'teleboost_reward_http_requests_total{method="POST",route="/v1/score",status="422"}' in text
    assert 'teleboost_reward_critic_seconds_count{critic="toy_judges"}' in text
    assert "teleboost_reward_http_request_seconds_bucket" in text
    assert "teleboost_reward_gated_samples_total" in text and "teleboost_reward_videos_scored_total" in text


def test_concurrent_requests_all_succeed_and_agree(url):
    videos, prompts = toy_batch(2, seed=4)
    payload = body(videos, prompts, ["toy_judges", "perceptual"])
    with httpx.Client(timeout=60) as client, ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda _: client.post(url + "/v1/score", json=payload), range(16)))
    assert [r.status_code for r in responses] == [200] * 16
    assert len({r.json()["request_id"] for r in responses}) == 16
    first = responses[0].json()["scores"]
    assert all(r.json()["scores"] == first for r in responses)
    assert first == direct_scores(videos, prompts, ["toy_judges", "perceptual"])


# ----------------------------------------------------------------------------------------------
# Bad input: 4xx naming the field.


def test_oversize_body_is_413_with_and_without_content_length(url):
    big = b'{"videos": "' + b"A" * (2**20 + 10) + b'"}'
    error = error_of(httpx.post(url + "/v1/score", content=big, headers={"content-type": "application/json"}), 413)
    assert "max_body_bytes" in error["message"]

    def chunks():
        for _ in range(20):
            yield b"A" * 65536

    error_of(httpx.post(url + "/v1/score", content=chunks(), headers={"content-type": "application/json"}), 413)


def test_malformed_base64_names_field(url):
    videos, prompts = toy_batch(2)
    payload = body(videos, prompts)
    payload["videos"][1]["data"] = "not*base64"
    error = error_of(httpx.post(url + "/v1/score", json=payload), 422, "videos[1].data")
    assert "base64" in error["message"]


@pytest.mark.parametrize("array, words", [
    (np.zeros((4, 16, 16, 3), np.int64), "dtype"),
    (np.zeros((16, 16, 3), np.uint8), "shape"),
    (np.zeros((4, 16, 16, 4), np.uint8), "shape"),
    (np.zeros((17, 16, 16, 3), np.uint8), "max_frames"),
    (np.zeros((4, 65, 16, 3), np.uint8), "resolution"),
    (np.full((9, 1, 8, 3), 128, np.uint8), "min_side"),  # crashed the toy judges before min_side
    (np.full((4, 16, 16, 3), 2.0, np.float32), "[0, 1]"),
])
def test_bad_arrays_name_field(url, array, words):
    error = error_of(httpx.post(url + "/v1/score", json=body([array], ["p"])), 422, "videos[0].data")
    assert words in error["message"]


def test_request_level_errors(url):
    videos, prompts = toy_batch(2)
    error = error_of(httpx.post(url + "/v1/score", json=body(videos, prompts, ["toy_judges", "nope"])), 422,
                     "critics[1]")
    assert "toy_judges" in error["message"] and "failing" in error["message"]
    error_of(httpx.post(url + "/v1/score", json=body(videos, prompts[:1])), 422, "prompts")
    error_of(httpx.post(url + "/v1/score", json=body(videos * 9, prompts * 9)), 422, "videos")
    payload = body(videos, prompts)
    payload["videos"][0]["format"] = "gif"
    error_of(httpx.post(url + "/v1/score", json=payload), 422, "videos[0].format")
    error_of(httpx.post(url + "/v1/score", json={"prompts": []}), 422, "videos")
    error_of(httpx.post(url + "/v1/score", json={**body(videos, prompts), "extra": 1}), 422, "extra")
    error_of(httpx.post(url + "/v1/score", content=b"{not json", headers={"content-type": "application/json"}),
             422, "body")
    error = error_of(httpx.post(url + "/v1/score", json=body(videos, ["a cat", "a dog"], ["toy_judges"])),
                     422, "prompts")
    assert error["code"] == "rejected_by_critic"
    error_of(httpx.get(url + "/v1/nothing"), 404)
    error_of(httpx.get(url + "/v1/score"), 405)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
encoded = st.fixed_dictionaries({
    "format": st.sampled_from(["npy", "mp4", "png"]),
    "data": st.binary(max_size=64).map(lambda raw: base64.b64encode(raw).decode()),
})
near_valid = st.fixed_dictionaries(
    {"videos": st.lists(encoded, max_size=3), "prompts": st.lists(st.text(max_size=20), max_size=3)},
    optional={"critics": st.lists(st.sampled_from(["toy_judges", "failing", "x"]), max_size=3),
              "first_frames": json_values},
)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(json_values, near_valid))
def test_garbage_is_never_a_5xx(url, payload):
    # Sent as bytes: json.dumps writes inf as `Infinity` (not JSON), which httpx's own encoder refuses.
    response = httpx.post(url + "/v1/score", content=json.dumps(payload), timeout=30,
                          headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["field"]


# ----------------------------------------------------------------------------------------------
# Failures and auth.


def test_critic_failure_is_500_with_request_id_and_replica_keeps_serving(url):
    videos, prompts = toy_batch(2)
    error = error_of(httpx.post(url + "/v1/score", json=body(videos, ["__raise__", prompts[1]], ["failing"])), 500)
    assert error["code"] == "critic_failed" and error["request_id"] in error["message"]
    response = httpx.post(url + "/v1/score", json=body(videos, prompts, ["failing", "toy_judges"]))
    assert response.status_code == 200, response.text
    assert response.json()["scores"]["failing.brightness"] == pytest.approx(
        [float(v.astype(np.float32).mean() / 255) for v in videos], rel=1e-5)


def test_auth_required_on_locked_app(servers):
    url = servers["locked"]
    videos, prompts = toy_batch(1)
    payload = body(videos, prompts)
    error = error_of(httpx.post(url + "/v1/score", json=payload), 401, "Authorization")
    assert error["code"] == "unauthorized"
    response = httpx.post(url + "/v1/score", json=payload, headers={"Authorization": "Bearer wrong"})
    error_of(response, 401, "Authorization")
    assert response.headers["www-authenticate"].startswith("Bearer")
    error_of(httpx.get(url + "/v1/critics", headers={"Authorization": f"Basic {TOKEN}"}), 401)
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.post(url + "/v1/score", json=payload, headers=good).status_code == 200
    assert httpx.get(url + "/v1/critics", headers=good).status_code == 200
    assert httpx.get(url + "/healthz").status_code == 200  # probes stay open
    schema = httpx.get(url + "/openapi.json").json()
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
    # the open app at / is unaffected
    assert httpx.post(servers["open"] + "/v1/score", json=body(videos, prompts, ["failing"])).status_code == 200


def test_timeout_is_504_and_replica_recovers(servers):
    url, good = servers["locked"], {"Authorization": f"Bearer {TOKEN}"}
    videos, _ = toy_batch(1)
    error = error_of(httpx.post(url + "/v1/score", json=body(videos, ["__slow__"]), headers=good, timeout=30), 504)
    assert error["code"] == "timeout" and "request_timeout_s" in error["message"]
    assert httpx.get(url + "/healthz", timeout=0.5).status_code == 200  # the event loop is free meanwhile
    time.sleep(SLOW_SECONDS)  # the timed-out batch still holds the critic thread until it ends
    response = httpx.post(url + "/v1/score", json=body(videos, ["fine"]), headers=good, timeout=30)
    assert response.status_code == 200, response.text
