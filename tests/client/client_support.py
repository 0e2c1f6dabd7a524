"""Helpers shared by the edge-client tests (a plain module: no conftest.py in this folder).

A second conftest.py would take the name ``conftest`` from tests/conftest.py,
so the fixtures stay in each test module, built from the functions here.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import httpx
import uvicorn

from collabvit.client import ClientConfig, EdgeClient, ImageResult
from collabvit.data import Sample
from collabvit.engine import OperatingPoint
from collabvit.models import LoadedModel
from collabvit.server import BatcherCallbacks, Decoded

BASE = "http://collabvit.test"


class BeforePredict(BatcherCallbacks):
    """A batcher callback calling ``hook(batch_size)`` in the worker before each batch."""

    def __init__(self, hook: Callable[[int], object]) -> None:
        self.hook = hook

    def on_batch_start(self, batch: Sequence[Decoded]) -> None:
        self.hook(len(batch))


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


# ----------------------------------------------------------------------------- hostile servers


@dataclass
class RawRequest:
    """One HTTP/1.1 request as a hostile server saw it."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes


Respond = Callable[[RawRequest, asyncio.StreamWriter], Awaitable[None]]


def http_response(
    status: int, body: bytes, content_type: str = "application/json", **headers: str
) -> bytes:
    """A whole HTTP/1.1 response, ``Connection: close``."""
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name.replace('_', '-')}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def answering(status: int, body: bytes, **headers: str) -> Respond:
    """A responder that answers every POST with the same status and body."""

    async def respond(_request: RawRequest, writer: asyncio.StreamWriter) -> None:
        writer.write(http_response(status, body, **headers))
        await writer.drain()

    return respond


class HostileServer:
    """A raw asyncio HTTP server on 127.0.0.1, in its own thread, answering as told.

    ``GET /healthz`` always gets 200; every other request goes to ``respond``,
    which writes whatever it likes (a body of ``1e999``, a trickle, a 401).
    Each connection serves one request. :meth:`close` cancels every handler,
    so a trickle stops when the test ends.
    """

    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.requests: list[RawRequest] = []
        self._loop = asyncio.new_event_loop()
        self._handlers: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="hostile-server")
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        self.port = future.result(10)
        self.url = f"http://127.0.0.1:{self.port}"

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            first, *lines = head.decode("latin-1").split("\r\n")
            method, path, _version = first.split(" ", 2)
            headers = {}
            for line in lines:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            size = int(headers.get("content-length", "0"))
            body = await asyncio.wait_for(reader.readexactly(size), 10)
            request = RawRequest(method, path, headers, body)
            if path == "/healthz":
                writer.write(http_response(200, b'{"status": "ok"}'))
                await writer.drain()
            else:
                self.requests.append(request)
                await self.respond(request, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
            pass  # the client went away (or sent nonsense): nothing to answer
        except asyncio.CancelledError:
            pass  # close(): end quietly (a cancelled handler task is logged as an error)
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        assert not self._thread.is_alive()
        self._loop.close()

    def __enter__(self) -> HostileServer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
