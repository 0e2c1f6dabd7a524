"""The edge device of collaborative inference (paper Algorithm 1, Fig. 2), over HTTP.

:class:`EdgeClient` runs the edge model locally, in batches (torch or ONNX Runtime,
:mod:`.runtimes`: steps 2-5, the gate of eq. 11 and the rule with ``image_ids =
sample.index``) exactly as ``collabvit evaluate``. An image the gate keeps is answered by the edge;
for the others the selected patches are encoded with :func:`collabvit.wire.encode`
and sent to the server's ``POST /v1/infer`` (:func:`collabvit.client.http.send`)
by ``concurrency`` workers sharing one keep-alive ``httpx.AsyncClient``.

Failures never drop an image: when the server cannot answer, the image gets
the edge's own prediction, marked ``edge-fallback``. A
:class:`~collabvit.client.breaker.CircuitBreaker` opens after
``breaker_failures`` images in a row failed that way; while it is open images
fall back at once; after ``breaker_cooldown_s`` it lets calls through again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import numpy.typing as npt

from ..data import Sample, load_image
from ..errors import ServerError, WireError
from ..wire import encode, full_image_bytes
from . import http as _http
from .breaker import CircuitBreaker
from .config import ClientConfig
from .http import ServerAnswer
from .results import ImageResult
from .runtimes import edge_runtime
from .server_check import tls_context, wait_for_server

if TYPE_CHECKING:  # an edge install (ONNX) has no torch
    from ..models import LoadedModel
    from ..onnx_edge import OnnxEdge, PointLike

__all__ = ["ClientConfig", "EdgeClient", "EdgeDecision", "whole_jpeg_bytes"]

logger = logging.getLogger(__name__)

Finish = Callable[[ImageResult], None]
Decisions = Generator[list["EdgeDecision"], None, None]


@dataclass
class EdgeDecision:
    """The edge half of Algorithm 1 for one image (steps 2-5), encoded for the wire."""

    sample: Sample
    edge_pred: int
    uncertainty: float
    transmit: bool
    num_patches: int  # selected patches (0 when kept on the edge)
    payload: bytes | None  # the wire message (None when kept on the edge)
    full_jpeg_bytes: int | None = None  # the whole original as JPEG q90 (opt-in baseline)
    codec: str | None = None  # the payload's codec (None when kept on the edge)
    codec_error: str | None = None  # why the configured codec was not used (then raw)


class EdgeClient:
    """Runs the edge model and asks the server about uncertain images.

    Args:
        edge: a torch ``LoadedModel``, or an exported ``OnnxEdge`` (no torch needed).
        point: score, rule and threshold, gate measure and eta (``OperatingPoint``, ``EdgePoint``).
        config: server URL, codec, concurrency, timeouts, retries, breaker.
        transport: an ``httpx.AsyncBaseTransport`` (e.g. ``httpx.ASGITransport``
            around :func:`collabvit.server.create_app`) instead of the network.
        clock: the breaker's clock (seconds, monotonic).
    """

    def __init__(
        self,
        edge: LoadedModel | OnnxEdge,
        point: PointLike,
        config: ClientConfig,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.edge = edge
        self.point = point
        self.runtime = edge_runtime(edge, point)
        self.config = config
        self.transport = transport
        self.breaker = CircuitBreaker(config.breaker_failures, config.breaker_cooldown_s, clock)

    # ------------------------------------------------------------------ edge side

    def decide(self, samples: Sequence[Sample], skipped: list[Sample] | None = None) -> Decisions:
        """Edge forward, gate, selection and encoding, one batch at a time.

        The same steps, in the same batches, as :func:`collabvit.engine.evaluate`.
        Unreadable files are appended to ``skipped``.
        """
        cfg = self.config
        for batch in self.runtime.batches(samples, cfg.batch_size, skipped):
            decisions = []
            for j, sample in enumerate(batch.samples):
                mask = batch.masks.get(j)  # (N,) bool keep mask when sent
                payload, codec, codec_error = None, None, None
                if mask is not None:
                    image = batch.pixels[j]  # (C, H, W) uint8
                    payload, codec, codec_error = self._encode(sample, image, mask)
                full = whole_jpeg_bytes(sample, self.runtime) if cfg.full_jpeg_baseline else None
                decisions.append(
                    EdgeDecision(
                        sample,
                        int(batch.edge_pred[j]),
                        float(batch.uncertainty[j]),
                        mask is not None,
                        0 if mask is None else int(mask.sum()),
                        payload,
                        full,
                        codec,
                        codec_error,
                    )
                )
            yield decisions

    def _encode(
        self, sample: Sample, image: npt.NDArray[np.uint8], mask: npt.NDArray[np.bool_]
    ) -> tuple[bytes, str, str | None]:
        """(message, codec, why not the configured codec): raw when that codec fails.

        Pillow cannot write some pictures (JPEG of high-entropy content raises
        ``broken data stream``); such an image is sent with the lossless raw
        codec rather than stopping the run, and counted (``codec_fallbacks``).
        """
        cfg, patch = self.config, self.edge.patch_size
        try:
            return encode(image, mask, patch, cfg.codec, cfg.quality), cfg.codec, None
        except WireError as exc:
            if cfg.codec == "raw":
                raise
            logger.warning(
                "%s: %s codec failed, sending raw patches: %s", sample.file, cfg.codec, exc
            )
            return encode(image, mask, patch, "raw", 0), "raw", f"{cfg.codec}: {exc}"

    # ------------------------------------------------------------------ server side

    def http_client(self) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient`` for :meth:`send`: base URL, token, timeouts, pool size."""
        cfg = self.config
        return _http.make_client(
            cfg.server_url,
            token=cfg.token,
            timeout_s=cfg.timeout_s,
            max_connections=cfg.concurrency,
            transport=self.transport,
            verify=tls_context(cfg.ca_file),
        )

    async def send(self, http: httpx.AsyncClient, payload: bytes) -> ServerAnswer:
        """POST one payload to ``/v1/infer`` with the config's retry policy and deadline.

        Raises:
            ServerError: the server did not answer a valid 200 within the
                deadline and the attempts, or answered an error that retrying
                cannot fix (4xx).
        """
        return await _http.send(
            http,
            payload,
            self.config.retry_policy,
            num_classes=self.edge.num_classes,
            deadline_s=self.config.deadline_s,
        )

    # ------------------------------------------------------------------ the whole run

    def run(self, samples: Sequence[Sample], on_result: Finish | None = None) -> list[ImageResult]:
        """Answer every sample; see :meth:`arun`."""
        return asyncio.run(self.arun(samples, on_result))

    async def arun(
        self,
        samples: Sequence[Sample],
        on_result: Finish | None = None,
        stop: asyncio.Event | None = None,
    ) -> list[ImageResult]:
        """Answer every sample, in input order: one :class:`ImageResult` each.

        The edge model runs in a worker thread, so the next batch is computed
        while the previous one's payloads are on the wire. ``on_result`` is
        called (on the event loop) as each image is answered. When ``stop``
        is set (e.g. by a SIGINT handler) the run ends at once: requests in
        flight are abandoned and only the images answered so far are returned.
        """
        self.breaker.reset()
        position = {s.index: i for i, s in enumerate(samples)}
        results: list[ImageResult | None] = [None] * len(samples)

        def finish(result: ImageResult) -> None:
            results[position[result.index]] = result
            if on_result is not None:
                on_result(result)

        async with self.http_client() as http:
            await self._pump(http, samples, finish, stop or asyncio.Event())
        assert (stop is not None and stop.is_set()) or all(r is not None for r in results)
        return [r for r in results if r is not None]

    async def _pump(
        self,
        http: httpx.AsyncClient,
        samples: Sequence[Sample],
        finish: Finish,
        stop: asyncio.Event,
    ) -> None:
        """Feed the edge's decisions to ``concurrency`` workers until every image is answered.

        Ends early when ``stop`` is set; a failure of the feeder or of a
        worker (``finish`` raised) cancels the others and is raised here.
        """
        queue: asyncio.Queue[EdgeDecision | None] = asyncio.Queue(
            maxsize=2 * self.config.concurrency
        )
        skipped: list[Sample] = []
        decisions = self.decide(samples, skipped)
        ready = asyncio.create_task(self._wait_for_server(http))
        stopped = asyncio.create_task(stop.wait())
        running = {
            asyncio.create_task(self._feed(decisions, skipped, queue, finish)),
            *(
                asyncio.create_task(self._worker(http, queue, finish, ready))
                for _ in range(self.config.concurrency)
            ),
        }
        everything = (*running, ready, stopped)
        try:
            while running and not stopped.done():
                done, _ = await asyncio.wait({*running, stopped}, return_when="FIRST_COMPLETED")
                for task in done - {stopped}:
                    task.result()  # raises what ended it, if anything did
                running -= done
        finally:
            for task in everything:
                task.cancel()
            await asyncio.gather(*everything, return_exceptions=True)
            with contextlib.suppress(ValueError):  # still running in its thread
                decisions.close()

    async def _feed(
        self,
        decisions: Decisions,
        skipped: list[Sample],
        queue: asyncio.Queue[EdgeDecision | None],
        finish: Finish,
    ) -> None:
        """Answer the kept images, queue the transmitted ones, then one None per worker."""
        unreadable = 0  # of skipped, already answered
        while (batch := await asyncio.to_thread(next, decisions, None)) is not None:
            for d in batch:
                if d.transmit:
                    await queue.put(d)
                else:
                    finish(_edge_result(self.edge, d, "edge"))
            for s in skipped[unreadable:]:
                finish(_unreadable_result(s))
            unreadable = len(skipped)
        for s in skipped[unreadable:]:
            finish(_unreadable_result(s))
        for _ in range(self.config.concurrency):
            await queue.put(None)

    async def _worker(
        self,
        http: httpx.AsyncClient,
        queue: asyncio.Queue[EdgeDecision | None],
        finish: Finish,
        ready: asyncio.Task[None],
    ) -> None:
        await asyncio.shield(ready)
        while (d := await queue.get()) is not None:
            try:
                result = await self._transmit(http, d)
            except Exception as exc:  # no answer may cost an image or a worker
                logger.exception("%s: unexpected error, answering on the edge", d.sample.file)
                error = f"unexpected {type(exc).__name__}: {exc}"
                result = _edge_result(self.edge, d, "edge-fallback", error=error, fallback="error")
            finish(result)

    async def _wait_for_server(self, http: httpx.AsyncClient) -> None:
        """Wait up to ``wait_for_server_s`` for ``/healthz``; check its geometry if asked."""
        cfg = self.config
        if cfg.wait_for_server_s > 0 or cfg.check_server:
            edge, url = self.edge, cfg.server_url
            await wait_for_server(http, edge, cfg.wait_for_server_s, url, cfg.check_server)

    async def _transmit(self, http: httpx.AsyncClient, d: EdgeDecision) -> ImageResult:
        """One transmitted image: the server's answer, or the edge's when the server fails."""
        assert d.payload is not None
        if not self.breaker.allow():
            error = f"server paused after {self.config.breaker_failures} failed images in a row"
            return _edge_result(self.edge, d, "edge-fallback", error=error, fallback="paused")
        try:
            answer = await self.send(http, d.payload)
        except ServerError as exc:
            if _http.is_retryable(exc):
                self._count_failure(exc)
            logger.debug("%s: edge fallback: %s", d.sample.file, exc)
            reason = _fallback_reason(exc)
            return _edge_result(self.edge, d, "edge-fallback", exc.attempts, str(exc), reason)
        self.breaker.record_success()
        result = _edge_result(self.edge, d, "server", answer.attempts)
        result.prediction = answer.label
        result.class_name = answer.class_name
        result.rtt_ms = round(answer.rtt_ms, 3)
        result.server_ms = answer.server_ms
        return result

    def _count_failure(self, exc: ServerError) -> None:
        if self.breaker.record_failure():
            logger.warning(
                "server failed %d images in a row (%s): answering on the edge for %g s",
                self.config.breaker_failures,
                exc,
                self.config.breaker_cooldown_s,
            )


def whole_jpeg_bytes(sample: Sample, edge: Any) -> int | None:
    """The baseline: bytes of the whole original as one JPEG q90 (None: unreadable, unencodable).

    A measurement, not part of the method; :class:`EdgeClient` runs it only with
    ``ClientConfig(full_jpeg_baseline=True)`` (``collabvit edge --baseline-bytes``).
    """
    try:
        if sample.array is not None:
            return full_image_bytes(sample.array, "jpeg", 90)
        assert sample.path is not None
        channels = edge.channels if hasattr(edge, "channels") else edge.preprocessing.channels
        image = load_image(sample.path, channels)
        return None if image is None else full_image_bytes(image, "jpeg", 90)
    except WireError as exc:  # Pillow could not write it (e.g. noise): no baseline for it
        logger.debug("%s: no whole-JPEG baseline: %s", sample.file, exc)
        return None


def _edge_result(
    edge: LoadedModel | OnnxEdge,
    d: EdgeDecision,
    source: str,
    attempts: int = 0,
    error: str | None = None,
    fallback: str | None = None,
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
        codec=d.codec,
        codec_error=d.codec_error,
        error=error,
        fallback=fallback,
        index=s.index,
    )


def _fallback_reason(exc: ServerError) -> str:
    """The :data:`~collabvit.client.results.FALLBACK_REASONS` key of a failed exchange."""
    if isinstance(exc, _http.DeadlineExceeded):
        return "deadline"
    if isinstance(exc, _http.InvalidAnswer):
        return "invalid-answer"
    return "unavailable" if _http.is_retryable(exc) else "rejected"


def _unreadable_result(s: Sample) -> ImageResult:
    label = None if s.label < 0 else s.label
    return ImageResult(s.file, label, None, None, "unreadable", None, 0, 0, None, index=s.index)
