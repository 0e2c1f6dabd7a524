"""The HTTP layer: send -> retries -> one attempt -> parse, in-process and on 127.0.0.1.

The retry policy is unit-tested on ``httpx.MockTransport`` with the sleeps
recorded instead of slept; the failures against the real server app are real
too: a wrong token, a payload the server model cannot take, a full queue, a
worker held past the client's timeout, a server that is still starting.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import uvicorn
from client_support import BASE, BeforePredict, free_port, live_server, run_in_process

from collabvit.client import ClientConfig, EdgeClient, ImageResult, RetryPolicy, ServerAnswer
from collabvit.client.http import (
    MAX_ANSWER_BYTES,
    DeadlineExceeded,
    is_retryable,
    make_client,
    retry_after_s,
    send,
)
from collabvit.data import Sample, discover
from collabvit.engine import OperatingPoint
from collabvit.errors import ConfigError, ServerError
from collabvit.models import LoadedModel, load_model
from collabvit.server import ServerConfig, create_app

TOP = [{"label": 7, "class_name": "seven", "probability": 0.75}]
ANSWER = {"label": 7, "class_name": "seven", "top5": TOP, "server_ms": 1.5}
TOP2 = '[{"label": 7, "probability": 0.6}, {"label": 3, "probability": 0.3}]'
BAD_ANSWERS = {  # raw 200 bodies that are not a collabvit prediction
    "label 1e999": b'{"label": 1e999, "top5": ' + TOP2.encode() + b"}",
    "label a string": b'{"label": "7", "top5": ' + TOP2.encode() + b"}",
    "label a float": b'{"label": 7.0, "top5": ' + TOP2.encode() + b"}",
    "label a bool": b'{"label": true, "top5": ' + TOP2.encode() + b"}",
    "label negative": b'{"label": -1, "top5": ' + TOP2.encode() + b"}",
    "label null": b'{"label": null, "top5": ' + TOP2.encode() + b"}",
    "no label": b'{"top5": ' + TOP2.encode() + b"}",
    "top5 missing": b'{"label": 7}',
    "top5 an object": b'{"label": 7, "top5": {"label": 7, "probability": 0.5}}',
    "top5 empty": b'{"label": 7, "top5": []}',
    "top5 of ints": b'{"label": 7, "top5": [7, 3]}',
    "top5 NaN": b'{"label": 7, "top5": [{"label": 7, "probability": NaN}]}',
    "top5 inf": b'{"label": 7, "top5": [{"label": 7, "probability": 1e999}]}',
    "top5 above 1": b'{"label": 7, "top5": [{"label": 7, "probability": 1.5}]}',
    "top5 label 1e999": b'{"label": 7, "top5": [{"label": 1e999, "probability": 0.5}]}',
    "top5 repeats": b'{"label": 7, "top5": [{"label": 7, "probability": 0.4}, '
    b'{"label": 7, "probability": 0.4}]}',
    "top5 unsorted": b'{"label": 7, "top5": [{"label": 7, "probability": 0.1}, '
    b'{"label": 3, "probability": 0.6}]}',
    "class_name a number": b'{"label": 7, "class_name": 7, "top5": ' + TOP2.encode() + b"}",
    "server_ms a string": b'{"label": 7, "server_ms": "fast", "top5": ' + TOP2.encode() + b"}",
    "server_ms NaN": b'{"label": 7, "server_ms": NaN, "top5": ' + TOP2.encode() + b"}",
    "a list": b"[7]",
    "not JSON": b"<html>hello</html>",
    "not UTF-8": b"\xff\xfe\x00",
    "empty": b"",
}

Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture(scope="module")
def pair(small_pair: tuple[Path, Path]) -> tuple[LoadedModel, LoadedModel]:
    return load_model(str(small_pair[0])), load_model(str(small_pair[1]))


@pytest.fixture(scope="module")
def samples(photo_dir: Path) -> list[Sample]:
    return discover(photo_dir, photo_dir / "labels.csv")[0]


def scripted(*responses: httpx.Response | Exception) -> tuple[Handler, list[httpx.Request]]:
    """A MockTransport handler answering the given responses in turn (raising exceptions)."""
    seen: list[httpx.Request] = []
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        item = queue.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    return handler, seen


def send_with(
    handler: Handler, policy: RetryPolicy, token: str | None = None
) -> tuple[ServerAnswer | ServerError, list[float]]:
    """send() over a MockTransport; the delays it asked to sleep, instead of sleeping."""
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async def main() -> ServerAnswer | ServerError:
        transport = httpx.MockTransport(handler)
        async with make_client(BASE, token=token, transport=transport) as http:
            try:
                return await send(http, b"payload", policy, sleep)
            except ServerError as exc:
                return exc

    return asyncio.run(main()), slept


def test_send_parses_a_200_and_sends_token_and_body() -> None:
    handler, seen = scripted(httpx.Response(200, json=ANSWER))
    answer, slept = send_with(handler, RetryPolicy(), token="t0k")
    assert isinstance(answer, ServerAnswer)
    assert (answer.label, answer.class_name, answer.server_ms, answer.attempts) == (
        7,
        "seven",
        1.5,
        1,
    )
    assert answer.top5 == TOP and answer.rtt_ms >= 0
    assert slept == []
    (request,) = seen
    assert request.url.path == "/v1/infer" and request.method == "POST"
    assert request.headers["authorization"] == "Bearer t0k"
    assert request.headers["content-type"] == "application/octet-stream"
    assert request.content == b"payload"


def test_retries_back_off_and_honour_retry_after() -> None:
    handler, seen = scripted(
        httpx.Response(503, json={"error": "queue full"}, headers={"Retry-After": "1.5"}),
        httpx.ConnectError("refused"),
        httpx.Response(500, text="boom"),
        httpx.Response(200, json=ANSWER),
    )
    answer, slept = send_with(handler, RetryPolicy(retries=3, backoff_s=0.1))
    assert isinstance(answer, ServerAnswer) and answer.attempts == 4
    assert len(seen) == 4
    assert slept == [1.5, 0.2, 0.4]  # Retry-After beat 0.1 s; then 0.1 * 2, 0.1 * 4


def test_delays_are_capped_and_429_is_retried() -> None:
    handler, _ = scripted(
        httpx.Response(429, headers={"Retry-After": "100"}),
        httpx.Response(429, headers={"Retry-After": "soon"}),  # not seconds: ignored
        httpx.Response(200, json=ANSWER),
    )
    answer, slept = send_with(handler, RetryPolicy(retries=2, backoff_s=1.0, max_backoff_s=5.0))
    assert isinstance(answer, ServerAnswer) and answer.attempts == 3
    assert slept == [5.0, 2.0]


def test_exhausted_retries_raise_server_error_with_status_and_attempts() -> None:
    handler, seen = scripted(*[httpx.Response(503, json={"error": "draining"})] * 3)
    error, slept = send_with(handler, RetryPolicy(retries=2, backoff_s=0.01))
    assert isinstance(error, ServerError)
    assert (error.status_code, error.attempts) == (503, 3)
    assert str(error) == "server answered 503: draining (after 3 attempts)"
    assert len(seen) == 3 and len(slept) == 2
    # no answer at all: status None
    handler, _ = scripted(httpx.ConnectError("refused"), httpx.ReadTimeout("slow"))
    error, _ = send_with(handler, RetryPolicy(retries=1, backoff_s=0.0))
    assert isinstance(error, ServerError)
    assert (error.status_code, error.attempts) == (None, 2)
    assert str(error).startswith("timed out after 30 s (ReadTimeout)")


@pytest.mark.parametrize("status", [400, 401, 413])
def test_4xx_is_not_retried(status: int) -> None:
    handler, seen = scripted(httpx.Response(status, json={"error": "no"}))
    error, slept = send_with(handler, RetryPolicy(retries=5))
    assert isinstance(error, ServerError) and not is_retryable(error)
    assert (error.status_code, error.attempts, str(error)) == (
        status,
        1,
        f"server answered {status}: no",
    )
    assert len(seen) == 1 and slept == []


@pytest.mark.parametrize("body", list(BAD_ANSWERS.values()), ids=list(BAD_ANSWERS))
def test_a_200_that_is_not_a_prediction_is_a_failed_attempt_and_retried(body: bytes) -> None:
    """Issue 16 item 6: every answer is validated; a bad one is retried, never trusted."""
    handler, seen = scripted(*[httpx.Response(200, content=body)] * 2)
    error, _ = send_with(handler, RetryPolicy(retries=1, backoff_s=0.0))
    assert isinstance(error, ServerError), error
    assert is_retryable(error)
    assert (error.status_code, error.attempts, len(seen)) == (200, 2, 2)
    assert "is this a collabvit server?" in str(error)
    # then a good answer is taken
    handler, _ = scripted(httpx.Response(200, content=body), httpx.Response(200, json=ANSWER))
    answer, _ = send_with(handler, RetryPolicy(retries=1, backoff_s=0.0))
    assert isinstance(answer, ServerAnswer) and answer.attempts == 2


def test_retry_after_and_policy_values() -> None:
    assert retry_after_s(httpx.Response(503, headers={"Retry-After": "2"})) == 2.0
    assert retry_after_s(httpx.Response(503, headers={"Retry-After": "-1"})) is None
    assert retry_after_s(httpx.Response(503, headers={"Retry-After": "inf"})) is None
    assert retry_after_s(httpx.Response(503)) is None
    assert ClientConfig(BASE, retries=4, backoff_s=0.5).retry_policy == RetryPolicy(4, 0.5, 30.0)
    for bad in ({"retries": -1}, {"backoff_s": float("nan")}, {"max_backoff_s": -1.0}):
        with pytest.raises(ConfigError):
            RetryPolicy(**bad)


def test_client_errors_are_not_retried(
    pair: tuple[LoadedModel, LoadedModel],
    samples: list[Sample],
    tmp_path: Path,
    model_json_writer: Callable[..., Path],
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
    other = load_model(str(model_json_writer(tmp_path, "edge-32", seed=3, img_size=32)))
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
            with pytest.raises(ServerError, match=r"400.*bad magic") as caught:
                await client.send(http, b"XXXX" + payload[4:])
            assert (caught.value.status_code, caught.value.attempts) == (400, 1)
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


def test_the_deadline_covers_the_waits_between_attempts() -> None:
    """Item 7: a Retry-After of 30 s cannot hold an image past its 0.3 s deadline."""
    handler, seen = scripted(*[httpx.Response(503, headers={"Retry-After": "30"})] * 3)

    async def main() -> ServerError:
        async with make_client(BASE, transport=httpx.MockTransport(handler)) as http:
            with pytest.raises(DeadlineExceeded) as caught:
                await send(http, b"p", RetryPolicy(retries=2), deadline_s=0.3)
            return caught.value

    started = time.perf_counter()
    error = asyncio.run(main())
    assert time.perf_counter() - started < 5
    assert (error.status_code, error.attempts, len(seen)) == (None, 1, 1)
    assert str(error) == "no answer within the 0.3 s deadline (1 attempt(s))"


def test_an_answer_over_the_size_cap_is_invalid() -> None:
    big = b'{"label": 7, "pad": "' + b"x" * MAX_ANSWER_BYTES + b'"}'
    handler, _ = scripted(httpx.Response(200, content=big), httpx.Response(401, content=big))
    error, _ = send_with(handler, RetryPolicy(retries=1, backoff_s=0.0))
    assert isinstance(error, ServerError) and error.status_code == 401  # retried, then 401
    assert len(str(error)) < 300  # one short line, not the body
