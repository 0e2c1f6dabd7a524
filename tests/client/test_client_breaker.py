"""The circuit breaker on a hand-stepped clock, alone and inside EdgeClient."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from client_support import BASE, free_port

from collabvit.client import CircuitBreaker, ClientConfig, EdgeClient, ImageResult
from collabvit.data import Sample, discover
from collabvit.engine import OperatingPoint
from collabvit.errors import ConfigError
from collabvit.models import LoadedModel, load_model


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def edge(small_pair: tuple[Path, Path]) -> LoadedModel:
    return load_model(str(small_pair[0]))


@pytest.fixture(scope="module")
def samples(photo_dir: Path) -> list[Sample]:
    return discover(photo_dir, photo_dir / "labels.csv")[0]


def test_opens_after_n_failures_in_a_row_and_half_opens_after_the_cooldown() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(3, 10.0, clock)
    assert breaker.state == "closed" and breaker.allow()
    assert breaker.record_failure() is False
    assert breaker.record_failure() is False
    breaker.record_success()  # a success restarts the count
    assert breaker.failures == 0
    assert [breaker.record_failure() for _ in range(3)] == [False, False, True]
    assert breaker.state == "open" and not breaker.allow()
    clock.now += 9.99
    assert not breaker.allow()
    assert breaker.record_failure() is False  # failures while open change nothing
    clock.now += 0.01
    assert breaker.state == "half-open" and breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed" and breaker.failures == 0


def test_a_failure_while_half_open_reopens_at_once() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(2, 5.0, clock)
    breaker.record_failure()
    assert breaker.record_failure() is True
    clock.now += 5.0
    assert breaker.state == "half-open"
    assert breaker.record_failure() is True  # one failure is enough
    assert breaker.state == "open"
    clock.now += 4.0
    assert not breaker.allow()  # a fresh cool-down from the reopening
    clock.now += 1.0
    assert breaker.allow()


def test_a_success_while_open_does_not_close_it_and_reset_does() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(1, 5.0, clock)
    assert breaker.record_failure() is True
    breaker.record_success()  # a call that started before it opened
    assert breaker.state == "open"
    breaker.reset()
    assert breaker.state == "closed" and breaker.allow()


def test_threshold_zero_never_opens_and_bad_values_are_refused() -> None:
    breaker = CircuitBreaker(0, 5.0, FakeClock())
    assert not any(breaker.record_failure() for _ in range(100))
    assert breaker.allow()
    for threshold, cooldown in ((-1, 1.0), (1, -1.0), (1, float("nan"))):
        with pytest.raises(ConfigError):
            CircuitBreaker(threshold, cooldown)


def run_on_a_failing_server(
    edge: LoadedModel, samples: list[Sample], failing_calls: int
) -> tuple[list[ImageResult], list[int]]:
    """Six images, one at a time, against a server whose first calls answer 503.

    Each answered image moves the clock 4 s on; the breaker opens after 2
    failures and cools down for 10 s.
    """
    clock = FakeClock()
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(len(calls) + 1)
        if len(calls) <= failing_calls:
            return httpx.Response(503, json={"error": "overloaded"})
        top5 = [{"label": 7, "class_name": "seven", "probability": 0.8}]
        answer = {"label": 7, "class_name": "seven", "top5": top5, "server_ms": 1.0}
        return httpx.Response(200, json=answer)

    config = ClientConfig(
        BASE, concurrency=1, retries=0, breaker_failures=2, breaker_cooldown_s=10.0
    )
    client = EdgeClient(
        edge, OperatingPoint(measure="none"), config, httpx.MockTransport(handler), clock
    )

    def tick(_result: ImageResult) -> None:
        clock.now += 4.0

    return client.run(samples[:6], on_result=tick), calls


def test_the_edge_client_pauses_then_half_opens_and_closes(
    edge: LoadedModel, samples: list[Sample]
) -> None:
    results, calls = run_on_a_failing_server(edge, samples, failing_calls=2)
    # t=100, 104: two 503s open it; t=108, 112: paused; t=116: half-open, answered; closed
    assert [r.source for r in results] == ["edge-fallback"] * 4 + ["server"] * 2
    assert [r.attempts for r in results] == [1, 1, 0, 0, 1, 1]
    assert all("paused" in (r.error or "") for r in results[2:4])
    assert [r.prediction for r in results[4:]] == [7, 7]
    assert len(calls) == 4


def test_the_edge_client_reopens_when_the_half_open_call_fails(
    edge: LoadedModel, samples: list[Sample]
) -> None:
    results, calls = run_on_a_failing_server(edge, samples, failing_calls=3)
    # t=116: half-open, 503 again: reopened for 10 s, so t=120 falls back at once
    assert [r.source for r in results] == ["edge-fallback"] * 6
    assert [r.attempts for r in results] == [1, 1, 0, 0, 1, 0]
    assert len(calls) == 3


def test_unreachable_server_every_image_falls_back_and_the_breaker_pauses(
    edge: LoadedModel, samples: list[Sample]
) -> None:
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
