"""Tests of collabvit.wire: round trips on a real photo, byte layout, every refusal."""

from __future__ import annotations

import functools
import io
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import IMAGENET_DIR
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from collabvit.errors import WireError
from collabvit.wire import (
    CODECS,
    DEFAULT_MAX_BYTES,
    HEADER_SIZE,
    MAGIC,
    WIRE_VERSION,
    Geometry,
    Payload,
    decode,
    encode,
    full_image_bytes,
    payload_bits,
)

PHOTO_DIR = IMAGENET_DIR / "images"
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


# ----------------------------------------------------------------------------- helpers


@functools.cache
def _photo_file() -> Path:
    files = sorted(PHOTO_DIR.glob("*.JPEG")) if PHOTO_DIR.is_dir() else []
    if not files:
        pytest.skip(f"real photos not found in {PHOTO_DIR}")
    return files[0]


@functools.cache
def _photo_pil(mode: str) -> Image.Image:
    with Image.open(_photo_file()) as img:
        return img.convert(mode).resize((224, 224), Image.Resampling.BICUBIC)


def photo(channels: int = 3) -> np.ndarray:
    """A real ImageNet photo as (C, 224, 224) uint8."""
    array = np.asarray(_photo_pil("RGB" if channels == 3 else "L"))
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


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("codec", CODECS)
def test_round_trip_real_photo(codec: str, channels: int) -> None:
    pixels = photo(channels)
    mask = random_mask(196, 147, seed=channels)
    data = encode(pixels, mask, 16, codec, 90)
    payload = decode(data, expect=Geometry(channels, 224, 224, 16))

    assert (payload.channels, payload.height, payload.width) == (channels, 224, 224)
    assert payload.codec == codec and payload.patch_size == 16
    assert payload.quality == (90 if codec == "jpeg" else 0)
    assert payload.num_patches == 196 and payload.num_selected == 147
    np.testing.assert_array_equal(payload.keep_mask, mask)
    np.testing.assert_array_equal(payload.selected_indices(), np.flatnonzero(mask))
    sent, got = patches_of(pixels, 16), patches_of(payload.pixels, 16)
    assert not got[~mask].any()
    if codec == "jpeg":
        error = np.abs(got[mask].astype(int) - sent[mask].astype(int)).mean()
        assert error < 3.0
    else:
        np.testing.assert_array_equal(got[mask], sent[mask])
        np.testing.assert_array_equal(payload.selected_patches(), sent[mask])


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("codec", CODECS)
def test_empty_and_full_mask(codec: str, channels: int) -> None:
    pixels = photo(channels)
    empty = decode(encode(pixels, np.zeros(196, dtype=bool), 16, codec))
    assert empty.num_selected == 0 and not empty.pixels.any()
    assert empty.pixels.shape == (channels, 224, 224)

    full = decode(encode(pixels, np.ones(196, dtype=bool), 16, codec))
    assert full.num_selected == 196
    if codec == "jpeg":
        assert np.abs(full.pixels.astype(int) - pixels.astype(int)).mean() < 3.0
    else:
        np.testing.assert_array_equal(full.pixels, pixels)


def test_empty_mask_has_empty_payload_section() -> None:
    for codec in CODECS:
        data = encode(photo(), np.zeros(196, dtype=bool), 16, codec)
        assert len(data) == HEADER_SIZE + 25 + 4
        assert HEADER.unpack_from(data)[-1] == 0


def test_re_encoding_a_decoded_payload() -> None:
    first = decode(encode(photo(), random_mask(196, 20), 16, "png"))
    again = encode(first.pixels, first.keep_mask, first.patch_size, first.codec, first.quality)
    np.testing.assert_array_equal(decode(again).pixels, first.pixels)


# ----------------------------------------------------------------------------- sizes and layout


def test_raw_size_is_header_mask_pixels_crc() -> None:
    mask = random_mask(196, 147)
    data = encode(photo(), mask, 16, "raw")
    assert HEADER_SIZE == 19
    assert len(data) == HEADER_SIZE + 25 + 147 * 3 * 16 * 16 + 4 == 112_944
    assert payload_bits(1, 16, 3) == 6144
    assert payload_bits(147, 16, 3) == 147 * 6144 == (len(data) - HEADER_SIZE - 25 - 4) * 8
    assert payload_bits(0, 16, 3) == 0
    assert payload_bits(5, 16, 1) == 5 * 2048


@pytest.mark.parametrize("bad", [(-1, 16, 3), (1, 0, 3), (1, 16, 0), (1.0, 16, 3), (True, 16, 3)])
def test_payload_bits_rejects_bad_arguments(bad: tuple[object, object, object]) -> None:
    with pytest.raises(WireError, match="must be"):
        payload_bits(*bad)  # type: ignore[arg-type]


def test_codec_sizes_on_real_photo() -> None:
    mask = random_mask(196, 147)
    sizes = {codec: len(encode(photo(), mask, 16, codec, 90)) for codec in CODECS}
    assert sizes["jpeg"] < sizes["png"] < sizes["raw"]


def test_header_and_mask_bytes_follow_the_documented_layout() -> None:
    pixels = (np.arange(3 * 16 * 24) % 251).astype(np.uint8).reshape(3, 16, 24)  # 2x3 grid of 8
    mask = np.array([True, False, False, False, True, True])
    data = encode(pixels, mask, 8, "raw")
    assert data[:4] == b"CVIT"
    assert data[4:9] == bytes([1, 0, 0, 0, 3])  # version, codec, quality, flags, channels
    assert struct.unpack_from("<HHHI", data, 9) == (8, 16, 24, 3 * 192)
    assert data[19] == 0b0011_0001  # bit i of the mask is bit i % 8 of byte i // 8
    body = data[20:-4]
    expected = b"".join(
        pixels[:, r * 8 : r * 8 + 8, q * 8 : q * 8 + 8].tobytes()
        for r, q in [(0, 0), (1, 1), (1, 2)]
    )
    assert body == expected
    assert struct.unpack("<I", data[-4:])[0] == zlib.crc32(data[:-4])


def test_png_and_jpeg_send_a_compact_arrangement() -> None:
    mask = random_mask(196, 147)
    png = encode(photo(), mask, 16, "png")
    jpeg = encode(photo(), mask, 16, "jpeg", 90)
    mask_end = HEADER_SIZE + 25
    with Image.open(io.BytesIO(png[mask_end:-4])) as img:
        assert (img.format, img.mode, img.size) == ("PNG", "RGB", (13 * 16, 12 * 16))
    with Image.open(io.BytesIO(jpeg[mask_end:-4])) as img:
        assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (13 * 16, 12 * 16))
    assert jpeg[6] == 90 and png[6] == 0  # the quality byte


# ----------------------------------------------------------------------------- full_image_bytes


def test_full_image_bytes_real_photo() -> None:
    image = _photo_pil("RGB")
    jpeg, png = full_image_bytes(image, "jpeg", 90), full_image_bytes(image, "png")
    assert 0 < jpeg < png
    hwc = np.asarray(image)
    assert full_image_bytes(hwc, "png") == png
    assert full_image_bytes(np.ascontiguousarray(hwc.transpose(2, 0, 1)), "png") == png
    assert full_image_bytes(np.asarray(_photo_pil("L")), "jpeg") > 0
    assert full_image_bytes(image.convert("RGBA"), "jpeg") == jpeg
    assert full_image_bytes(image, "jpeg", 50) < jpeg


@pytest.mark.parametrize(
    ("image", "fmt", "quality", "match"),
    [
        (np.zeros((8, 8, 3), np.uint8), "gif", 90, "unknown image format"),
        (np.zeros((8, 8, 3), np.uint8), "jpeg", 0, "quality must be 1..100"),
        (np.zeros((8, 8, 3), np.float32), "png", 90, "must be uint8"),
        (np.zeros((8, 8, 5), np.uint8), "png", 90, r"\(H, W, C\)"),
        (np.zeros((0, 8), np.uint8), "png", 90, "no pixels"),
        ([[0, 1]], "png", 90, "PIL image or a uint8 numpy array"),
    ],
)
def test_full_image_bytes_refusals(image: object, fmt: str, quality: int, match: str) -> None:
    with pytest.raises(WireError, match=match):
        full_image_bytes(image, fmt, quality)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- encode refusals

GOOD = np.zeros((3, 32, 32), np.uint8)
MASK = np.ones(16, dtype=bool)


@pytest.mark.parametrize(
    ("pixels", "mask", "patch", "codec", "quality", "match"),
    [
        (GOOD.astype(np.float32), MASK, 8, "raw", 90, "must be uint8"),
        (GOOD.tolist(), MASK, 8, "raw", 90, "must be a numpy array"),
        (GOOD[0], MASK, 8, "raw", 90, r"shape \(C, H, W\)"),
        (GOOD.transpose(1, 2, 0), MASK, 8, "raw", 90, "looks like \\(H, W, C\\)"),
        (np.zeros((2, 32, 32), np.uint8), MASK, 8, "raw", 90, "1 or 3 channels"),
        (np.zeros((3, 36, 32), np.uint8), MASK, 8, "raw", 90, "multiples of patch_size"),
        (np.zeros((3, 0, 32), np.uint8), np.ones(0, bool), 8, "raw", 90, "multiples"),
        (GOOD, MASK, 0, "raw", 90, "patch_size must be 1..65535"),
        (GOOD, MASK, 8.0, "raw", 90, "patch_size must be an int"),
        (GOOD, np.ones(15, bool), 8, "raw", 90, r"needs \(16,\)"),
        (GOOD, np.ones((4, 4), bool), 8, "raw", 90, r"needs \(16,\)"),
        (GOOD, np.ones(16, np.uint8), 8, "raw", 90, "bool array"),
        (GOOD, [True] * 16, 8, "raw", 90, "bool array"),
        (GOOD, MASK, 8, "webp", 90, "unknown codec 'webp'"),
        (GOOD, MASK, 8, "jpeg", 0, "quality must be 1..100"),
        (GOOD, MASK, 8, "jpeg", 101, "quality must be 1..100"),
        (GOOD, MASK, 8, "raw", 101, "quality must be 0..100"),
        (GOOD, MASK, 8, "png", 9.5, "quality must be an int"),
    ],
)
def test_encode_refusals(
    pixels: object, mask: object, patch: object, codec: str, quality: object, match: str
) -> None:
    with pytest.raises(WireError, match=match):
        encode(pixels, mask, patch, codec, quality)  # type: ignore[arg-type]


def test_encode_refuses_an_oversized_canvas() -> None:
    wide = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), (1, 16, 65_552), (0, 0, 0))
    with pytest.raises(WireError, match="too large"):
        encode(wide, np.ones(4097, bool), 16)  # a side of more than 65535 pixels
    huge = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), (1, 16384, 16384), (0, 0, 0))
    with pytest.raises(WireError, match="too large"):
        encode(huge, np.zeros(1024 * 1024, bool), 16)


# ----------------------------------------------------------------------------- decode refusals


@functools.cache
def raw_message() -> bytes:
    return encode(photo(), random_mask(196, 147), 16, "raw")


def test_too_large_is_checked_before_parsing() -> None:
    data = raw_message()
    assert len(decode(data, max_bytes=len(data)).pixels) == 3
    with pytest.raises(WireError, match="payload too large: 112944 bytes"):
        decode(data, max_bytes=len(data) - 1)
    with pytest.raises(WireError, match="payload too large"):
        decode(b"garbage" * 100, max_bytes=10)
    with pytest.raises(WireError, match="payload too large"):
        decode(b"\0" * (DEFAULT_MAX_BYTES + 1))


@pytest.mark.parametrize("data", [b"", b"CVIT", b"CVIT\x01" + b"\0" * 18])
def test_too_short(data: bytes) -> None:
    with pytest.raises(WireError, match="payload too short"):
        decode(data)


def test_bad_magic() -> None:
    with pytest.raises(WireError, match="bad magic b'XVIT'"):
        decode(b"XVIT" + raw_message()[4:])


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"version": 2}, "unsupported wire version 2"),
        ({"version": 0}, "unsupported wire version 0"),
        ({"codec": 3}, "unknown codec id 3"),
        ({"codec": 255}, "unknown codec id 255"),
        ({"quality": 7}, "bad quality byte 7 for raw"),
        ({"flags": 1}, "nonzero flags 0x01"),
        ({"flags": 0x80}, "nonzero flags 0x80"),
        ({"channels": 2}, "bad channels 2"),
        ({"channels": 0}, "bad channels 0"),
        ({"patch": 0}, "bad patch_size 0"),
        ({"height": 0}, "bad image size 0x224"),
        ({"width": 230}, "bad image size 224x230"),
        ({"patch": 15}, "bad image size 224x224"),
        ({"patch": 16384, "height": 16384, "width": 16384}, "image too large"),
        ({"length": 3 * 147 * 256 + 1}, "declared payload length 112897 disagrees"),
        ({"length": 0}, "declared payload length 0 disagrees"),
    ],
)
def test_header_refusals(fields: dict[str, Any], match: str) -> None:
    with pytest.raises(WireError, match=match):
        decode(reframe(raw_message(), **fields))


def test_jpeg_quality_byte_must_be_1_to_100() -> None:
    data = small_message("jpeg", 3)
    assert decode(data).quality == 80
    for bad in (0, 101, 255):
        with pytest.raises(WireError, match=f"bad quality byte {bad} for jpeg"):
            decode(reframe(data, quality=bad))
    with pytest.raises(WireError, match="bad quality byte 80 for png"):
        decode(reframe(small_message("png", 3), quality=80))


def test_length_disagrees_when_truncated_or_extended() -> None:
    data = raw_message()
    for broken in (data[:-1], data[:-1000], data + b"\0", data + data):
        with pytest.raises(WireError, match="declared payload length 112896 disagrees"):
            decode(broken)


def test_crc_mismatch() -> None:
    data = bytearray(raw_message())
    data[500] ^= 0x10
    with pytest.raises(WireError, match="CRC mismatch"):
        decode(bytes(data))
    mask_flipped = bytearray(raw_message())
    mask_flipped[HEADER_SIZE] ^= 0x01
    with pytest.raises(WireError, match="CRC mismatch"):
        decode(bytes(mask_flipped))
    flipped = raw_message()[:-4] + bytes(b ^ 0xFF for b in raw_message()[-4:])
    with pytest.raises(WireError, match="CRC mismatch"):
        decode(flipped)


def test_mask_longer_than_the_message_is_truncation() -> None:
    data = encode(np.zeros((3, 16, 16), np.uint8), np.zeros(1, bool), 16)
    assert len(data) == HEADER_SIZE + 1 + 4
    with pytest.raises(WireError, match="payload truncated: 24 bytes cannot hold"):
        decode(reframe(data, patch=1))  # 256 patches need a 32-byte mask


def test_nonzero_padding_bits() -> None:
    pixels = np.zeros((1, 24, 24), np.uint8)  # 3x3 grid: 9 bits in 2 bytes
    data = encode(pixels, np.ones(9, bool), 8, "raw")
    assert data[HEADER_SIZE : HEADER_SIZE + 2] == b"\xff\x01"
    broken = data[:HEADER_SIZE] + b"\xff\x81" + data[HEADER_SIZE + 2 : -4]
    with pytest.raises(WireError, match=r"nonzero padding bits in the mask: bits 9\.\.15"):
        decode(with_crc(broken))


def test_raw_mask_and_payload_disagree() -> None:
    data = raw_message()
    mask = bytearray(data[HEADER_SIZE : HEADER_SIZE + 25])
    unset = next(i for i in range(196) if not mask[i // 8] >> (i % 8) & 1)
    mask[unset // 8] |= 1 << (unset % 8)
    broken = data[:HEADER_SIZE] + bytes(mask) + data[HEADER_SIZE + 25 : -4]
    with pytest.raises(WireError, match="mask and payload disagree: the mask selects 148"):
        decode(with_crc(broken))


@pytest.mark.parametrize("codec", [1, 2])
def test_image_codec_mask_and_payload_disagree(codec: int) -> None:
    quality = 90 if codec == 2 else 0
    with pytest.raises(WireError, match="mask and payload disagree: the mask selects 0"):
        decode(build(codec, 3, 8, 16, 16, b"\x00", b"junk", quality))
    with pytest.raises(WireError, match="mask and payload disagree: the mask selects 4"):
        decode(build(codec, 3, 8, 16, 16, b"\x0f", b"", quality))


def _png_frame(image: np.ndarray, c: int = 3, p: int = 8, mask: bytes = b"\x0f") -> bytes:
    """A 16x16 canvas, 2x2 grid of 8x8 patches, carrying the given PNG array."""
    return build(1, c, p, 16, 16, mask, image_bytes(image, "PNG"))


def test_png_arrangement_checks() -> None:
    rgb = np.full((16, 16, 3), 200, np.uint8)  # 4 patches -> 2x2 arrangement of 8x8
    payload = decode(_png_frame(rgb))
    assert payload.num_selected == 4 and (payload.pixels == 200).all()
    with pytest.raises(WireError, match=r"png image is declared as 24x16.*does not match"):
        decode(_png_frame(np.zeros((16, 24, 3), np.uint8)))
    with pytest.raises(WireError, match=r"colour type 2.*expected 16x16 L"):
        decode(_png_frame(rgb, c=1))
    with pytest.raises(WireError, match=r"colour type 0.*does not match"):
        decode(_png_frame(rgb[..., 0]))
    palette = Image.fromarray(rgb).convert("P")
    frame = build(1, 3, 8, 16, 16, b"\x0f", _save(palette, "PNG"))
    with pytest.raises(WireError, match=r"colour type 3.*does not match"):
        decode(frame)
    with pytest.raises(WireError, match="PNG signature"):
        decode(build(1, 3, 8, 16, 16, b"\x0f", image_bytes(rgb, "JPEG")))


def _save(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def test_png_decompression_bomb_is_refused_before_pillow() -> None:
    body = bytearray(image_bytes(np.zeros((16, 16), np.uint8), "PNG"))
    body[16:24] = struct.pack(">II", 20_000, 20_000)  # IHDR claims 400 M pixels
    body[29:33] = struct.pack(">I", zlib.crc32(body[12:29]))
    with pytest.raises(WireError, match=r"declared as 20000x20000.*does not match"):
        decode(build(1, 1, 8, 16, 16, b"\x0f", bytes(body)))


def test_jpeg_declaring_huge_size_is_refused_before_pillow() -> None:
    body = bytearray(image_bytes(np.zeros((16, 16, 3), np.uint8), "JPEG"))
    sof = body.index(b"\xff\xc0")
    body[sof + 5 : sof + 9] = struct.pack(">HH", 30_000, 30_000)
    with pytest.raises(WireError, match="jpeg image is declared as 30000x30000"):
        decode(build(2, 3, 8, 16, 16, b"\x0f", bytes(body), 90))


def test_jpeg_arrangement_checks() -> None:
    rgb = np.full((16, 16, 3), 120, np.uint8)
    ok = decode(build(2, 3, 8, 16, 16, b"\x0f", image_bytes(rgb, "JPEG", quality=95), 95))
    assert np.abs(ok.pixels.astype(int) - 120).max() <= 2
    with pytest.raises(WireError, match=r"1 components.*expected 16x16 RGB"):
        decode(build(2, 3, 8, 16, 16, b"\x0f", image_bytes(rgb[..., 0], "JPEG"), 90))
    with pytest.raises(WireError, match="declared as 8x16"):
        decode(build(2, 3, 8, 16, 16, b"\x0f", image_bytes(rgb[:, :8], "JPEG"), 90))
    with pytest.raises(WireError, match="no SOI marker"):
        decode(build(2, 3, 8, 16, 16, b"\x0f", image_bytes(rgb, "PNG"), 90))
    with pytest.raises(WireError, match="no frame header"):
        decode(build(2, 3, 8, 16, 16, b"\x0f", b"\xff\xd8\xff\xd9", 90))


@pytest.mark.parametrize("codec", ["png", "jpeg"])
def test_corrupt_image_data_is_a_pillow_failure(codec: str) -> None:
    data = encode(photo(), random_mask(196, 147), 16, codec, 90)
    body = data[HEADER_SIZE + 25 : -4]
    start = body.index(b"IDAT") + 8 if codec == "png" else body.index(b"\xff\xda") + 20
    cut = body[:start]  # headers intact, image data gone
    fields = list(HEADER.unpack_from(data))
    fields[-1] = len(cut)
    broken = with_crc(HEADER.pack(*fields) + data[HEADER_SIZE : HEADER_SIZE + 25] + cut)
    with pytest.raises(WireError, match=f"{codec} payload could not be decoded by Pillow"):
        decode(broken)


def test_expect_geometry() -> None:
    data = raw_message()
    assert decode(data, expect=Geometry(3, 224, 224, 16)).geometry == Geometry(3, 224, 224, 16)
    message = (
        r"payload is 3x224x224 with patch 16 but the server model takes 3x384x384 with patch 16"
    )
    with pytest.raises(WireError, match=message):
        decode(data, expect=Geometry(3, 384, 384, 16))
    with pytest.raises(WireError, match="server model takes 1x224x224 with patch 16"):
        decode(data, expect=Geometry(1, 224, 224, 16))
    with pytest.raises(WireError, match="server model takes 3x224x224 with patch 14"):
        decode(data, expect=Geometry(3, 224, 224, 14))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_bytes": 0}, "max_bytes must be a positive int"),
        ({"max_bytes": 1.5}, "max_bytes must be a positive int"),
        ({"expect": (3, 224, 224, 16)}, "expect must be a Geometry"),
    ],
)
def test_decode_argument_refusals(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(WireError, match=match):
        decode(raw_message(), **kwargs)  # type: ignore[arg-type]


def test_decode_accepts_bytes_like_and_refuses_other_types() -> None:
    data = small_message("raw", 1)
    expected = decode(data).pixels
    np.testing.assert_array_equal(decode(bytearray(data)).pixels, expected)
    np.testing.assert_array_equal(decode(memoryview(data)).pixels, expected)
    for bad in ("CVIT", None, 12, [1, 2]):
        with pytest.raises(WireError, match="decode\\(\\) needs bytes"):
            decode(bad)  # type: ignore[arg-type]


def test_payload_refuses_inconsistent_fields() -> None:
    good = decode(small_message("raw", 3))
    with pytest.raises(WireError, match="keep_mask"):
        Payload(good.pixels, good.keep_mask[:-1], 8, "raw", 0)
    with pytest.raises(WireError, match="multiples of patch_size"):
        Payload(good.pixels, good.keep_mask, 5, "raw", 0)
    with pytest.raises(WireError, match="codec"):
        Payload(good.pixels, good.keep_mask, 8, "gif", 0)


# ----------------------------------------------------------------------------- fuzzing


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=300),
        st.binary(max_size=300).map(lambda tail: MAGIC + b"\x01" + tail),
        st.binary(max_size=300).map(lambda tail: with_crc(MAGIC + b"\x01" + tail)),
    )
)
def test_random_bytes_only_raise_wire_error(data: bytes) -> None:
    try:
        payload = decode(data)
    except WireError:
        return
    assert_valid(payload)


MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("extend"), st.binary(min_size=1, max_size=40), st.just(0)),
    st.tuples(st.just("field"), st.sampled_from(FIELDS[1:]), st.integers(0, 2**32 - 1)),
)


def _mutate(data: bytes, op: tuple[str, object, object]) -> bytes:
    kind, a, b = op
    if kind == "flip" and data:
        assert isinstance(a, int) and isinstance(b, int)
        at = a % len(data)
        return data[:at] + bytes([data[at] ^ b]) + data[at + 1 :]
    if kind == "truncate":
        assert isinstance(a, int)
        return data[: a % (len(data) + 1)]
    if kind == "extend":
        assert isinstance(a, bytes)
        return data + a
    if kind == "field" and len(data) >= HEADER_SIZE + 4:
        assert isinstance(a, str) and isinstance(b, int)
        limit = {"length": 2**32 - 1, "patch": 0xFFFF, "height": 0xFFFF, "width": 0xFFFF}
        return reframe(data, fix_crc=False, **{a: b % (limit.get(a, 0xFF) + 1)})
    return data


@FUZZ
@given(
    codec=st.sampled_from(CODECS),
    channels=st.sampled_from([1, 3]),
    ops=st.lists(MUTATION, min_size=1, max_size=4),
    fix_crc=st.booleans(),
)
def test_mutated_messages_only_raise_wire_error(
    codec: str, channels: int, ops: list[tuple[str, object, object]], fix_crc: bool
) -> None:
    data = small_message(codec, channels)
    for op in ops:
        data = _mutate(data, op)
    if fix_crc and len(data) > 4:
        data = with_crc(data[:-4])
    try:
        payload = decode(data)
    except WireError:
        return
    assert_valid(payload)


@FUZZ
@given(
    codec=st.sampled_from(["png", "jpeg"]),
    channels=st.sampled_from([1, 3]),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=6),
)
def test_corrupted_image_bodies_only_raise_wire_error(
    codec: str, channels: int, flips: list[tuple[int, int]]
) -> None:
    data, start = small_message(codec, channels), HEADER_SIZE + 2  # 16 patches: 2-byte mask
    body = bytearray(data[start:-4])
    for at, xor in flips:
        body[at % len(body)] ^= xor
    try:
        payload = decode(with_crc(data[:start] + bytes(body)))
    except WireError:
        return
    assert_valid(payload)


@FUZZ
@given(
    codec=st.sampled_from(["raw", "png"]),
    channels=st.sampled_from([1, 3]),
    patch=st.sampled_from([2, 4, 8, 16]),
    grid_h=st.integers(1, 8),
    grid_w=st.integers(1, 8),
    data=st.data(),
)
def test_lossless_round_trip_any_geometry(
    codec: str, channels: int, patch: int, grid_h: int, grid_w: int, data: st.DataObject
) -> None:
    n = grid_h * grid_w
    mask = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    seed = data.draw(st.integers(0, 2**32 - 1))
    shape = (channels, grid_h * patch, grid_w * patch)
    pixels = np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)
    encoded = encode(pixels, mask, patch, codec)
    if codec == "raw":
        expected = HEADER_SIZE + (n + 7) // 8 + int(mask.sum()) * channels * patch * patch + 4
        assert len(encoded) == expected
    payload = decode(encoded, expect=Geometry(channels, shape[1], shape[2], patch))
    np.testing.assert_array_equal(payload.keep_mask, mask)
    sent, got = patches_of(pixels, patch), patches_of(payload.pixels, patch)
    np.testing.assert_array_equal(got[mask], sent[mask])
    assert not got[~mask].any()
