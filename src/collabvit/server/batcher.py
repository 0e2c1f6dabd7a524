"""Dynamic batching: concurrent requests in, one batched compute per batch, results out.

The batcher knows nothing of models: it takes ``predict_batch``, a callable
from a list of :class:`~collabvit.server.api.Decoded` requests to one output
row per request (the app passes a closure over
:func:`~collabvit.server.api.predict_batch` and the server model), and checks
that the batch gave one output per input. Instrumentation goes through
:class:`BatcherCallbacks` (LitServe's callbacks): the Prometheus metrics are
one, and a test can pass one that blocks to hold the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from ..errors import ConfigError, ModelError, ServerBusy
from .api import Decoded

__all__ = ["Batcher", "BatcherCallbacks", "Rows", "WorkQueue"]

logger = logging.getLogger(__name__)

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class Rows(Protocol[R_co]):
    """What ``predict_batch`` returns: one row per request (a (B, ...) tensor, a list)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int, /) -> R_co: ...


class WorkQueue(Protocol):
    """What the app needs of its work queue: a :class:`Batcher`, or the Ray engine's."""

    @property
    def running(self) -> bool: ...

    @property
    def queue_depth(self) -> int: ...

    @property
    def in_flight(self) -> int: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def flush(self) -> None: ...

    def check_accepting(self) -> None: ...

    def submit(self, decoded: Decoded) -> Awaitable[tuple[Any, int]]: ...


class BatcherCallbacks:
    """Hooks a :class:`Batcher` calls around each batch; each does nothing unless overridden."""

    def on_queue_wait(self, seconds: float) -> None:
        """On the event loop, once per request when its batch starts: time spent queued."""

    def on_batch_start(self, batch: Sequence[Decoded]) -> None:
        """In the worker thread, just before ``predict_batch``.

        It may block (that stalls the batcher); raising fails the whole batch.
        """

    def on_batch_end(self, size: int, seconds: float) -> None:
        """On the event loop after a batch succeeded: its size and time (queue to outputs)."""

    def on_batch_error(self, size: int, error: Exception) -> None:
        """On the event loop after a batch failed; every request in it gets ``error``."""


@dataclass
class _Job(Generic[R]):
    decoded: Decoded
    future: asyncio.Future[tuple[R, int]]  # (output row, batch size)
    enqueued: float  # time.perf_counter()


_STOP = object()  # queue item: finish and stop
_FLUSH = object()  # queue item: run the batch being gathered now


class Batcher(Generic[R]):
    """Dynamic batching: requests in, one ``predict_batch`` call per batch, results out.

    A collector task on the event loop takes the first waiting request, then
    more until ``max_batch_size`` or until ``max_wait_ms`` has passed, and runs
    ``predict_batch`` on them in one worker thread (the event loop never blocks
    on the compute). The queue holds at most ``max_queue`` requests; beyond
    that :meth:`submit` raises :class:`~collabvit.errors.ServerBusy`.

    Args:
        predict_batch: requests -> one output row per request, e.g. (B, num_classes) logits.
        max_batch_size: requests per ``predict_batch`` call.
        max_wait_ms: after the first request, wait this long for the batch to fill.
        max_queue: requests waiting for the worker.
        callbacks: instrumentation, called in order.
    """

    def __init__(
        self,
        predict_batch: Callable[[list[Decoded]], Rows[R]],
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 128,
        callbacks: Sequence[BatcherCallbacks] = (),
    ) -> None:
        for name, value in (("max_batch_size", max_batch_size), ("max_queue", max_queue)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
        if not max_wait_ms >= 0:
            raise ConfigError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.predict_batch = predict_batch
        self.max_batch_size = max_batch_size
        self.max_wait_ms = max_wait_ms
        self.max_queue = max_queue
        self.callbacks = tuple(callbacks)
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
        self._queue = asyncio.Queue(maxsize=self.max_queue)
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
        """Raise :class:`~collabvit.errors.ServerBusy` unless a request would be queued now."""
        if not self.running or self._queue is None:
            raise ServerBusy("the server is not accepting requests (starting or stopping)")
        if self._queue.full():
            raise ServerBusy(self._full_message())

    def _full_message(self) -> str:
        return f"the server's queue is full ({self.max_queue} requests waiting)"

    def submit(self, decoded: Decoded) -> asyncio.Future[tuple[R, int]]:
        """Queue one request: a future of (its output row, its batch's size).

        Raises :class:`~collabvit.errors.ServerBusy` when full or stopping.
        """
        self.check_accepting()
        assert self._queue is not None
        future: asyncio.Future[tuple[R, int]] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Job(decoded, future, time.perf_counter()))
        except asyncio.QueueFull:
            raise ServerBusy(self._full_message()) from None
        self.in_flight += 1
        future.add_done_callback(self._done)
        return future

    def _done(self, _future: object) -> None:
        self.in_flight -= 1

    async def _collect(self) -> None:
        assert self._queue is not None
        queue = self._queue
        stopping = False
        while not stopping:
            first = await queue.get()
            if first is _STOP:
                break
            if first is _FLUSH:
                continue
            batch, stopping = await self._gather(queue, [first])
            await self._run(batch)

    async def _gather(
        self, queue: asyncio.Queue[Any], batch: list[_Job[R]]
    ) -> tuple[list[_Job[R]], bool]:
        """Add waiting requests to ``batch`` until it is full or its wait is over.

        Returns the batch and whether a stop request was taken from the queue.
        """
        loop = asyncio.get_running_loop()
        max_wait = 0.0 if self._flushing else self.max_wait_ms / 1000.0
        deadline = loop.time() + max_wait
        while len(batch) < self.max_batch_size:
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
                return batch, True
            batch.append(item)
        return batch, False

    async def _run(self, batch: list[_Job[R]]) -> None:
        started = time.perf_counter()
        for job in batch:
            for callback in self.callbacks:
                callback.on_queue_wait(started - job.enqueued)
        loop = asyncio.get_running_loop()
        try:
            outputs = await loop.run_in_executor(self._executor, self._predict, batch)
        except Exception as exc:
            logger.exception("batch of %d image(s) failed", len(batch))
            for callback in self.callbacks:
                callback.on_batch_error(len(batch), exc)
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        for callback in self.callbacks:
            callback.on_batch_end(len(batch), time.perf_counter() - started)
        for j, job in enumerate(batch):
            if not job.future.done():  # the client may have gone
                job.future.set_result((outputs[j], len(batch)))

    def _predict(self, batch: list[_Job[R]]) -> Rows[R]:
        """In the worker thread: the callbacks, then ``predict_batch`` and its length check."""
        decoded = [job.decoded for job in batch]
        for callback in self.callbacks:
            callback.on_batch_start(decoded)
        outputs = self.predict_batch(decoded)
        if len(outputs) != len(batch):
            raise ModelError(
                f"predict_batch returned {len(outputs)} outputs for a batch of {len(batch)} "
                "requests: it must return one row per request"
            )
        return outputs
