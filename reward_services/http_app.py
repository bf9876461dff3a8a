"""The reward HTTP endpoint: a FastAPI app served by one Ray Serve deployment (report §5).

Routes (relative to the app's route prefix):

- `POST /v1/score`   — score videos with named critics (request/response: reward_services.schemas)
- `GET  /v1/critics` — the critics this server loads, their score names, and the limits
- `GET  /healthz`    — liveness of this replica
- `GET  /metrics`    — Prometheus text of this replica's own counters (Ray's metrics are separate)
- `GET  /openapi.json`, `/docs` — the schema and its viewer

Each replica builds the configured critics once (after importing `extra_critic_modules`, the
plugin hook for user critics: a module that applies `@register_critic` on import). Critics run
one batch at a time in a single worker thread per replica: critics are not assumed thread-safe,
and on a CPU one batch already uses the replica's torch threads; scale with `num_replicas`.
The whole decode + score of a request is bounded by `limits.request_timeout_s` (504). A
timed-out batch that already started runs to completion in its thread (Python cannot kill a
thread), so later requests on that replica wait behind it; batches not yet started are dropped.

Errors are `{"error": {"code", "message", "field", "request_id"}}`. Bad input is a 4xx naming the
field; a critic raising ValueError is taken as that critic refusing the input (422, field
`prompts` when its message mentions a prompt, else `videos`); any other exception from a critic
is a 500 `critic_failed` with the request id, logged with its traceback, and the replica keeps
serving. The request id is Serve's `x-request-id` (the client's, if it sent one).

Auth (optional): `Authorization: Bearer <token>` on `/v1/*`, the token read by each replica from
the environment variable `auth.token_env` or the file `auth.token_file`, compared in constant
time. `/healthz`, `/metrics` and the OpenAPI routes stay open for probes and scrapers.

Not supported: batching across requests, per-request critic options, streaming responses,
TLS (terminate it in front of Serve), and `/metrics` across replicas (each replica reports its
own counters — scrape replicas through Ray's metrics export for a cluster-wide view).
"""

from __future__ import annotations

import asyncio
import hmac
import importlib
import json
import logging
import math
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from reward_services.base import available_critics, build_critic
from reward_services.config import distinct_critics
from reward_services.schemas import (
    CriticInfo,
    CriticsResponse,
    DecodedRequest,
    ErrorResponse,
    HealthResponse,
    Limits,
    RequestError,
    ScoreRequest,
    ScoreResponse,
    decode_request,
    field_path,
    shape_groups,
)

logger = logging.getLogger("ray.serve")

# ----------------------------------------------------------------------------------------------
# Configuration.


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServedCritic(_Section):
    """A critic to load: its registered name and the keyword options it is built with."""

    name: str
    options: dict = Field(default_factory=dict)


class AuthConfig(_Section):
    """Bearer-token auth, off unless one source is named. The token itself never sits in config."""

    token_env: str | None = Field(None, description="environment variable holding the token")
    token_file: str | None = Field(None, description="file holding the token (surrounding whitespace ignored)")

    @model_validator(mode="after")
    def _one_source(self):
        if self.token_env and self.token_file:
            raise ValueError("set at most one of auth.token_env and auth.token_file")
        return self


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    app_name: str = "rewards"
    route_prefix: str = "/"
    critics: tuple[ServedCritic, ...] = (ServedCritic(name="toy_judges"), ServedCritic(name="perceptual"))
    extra_critic_modules: tuple[str, ...] = Field(
        (), description="modules each replica imports before building critics (register user critics)"
    )
    limits: Limits = Limits()
    auth: AuthConfig = AuthConfig()
    num_replicas: int = Field(1, ge=1)
    num_cpus: float = Field(0.5, ge=0, description="Ray CPUs reserved per replica")
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads per replica (as RewardActor)")
    max_ongoing_requests: int = Field(8, ge=1, description="per replica; more wait in Serve's queue")

    @field_validator("route_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value.startswith("/") or (value != "/" and value.endswith("/")):
            raise ValueError(f"route_prefix must start with '/' and not end with one (or be '/'), got {value!r}")
        return value

    @field_validator("critics")
    @classmethod
    def _distinct(cls, critics):
        return distinct_critics(critics)


def resolve_token(auth: AuthConfig) -> str | None:
    """The bearer token from `auth`'s source, or None when auth is off; raises if the source is empty."""
    if auth.token_env:
        token = os.environ.get(auth.token_env, "").strip()
        if not token:
            raise ValueError(f"auth.token_env={auth.token_env!r} but that environment variable is unset or empty")
        return token
    if auth.token_file:
        path = Path(auth.token_file).expanduser()
        try:
            token = path.read_text().strip()
        except OSError as err:
            raise ValueError(f"auth.token_file={auth.token_file!r} cannot be read: {err}") from None
        if not token:
            raise ValueError(f"auth.token_file={auth.token_file!r} is empty")
        return token
    return None


def import_critic_modules(modules) -> None:
    for module in modules:
        importlib.import_module(module)


# ----------------------------------------------------------------------------------------------
# Metrics (this replica's own registry, so two apps in one process never collide).


class ServerMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "teleboost_reward_http_requests", "HTTP requests by route, method and status code",
            ["route", "method", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "teleboost_reward_http_request_seconds", "HTTP request latency", ["route"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.critic_latency = Histogram(
            "teleboost_reward_critic_seconds", "Time one critic spends on one request", ["critic"],
            registry=self.registry, buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.critic_errors = Counter(
            "teleboost_reward_critic_errors", "Critic calls that raised, by kind (rejected input / failed)",
            ["critic", "kind"], registry=self.registry,
        )
        # Per video, so the distribution is the served scores' (no prompt or request label).
        self.critic_scores = Histogram(
            "teleboost_reward_critic_score", "Each video's score, by critic and score name", ["critic", "score"],
            registry=self.registry, buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 2.5, 10),
        )
        self.videos = Counter("teleboost_reward_videos_scored", "Videos scored", registry=self.registry)
        self.gated = Counter(
            "teleboost_reward_gated_samples", "Videos some critic's `gated` score gated", registry=self.registry
        )


# ----------------------------------------------------------------------------------------------
# The scoring service (no Serve, no HTTP: what one replica holds).


class ScoringService:
    """Builds the configured critics once and scores decoded requests with them."""

    def __init__(self, config: ServerConfig):
        import_critic_modules(config.extra_critic_modules)
        torch.set_num_threads(config.torch_threads)
        self.config = config
        self.limits = config.limits
        self.token = resolve_token(config.auth)
        self.critics = {spec.name: build_critic(spec.name, **spec.options) for spec in config.critics}
        self.metrics = ServerMetrics()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="critic")

    def critic_infos(self) -> list[CriticInfo]:
        infos = []
        for spec in self.config.critics:
            critic = self.critics[spec.name]
            doc = (type(critic).__doc__ or "").strip().splitlines()
            infos.append(CriticInfo(
                name=spec.name, score_names=list(critic.score_names), options=spec.options,
                description=doc[0] if doc else "",
            ))
        return infos

    def select_critics(self, requested: list[str] | None) -> list[str]:
        if requested is None:
            return list(self.critics)
        for index, name in enumerate(requested):
            if name not in self.critics:
                raise RequestError(
                    422, "unknown_critic", f"critics[{index}]",
                    f"critics[{index}]: unknown critic {name!r}; this server loads {list(self.critics)}",
                )
        return list(dict.fromkeys(requested))

    async def score(self, request: ScoreRequest, request_id: str) -> ScoreResponse:
        started = time.perf_counter()
        names = self.select_critics(request.critics)
        skipped = {}
        if request.critics is None:  # "every critic": those that cannot judge these prompts step aside
            skipped = {name: reason for name in names if (reason := self.critics[name].refuses(request.prompts))}
            names = [name for name in names if name not in skipped]
        loop = asyncio.get_running_loop()

        async def decode_and_score():
            decoded = await asyncio.to_thread(decode_request, request, self.limits)
            return await loop.run_in_executor(self._executor, self.score_decoded, decoded, names, request_id)

        try:
            scores, critic_ms = await asyncio.wait_for(decode_and_score(), self.limits.request_timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(
                504, "timeout", None,
                f"decoding and scoring took longer than request_timeout_s={self.limits.request_timeout_s}",
            ) from None

        gated = None
        gate_columns = [column for key, column in scores.items() if key.endswith(".gated")]
        if gate_columns:
            gated = [any(bool(col[i] and col[i] > 0.5) for col in gate_columns) for i in range(len(request.videos))]
            self.metrics.gated.inc(sum(gated))
        self.metrics.videos.inc(len(request.videos))
        return ScoreResponse(
            request_id=request_id, scores=scores, gated=gated,
            elapsed_ms=(time.perf_counter() - started) * 1e3, critic_ms=critic_ms, skipped=skipped,
        )

    def score_decoded(
        self, decoded: DecodedRequest, names: list[str], request_id: str = "-"
    ) -> tuple[dict[str, list[float | None]], dict[str, float]]:
        """Run each critic over each same-shape group; scores keyed "critic.score" as RewardActor's."""
        batch = len(decoded.videos)
        groups = []
        for indices in shape_groups(decoded.videos):
            videos = torch.from_numpy(np.stack([decoded.videos[i] for i in indices]))
            first = None
            if decoded.first_frames is not None:
                frames = torch.from_numpy(np.stack([decoded.first_frames[i] for i in indices]))
                first = frames.float() / 255.0 if frames.dtype == torch.uint8 else frames
            groups.append((indices, videos, [decoded.prompts[i] for i in indices], first))

        scores: dict[str, list[float | None]] = {}
        critic_ms: dict[str, float] = {}
        for name in names:
            critic = self.critics[name]
            started = time.perf_counter()
            for indices, videos, prompts, first in groups:
                try:
                    with torch.no_grad():
                        output = critic.score(videos, prompts, first)
                except ValueError as err:
                    self.metrics.critic_errors.labels(name, "rejected").inc()
                    field = "prompts" if "prompt" in str(err).lower() else "videos"
                    raise RequestError(
                        422, "rejected_by_critic", field, f"{field}: critic {name!r} refused the input: {err}"
                    ) from None
                except Exception as err:
                    self.metrics.critic_errors.labels(name, "failed").inc()
                    logger.exception("request %s: critic %r raised", request_id, name)
                    raise RequestError(
                        500, "critic_failed", None,
                        f"critic {name!r} failed with {type(err).__name__}: {str(err)[:300]} "
                        f"(request {request_id}; traceback in the replica log)",
                    ) from None
                for key, value in output.scores.items():
                    column = scores.setdefault(f"{name}.{key}", [None] * batch)
                    for index, number in zip(indices, value.float().tolist()):
                        column[index] = number if math.isfinite(number) else None
                        if math.isfinite(number):
                            self.metrics.critic_scores.labels(name, key).observe(number)
            seconds = time.perf_counter() - started
            self.metrics.critic_latency.labels(name).observe(seconds)
            critic_ms[name] = seconds * 1e3
        return scores, critic_ms


# ----------------------------------------------------------------------------------------------
# The ASGI guard: request id, auth, body cap, metrics and the last-resort 500.


def _route_path(scope) -> str:
    """The path below the app's root (Serve sets root_path to the route prefix)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root):] or "/"
    return path


class _ClientGone(Exception):
    """The client disconnected before its request was complete."""


class Guard:
    """Outermost middleware. Auth and the body cap act before any JSON is parsed."""

    def __init__(self, app, service: ScoringService, routes: frozenset[str]):
        self.app, self.service, self.routes = app, service, routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        # Serve's proxy always sets x-request-id (and echoes it back); outside Serve we make one.
        request_id = headers.get("x-request-id")
        add_header = request_id is None
        request_id = request_id or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        path = _route_path(scope)
        status = {"code": 500, "started": False}

        async def send_tracked(message):
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
                if add_header:
                    message.setdefault("headers", [])
                    message["headers"] = list(message["headers"]) + [(b"x-request-id", request_id.encode())]
            await send(message)

        try:
            if path.startswith("/v1/") and self.service.token is not None:
                self._check_token(headers.get("authorization", ""))
            receive = await self._capped_body(headers, receive)
            await self.app(scope, receive, send_tracked)
        except RequestError as err:
            await _error_response(err, request_id)(scope, receive, send_tracked)
        except (_ClientGone, ClientDisconnect):
            status["code"] = 499  # nginx's "client closed request"; nothing is sent
        except Exception:
            logger.exception("request %s: unhandled error on %s", request_id, path)
            if not status["started"]:
                err = RequestError(500, "internal_error", None, f"internal error (request {request_id})")
                await _error_response(err, request_id)(scope, receive, send_tracked)
        finally:
            route = path if path in self.routes else "other"
            self.service.metrics.requests.labels(route, scope.get("method", ""), str(status["code"])).inc()
            self.service.metrics.latency.labels(route).observe(time.perf_counter() - started)

    def _check_token(self, authorization: str) -> None:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise RequestError(
                401, "unauthorized", "Authorization", "Authorization: send 'Bearer <token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(credentials.strip().encode(), self.service.token.encode()):
            raise RequestError(
                401, "unauthorized", "Authorization", "Authorization: bearer token does not match",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )

    async def _capped_body(self, headers: dict, receive):
        """Read the whole body up to max_body_bytes (413 beyond), then replay it to the app."""
        limit = self.service.limits.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                raise RequestError(400, "bad_request", "Content-Length", f"Content-Length: {declared!r} is not a size")
            if int(declared) > limit:
                raise RequestError(
                    413, "too_large", "body", f"body: {declared} bytes exceeds max_body_bytes={limit}"
                )
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise _ClientGone()
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                raise RequestError(413, "too_large", "body", f"body: more than max_body_bytes={limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                first = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return first
            return await receive()

        return replay


def _error_response(err: RequestError, request_id: str) -> JSONResponse:
    return JSONResponse(err.body(request_id), status_code=err.status, headers=err.headers)


def _request_id(request: Request) -> str:
    return getattr(request.state, "request_id", None) or request.headers.get("x-request-id") or uuid.uuid4().hex


# ----------------------------------------------------------------------------------------------
# The FastAPI app.

_ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 413, 422, 500, 504)}
_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
                 413: "too_large", 415: "unsupported_media_type"}


def build_app(service: ScoringService) -> FastAPI:
    app = FastAPI(
        title="TeleBoost reward service",
        version="1",
        description="Scores videos with TeleBoost critics. Errors: {\"error\": {code, message, field, request_id}}.",
    )
    # Auth is enforced by Guard (before the body is read); the dependency only documents it.
    security = [Security(HTTPBearer(auto_error=False))] if service.token is not None else []

    @app.post("/v1/score", response_model=ScoreResponse, responses=_ERRORS, dependencies=security)
    async def score(body: ScoreRequest, request: Request) -> ScoreResponse:
        """Score each video with each named critic; scores keyed "critic.score" like the reward actors'."""
        return await service.score(body, _request_id(request))

    @app.get("/v1/critics", response_model=CriticsResponse, responses=_ERRORS, dependencies=security)
    async def critics() -> CriticsResponse:
        return CriticsResponse(critics=service.critic_infos(), registered=available_critics(), limits=service.limits)

    @app.get("/healthz", response_model=HealthResponse)
    async def healthz() -> HealthResponse:
        return HealthResponse(status="ok", critics=list(service.critics))

    @app.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    async def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, err: RequestError):
        return _error_response(err, _request_id(request))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError):
        problems = err.errors()
        first = problems[0] if problems else {"loc": ("body",), "msg": "invalid request"}
        if first.get("type") == "json_invalid":
            field, message = "body", f"body: not valid JSON ({first.get('ctx', {}).get('error', first['msg'])})"
        else:
            field = field_path(tuple(first["loc"]))
            message = "; ".join(f"{field_path(tuple(p['loc']))}: {p['msg']}" for p in problems[:5])
        return _error_response(RequestError(422, "invalid_input", field, message), _request_id(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException):
        code = _STATUS_CODES.get(err.status_code, "http_error")
        detail = err.detail if isinstance(err.detail, str) else json.dumps(err.detail)
        error = RequestError(err.status_code, code, None, detail, headers=dict(err.headers or {}))
        return _error_response(error, _request_id(request))

    routes = frozenset(route.path for route in app.routes)
    app.add_middleware(Guard, service=service, routes=routes)
    return app


# ----------------------------------------------------------------------------------------------
# The Serve deployment.


@serve.ingress()
class RewardServer:
    """One replica: builds the critics once, then serves the FastAPI app built around them."""

    def __init__(self, config: dict):
        self.service = ScoringService(ServerConfig.model_validate(config))

    def __serve_build_asgi_app__(self):
        return build_app(self.service)


def reward_app(config: ServerConfig):
    """A bound Serve application for `config`; run it with `serve.run(..., name, route_prefix)`."""
    deployment = serve.deployment(
        RewardServer,
        name="RewardServer",
        num_replicas=config.num_replicas,
        max_ongoing_requests=config.max_ongoing_requests,
        ray_actor_options={"num_cpus": config.num_cpus},
    )
    return deployment.bind(config.model_dump(mode="json"))
