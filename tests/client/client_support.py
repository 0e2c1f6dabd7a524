"""Helpers shared by the edge-client tests (a plain module: no conftest.py in this folder).

A second conftest.py would take the name ``conftest`` from tests/conftest.py,
so the fixtures stay in each test module, built from the functions here.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
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
