"""Helpers shared by the wire-format tests (a plain module: no conftest.py in this folder).

A second conftest.py would take the name ``conftest`` from tests/conftest.py, so the
fixtures stay in each test module, built from the functions here. The byte-level
helpers (``HEADER``, ``reframe``, ``build``) follow docs/wire-format.md, written
independently of collabvit.wire.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, settings
from PIL import Image

from collabvit.wire import CODECS, HEADER_SIZE, MAGIC, WIRE_VERSION, Payload, encode

HEADER = struct.Struct("<4sBBBBBHHHI")
FIELDS = (
    "magic",
    "version",
    "codec",
    "quality",
    "flags",
    "channels",
    "patch",
    "height",
    "width",
    "length",
)
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@functools.cache
def photo_pil(imagenet_dir: Path, mode: str) -> Image.Image:
    """The first real ImageNet photo, in ``mode``, resized to 224x224 (bicubic)."""
    files = sorted((imagenet_dir / "images").glob("*.JPEG"))
    assert files, f"no photos in {imagenet_dir / 'images'}"
    with Image.open(files[0]) as img:
        return img.convert(mode).resize((224, 224), Image.Resampling.BICUBIC)


def photo_array(imagenet_dir: Path, channels: int = 3) -> np.ndarray:
    """A real ImageNet photo as (C, 224, 224) uint8."""
    array = np.asarray(photo_pil(imagenet_dir, "RGB" if channels == 3 else "L"))
    return np.ascontiguousarray(array.reshape(224, 224, channels).transpose(2, 0, 1))


def random_mask(n: int, k: int, seed: int = 0) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(seed).choice(n, size=k, replace=False)] = True
    return mask


def patches_of(pixels: np.ndarray, p: int) -> np.ndarray:
    """(C, H, W) -> (N, C, P, P), row-major, written independently of the module."""
    _, h, w = pixels.shape
    out = [
        pixels[:, r * p : (r + 1) * p, q * p : (q + 1) * p]
        for r in range(h // p)
        for q in range(w // p)
    ]
    return np.stack(out)


def with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def reframe(data: bytes, *, fix_crc: bool = True, **fields: object) -> bytes:
    """Rewrite header fields of a message, recomputing the CRC unless told not to."""
    values = dict(zip(FIELDS, HEADER.unpack_from(data), strict=True))
    values.update(fields)
    head = HEADER.pack(*(values[name] for name in FIELDS))
    rest = head + data[HEADER_SIZE:-4]
    return with_crc(rest) if fix_crc else rest + data[-4:]


def build(
    codec: int,
    c: int,
    p: int,
    h: int,
    w: int,
    mask: bytes,
    body: bytes,
    quality: int = 0,
) -> bytes:
    """Assemble a message from its parts, following docs/wire-format.md."""
    head = HEADER.pack(MAGIC, WIRE_VERSION, codec, quality, 0, c, p, h, w, len(body))
    return with_crc(head + mask + body)


def image_bytes(array: np.ndarray, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(out, format=fmt, **options)
    return out.getvalue()


@functools.cache
def small_message(codec: str, channels: int, seed: int = 1) -> bytes:
    """A 32x32 image, 8x8 patches (4x4 grid), 9 of 16 selected."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(channels, 32, 32), dtype=np.uint8)
    return encode(pixels, random_mask(16, 9, seed), 8, codec, 80)


def assert_valid(payload: Payload) -> None:
    """Invariants every successfully decoded payload satisfies."""
    c, h, w = payload.pixels.shape
    p = payload.patch_size
    assert payload.pixels.dtype == np.uint8
    assert c in (1, 3) and h % p == 0 and w % p == 0
    assert payload.keep_mask.dtype == np.bool_
    assert payload.keep_mask.shape == ((h // p) * (w // p),)
    assert payload.codec in CODECS
    assert not patches_of(payload.pixels, p)[~payload.keep_mask].any()
