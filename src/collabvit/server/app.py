"""The FastAPI app: routes, bearer-token auth, body limits and the errors' HTTP answers.

The work itself is in :mod:`~collabvit.server.api` (decode, predict, encode)
and :mod:`~collabvit.server.batcher`; this module only wires them to HTTP.
Errors map to answers in one place, :func:`_error_answer`: a
:class:`~collabvit.errors.PayloadTooLarge` is 413 (checked before
:class:`~collabvit.errors.WireError`, which it derives from, and which is
400), :class:`~collabvit.errors.ServerBusy` 503 with ``Retry-After``, a
missing or wrong token 401, a body slower than ``body_timeout_s`` 408 (and
the connection closed), a client gone mid-upload is counted ``aborted`` and
logged at INFO, anything else 500 with its traceback in the log.

``/readyz`` answers 200 only while the work queue runs and the server is not
draining (:func:`begin_draining`, called on SIGTERM); ``/healthz`` is liveness.
The work queue is a :class:`~collabvit.server.batcher.Batcher` in this process
unless one is given (the Ray engine's, :mod:`.ray_app`, sends each request to
a model-worker deployment). Every response carries the model's identity
(:mod:`.identity`).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import ClientDisconnect
from starlette.types import Message

from ..errors import CollabViTError, ConfigError, PayloadTooLarge, ServerBusy, WireError
from ..models import LoadedModel
from ..wire import Geometry
from .api import (
    Decoded,
    ServerConfig,
    decode_image,
    decode_request,
    encode_response,
    geometry_of,
    predict_batch,
)
from .batcher import Batcher, BatcherCallbacks, WorkQueue
from .framing import RefuseAmbiguousFraming
from .identity import IdentityHeaders, model_identity
from .metrics import ServerMetrics

__all__ = ["begin_draining", "create_app"]

logger = logging.getLogger(__name__)


class _Unauthorized(CollabViTError):
    """A request to a guarded route without the right bearer token (401)."""


class _ClientGone(CollabViTError):
    """The client closed the connection before its whole body arrived (not a server error)."""


class _BodyTimeout(CollabViTError):
    """The request body did not arrive within ``body_timeout_s`` (408, connection closed)."""


@dataclass
class _Service:
    """What the routes of one app share."""

    loaded: LoadedModel
    config: ServerConfig
    geometry: Geometry
    metrics: ServerMetrics
    batcher: WorkQueue
    identity: dict[str, Any]
    extra_metrics: Callable[[], bytes] | None = None  # e.g. Ray's, appended to ours
    decodes: asyncio.Semaphore | None = None  # made on the serving loop, at startup
    draining: bool = False


def create_app(
    loaded: LoadedModel,
    config: ServerConfig | None = None,
    *,
    callbacks: Sequence[BatcherCallbacks] = (),
    queue: WorkQueue | None = None,
    extra_metrics: Callable[[], bytes] | None = None,
) -> FastAPI:
    """The FastAPI app serving ``loaded`` (the server model).

    The batcher starts and stops with the app's lifespan (uvicorn runs it; in
    tests ``async with app.router.lifespan_context(app)`` does). Stopping
    finishes every request already accepted. ``callbacks`` are called by the
    batcher after the app's own metrics (e.g. a test's hook that holds the worker).
    ``queue`` replaces the in-process batcher (then ``callbacks`` are not
    used); ``extra_metrics`` is more Prometheus text for ``/metrics``.
    """
    service = _service(loaded, config or ServerConfig(), callbacks, queue)
    service.extra_metrics = extra_metrics
    app = FastAPI(
        title="collabvit server",
        description="Attention-aware collaborative inference: the server ViT",
        lifespan=_lifespan(service),
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.add_middleware(RefuseAmbiguousFraming)  # before any route reads a body
    app.add_middleware(IdentityHeaders, identity=service.identity)  # outermost: every answer
    app.state.model = loaded
    app.state.config = service.config
    app.state.metrics = service.metrics
    app.state.batcher = service.batcher
    app.state.service = service
    _add_routes(app, service)
    return app


def begin_draining(app: FastAPI) -> None:
    """From now on ``/readyz`` answers 503 (requests are still answered): on SIGTERM."""
    app.state.service.draining = True


def _service(
    loaded: LoadedModel,
    config: ServerConfig,
    callbacks: Sequence[BatcherCallbacks],
    queue: WorkQueue | None,
) -> _Service:
    metrics = ServerMetrics()
    batcher = queue or Batcher(
        partial(predict_batch, loaded),  # same length buckets inside forward_subset
        max_batch_size=config.max_batch_size,
        max_wait_ms=config.max_wait_ms,
        max_queue=config.max_queue,
        callbacks=(metrics, *callbacks),
    )
    metrics.track(lambda: batcher.queue_depth, lambda: batcher.in_flight)
    geometry = geometry_of(loaded)
    served_bytes = geometry.channels * geometry.height * geometry.width
    if served_bytes > config.max_decoded_bytes:
        raise ConfigError(
            f"max_decoded_bytes ({config.max_decoded_bytes}) is below the {served_bytes} bytes "
            f"of one {geometry.describe()} image: the server could decode no request"
        )
    identity = model_identity(loaded, geometry)
    return _Service(loaded, config, geometry, metrics, batcher, identity)


def _lifespan(s: _Service) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await s.batcher.start()
        s.decodes = asyncio.Semaphore(s.config.max_decodes)
        logger.info(
            "serving %s (%s, %d classes): batches of <= %d, wait <= %g ms, queue <= %d, "
            "decodes <= %d%s",
            s.loaded.name,
            s.geometry.describe(),
            s.loaded.num_classes,
            s.config.max_batch_size,
            s.config.max_wait_ms,
            s.config.max_queue,
            s.config.max_decodes,
            ", bearer token required" if s.config.token else "",
        )
        try:
            yield
        finally:
            s.draining = True
            await s.batcher.stop()
            logger.info("batcher stopped; every accepted request was answered")

    return lifespan


def _add_routes(app: FastAPI, s: _Service) -> None:
    config = s.config

    @app.post("/v1/infer")
    async def infer(request: Request) -> Response:
        """Classify one image from the patches in a wire payload."""
        return await _answer(
            s,
            request,
            "/v1/infer",
            lambda body: decode_request(body, s.geometry, config.max_body_bytes),
        )

    @app.post("/v1/infer-image")
    async def infer_image(request: Request) -> Response:
        """Server-only baseline: classify a whole image file from all its patches."""
        return await _answer(
            s,
            request,
            "/v1/infer-image",
            lambda body: decode_image(
                body, s.loaded, config.max_image_pixels, config.max_decoded_bytes
            ),
        )

    @app.get("/healthz")
    async def healthz() -> Response:
        """Liveness and what the server takes; open without the token."""
        return JSONResponse(_health(s))

    @app.get("/readyz")
    async def readyz() -> Response:
        """Readiness: 200 while serving, 503 while starting or draining; open."""
        ready = s.batcher.running and not s.draining
        status = "ready" if ready else ("draining" if s.draining else "starting")
        return JSONResponse({"status": status}, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def prometheus_metrics(request: Request) -> Response:
        """Prometheus metrics (needs the token when one is set)."""
        try:
            _check_token(request, config.token)
        except _Unauthorized as exc:
            return _unauthorized(exc)
        text = generate_latest(s.metrics.registry)
        if s.extra_metrics is not None:
            text += await run_in_threadpool(s.extra_metrics)
        return Response(text, media_type=CONTENT_TYPE_LATEST)


async def _answer(
    s: _Service, request: Request, endpoint: str, decode_body: Callable[[bytes], Decoded]
) -> Response:
    """One inference request, answered and counted by outcome."""
    outcome = "error"
    try:
        response = await _infer(s, request, endpoint, decode_body)
        outcome = "ok"
        return response
    except Exception as exc:
        outcome, response = _error_answer(exc, endpoint, s.config.retry_after_s)
        return response
    finally:
        s.metrics.requests.labels(endpoint, outcome).inc()


async def _infer(
    s: _Service, request: Request, endpoint: str, decode_body: Callable[[bytes], Decoded]
) -> Response:
    """Auth, body, decode (thread pool), batch, encode: the happy path of one request."""
    _check_token(request, s.config.token)
    s.batcher.check_accepting()  # shed load before reading the body
    body = await _read_body(request, s.config.max_body_bytes, s.config.body_timeout_s)
    received = time.perf_counter()
    s.metrics.received_bytes.labels(endpoint).inc(len(body))
    assert s.decodes is not None, "the app's lifespan has not started"
    async with s.decodes:  # at most max_decodes at once: each may hold max_decoded_bytes
        decoded = await run_in_threadpool(decode_body, body)
    logits, batch_size = await s.batcher.submit(decoded)
    result = encode_response(s.loaded, logits, s.config.top_k)
    server_ms = 1000.0 * (time.perf_counter() - received)
    result["server_ms"] = round(server_ms, 3)
    result["batch_size"] = batch_size
    result["identity"] = s.identity
    s.metrics.latency.labels(endpoint).observe(server_ms / 1000.0)
    return JSONResponse(result)


def _error_answer(exc: Exception, endpoint: str, retry_after_s: int) -> tuple[str, Response]:
    """The exception handler of the inference routes: (outcome label, answer)."""
    if isinstance(exc, ServerBusy):
        headers = {"Retry-After": str(retry_after_s)}
        return "overloaded", JSONResponse(
            {"error": f"{exc}: retry later"}, status_code=503, headers=headers
        )
    if isinstance(exc, _Unauthorized):
        return "unauthorized", _unauthorized(exc)
    if isinstance(exc, (_ClientGone, ClientDisconnect)):  # nobody to answer: no traceback
        logger.info("%s: %s; request aborted", endpoint, str(exc) or "the client went away")
        return "aborted", Response(status_code=400)
    if isinstance(exc, _BodyTimeout):  # the rest of the body is not read: close
        logger.info("%s: %s", endpoint, exc)
        return "timeout", JSONResponse(
            {"error": str(exc)}, status_code=408, headers={"Connection": "close"}
        )
    if isinstance(exc, PayloadTooLarge):  # before WireError: it is one
        return "too_large", JSONResponse({"error": str(exc)}, status_code=413)
    if isinstance(exc, WireError):
        return "bad_request", JSONResponse({"error": str(exc)}, status_code=400)
    logger.error("%s failed", endpoint, exc_info=exc)
    return "error", JSONResponse(
        {"error": f"internal server error ({type(exc).__name__}); see the server log"},
        status_code=500,
    )


def _check_token(request: Request, token: str | None) -> None:
    """Raise :class:`_Unauthorized` unless the request carries ``Bearer token`` (if set)."""
    if token is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.encode()
    ):
        raise _Unauthorized("missing or wrong bearer token: send 'Authorization: Bearer TOKEN'")


def _unauthorized(exc: _Unauthorized) -> Response:
    return JSONResponse(
        {"error": str(exc)}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
    )


def _health(s: _Service) -> dict[str, Any]:
    g = s.geometry
    return {
        "status": "draining" if s.draining else "ok",
        "model": s.loaded.name,
        "num_classes": s.loaded.num_classes,
        "geometry": {
            "channels": g.channels,
            "height": g.height,
            "width": g.width,
            "patch_size": g.patch_size,
            "num_patches": g.num_patches,
        },
        "queue_depth": s.batcher.queue_depth,
        "in_flight": s.batcher.in_flight,
        "max_queue": s.config.max_queue,
        "max_batch_size": s.config.max_batch_size,
        "auth": s.config.token is not None,
        "ready": s.batcher.running and not s.draining,
        "identity": s.identity,
    }


async def _read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The request body, refusing (413) anything over ``limit`` bytes without reading it all.

    The whole body must arrive within ``timeout_s``: a deadline for all of it,
    not for each chunk, so a client sending a byte a second is cut off too.

    Raises:
        WireError: a Content-Length that is not a number (400).
        PayloadTooLarge: a declared or streamed body over ``limit`` (413).
        _BodyTimeout: the body is not complete within ``timeout_s`` (408).
        _ClientGone: the client went away before sending all of it.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise WireError(f"bad Content-Length {declared!r}") from None
        if size > limit:
            raise PayloadTooLarge(_too_large(size, limit))
    deadline = asyncio.get_running_loop().time() + timeout_s
    body = bytearray()
    more_body = True
    while more_body:
        message = await _receive_by(request, deadline, timeout_s)
        if message["type"] == "http.disconnect":
            raise _ClientGone(f"the client went away after {len(body)} bytes of the body")
        body += message.get("body", b"")
        if len(body) > limit:
            raise PayloadTooLarge(_too_large(len(body), limit))
        more_body = bool(message.get("more_body", False))
    return bytes(body)


async def _receive_by(request: Request, deadline: float, timeout_s: float) -> Message:
    """The next ASGI message of the request, or :class:`_BodyTimeout` at ``deadline``."""
    left = deadline - asyncio.get_running_loop().time()
    try:
        if left <= 0:
            raise asyncio.TimeoutError
        return await asyncio.wait_for(request.receive(), left)
    except asyncio.TimeoutError:
        raise _BodyTimeout(
            f"the request body did not arrive within {timeout_s:g} s: send it at once, "
            "over a faster link, or make it smaller"
        ) from None


def _too_large(size: int, limit: int) -> str:
    return (
        f"request body of {size} bytes is larger than this server's limit of {limit} bytes: "
        "send fewer patches or a lossy codec"
    )
