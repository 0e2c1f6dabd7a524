"""One payload to the server's ``POST /v1/infer``, layered like httpx's ``send``.

:func:`send` -> retries (exponential backoff, ``Retry-After`` honoured) ->
one attempt -> :func:`parse_answer`. Connect errors, timeouts, 5xx (503
included) and 429 are retried; other 4xx answers (400 malformed, 401 token,
413 too large) are not, since resending cannot help. Every failure is a
:class:`~collabvit.errors.ServerError` carrying the last HTTP status
(``status_code``, None when no answer came) and the ``attempts`` made.

The ``httpx.AsyncClient`` comes from the caller (:func:`make_client` builds
one), so its transport is injectable: tests pass ``httpx.ASGITransport``
around the server app, or ``httpx.MockTransport``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from ..errors import ConfigError, ServerError

__all__ = [
    "INFER_PATH",
    "RetryPolicy",
    "ServerAnswer",
    "is_retryable",
    "make_client",
    "parse_answer",
    "retry_after_s",
    "send",
    "send_once",
]

INFER_PATH = "/v1/infer"

Sleep = Callable[[float], Awaitable[None]]


@dataclass
class ServerAnswer:
    """A 200 answer of ``/v1/infer``."""

    label: int
    class_name: str
    top5: list[dict[str, Any]]
    server_ms: float
    rtt_ms: float
    attempts: int


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to wait before resending."""

    retries: int = 2  # extra attempts after the first
    backoff_s: float = 0.2  # delay before the first retry; doubles each retry
    max_backoff_s: float = 30.0  # cap on any delay, Retry-After included

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ConfigError(f"retries must be >= 0, got {self.retries}")
        for name in ("backoff_s", "max_backoff_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value}")

    @property
    def attempts(self) -> int:
        return self.retries + 1

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based) before the next one."""
        backoff = self.backoff_s * 2.0 ** (attempt - 1)
        return min(max(backoff, retry_after or 0.0), self.max_backoff_s)


def make_client(
    server_url: str,
    *,
    token: str | None = None,
    timeout_s: float = 30.0,
    max_connections: int = 4,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` for :func:`send`: base URL, token, timeouts, keep-alive pool."""
    headers = {"Content-Type": "application/octet-stream"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.AsyncClient(
        base_url=server_url,
        transport=transport,
        headers=headers,
        timeout=httpx.Timeout(timeout_s),
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
    )


async def send(
    http: httpx.AsyncClient,
    payload: bytes,
    policy: RetryPolicy,
    sleep: Sleep = asyncio.sleep,
) -> ServerAnswer:
    """POST one payload to ``/v1/infer``, retrying what a retry can fix.

    Raises:
        ServerError: no 200 answer after ``policy.attempts`` attempts, an
            answer that retrying cannot fix (4xx but 429), or a 200 answer
            that is not a collabvit prediction.
    """
    failure = ServerError("no attempt made", attempts=0)
    for attempt in range(1, policy.attempts + 1):
        retry_after: float | None = None
        try:
            response, rtt_ms = await send_once(http, payload)
        except ServerError as exc:
            failure = exc
        else:
            if response.status_code == 200:
                return parse_answer(response, rtt_ms, attempt)
            failure = _error_answer(response, attempt)
            if not is_retryable(failure):
                raise failure
            retry_after = retry_after_s(response)
        if attempt < policy.attempts:
            await sleep(policy.delay(attempt, retry_after))
    raise ServerError(
        f"{failure} (after {policy.attempts} attempts)",
        status_code=failure.status_code,
        attempts=policy.attempts,
    )


async def send_once(http: httpx.AsyncClient, payload: bytes) -> tuple[httpx.Response, float]:
    """One POST: the response (any status) and its round trip in ms.

    Raises:
        ServerError: no answer (timeout, refused connection, ...), ``status_code`` None.
    """
    started = time.perf_counter()
    try:
        response = await http.post(INFER_PATH, content=payload)
    except httpx.TimeoutException as exc:
        timeout = http.timeout.read
        after = "" if timeout is None else f" after {timeout:g} s"
        raise ServerError(f"timed out{after} ({type(exc).__name__})") from None
    except httpx.TransportError as exc:
        url = str(http.base_url).rstrip("/")
        raise ServerError(f"cannot reach {url} ({type(exc).__name__}: {exc})") from None
    return response, 1000.0 * (time.perf_counter() - started)


def parse_answer(response: httpx.Response, rtt_ms: float, attempts: int) -> ServerAnswer:
    """The prediction in a 200 answer.

    Raises:
        ServerError: the body is not a collabvit prediction (not retried).
    """
    try:
        body = response.json()
        return ServerAnswer(
            int(body["label"]),
            str(body.get("class_name", body["label"])),
            list(body.get("top5", [])),
            float(body.get("server_ms", math.nan)),
            rtt_ms,
            attempts,
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ServerError(
            "server answered 200 without a label: is this a collabvit server?",
            status_code=response.status_code,
            attempts=attempts,
        ) from None


def is_retryable(error: ServerError) -> bool:
    """Whether resending may help: no answer, 429, or 5xx (503 included)."""
    code = error.status_code
    return code is None or code == 429 or code >= 500


def retry_after_s(response: httpx.Response) -> float | None:
    """Retry-After in seconds (the delta-seconds form; an HTTP date is ignored)."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _error_answer(response: httpx.Response, attempts: int) -> ServerError:
    try:
        reason = str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        reason = response.text[:200] or response.reason_phrase
    code = response.status_code
    return ServerError(f"server answered {code}: {reason}", status_code=code, attempts=attempts)
