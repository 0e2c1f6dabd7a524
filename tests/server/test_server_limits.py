"""The server's limits, in-process (issue 16, items 1-3).

Geometry checked before allocation, decoded bytes, decodes at once, the body
deadline and the token charset; the real-socket side is test_server_hardening.py.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from server_support import (
    blank_png,
    first_photos,
    mask_of,
    metric,
    one_patch_png_message,
    preprocessed,
    serve,
)

import collabvit.server.app as server_app
from collabvit.errors import ConfigError, PayloadTooLarge, WireError
from collabvit.models import LoadedModel, load_model
from collabvit.server import Decoded, ServerConfig, create_app, decode_image, decode_request
from collabvit.wire import Geometry, encode

SERVED = Geometry(3, 64, 64, 8)


@pytest.fixture(scope="module")
def server_model(small_pair: tuple[Path, Path]) -> LoadedModel:
    return load_model(str(small_pair[1]))


@pytest.fixture(scope="module")
def pixels(server_model: LoadedModel, imagenet_dir: Path) -> list[np.ndarray]:
    return preprocessed(server_model, first_photos(imagenet_dir, 2))


def test_a_foreign_geometry_is_refused_from_the_header_before_any_allocation() -> None:
    bomb = one_patch_png_message(3, 8192)  # decodes to 192 MiB
    tracemalloc.start()
    try:
        with pytest.raises(WireError, match="server model takes 3x64x64 with patch 8"):
            decode_request(bomb, SERVED, 16 * 1024 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024, f"{peak / 2**20:.0f} MiB allocated to refuse it"
    for size, patch in ((64, 16), (32, 8)):  # other sizes, cheap or not: the same answer
        body = bytearray(one_patch_png_message(3, 8))
        body[9:15] = np.array([patch, size, size], dtype="<u2").tobytes()
        with pytest.raises(WireError, match="server model takes"):
            decode_request(bytes(body), SERVED, 1 << 20)


def test_short_and_foreign_messages_keep_the_decoders_own_errors() -> None:
    with pytest.raises(WireError, match="too short"):
        decode_request(b"CVIT\x01", SERVED, 1 << 20)
    with pytest.raises(WireError, match="bad magic"):
        decode_request(b"XXXX" + one_patch_png_message(3, 8192)[4:], SERVED, 1 << 20)


def _png_header_only(mode: str, width: int, height: int) -> bytes:
    """A real PNG of a small image, its IHDR rewritten to (width, height): only headers matter."""
    buffer = io.BytesIO()
    Image.new(mode, (8, 8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


def test_images_over_the_pixel_or_decoded_byte_limit_get_413_not_400(
    server_model: LoadedModel,
) -> None:
    # 400 M pixels: Pillow itself calls it a decompression bomb; that is "too large", not "bad"
    with pytest.raises(PayloadTooLarge, match="decompression-bomb limit"):
        decode_image(blank_png(20_000, 20_000, rows=8), server_model, 50_000_000)
    rgba = _png_header_only("RGBA", 3000, 3000)  # 9 M pixels, 36 MB decoded
    with pytest.raises(PayloadTooLarge, match="bytes"):
        decode_image(rgba, server_model, 10_000_000, max_decoded_bytes=32 * 1024 * 1024)
    with pytest.raises(WireError, match="not a readable image"):
        decode_image(b"GIF89a" + bytes(20), server_model, 10_000_000)


def test_decoded_bytes_limit_below_the_served_geometry_is_a_config_error(
    server_model: LoadedModel,
) -> None:
    with pytest.raises(ConfigError, match="max_decoded_bytes"):
        create_app(server_model, ServerConfig(max_decoded_bytes=3 * 64 * 64 - 1))


def test_at_most_max_decodes_requests_are_decoded_at_once(
    server_model: LoadedModel, pixels: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = threading.Lock()
    running = [0, 0]  # now, most at once

    def slow_decode(body: bytes, geometry: Geometry, max_bytes: int) -> Decoded:
        with lock:
            running[0] += 1
            running[1] = max(running[1], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return decode_request(body, geometry, max_bytes)

    monkeypatch.setattr(server_app, "decode_request", slow_decode)
    app = create_app(server_model, ServerConfig(max_decodes=2, max_wait_ms=0))
    payload = encode(pixels[0], mask_of(10), 8)

    async def body(client: httpx.AsyncClient) -> list[int]:
        answers = await asyncio.gather(
            *(client.post("/v1/infer", content=payload) for _ in range(8))
        )
        return [a.status_code for a in answers]

    assert serve(app, body) == [200] * 8
    assert running[1] == 2


def test_a_body_slower_than_the_deadline_gets_408_and_closes(
    server_model: LoadedModel, pixels: list[np.ndarray]
) -> None:
    app = create_app(server_model, ServerConfig(body_timeout_s=0.3, max_wait_ms=0))
    payload = encode(pixels[0], mask_of(10), 8)

    async def trickle() -> AsyncIterator[bytes]:  # a chunk every 0.1 s: each is news, all too late
        for i in range(0, len(payload), 64):
            await asyncio.sleep(0.1)
            yield payload[i : i + 64]

    async def body(client: httpx.AsyncClient) -> tuple[httpx.Response, httpx.Response, str]:
        slow = await client.post("/v1/infer", content=trickle())
        fast = await client.post("/v1/infer", content=payload)
        return slow, fast, (await client.get("/metrics")).text

    slow, fast, text = serve(app, body)
    assert slow.status_code == 408, slow.text
    assert slow.headers["connection"] == "close"
    assert "0.3 s" in slow.json()["error"]
    assert fast.status_code == 200
    assert metric(text, "collabvit_requests_total", endpoint="/v1/infer", outcome="timeout") == 1


@pytest.mark.parametrize("token", ["", "pässwort", "two words", "tab\there", "del\x7f", " lead"])
def test_tokens_must_be_printable_ascii_without_spaces(token: str) -> None:
    with pytest.raises(ConfigError, match="token"):
        ServerConfig(token=token)


def test_every_printable_ascii_character_is_a_token_character() -> None:
    token = "".join(chr(c) for c in range(0x21, 0x7F))
    assert ServerConfig(token=token).token == token


@pytest.mark.parametrize(
    "field", ["header_timeout_s", "body_timeout_s", "max_decodes", "max_decoded_bytes"]
)
def test_limits_must_be_positive(field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        ServerConfig(**{field: 0})


def test_defaults_are_the_documented_limits() -> None:
    config = ServerConfig()
    assert (config.header_timeout_s, config.body_timeout_s) == (10.0, 30.0)
    assert config.max_decodes == 4
    assert config.max_image_pixels == 4096 * 4096
    assert config.max_decoded_bytes == 64 * 1024 * 1024
