"""One payload to the server's ``POST /v1/infer``, layered like httpx's ``send``.

:func:`send` -> retries (exponential backoff, ``Retry-After`` honoured) ->
one attempt -> :func:`parse_answer`. Connect errors, timeouts, 5xx (503
included), 429 and 200 answers that are not a collabvit prediction
(:class:`InvalidAnswer`: every field is checked, see :func:`answer_problem`)
are retried; other 4xx answers (400 malformed, 401 token, 413 too large) are
not, since resending cannot help. Every failure is a
:class:`~collabvit.errors.ServerError` carrying the last HTTP status
(``status_code``, None when no answer came) and the ``attempts`` made.

The ``httpx.AsyncClient`` comes from the caller (:func:`make_client` builds
one), so its transport is injectable: tests pass ``httpx.ASGITransport``
around the server app, or ``httpx.MockTransport``.
"""

from __future__ import annotations

import asyncio
import json
import math
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from ..errors import ConfigError, ServerError

__all__ = [
    "INFER_PATH",
    "MAX_ANSWER_BYTES",
    "DeadlineExceeded",
    "InvalidAnswer",
    "RetryPolicy",
    "ServerAnswer",
    "answer_problem",
    "is_retryable",
    "make_client",
    "parse_answer",
    "retry_after_s",
    "send",
    "send_once",
]

INFER_PATH = "/v1/infer"
MAX_ANSWER_BYTES = 1 << 20
"""Bytes of an answer the client reads at most (a prediction is a few hundred)."""

Sleep = Callable[[float], Awaitable[None]]

_NOT_JSON = object()


class InvalidAnswer(ServerError):
    """A 200 answer that is not a collabvit prediction (retried like a 5xx)."""


class DeadlineExceeded(ServerError):
    """The server did not answer within the exchange's deadline (``status_code`` None)."""


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
    verify: ssl.SSLContext | bool = True,
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` for :func:`send`: base URL, token, timeouts, keep-alive pool.

    ``verify``: how an ``https://`` server's certificate is checked (an
    ``ssl.SSLContext`` with the CA of a private deployment; True: the system CAs).
    """
    headers = {"Content-Type": "application/octet-stream"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.AsyncClient(
        base_url=server_url,
        transport=transport,
        verify=verify,
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
    *,
    num_classes: int | None = None,
    deadline_s: float | None = None,
) -> ServerAnswer:
    """POST one payload to ``/v1/infer``, retrying what a retry can fix.

    Args:
        num_classes: the label space; answers outside it are invalid.
        deadline_s: the whole exchange (every attempt, every wait between
            them, every byte of every answer) ends after this many seconds
            (None: no deadline; the per-operation ``http.timeout`` alone
            cannot stop a server that trickles its answer).

    Raises:
        DeadlineExceeded: no answer within ``deadline_s``.
        ServerError: no valid 200 answer after ``policy.attempts`` attempts
            (a 200 that is not a prediction counts as a failed attempt), or an
            answer that retrying cannot fix (4xx but 429).
    """
    started = [0]  # attempts started, for the deadline's message
    exchange = _send_with_retries(http, payload, policy, sleep, num_classes, started)
    try:
        return await asyncio.wait_for(exchange, deadline_s)
    except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
        assert deadline_s is not None
        raise DeadlineExceeded(
            f"no answer within the {deadline_s:g} s deadline ({started[0]} attempt(s))",
            attempts=started[0],
        ) from None


async def _send_with_retries(
    http: httpx.AsyncClient,
    payload: bytes,
    policy: RetryPolicy,
    sleep: Sleep,
    num_classes: int | None,
    started: list[int],
) -> ServerAnswer:
    failure = ServerError("no attempt made", attempts=0)
    for attempt in range(1, policy.attempts + 1):
        started[0] = attempt
        retry_after: float | None = None
        try:
            response, rtt_ms = await send_once(http, payload)
        except ServerError as exc:
            failure = exc
        else:
            try:
                if response.status_code == 200:
                    return parse_answer(response, rtt_ms, attempt, num_classes)
                failure = _error_answer(response, attempt)
            except InvalidAnswer as exc:
                failure = exc
            if not is_retryable(failure):
                raise failure
            retry_after = retry_after_s(response)
        if attempt < policy.attempts:
            await sleep(policy.delay(attempt, retry_after))
    raise type(failure)(
        f"{failure} (after {policy.attempts} attempts)",
        status_code=failure.status_code,
        attempts=policy.attempts,
    )


async def send_once(http: httpx.AsyncClient, payload: bytes) -> tuple[httpx.Response, float]:
    """One POST: the response (any status, body read) and its round trip in ms.

    At most :data:`MAX_ANSWER_BYTES` of the body are read: a longer 200 is an
    :class:`InvalidAnswer`; a longer error answer is cut there.

    Raises:
        ServerError: no answer (timeout, refused connection, ...), ``status_code`` None.
        InvalidAnswer: a 200 longer than :data:`MAX_ANSWER_BYTES`.
    """
    started = time.perf_counter()
    url = str(http.base_url).rstrip("/")
    try:
        request = http.build_request("POST", INFER_PATH, content=payload)
        streamed = await http.send(request, stream=True)
        try:
            body, cut = await _read_at_most(streamed, MAX_ANSWER_BYTES)
        finally:
            await streamed.aclose()
    except httpx.TimeoutException as exc:
        timeout = http.timeout.read
        after = "" if timeout is None else f" after {timeout:g} s"
        raise ServerError(f"timed out{after} ({type(exc).__name__})") from None
    except httpx.TransportError as exc:
        raise ServerError(f"cannot reach {url} ({type(exc).__name__}: {exc})") from None
    except httpx.RequestError as exc:  # e.g. a body that does not decode
        raise ServerError(f"no usable answer from {url} ({type(exc).__name__}: {exc})") from None
    if cut and streamed.status_code == 200:
        raise InvalidAnswer(
            f"server answered 200 with more than {MAX_ANSWER_BYTES} bytes: "
            "is this a collabvit server?",
            status_code=200,
        )
    skip = {"content-encoding", "content-length", "transfer-encoding"}  # the body is decoded
    headers = [(k, v) for k, v in streamed.headers.multi_items() if k.lower() not in skip]
    response = httpx.Response(streamed.status_code, headers=headers, content=body, request=request)
    return response, 1000.0 * (time.perf_counter() - started)


async def _read_at_most(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """The decoded body's first ``limit`` bytes, and whether there was more."""
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            return bytes(body[:limit]), True
    return bytes(body), False


def parse_answer(
    response: httpx.Response, rtt_ms: float, attempts: int, num_classes: int | None = None
) -> ServerAnswer:
    """The prediction in a 200 answer, checked field by field.

    ``label`` must be an int in ``[0, num_classes)``; ``top5`` a non-empty list
    of at most ``num_classes`` entries, each a distinct in-range int ``label``
    with a finite ``probability`` in [0, 1], in non-increasing order;
    ``class_name`` (optional) a string, ``server_ms`` (optional) a finite
    number >= 0. JSON's ``NaN``, ``Infinity`` and ``1e999`` are refused.

    Raises:
        InvalidAnswer: the body is not a collabvit prediction (retried, like a 5xx).
    """
    try:
        body = json.loads(response.content)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        body = _NOT_JSON
    problem = answer_problem(body, num_classes)
    if problem is not None:
        raise InvalidAnswer(
            f"server answered 200 with {problem}: is this a collabvit server?",
            status_code=response.status_code,
            attempts=attempts,
        )
    label = body["label"]
    return ServerAnswer(
        label,
        body.get("class_name", str(label)),
        list(body["top5"]),
        float(body.get("server_ms", math.nan)),
        rtt_ms,
        attempts,
    )


def answer_problem(body: object, num_classes: int | None = None) -> str | None:
    """What makes ``body`` (parsed JSON) not a collabvit prediction; None when it is one."""
    if body is _NOT_JSON:
        return "a body that is not JSON"
    if not isinstance(body, dict):
        return f"JSON {type(body).__name__} instead of an object"
    if not _is_class(body.get("label"), num_classes):
        return f"label {_short(body.get('label'))}, not a class index{_range(num_classes)}"
    if not isinstance(body.get("class_name", ""), str):
        return f"class_name {_short(body['class_name'])}, not a string"
    if "server_ms" in body and not _is_number(body["server_ms"], 0.0, math.inf):
        return f"server_ms {_short(body['server_ms'])}, not a finite number >= 0"
    return _top5_problem(body.get("top5"), num_classes)


def _top5_problem(top5: object, num_classes: int | None) -> str | None:
    if not isinstance(top5, list) or not top5:
        return f"top5 {_short(top5)}, not a non-empty list"
    if num_classes is not None and len(top5) > num_classes:
        return f"{len(top5)} top5 entries for {num_classes} classes"
    previous = math.inf
    seen: set[int] = set()
    for entry in top5:
        if not isinstance(entry, dict) or not _is_class(entry.get("label"), num_classes):
            return f"top5 entry {_short(entry)} without a class index{_range(num_classes)}"
        probability = entry.get("probability")
        if not _is_number(probability, 0.0, 1.0):
            return f"top5 probability {_short(probability)}, not a number in [0, 1]"
        assert isinstance(probability, int | float)
        if entry["label"] in seen or probability > previous + 1e-9:
            return "top5 entries repeated or out of order"
        if not isinstance(entry.get("class_name", ""), str):
            return f"top5 class_name {_short(entry['class_name'])}, not a string"
        seen.add(entry["label"])
        previous = probability
    return None


def _is_class(value: object, num_classes: int | None) -> bool:
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    return value >= 0 and (num_classes is None or value < num_classes)


def _is_number(value: object, low: float, high: float) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and low <= value <= high


def _range(num_classes: int | None) -> str:
    return " >= 0" if num_classes is None else f" in [0, {num_classes})"


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def is_retryable(error: ServerError) -> bool:
    """Whether resending may help: no answer, 429, 5xx (503 included), or a broken 200."""
    if isinstance(error, InvalidAnswer):
        return True
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
        reason = str(json.loads(response.content)["error"])
    except (ValueError, KeyError, TypeError, IndexError, RecursionError):
        reason = response.text or response.reason_phrase
    reason = " ".join(reason[:200].split())  # one short line, whatever the server sent
    code = response.status_code
    return ServerError(f"server answered {code}: {reason}", status_code=code, attempts=attempts)
