"""The edge client against the real server app: in-process (ASGI transport) or on 127.0.0.1.

Failures are real too: a closed port, a wrong token, a payload the server
model cannot take, a full queue, a worker held past the client's timeout.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from conftest import write_model_json

from collabvit.client import (
    ClientConfig,
    EdgeClient,
    ImageResult,
    ServerAnswer,
    summarise,
    write_jsonl,
)
from collabvit.data import Sample, discover
from collabvit.engine import OperatingPoint, evaluate
from collabvit.errors import ConfigError, ServerError
from collabvit.models import LoadedModel, load_model
from collabvit.server import BatcherCallbacks, Decoded, ServerConfig, create_app

BASE = "http://collabvit.test"


class BeforePredict(BatcherCallbacks):
    """A batcher callback calling ``hook(batch_size)`` in the worker before each batch."""

    def __init__(self, hook: Callable[[int], object]) -> None:
        self.hook = hook

    def on_batch_start(self, batch: Sequence[Decoded]) -> None:
        self.hook(len(batch))


@pytest.fixture(scope="module")
def pair(small_pair: tuple[Path, Path]) -> tuple[LoadedModel, LoadedModel]:
    return load_model(str(small_pair[0])), load_model(str(small_pair[1]))


@pytest.fixture(scope="module")
def samples(photo_dir: Path) -> list[Sample]:
    return discover(photo_dir, photo_dir / "labels.csv")[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_in_process(
    app: Any, edge: LoadedModel, point: OperatingPoint, config: ClientConfig, samples: list[Sample]
) -> list[ImageResult]:
    async def main() -> list[ImageResult]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            return await EdgeClient(edge, point, config, transport).arun(samples)

    return asyncio.run(main())


@contextmanager
def live_server(app: Any) -> Iterator[str]:
    """The app under uvicorn on 127.0.0.1, in a thread of this process (hooks stay in reach)."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="uvicorn-test")
    thread.start()
    try:
        for _ in range(1000):
            if server.started or not thread.is_alive():
                break
            time.sleep(0.01)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        assert not thread.is_alive()


def test_edge_client_matches_evaluate_image_for_image(
    pair: tuple[LoadedModel, LoadedModel], samples: list[Sample], tmp_path: Path
) -> None:
    edge, server = pair
    everything = evaluate(edge, server, samples, OperatingPoint(measure="min-entropy", eta=0.0))
    eta = statistics.median(r.uncertainty for r in everything.records)
    app = create_app(server, ServerConfig(max_wait_ms=20))
    cases = [  # (point, codec): png is lossless, so it gets the same answers
        (OperatingPoint(measure="none"), "raw"),
        (OperatingPoint(measure="min-entropy", eta=eta), "raw"),
        (OperatingPoint(measure="min-entropy", eta=eta, rule="top-k", threshold=20), "png"),
    ]
    for i, (point, codec) in enumerate(cases):
        expected = evaluate(edge, server, samples, point).records
        config = ClientConfig(BASE, codec=codec, concurrency=3, full_jpeg_baseline=i == 0)
        results = run_in_process(app, edge, point, config, samples)
        assert [r.file for r in results] == [r.file for r in expected]
        for got, want in zip(results, expected, strict=True):
            assert got.prediction == want.final_pred, (point, codec, got.file)
            assert got.edge_prediction == want.edge_pred
            assert got.source == ("server" if want.transmitted else "edge")
            assert got.patches_sent == want.num_patches
            assert got.uncertainty == pytest.approx(want.uncertainty, abs=1e-9)
            assert got.label == want.label
            assert (got.bytes_sent > 0) == want.transmitted
            assert (got.rtt_ms is not None) == want.transmitted
            assert (got.full_jpeg_bytes or 0) > 0 or i > 0
    assert 0 < sum(r.transmitted for r in expected) < len(expected)

    out = tmp_path / "edge.jsonl"
    write_jsonl(results, out)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == len(samples)
    assert set(lines[0]) >= {
        "file",
        "label",
        "prediction",
        "class_name",
        "source",
        "uncertainty",
        "patches_sent",
        "bytes_sent",
        "rtt_ms",
    }
    summary = summarise(results)
    sent = sum(r.transmitted for r in expected)
    assert summary["transmit_ratio"] == sent / len(samples)
    assert summary["sources"] == {
        "edge": len(samples) - sent,
        "server": sent,
        "edge-fallback": 0,
        "unreadable": 0,
    }
    assert summary["accuracy"] == sum(r.final_pred == r.label for r in expected) / len(expected)
    assert summary["mean_bytes_per_image"] == sum(r.bytes_sent for r in results) / len(samples)


def test_unreachable_server_every_image_falls_back_and_the_breaker_pauses(
    pair: tuple[LoadedModel, LoadedModel], samples: list[Sample]
) -> None:
    edge, _ = pair
    config = ClientConfig(
        f"http://127.0.0.1:{free_port()}",  # nothing listens there
        concurrency=1,
        retries=2,
        backoff_s=0.01,
        timeout_s=5,
        breaker_failures=3,
        breaker_cooldown_s=60,
        full_jpeg_baseline=False,
    )
    results = EdgeClient(edge, OperatingPoint(measure="none"), config).run(samples[:6])
    assert [r.source for r in results] == ["edge-fallback"] * 6
    assert [r.prediction for r in results] == [r.edge_prediction for r in results]
    assert [r.attempts for r in results] == [3, 3, 3, 0, 0, 0]
    assert all("cannot reach" in (r.error or "") for r in results[:3])
    assert all("paused" in (r.error or "") for r in results[3:])
    assert all(r.patches_sent > 0 and r.rtt_ms is None for r in results)


def test_client_errors_are_not_retried(
    pair: tuple[LoadedModel, LoadedModel], samples: list[Sample], tmp_path: Path
) -> None:
    edge, server = pair
    point = OperatingPoint(measure="none")
    # 401: the server wants a token the client does not have
    app = create_app(server, ServerConfig(token="right", max_wait_ms=0))
    config = ClientConfig(BASE, token="wrong", retries=3, backoff_s=0.01)
    results = run_in_process(app, edge, point, config, samples[:3])
    assert [(r.source, r.attempts) for r in results] == [("edge-fallback", 1)] * 3
    assert all("401" in (r.error or "") for r in results)
    rejected = app.state.metrics.registry.get_sample_value(
        "collabvit_requests_total", {"endpoint": "/v1/infer", "outcome": "unauthorized"}
    )
    assert rejected == 3  # one request per image: no retries
    # 400: a 32x32 edge sends payloads the 64x64 server model cannot take
    other = load_model(str(write_model_json(tmp_path, "edge-32", seed=3, img_size=32)))
    app = create_app(server, ServerConfig(max_wait_ms=0))
    config = ClientConfig(BASE, retries=3, backoff_s=0.01)
    results = run_in_process(app, other, point, config, samples[:2])
    assert [(r.source, r.attempts) for r in results] == [("edge-fallback", 1)] * 2
    assert all("400" in (r.error or "") and "model takes" in (r.error or "") for r in results)


def test_a_503_is_retried_after_retry_after(
    pair: tuple[LoadedModel, LoadedModel], samples: list[Sample]
) -> None:
    edge, server = pair
    released = threading.Event()

    def hold(_batch_size: int) -> None:
        assert released.wait(20)

    app = create_app(
        server,
        ServerConfig(max_batch_size=1, max_queue=1, max_wait_ms=0),
        callbacks=[BeforePredict(hold)],
    )
    registry = app.state.metrics.registry
    config = ClientConfig(BASE, concurrency=3, retries=2, backoff_s=0.01, full_jpeg_baseline=False)

    async def main() -> tuple[list[ImageResult], float]:
        async with app.router.lifespan_context(app):

            async def release_after_a_503() -> None:
                for _ in range(2000):
                    labels = {"endpoint": "/v1/infer", "outcome": "overloaded"}
                    if registry.get_sample_value("collabvit_requests_total", labels):
                        break
                    await asyncio.sleep(0.005)
                released.set()

            releaser = asyncio.create_task(release_after_a_503())
            client = EdgeClient(edge, OperatingPoint(measure="none"), config)
            client.transport = httpx.ASGITransport(app=app)
            started = time.perf_counter()
            results = await client.arun(samples[:3])
            elapsed = time.perf_counter() - started
            await releaser
            return results, elapsed

    results, elapsed = asyncio.run(main())
    assert [r.source for r in results] == ["server"] * 3
    assert max(r.attempts for r in results) >= 2
    assert elapsed >= 1.0  # Retry-After: 1 beat the 10 ms backoff


def test_a_request_past_its_timeout_falls_back(
    pair: tuple[LoadedModel, LoadedModel], samples: list[Sample]
) -> None:
    edge, server = pair
    released = threading.Event()
    app = create_app(
        server,
        ServerConfig(max_wait_ms=0),
        callbacks=[BeforePredict(lambda _n: released.wait(20))],
    )
    with live_server(app) as url:
        config = ClientConfig(url, timeout_s=0.3, retries=1, backoff_s=0.01)
        try:
            results = EdgeClient(edge, OperatingPoint(measure="none"), config).run(samples[:1])
        finally:
            released.set()
    assert results[0].source == "edge-fallback"
    assert results[0].attempts == 2
    assert "timed out" in (results[0].error or "")


def test_send_returns_the_answer_or_raises_server_error(
    pair: tuple[LoadedModel, LoadedModel], samples: list[Sample]
) -> None:
    edge, server = pair
    app = create_app(server, ServerConfig(max_wait_ms=0))
    config = ClientConfig(BASE, retries=0, full_jpeg_baseline=False)
    client = EdgeClient(edge, OperatingPoint(measure="none"), config, httpx.ASGITransport(app=app))
    decision = next(client.decide(samples[:1]))[0]
    assert decision.transmit and decision.payload is not None
    payload = decision.payload

    async def main() -> ServerAnswer:
        async with app.router.lifespan_context(app), client.http_client() as http:
            with pytest.raises(ServerError, match=r"400.*bad magic"):
                await client.send(http, b"XXXX" + payload[4:])
            return await client.send(http, payload)

    answer = asyncio.run(main())
    assert answer.attempts == 1
    assert answer.label == answer.top5[0]["label"]
    assert answer.rtt_ms >= answer.server_ms > 0


def test_the_client_waits_for_a_server_that_is_still_starting(
    pair: tuple[LoadedModel, LoadedModel], samples: list[Sample]
) -> None:
    edge, server = pair
    app = create_app(server, ServerConfig(max_wait_ms=0))
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    late = uvicorn.Server(config)
    starter = threading.Timer(1.0, late.run)  # nothing listens for the first second
    starter.start()
    try:
        client_config = ClientConfig(
            f"http://127.0.0.1:{port}", wait_for_server_s=60, retries=0, full_jpeg_baseline=False
        )
        results = EdgeClient(edge, OperatingPoint(measure="none"), client_config).run(samples[:2])
    finally:
        late.should_exit = True
        starter.join(30)
    assert [(r.source, r.attempts) for r in results] == [("server", 1)] * 2


def test_unreadable_files_get_a_line_and_nothing_is_dropped(
    pair: tuple[LoadedModel, LoadedModel], photo_dir: Path, tmp_path: Path
) -> None:
    edge, _ = pair
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in sorted(p.name for p in photo_dir.glob("*.JPEG"))[:2]:
        shutil.copy(photo_dir / name, folder / name)
    (folder / "broken.jpg").write_bytes(b"not a picture")
    found, _ = discover(folder)
    config = ClientConfig(f"http://127.0.0.1:{free_port()}")  # never called: eta keeps all
    results = EdgeClient(edge, OperatingPoint(eta=1e9), config).run(found)
    assert [r.file for r in results] == [s.file for s in found]
    by_file = {r.file: r for r in results}
    assert by_file["broken.jpg"].source == "unreadable"
    assert by_file["broken.jpg"].prediction is None
    assert sum(r.source == "edge" for r in results) == 2


@pytest.mark.parametrize(
    "changes",
    [
        {"server_url": "127.0.0.1:8000"},
        {"codec": "webp"},
        {"quality": 0},
        {"concurrency": 0},
        {"retries": -1},
        {"timeout_s": 0.0},
        {"backoff_s": float("nan")},
    ],
)
def test_client_config_rejects_bad_values(changes: dict[str, Any]) -> None:
    values: dict[str, Any] = {"server_url": BASE, **changes}
    with pytest.raises(ConfigError):
        ClientConfig(**values)
