"""Load with hostile company (issue 16, "done when"): 16 slow sockets and 16 normal clients, 20 s.

A real ``collabvit serve`` process on 127.0.0.1. The slow sockets send half
a request line, a header a byte at a time, or half a body, and reconnect
each time the server closes them; the normal clients upload real wire
messages as fast as they are answered. The normal clients must get only 200
or 503 (never a reset or a hang), every slow socket must be closed by the
server within its deadline, and the server's RSS must stay within 1.5x its
idle RSS. Every loop ends by the clock; every socket has a timeout.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from serve_process import ServeProcess
from server_support import (
    first_photos,
    half_body,
    half_headers,
    mask_of,
    preprocessed,
    trickled_headers,
)

from collabvit.models import load_model
from collabvit.wire import encode

RUN_S = 20.0
CLIENTS = 16
SLOW_SOCKETS = 16
HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 3.0
SLACK_S = 3.0

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(
    small_pair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServeProcess]:
    proc = ServeProcess(
        tmp_path_factory.mktemp("load") / "serve.log",
        small_pair[1],
        "--header-timeout", str(HEADER_TIMEOUT_S),
        "--body-timeout", str(BODY_TIMEOUT_S),
        verbose=True,
    )  # fmt: skip
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


def _slow_socket(port: int, kind: int, stop_at: float) -> tuple[list[float], int]:
    """Reconnect until ``stop_at``: (seconds each connection took to be closed, still open)."""
    closes = []
    while time.monotonic() < stop_at:
        if kind == 0:
            _data, closed = half_headers(port, HEADER_TIMEOUT_S + SLACK_S)
        elif kind == 1:
            _data, closed = trickled_headers(port, 0.3)
        else:
            _data, closed = half_body(port, BODY_TIMEOUT_S + SLACK_S)
        if closed is None:
            return closes, 1
        closes.append(closed)
    return closes, 0


async def _normal_clients(url: str, payload: bytes, stop_at: float) -> Counter[str]:
    """CLIENTS concurrent uploads in a loop until ``stop_at``: answers by status (or error)."""
    seen: Counter[str] = Counter()
    limits = httpx.Limits(max_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def one_client() -> None:
            while time.monotonic() < stop_at:
                try:
                    answer = await client.post("/v1/infer", content=payload)
                    seen[str(answer.status_code)] += 1
                except httpx.HTTPError as exc:
                    seen[type(exc).__name__] += 1

        await asyncio.gather(*(one_client() for _ in range(CLIENTS)))
    return seen


def test_slow_sockets_do_not_starve_normal_clients_or_grow_memory(
    server: ServeProcess, small_pair: tuple[Path, Path], imagenet_dir: Path
) -> None:
    model = load_model(str(small_pair[1]))
    payload = encode(preprocessed(model, first_photos(imagenet_dir, 1))[0], mask_of(30), 8)
    asyncio.run(_normal_clients(server.url, payload, time.monotonic() + 1.0))  # warm up
    time.sleep(0.5)
    idle_kib = server.status_kib("VmRSS")
    peak = [idle_kib]
    stop_at = time.monotonic() + RUN_S
    done = threading.Event()

    def sample_rss() -> None:
        while not done.wait(0.2):
            peak[0] = max(peak[0], server.status_kib("VmRSS"))

    with ThreadPoolExecutor(SLOW_SOCKETS + 1) as pool:
        sampler = pool.submit(sample_rss)
        slow = [pool.submit(_slow_socket, server.port, i % 3, stop_at) for i in range(SLOW_SOCKETS)]
        try:
            seen = asyncio.run(_normal_clients(server.url, payload, stop_at))
            results = [f.result(timeout=RUN_S + 2 * (BODY_TIMEOUT_S + SLACK_S)) for f in slow]
        finally:
            done.set()
        sampler.result(timeout=5)
    assert set(seen) <= {"200", "503"}, seen
    assert seen["200"] >= CLIENTS, seen  # they were served, not just turned away
    assert sum(still_open for _closes, still_open in results) == 0, "slow sockets left open"
    closes = [c for got, _ in results for c in got]
    assert len(closes) >= SLOW_SOCKETS * int(RUN_S // (BODY_TIMEOUT_S + SLACK_S))
    assert max(closes) < BODY_TIMEOUT_S + SLACK_S, max(closes)
    assert peak[0] <= 1.5 * idle_kib, f"RSS {peak[0] // 1024} MiB, idle {idle_kib // 1024} MiB"
