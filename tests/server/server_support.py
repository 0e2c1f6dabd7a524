"""Helpers shared by the server tests (a plain module: no conftest.py in this folder).

A second conftest.py would take the name ``conftest`` from tests/conftest.py
for the modules that ``from conftest import ...``; so the fixtures stay in each
test module, built from the functions here.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import torch

from collabvit.data import load_image, preprocess
from collabvit.models import LoadedModel, forward_subset
from collabvit.server import BatcherCallbacks, Decoded

T = TypeVar("T")
BASE = "http://collabvit.test"


def first_photos(imagenet_dir: Path, count: int = 6) -> list[Path]:
    return sorted((imagenet_dir / "images").iterdir())[:count]


def preprocessed(model: LoadedModel, photos: list[Path]) -> list[np.ndarray]:
    """Real photos preprocessed for the server: (3, 64, 64) uint8 each."""
    out = []
    for path in photos:
        image = load_image(path, 3)
        assert image is not None
        out.append(preprocess(image, model.preprocessing).numpy())
    return out


def mask_of(count: int, n: int = 64, offset: int = 0) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[(np.arange(count) * 5 + offset) % n] = True  # spread over the grid
    return mask


def serve(app: Any, body: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
    """Run ``body`` with a client against ``app`` inside the app's lifespan."""

    async def main() -> T:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
                return await body(client)

    return asyncio.run(main())


def alone(model: LoadedModel, image: np.ndarray, mask: np.ndarray) -> torch.Tensor:
    """Logits of one image run by itself through forward_subset."""
    x = model.normalise(torch.from_numpy(image)[None])
    return forward_subset(model, x, torch.from_numpy(mask)[None])[0]


def metric(text: str, name: str, **labels: str) -> float:
    """One sample's value from Prometheus text (0 when absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        key, value = line.rsplit(" ", 1)
        sample, _, rest = key.partition("{")
        found = dict(
            (k, v.strip('"'))
            for k, v in (p.split("=", 1) for p in rest.rstrip("}").split(",") if p)
        )
        if sample == name and found == labels:
            return float(value)
    return 0.0


class Gate(BatcherCallbacks):
    """A batcher callback that holds the worker before each batch until released (bounded wait)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.released = threading.Event()
        self.fail_next = False

    def on_batch_start(self, batch: Sequence[Decoded]) -> None:
        self.entered.set()
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("injected failure")
        assert self.released.wait(20), "test never released the worker"


async def wait_until(check: Callable[[], bool], seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in time")


# --- real `collabvit serve` processes (tests/serve_process.py) and raw sockets ---


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until_closed(sock: socket.socket, seconds: float) -> tuple[bytes, float | None]:
    """Everything the server sends, and when (s from now) it closed; None: still open."""
    start = time.monotonic()
    data = b""
    while (left := seconds - (time.monotonic() - start)) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return data, time.monotonic() - start
        if not chunk:
            return data, time.monotonic() - start
        data += chunk
    return data, None


def half_headers(port: int, seconds: float) -> tuple[bytes, float | None]:
    """Send half a request line and headers, then wait (at most ``seconds``) for the close."""
    with connect(port) as sock:
        sock.sendall(b"POST /v1/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
        return read_until_closed(sock, seconds)


def half_body(port: int, seconds: float) -> tuple[bytes, float | None]:
    """Send the headers and 100 of 5,000 body bytes, then wait for the answer and the close."""
    with connect(port) as sock:
        sock.sendall(b"POST /v1/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5000\r\n\r\n")
        sock.sendall(bytes(100))
        return read_until_closed(sock, seconds)


def trickled_headers(port: int, every_s: float) -> tuple[bytes, float | None]:
    """Send the headers one byte every ``every_s``: each byte is news, the deadline is for all.

    Returns what the server sent and when it closed (None: all bytes sent, still open).
    """
    request = b"POST /v1/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n"
    start = time.monotonic()
    with connect(port) as sock:
        for byte in request:
            try:
                sock.sendall(bytes([byte]))
            except OSError:  # closed by the server
                return b"", time.monotonic() - start
            data, closed = read_until_closed(sock, every_s)
            if closed is not None:
                return data, time.monotonic() - start
    return b"", None


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data)
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def blank_png(width: int, height: int, channels: int = 3, rows: int | None = None) -> bytes:
    """A PNG of zeros (8-bit grey or RGB), compressed row by row: never held whole in memory.

    ``rows`` < height writes only that many rows: a file whose header is all that matters.
    """
    colour_type = 2 if channels == 3 else 0
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    compressor = zlib.compressobj(9)
    row = bytes(1 + width * channels)  # filter byte 0, then the pixels
    parts = [compressor.compress(row) for _ in range(height if rows is None else rows)]
    parts.append(compressor.flush())
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


def one_patch_png_message(channels: int, size: int) -> bytes:
    """A valid wire message: a size x size image that is one size-px patch, sent as PNG.

    With size 8192 it is ~200 KB on the wire and 3 * 8192 * 8192 = 192 MiB decoded.
    """
    png = blank_png(size, size, channels)
    header = struct.pack("<4sBBBBBHHHI", b"CVIT", 1, 1, 0, 0, channels, size, size, size, len(png))
    body = header + b"\x01" + png  # mask: the one patch is selected
    return body + struct.pack("<I", zlib.crc32(body))
