"""The dynamic batcher: alone with plain Python callables, and inside the app (stop, flush)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from server_support import BASE, Gate, first_photos, mask_of, preprocessed, serve, wait_until

from collabvit.errors import CollabViTError, ConfigError, ModelError, ServerBusy
from collabvit.models import LoadedModel, load_model
from collabvit.server import (
    Batcher,
    BatcherCallbacks,
    Decoded,
    QueueFullError,
    ServerConfig,
    create_app,
)
from collabvit.wire import encode


@pytest.fixture(scope="module")
def server_model(small_pair: tuple[Path, Path]) -> LoadedModel:
    return load_model(str(small_pair[1]))


@pytest.fixture(scope="module")
def pixels(server_model: LoadedModel, imagenet_dir: Path) -> list[np.ndarray]:
    """Real photos preprocessed for the server: (3, 64, 64) uint8 each."""
    return preprocessed(server_model, first_photos(imagenet_dir, 3))


def request_keeping(count: int) -> Decoded:
    """A tiny request (no model needed) that keeps ``count`` of 8 patches."""
    keep_mask = torch.zeros(8, dtype=torch.bool)
    keep_mask[:count] = True
    return Decoded(torch.zeros(1, 4, 8, dtype=torch.uint8), keep_mask)


class Recorder(BatcherCallbacks):
    """Every callback the batcher makes, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def on_queue_wait(self, seconds: float) -> None:
        assert seconds >= 0
        self.calls.append(("wait", None))

    def on_batch_start(self, batch: Sequence[Decoded]) -> None:
        self.calls.append(("start", len(batch)))

    def on_batch_end(self, size: int, seconds: float) -> None:
        assert seconds >= 0
        self.calls.append(("end", size))

    def on_batch_error(self, size: int, error: Exception) -> None:
        self.calls.append(("error", type(error).__name__))


def test_a_batcher_runs_a_plain_python_predict_batch_without_a_model() -> None:
    batches: list[list[int]] = []

    def count_kept(batch: list[Decoded]) -> list[int]:  # no torch model: plain Python
        kept = [int(d.keep_mask.sum()) for d in batch]
        batches.append(kept)
        return kept

    recorder = Recorder()
    # the batch closes when all three are in; the long wait only bounds a slow machine
    batcher = Batcher(count_kept, max_batch_size=3, max_wait_ms=5000, callbacks=[recorder])

    async def main() -> list[tuple[int, int]]:
        await batcher.start()
        try:
            futures = [batcher.submit(request_keeping(k)) for k in (1, 5, 8)]
            assert batcher.in_flight == 3
            return list(await asyncio.gather(*futures))
        finally:
            await batcher.stop()

    assert asyncio.run(main()) == [(1, 3), (5, 3), (8, 3)]  # (its row, its batch size)
    assert batches == [[1, 5, 8]]
    assert recorder.calls == [("wait", None)] * 3 + [("start", 3), ("end", 3)]
    assert batcher.in_flight == 0 and not batcher.running


def test_a_predict_batch_with_one_output_too_few_fails_only_that_batch() -> None:
    outputs = iter([["only one"], ["a"]])
    recorder = Recorder()
    batcher = Batcher(
        lambda _b: next(outputs), max_batch_size=2, max_wait_ms=5000, callbacks=[recorder]
    )

    async def main() -> tuple[list[BaseException | tuple[str, int]], tuple[str, int]]:
        await batcher.start()
        try:
            pair = [batcher.submit(request_keeping(k)) for k in (2, 3)]
            failed = await asyncio.gather(*pair, return_exceptions=True)
            return list(failed), await batcher.submit(request_keeping(1))
        finally:
            await batcher.stop()

    failed, answered = asyncio.run(main())
    assert all(isinstance(e, ModelError) and "one row per request" in str(e) for e in failed)
    assert answered == ("a", 1)
    assert ("error", "ModelError") in recorder.calls and recorder.calls[-1] == ("end", 1)


def test_submit_raises_server_busy_when_stopped_or_full() -> None:
    gate = Gate()
    batcher = Batcher(
        lambda b: [0] * len(b), max_batch_size=1, max_queue=1, max_wait_ms=0, callbacks=[gate]
    )

    async def main() -> list[ServerBusy]:
        busy: list[ServerBusy] = []
        with pytest.raises(ServerBusy) as not_started:
            batcher.submit(request_keeping(1))
        busy.append(not_started.value)
        await batcher.start()
        held = batcher.submit(request_keeping(1))
        await asyncio.to_thread(gate.entered.wait, 10)  # the worker holds request 1
        queued = batcher.submit(request_keeping(1))
        with pytest.raises(QueueFullError) as full:  # the former name of ServerBusy
            batcher.submit(request_keeping(1))
        busy.append(full.value)
        gate.released.set()
        assert await asyncio.gather(held, queued) == [(0, 1), (0, 1)]
        await batcher.stop()
        with pytest.raises(ServerBusy) as stopped:
            batcher.check_accepting()
        busy.append(stopped.value)
        return busy

    not_started, full, stopped = asyncio.run(main())
    assert "not accepting" in str(not_started) and "not accepting" in str(stopped)
    assert "queue is full (1 requests waiting)" in str(full)
    assert all(isinstance(e, CollabViTError) for e in (not_started, full, stopped))


@pytest.mark.parametrize(
    "field,value", [("max_batch_size", 0), ("max_queue", 0), ("max_wait_ms", -1.0)]
)
def test_batcher_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(ConfigError):
        Batcher(lambda b: b, **{field: value})  # type: ignore[arg-type]


def test_stopping_finishes_every_accepted_request(
    server_model: LoadedModel, pixels: list[np.ndarray]
) -> None:
    # a batch would wait up to 60 s to fill; stopping runs it at once
    app = create_app(server_model, ServerConfig(max_batch_size=8, max_wait_ms=59_000))
    payloads = [encode(p, mask_of(8 + i), 8) for i, p in enumerate(pixels[:3])]

    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            async with app.router.lifespan_context(app):
                tasks = [asyncio.create_task(client.post("/v1/infer", content=p)) for p in payloads]
                await wait_until(lambda: app.state.batcher.in_flight == 3)
            # lifespan exited: the batcher stopped after answering what it had accepted
            return list(await asyncio.gather(*tasks))

    answers = asyncio.run(main())
    assert [r.status_code for r in answers] == [200, 200, 200]
    assert [r.json()["batch_size"] for r in answers] == [3, 3, 3]


def test_flush_runs_the_waiting_batch_at_once(
    server_model: LoadedModel, pixels: list[np.ndarray]
) -> None:
    app = create_app(server_model, ServerConfig(max_batch_size=8, max_wait_ms=59_000))
    payloads = [encode(p, mask_of(5 + i), 8) for i, p in enumerate(pixels[:2])]

    async def body(client: httpx.AsyncClient) -> tuple[list[httpx.Response], float]:
        tasks = [asyncio.create_task(client.post("/v1/infer", content=p)) for p in payloads]
        await wait_until(lambda: app.state.batcher.in_flight == 2)
        started = time.perf_counter()
        await asyncio.to_thread(app.state.batcher.flush)  # as from a signal handler
        answers = list(await asyncio.gather(*tasks))
        return answers, time.perf_counter() - started

    answers, waited = serve(app, body)
    assert [r.status_code for r in answers] == [200, 200]
    assert [r.json()["batch_size"] for r in answers] == [2, 2]
    assert waited < 30  # not the 59 s batch window
