"""The collaborative server: an HTTP service around the server ViT (paper Sec. III, Fig. 2a).

The edge device sends the patches it selected as one :mod:`collabvit.wire`
message; the server classifies the image from those patches alone
(:func:`~collabvit.models.forward_subset`, eq. 9 cost) and answers with the
label. Endpoints:

* ``POST /v1/infer``: body = wire payload bytes -> JSON ``label``,
  ``class_name``, ``top5`` (``label``, ``class_name``, ``probability``),
  ``server_ms``, ``batch_size``.
* ``POST /v1/infer-image``: body = a whole image file (JPEG, PNG, ...): the
  server-only baseline; the server preprocesses it itself and runs every patch.
* ``GET /healthz``: model name, geometry, queue depth (never needs the token).
* ``GET /metrics``: Prometheus text format, one registry per app.

Like LitServe, the work is three separate steps: :func:`decode_request` /
:func:`decode_image` (untrusted bytes -> pixels and keep mask, in a thread
pool), :func:`predict` (one batched forward in a single worker thread) and
:func:`encode_response` (logits row -> JSON). A :class:`Batcher` between them
gathers concurrent requests, whatever their patch counts, into one
``forward_subset`` call (at most ``max_batch_size`` images, waiting at most
``max_wait_ms`` for the batch to fill). Its queue is bounded: a full queue
answers 503 with ``Retry-After``. On shutdown (uvicorn's graceful shutdown
after SIGTERM) requests already accepted are finished before the batcher stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import io
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from PIL import Image
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from .data import load_image, preprocess
from .errors import ConfigError, WireError
from .models import LoadedModel, forward_subset
from .wire import DEFAULT_MAX_BYTES, Geometry, decode

__all__ = [
    "Batcher",
    "Decoded",
    "ImageTooLarge",
    "QueueFullError",
    "ServerConfig",
    "ServerMetrics",
    "create_app",
    "decode_image",
    "decode_request",
    "encode_response",
    "geometry_of",
    "predict",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerConfig:
    """How the server batches, bounds and guards its work."""

    max_batch_size: int = 32  # images per forward_subset call
    max_wait_ms: float = 5.0  # after the first request, wait this long for the batch to fill
    max_queue: int = 128  # requests waiting for the worker; beyond this: 503
    max_body_bytes: int = DEFAULT_MAX_BYTES  # larger request bodies: 413
    max_image_pixels: int = 50_000_000  # /v1/infer-image: larger declared images: 413
    token: str | None = None  # bearer token for /v1/* and /metrics (None: no auth)
    retry_after_s: int = 1  # Retry-After of a 503
    top_k: int = 5  # entries of "top5"
    # Called in the worker thread with the batch size before each forward; may
    # block (it stalls the batcher). For instrumentation and tests.
    before_predict: Callable[[int], None] | None = None

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_queue", "max_body_bytes", "max_image_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
        if not 0 <= self.max_wait_ms < 60_000:
            raise ConfigError(f"max_wait_ms must be in [0, 60000), got {self.max_wait_ms}")
        if self.retry_after_s < 0:
            raise ConfigError(f"retry_after_s must be >= 0, got {self.retry_after_s}")
        if self.top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {self.top_k}")
        if self.token is not None and not self.token:
            raise ConfigError("token must be non-empty (or None for no authentication)")


# --------------------------------------------------------------------------- the three steps


class ImageTooLarge(ValueError):
    """An uploaded image declares more pixels than the server decodes (answered 413)."""


@dataclass(frozen=True)
class Decoded:
    """One request, ready for the model."""

    pixels: torch.Tensor  # (C, H, W) uint8; unselected patches are 0 (never read)
    keep_mask: torch.Tensor  # (N,) bool, at least one True


def geometry_of(loaded: LoadedModel) -> Geometry:
    """The image geometry the model takes, as the wire format describes it."""
    c, h, w = loaded.preprocessing.input_size
    return Geometry(c, h, w, loaded.patch_size)


def decode_request(body: bytes, geometry: Geometry, max_bytes: int) -> Decoded:
    """A wire payload -> pixels and keep mask. Raises :class:`WireError` if malformed."""
    payload = decode(body, max_bytes=max_bytes, expect=geometry)
    if payload.num_selected == 0:
        raise WireError("payload selects no patch: send at least one patch per image")
    pixels = payload.pixels if payload.pixels.flags.writeable else payload.pixels.copy()
    return Decoded(torch.from_numpy(pixels), torch.from_numpy(payload.keep_mask.copy()))


def decode_image(body: bytes, loaded: LoadedModel, max_pixels: int) -> Decoded:
    """A whole image file -> the model's preprocessed pixels, every patch kept.

    Raises:
        WireError: the body is not a readable image.
        ImageTooLarge: the image declares more than ``max_pixels`` pixels
            (read from the header, before any pixel is decoded).
    """
    try:
        with Image.open(io.BytesIO(body)) as probe:  # lazy: reads the header only
            width, height = probe.size
    except Exception:
        raise WireError("body is not a readable image file (JPEG, PNG, ...)") from None
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height} = {width * height} pixels, more than this server's "
            f"limit of {max_pixels}: downscale it before sending"
        )
    # NOTE: PIL opens file objects as well as paths; load_image converts modes as evaluate does.
    image = load_image(io.BytesIO(body), loaded.preprocessing.channels)  # type: ignore[arg-type]
    if image is None:
        raise WireError("body is not a readable image file (JPEG, PNG, ...)")
    pixels = preprocess(image, loaded.preprocessing)  # (C, H, W) uint8
    return Decoded(pixels, torch.ones(loaded.num_patches, dtype=torch.bool))


@torch.inference_mode()
def predict(loaded: LoadedModel, pixels: torch.Tensor, keep_mask: torch.Tensor) -> torch.Tensor:
    """One batched forward on the kept patches of each image.

    Args:
        pixels: (B, C, H, W) uint8.
        keep_mask: (B, N) bool; rows may keep different numbers of patches.

    Returns:
        (B, num_classes) float32 logits, on the CPU.
    """
    device = loaded.device
    images = loaded.normalise(pixels.to(device))
    return forward_subset(loaded, images, keep_mask.to(device)).float().cpu()


def encode_response(loaded: LoadedModel, logits: torch.Tensor, top_k: int = 5) -> dict[str, Any]:
    """One logits row (num_classes,) -> the JSON answer (label, class_name, top5)."""
    label = int(logits.argmax())  # the label evaluate would report
    probs = logits.double().softmax(-1)
    values, indices = probs.topk(min(top_k, probs.shape[0]))
    return {
        "label": label,
        "class_name": loaded.class_name(label),
        "top5": [
            {"label": int(i), "class_name": loaded.class_name(int(i)), "probability": float(p)}
            for p, i in zip(values.tolist(), indices.tolist(), strict=True)
        ],
    }


# --------------------------------------------------------------------------- metrics


class ServerMetrics:
    """Prometheus metrics of one app, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "collabvit_requests",
            "Requests by endpoint and outcome",
            ["endpoint", "outcome"],
            registry=r,
        )
        self.received_bytes = Counter(
            "collabvit_received_bytes", "Request body bytes received", ["endpoint"], registry=r
        )
        self.latency = Histogram(
            "collabvit_request_latency_seconds",
            "Time from request body received to answer, by endpoint",
            ["endpoint"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.queue_wait = Histogram(
            "collabvit_queue_wait_seconds",
            "Time a request waits in the queue before its batch starts",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.batch_size = Histogram(
            "collabvit_batch_size",
            "Images per forward",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.batch_tokens = Histogram(
            "collabvit_batch_tokens",
            "Patch tokens per forward (sum of kept patches)",
            buckets=(16, 64, 256, 1024, 4096, 16384, 65536),
            registry=r,
        )
        self.inference = Histogram(
            "collabvit_inference_seconds",
            "Time of one batched forward",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.queue_depth = Gauge(
            "collabvit_queue_depth", "Requests waiting for the worker", registry=r
        )
        self.in_flight = Gauge(
            "collabvit_in_flight", "Requests accepted and not yet answered", registry=r
        )


# --------------------------------------------------------------------------- batching


class QueueFullError(Exception):
    """The batcher's queue is full (or it is closed): answer 503."""


@dataclass
class _Job:
    decoded: Decoded
    future: asyncio.Future[tuple[torch.Tensor, int]]  # (logits row, batch size)
    enqueued: float  # time.perf_counter()


_STOP = object()  # queue item: finish and stop
_FLUSH = object()  # queue item: run the batch being gathered now


class Batcher:
    """Dynamic batching: requests in, one ``forward_subset`` per batch, results out.

    A collector task on the event loop takes the first waiting request, then
    more until ``max_batch_size`` or until ``max_wait_ms`` has passed, and runs
    :func:`predict` on them in one worker thread (the event loop never blocks
    on the model). The queue holds at most ``max_queue`` requests.
    """

    def __init__(self, loaded: LoadedModel, config: ServerConfig, metrics: ServerMetrics) -> None:
        self.loaded = loaded
        self.config = config
        self.metrics = metrics
        self._queue: asyncio.Queue[Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False
        self._flushing = False  # shutting down: stop waiting for fuller batches
        self._loop: asyncio.AbstractEventLoop | None = None
        self.in_flight = 0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done() and not self._closing

    @property
    def queue_depth(self) -> int:
        return 0 if self._queue is None else self._queue.qsize()

    async def start(self) -> None:
        if self._task is not None:
            return
        self._queue = asyncio.Queue(maxsize=self.config.max_queue)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="collabvit-predict")
        self._closing = self._flushing = False
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._collect(), name="collabvit-batcher")

    async def stop(self) -> None:
        """Refuse new requests, finish every accepted one, then stop the worker."""
        if self._task is None or self._queue is None:
            return
        self._closing = True
        if not self._task.done():
            await self._queue.put(_STOP)  # behind every accepted request
            await self._task
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._task = self._queue = self._executor = None

    def flush(self) -> None:
        """From now on run each batch as soon as it has a request: no more waiting.

        For shutdown (``collabvit serve`` calls it on SIGTERM), so that requests
        in flight are answered at once rather than after ``max_wait_ms``. Safe
        to call from any thread or a signal handler.
        """
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._hurry)

    def _hurry(self) -> None:
        self._flushing = True
        if self._queue is not None:
            with contextlib.suppress(asyncio.QueueFull):  # full: the collector is not waiting
                self._queue.put_nowait(_FLUSH)  # wakes a collector waiting for more

    def check_accepting(self) -> None:
        """Raise :class:`QueueFullError` unless a request would be queued now."""
        if not self.running or self._queue is None:
            raise QueueFullError("the server is not accepting requests (starting or stopping)")
        if self._queue.full():
            raise QueueFullError(
                f"the server's queue is full ({self.config.max_queue} requests waiting)"
            )

    def submit(self, decoded: Decoded) -> asyncio.Future[tuple[torch.Tensor, int]]:
        """Queue one request; raises :class:`QueueFullError` when full or stopping."""
        self.check_accepting()
        assert self._queue is not None
        future: asyncio.Future[tuple[torch.Tensor, int]] = (
            asyncio.get_running_loop().create_future()
        )
        try:
            self._queue.put_nowait(_Job(decoded, future, time.perf_counter()))
        except asyncio.QueueFull:
            raise QueueFullError(
                f"the server's queue is full ({self.config.max_queue} requests waiting)"
            ) from None
        self.in_flight += 1
        future.add_done_callback(self._done)
        return future

    def _done(self, _future: object) -> None:
        self.in_flight -= 1

    async def _collect(self) -> None:
        assert self._queue is not None
        queue = self._queue
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = await queue.get()
            if first is _STOP:
                break
            if first is _FLUSH:
                continue
            batch: list[_Job] = [first]
            max_wait = 0.0 if self._flushing else self.config.max_wait_ms / 1000.0
            deadline = loop.time() + max_wait
            while len(batch) < self.config.max_batch_size:
                try:
                    item = queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(queue.get(), remaining)
                    except asyncio.TimeoutError:
                        break
                if item is _FLUSH:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            await self._run(batch)

    async def _run(self, batch: list[_Job]) -> None:
        started = time.perf_counter()
        for job in batch:
            self.metrics.queue_wait.observe(started - job.enqueued)
        loop = asyncio.get_running_loop()
        try:
            logits = await loop.run_in_executor(self._executor, self._predict, batch)
        except Exception as exc:
            logger.exception("batch of %d image(s) failed", len(batch))
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        self.metrics.inference.observe(time.perf_counter() - started)
        for j, job in enumerate(batch):
            if not job.future.done():  # the client may have gone
                job.future.set_result((logits[j], len(batch)))

    def _predict(self, batch: list[_Job]) -> torch.Tensor:
        """In the worker thread: stack the batch, run :func:`predict`."""
        pixels = torch.stack([j.decoded.pixels for j in batch])  # (B, C, H, W)
        keep_mask = torch.stack([j.decoded.keep_mask for j in batch])  # (B, N)
        self.metrics.batch_size.observe(len(batch))
        self.metrics.batch_tokens.observe(int(keep_mask.sum()))
        if self.config.before_predict is not None:
            self.config.before_predict(len(batch))
        return predict(self.loaded, pixels, keep_mask)


# --------------------------------------------------------------------------- the app


class _Reject(Exception):
    """An error answer: status, message, extra headers."""

    def __init__(
        self, status: int, message: str, outcome: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.outcome = outcome
        self.headers = headers or {}


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything over ``limit`` bytes without reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise _Reject(400, f"bad Content-Length {declared!r}", "bad_request") from None
        if size > limit:
            raise _Reject(413, _too_large(size, limit), "too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _Reject(413, _too_large(len(body), limit), "too_large")
    return bytes(body)


def _too_large(size: int, limit: int) -> str:
    return (
        f"request body of {size} bytes is larger than this server's limit of {limit} bytes: "
        "send fewer patches or a lossy codec"
    )


def create_app(loaded: LoadedModel, config: ServerConfig | None = None) -> FastAPI:
    """The FastAPI app serving ``loaded`` (the server model).

    The batcher starts and stops with the app's lifespan (uvicorn runs it; in
    tests ``async with app.router.lifespan_context(app)`` does). Stopping
    finishes every request already accepted.
    """
    config = config or ServerConfig()
    geometry = geometry_of(loaded)
    metrics = ServerMetrics()
    batcher = Batcher(loaded, config, metrics)
    metrics.queue_depth.set_function(lambda: batcher.queue_depth)
    metrics.in_flight.set_function(lambda: batcher.in_flight)
    state = {"draining": False}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        logger.info(
            "serving %s (%s, %d classes): batches of <= %d, wait <= %g ms, queue <= %d%s",
            loaded.name,
            geometry.describe(),
            loaded.num_classes,
            config.max_batch_size,
            config.max_wait_ms,
            config.max_queue,
            ", bearer token required" if config.token else "",
        )
        try:
            yield
        finally:
            state["draining"] = True
            await batcher.stop()
            logger.info("batcher stopped; every accepted request was answered")

    app = FastAPI(
        title="collabvit server",
        description="Attention-aware collaborative inference: the server ViT",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.model = loaded
    app.state.config = config
    app.state.metrics = metrics
    app.state.batcher = batcher

    def check_token(request: Request) -> None:
        if config.token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), config.token.encode()
        ):
            raise _Reject(
                401,
                "missing or wrong bearer token: send 'Authorization: Bearer TOKEN'",
                "unauthorized",
                {"WWW-Authenticate": "Bearer"},
            )

    async def answer(
        request: Request, endpoint: str, decode_body: Callable[[bytes], Decoded]
    ) -> Response:
        outcome = "error"
        try:
            check_token(request)
            batcher.check_accepting()  # shed load before reading the body
            body = await _read_body(request, config.max_body_bytes)
            received = time.perf_counter()
            metrics.received_bytes.labels(endpoint).inc(len(body))
            try:
                decoded = await run_in_threadpool(decode_body, body)
            except WireError as exc:
                raise _Reject(400, str(exc), "bad_request") from None
            except ImageTooLarge as exc:
                raise _Reject(413, str(exc), "too_large") from None
            future = batcher.submit(decoded)
            logits, batch_size = await future
            result = encode_response(loaded, logits, config.top_k)
            server_ms = 1000.0 * (time.perf_counter() - received)
            result["server_ms"] = round(server_ms, 3)
            result["batch_size"] = batch_size
            metrics.latency.labels(endpoint).observe(server_ms / 1000.0)
            outcome = "ok"
            return JSONResponse(result)
        except QueueFullError as exc:
            outcome = "overloaded"
            return JSONResponse(
                {"error": f"{exc}: retry later"},
                status_code=503,
                headers={"Retry-After": str(config.retry_after_s)},
            )
        except _Reject as exc:
            outcome = exc.outcome
            return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)
        except Exception as exc:
            logger.exception("%s failed", endpoint)
            return JSONResponse(
                {"error": f"internal server error ({type(exc).__name__}); see the server log"},
                status_code=500,
            )
        finally:
            metrics.requests.labels(endpoint, outcome).inc()

    @app.post("/v1/infer")
    async def infer(request: Request) -> Response:
        """Classify one image from the patches in a wire payload."""
        return await answer(
            request,
            "/v1/infer",
            lambda body: decode_request(body, geometry, config.max_body_bytes),
        )

    @app.post("/v1/infer-image")
    async def infer_image(request: Request) -> Response:
        """Server-only baseline: classify a whole image file from all its patches."""
        return await answer(
            request,
            "/v1/infer-image",
            lambda body: decode_image(body, loaded, config.max_image_pixels),
        )

    @app.get("/healthz")
    async def healthz() -> Response:
        """Liveness and what the server takes; open without the token."""
        return JSONResponse(
            {
                "status": "draining" if state["draining"] else "ok",
                "model": loaded.name,
                "num_classes": loaded.num_classes,
                "geometry": {
                    "channels": geometry.channels,
                    "height": geometry.height,
                    "width": geometry.width,
                    "patch_size": geometry.patch_size,
                    "num_patches": geometry.num_patches,
                },
                "queue_depth": batcher.queue_depth,
                "in_flight": batcher.in_flight,
                "max_queue": config.max_queue,
                "max_batch_size": config.max_batch_size,
                "auth": config.token is not None,
            }
        )

    @app.get("/metrics")
    async def prometheus_metrics(request: Request) -> Response:
        """Prometheus metrics (needs the token when one is set)."""
        try:
            check_token(request)
        except _Reject as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
