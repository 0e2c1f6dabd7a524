"""The edge device of collaborative inference (paper Algorithm 1, Fig. 2), over HTTP.

:class:`EdgeClient` runs the edge model locally, in batches, with the very
functions ``collabvit evaluate`` uses (:func:`~collabvit.data.iter_batches`,
:func:`~collabvit.attention.forward_with_scores`,
:func:`~collabvit.gating.uncertainty`, :func:`~collabvit.gating.transmit_mask`,
:func:`~collabvit.selection.select_patches` with ``image_ids = sample.index``),
so its decisions are evaluate's. An image the gate keeps is answered by the
edge; for the others the selected patches are encoded with
:mod:`collabvit.wire` and sent to the server's ``POST /v1/infer`` by
``concurrency`` workers sharing one keep-alive ``httpx.AsyncClient``.

Failures never drop an image. Connect errors, timeouts, 5xx (503 included)
and 429 are retried with exponential backoff, honouring ``Retry-After``;
other 4xx answers (400 malformed, 401 token, 413 too large) are not. When the server cannot
answer, the image gets the edge's own prediction, marked ``edge-fallback``.
After ``breaker_failures`` images in a row failed that way the client stops
calling the server for ``breaker_cooldown_s`` seconds (those images fall back
at once), then tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch

from .data import Sample, iter_batches, load_image
from .errors import ConfigError, ServerError
from .models import LoadedModel
from .pipeline import OperatingPoint, decide_on_edge
from .wire import CODECS, encode, full_image_bytes

__all__ = [
    "SOURCES",
    "ClientConfig",
    "EdgeClient",
    "EdgeDecision",
    "ImageResult",
    "ServerAnswer",
    "summarise",
    "write_jsonl",
]

logger = logging.getLogger(__name__)

SOURCES = ("edge", "server", "edge-fallback", "unreadable")
"""Who answered an image: the edge (kept), the server, the edge after the
server failed, or nobody (the file could not be read)."""


@dataclass(frozen=True)
class ClientConfig:
    """Where and how the edge talks to the server."""

    server_url: str  # e.g. http://127.0.0.1:8000
    codec: str = "raw"  # raw | png | jpeg
    quality: int = 90  # jpeg quality
    concurrency: int = 4  # requests in flight
    timeout_s: float = 30.0  # per request (connect, write, read each)
    retries: int = 2  # extra attempts after the first
    backoff_s: float = 0.2  # delay before the first retry; doubles each retry
    max_backoff_s: float = 30.0  # cap on any delay, Retry-After included
    token: str | None = None  # bearer token
    batch_size: int = 64  # images per edge forward
    breaker_failures: int = 5  # consecutive failed images that pause the server (0: never)
    breaker_cooldown_s: float = 5.0  # how long it stays paused
    full_jpeg_baseline: bool = True  # measure each original as a JPEG q90 upload
    wait_for_server_s: float = 0.0  # before the first upload, wait this long for /healthz

    def __post_init__(self) -> None:
        if not self.server_url.startswith(("http://", "https://")):
            raise ConfigError(f"server URL {self.server_url!r} must start with http:// or https://")
        if self.codec not in CODECS:
            raise ConfigError(f"unknown codec {self.codec!r}: use one of {', '.join(CODECS)}")
        if not 1 <= self.quality <= 100:
            raise ConfigError(f"quality must be 1..100, got {self.quality}")
        if self.concurrency < 1 or self.batch_size < 1:
            raise ConfigError("concurrency and batch size must be >= 1")
        if self.retries < 0 or self.breaker_failures < 0:
            raise ConfigError("retries and breaker failures must be >= 0")
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise ConfigError(f"timeout_s must be a finite number > 0, got {self.timeout_s}")
        for name in ("backoff_s", "max_backoff_s", "breaker_cooldown_s", "wait_for_server_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value}")


@dataclass
class EdgeDecision:
    """The edge half of Algorithm 1 for one image (steps 2-5)."""

    sample: Sample
    edge_pred: int
    uncertainty: float
    transmit: bool
    num_patches: int  # selected patches (0 when kept on the edge)
    payload: bytes | None  # the wire message (None when kept on the edge)
    full_jpeg_bytes: int | None = None  # the whole original image as JPEG q90


@dataclass
class ServerAnswer:
    """A 200 answer of ``/v1/infer``."""

    label: int
    class_name: str
    top5: list[dict[str, Any]]
    server_ms: float
    rtt_ms: float
    attempts: int


@dataclass
class ImageResult:
    """What happened to one image: one line of the JSONL output."""

    file: str
    label: int | None  # None when unknown
    prediction: int | None  # None only for unreadable files
    class_name: str | None
    source: str  # one of SOURCES
    uncertainty: float | None
    patches_sent: int  # patches in the payload offered to the server
    bytes_sent: int  # bytes of that payload (one attempt)
    rtt_ms: float | None  # round trip of the answered attempt
    edge_prediction: int | None = None
    server_ms: float | None = None
    attempts: int = 0  # HTTP attempts made
    full_jpeg_bytes: int | None = None
    error: str | None = None  # why the server did not answer (edge-fallback)
    index: int = field(default=-1, repr=False)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        del out["index"]
        return out


class _SendFailure(Exception):
    def __init__(self, message: str, attempts: int, retryable: bool) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.retryable = retryable


class EdgeClient:
    """Runs the edge model and asks the server about uncertain images.

    Args:
        edge: the edge model.
        point: score, selection rule and threshold, gate measure and eta.
        config: server URL, codec, concurrency, timeouts, retries.
        transport: an ``httpx.AsyncBaseTransport`` (e.g. ``httpx.ASGITransport``
            around :func:`collabvit.server.create_app`) instead of the network.
    """

    def __init__(
        self,
        edge: LoadedModel,
        point: OperatingPoint,
        config: ClientConfig,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.edge = edge
        self.point = point
        self.config = config
        self.transport = transport
        self._failures_in_a_row = 0
        self._paused_until = 0.0

    # ------------------------------------------------------------------ edge side

    @torch.no_grad()
    def decide(
        self, samples: Sequence[Sample], skipped: list[Sample] | None = None
    ) -> Generator[list[EdgeDecision], None, None]:
        """Edge forward, gate, selection and encoding, one batch at a time.

        The same steps, in the same batches, as :func:`collabvit.engine.evaluate`.
        Unreadable files are appended to ``skipped``.
        """
        edge, point, cfg = self.edge, self.point, self.config
        for batch in iter_batches(samples, edge.preprocessing, cfg.batch_size, skipped):
            pixels = batch.pixels.to(edge.device)  # (B, C, H, W) uint8
            decided = decide_on_edge(edge, pixels, batch.samples, point)
            edge_pred, values = decided.edge_pred, decided.uncertainty
            masks: dict[int, torch.Tensor] = {}
            if decided.selection is not None:
                masks = {
                    row: torch.from_numpy(decided.selection.keep_mask[j])
                    for j, row in enumerate(decided.rows)
                }
            decisions = []
            for j, s in enumerate(batch.samples):
                mask = masks.get(j)
                payload = None
                if mask is not None:
                    payload = encode(
                        batch.pixels[j].numpy(),
                        mask.numpy(),
                        edge.patch_size,
                        cfg.codec,
                        cfg.quality,
                    )
                decisions.append(
                    EdgeDecision(
                        s,
                        int(edge_pred[j]),
                        float(values[j]),
                        mask is not None,
                        0 if mask is None else int(mask.sum()),
                        payload,
                        self._full_jpeg_bytes(s) if cfg.full_jpeg_baseline else None,
                    )
                )
            yield decisions

    def _full_jpeg_bytes(self, sample: Sample) -> int | None:
        if sample.array is not None:
            return full_image_bytes(sample.array, "jpeg", 90)
        assert sample.path is not None
        image = load_image(sample.path, self.edge.preprocessing.channels)
        return None if image is None else full_image_bytes(image, "jpeg", 90)

    # ------------------------------------------------------------------ server side

    def http_client(self) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient`` for :meth:`send`: base URL, token, timeouts, pool size."""
        cfg = self.config
        headers = {"Content-Type": "application/octet-stream"}
        if cfg.token:
            headers["Authorization"] = f"Bearer {cfg.token}"
        return httpx.AsyncClient(
            base_url=cfg.server_url,
            transport=self.transport,
            headers=headers,
            timeout=httpx.Timeout(cfg.timeout_s),
            limits=httpx.Limits(
                max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency
            ),
        )

    async def send(self, http: httpx.AsyncClient, payload: bytes) -> ServerAnswer:
        """POST one payload to ``/v1/infer`` with retries.

        Raises:
            ServerError: the server did not answer 200 after every attempt, or
                answered an error that retrying cannot fix (4xx).
        """
        try:
            return await self._send(http, payload)
        except _SendFailure as exc:
            raise ServerError(str(exc)) from None

    async def _send(self, http: httpx.AsyncClient, payload: bytes) -> ServerAnswer:
        cfg = self.config
        message = "no attempt made"
        for attempt in range(cfg.retries + 1):
            retry_after: float | None = None
            started = time.perf_counter()
            try:
                response = await http.post("/v1/infer", content=payload)
            except httpx.TimeoutException as exc:
                message = f"timed out after {cfg.timeout_s:g} s ({type(exc).__name__})"
            except httpx.TransportError as exc:
                message = f"cannot reach {cfg.server_url} ({type(exc).__name__}: {exc})"
            else:
                rtt_ms = 1000.0 * (time.perf_counter() - started)
                if response.status_code == 200:
                    try:
                        body = response.json()
                        return ServerAnswer(
                            int(body["label"]),
                            str(body.get("class_name", body["label"])),
                            list(body.get("top5", [])),
                            float(body.get("server_ms", math.nan)),
                            rtt_ms,
                            attempt + 1,
                        )
                    except (ValueError, KeyError, TypeError):
                        message = "server answered 200 without a label: is this a collabvit server?"
                        raise _SendFailure(message, attempt + 1, retryable=False) from None
                message = f"server answered {response.status_code}: {_error_of(response)}"
                if 400 <= response.status_code < 500 and response.status_code != 429:
                    raise _SendFailure(message, attempt + 1, retryable=False)
                retry_after = _retry_after(response)
            if attempt < cfg.retries:
                delay = max(cfg.backoff_s * 2**attempt, retry_after or 0.0)
                await asyncio.sleep(min(delay, cfg.max_backoff_s))
        raise _SendFailure(f"{message} (after {cfg.retries + 1} attempts)", cfg.retries + 1, True)

    # ------------------------------------------------------------------ the whole run

    def run(
        self,
        samples: Sequence[Sample],
        on_result: Callable[[ImageResult], None] | None = None,
    ) -> list[ImageResult]:
        """Answer every sample; see :meth:`arun`."""
        return asyncio.run(self.arun(samples, on_result))

    async def arun(
        self,
        samples: Sequence[Sample],
        on_result: Callable[[ImageResult], None] | None = None,
    ) -> list[ImageResult]:
        """Answer every sample, in input order: one :class:`ImageResult` each.

        The edge model runs in a worker thread, so the next batch is computed
        while the previous one's payloads are on the wire. ``on_result`` is
        called (on the event loop) as each image is answered.
        """
        self._failures_in_a_row = 0
        self._paused_until = 0.0
        position = {s.index: i for i, s in enumerate(samples)}
        results: list[ImageResult | None] = [None] * len(samples)

        def finish(result: ImageResult) -> None:
            results[position[result.index]] = result
            if on_result is not None:
                on_result(result)

        queue: asyncio.Queue[EdgeDecision | None] = asyncio.Queue(
            maxsize=2 * self.config.concurrency
        )
        skipped: list[Sample] = []
        decisions = self.decide(samples, skipped)
        async with self.http_client() as http:
            ready = asyncio.create_task(self._wait_for_server(http))
            workers = [
                asyncio.create_task(self._worker(http, queue, finish, ready))
                for _ in range(self.config.concurrency)
            ]
            try:
                while True:
                    batch = await asyncio.to_thread(next, decisions, None)
                    if batch is None:
                        break
                    for d in batch:
                        if d.transmit:
                            await queue.put(d)
                        else:
                            finish(_edge_result(self.edge, d, "edge"))
                for _ in workers:
                    await queue.put(None)
                await asyncio.gather(*workers)
            finally:
                for task in (*workers, ready):
                    task.cancel()
                await asyncio.gather(*workers, ready, return_exceptions=True)
                with contextlib.suppress(ValueError):  # still running in its thread
                    decisions.close()
        for s in skipped:
            finish(
                ImageResult(
                    s.file,
                    None if s.label < 0 else s.label,
                    None,
                    None,
                    "unreadable",
                    None,
                    0,
                    0,
                    None,
                    index=s.index,
                )
            )
        assert all(r is not None for r in results)
        return [r for r in results if r is not None]

    async def _worker(
        self,
        http: httpx.AsyncClient,
        queue: asyncio.Queue[EdgeDecision | None],
        finish: Callable[[ImageResult], None],
        ready: asyncio.Task[None],
    ) -> None:
        await asyncio.shield(ready)
        while True:
            d = await queue.get()
            if d is None:
                return
            finish(await self._transmit(http, d))

    async def _wait_for_server(self, http: httpx.AsyncClient) -> None:
        """Poll ``/healthz`` for at most ``wait_for_server_s`` (0: do not wait)."""
        deadline = time.monotonic() + self.config.wait_for_server_s
        while time.monotonic() < deadline:
            try:
                if (await http.get("/healthz", timeout=2.0)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
        if self.config.wait_for_server_s > 0:
            logger.warning(
                "%s did not answer /healthz within %g s: trying anyway",
                self.config.server_url,
                self.config.wait_for_server_s,
            )

    async def _transmit(self, http: httpx.AsyncClient, d: EdgeDecision) -> ImageResult:
        assert d.payload is not None
        cfg = self.config
        if time.monotonic() < self._paused_until:
            return _edge_result(
                self.edge,
                d,
                "edge-fallback",
                error=f"server paused after {cfg.breaker_failures} failed images in a row",
            )
        try:
            answer = await self._send(http, d.payload)
        except _SendFailure as exc:
            if exc.retryable:
                self._failures_in_a_row += 1
                if cfg.breaker_failures and self._failures_in_a_row >= cfg.breaker_failures:
                    self._paused_until = time.monotonic() + cfg.breaker_cooldown_s
                    self._failures_in_a_row = 0
                    logger.warning(
                        "server failed %d images in a row (%s): answering on the edge for %g s",
                        cfg.breaker_failures,
                        exc,
                        cfg.breaker_cooldown_s,
                    )
            logger.debug("%s: edge fallback: %s", d.sample.file, exc)
            return _edge_result(self.edge, d, "edge-fallback", exc.attempts, str(exc))
        self._failures_in_a_row = 0
        result = _edge_result(self.edge, d, "server", answer.attempts)
        result.prediction = answer.label
        result.class_name = answer.class_name
        result.rtt_ms = round(answer.rtt_ms, 3)
        result.server_ms = answer.server_ms
        return result


def _edge_result(
    edge: LoadedModel,
    d: EdgeDecision,
    source: str,
    attempts: int = 0,
    error: str | None = None,
) -> ImageResult:
    s = d.sample
    return ImageResult(
        s.file,
        None if s.label < 0 else s.label,
        d.edge_pred,
        edge.class_name(d.edge_pred),
        source,
        d.uncertainty,
        d.num_patches,
        0 if d.payload is None else len(d.payload),
        None,
        edge_prediction=d.edge_pred,
        attempts=attempts,
        full_jpeg_bytes=d.full_jpeg_bytes,
        error=error,
        index=s.index,
    )


def _error_of(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200] or response.reason_phrase


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds (the delta-seconds form; an HTTP date is ignored)."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


# --------------------------------------------------------------------------- output


def write_jsonl(results: Sequence[ImageResult], path: str | Path) -> None:
    """One JSON object per image, in input order."""
    with open(path, "w") as fh:
        for r in results:
            fh.write(json.dumps(r.to_json()) + "\n")


def summarise(results: Sequence[ImageResult]) -> dict[str, Any]:
    """Images, accuracy (when labels are known), transmit ratio, fallbacks, bytes."""
    answered = [r for r in results if r.prediction is not None]
    labelled = [r for r in answered if r.label is not None]
    by_source = {s: sum(r.source == s for r in results) for s in SOURCES}
    transmitted = by_source["server"] + by_source["edge-fallback"]
    sent = sum(r.bytes_sent for r in answered if r.source == "server")
    full = [r.full_jpeg_bytes for r in answered if r.full_jpeg_bytes is not None]
    n = len(answered)
    return {
        "images": len(results),
        "answered": n,
        "accuracy": (
            sum(r.prediction == r.label for r in labelled) / len(labelled) if labelled else None
        ),
        "edge_accuracy": (
            sum(r.edge_prediction == r.label for r in labelled) / len(labelled)
            if labelled
            else None
        ),
        "transmit_ratio": transmitted / n if n else 0.0,
        "sources": by_source,
        "mean_bytes_per_image": sent / n if n else 0.0,
        "mean_full_jpeg_bytes": sum(full) / len(full) if full else None,
        "mean_rtt_ms": _mean([r.rtt_ms for r in answered if r.rtt_ms is not None]),
    }


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
