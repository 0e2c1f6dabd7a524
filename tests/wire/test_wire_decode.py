"""collabvit.wire.decode: every refusal, in the order of docs/wire-format.md's checks."""

from __future__ import annotations

import functools
import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from wire_support import (
    HEADER,
    build,
    image_bytes,
    photo_array,
    random_mask,
    reframe,
    small_message,
    with_crc,
)

from collabvit.errors import WireError
from collabvit.wire import DEFAULT_MAX_BYTES, HEADER_SIZE, Geometry, Payload, decode, encode

Photo = Callable[..., np.ndarray]


@pytest.fixture(scope="module")
def photo(imagenet_dir: Path) -> Photo:
    """``photo(channels=3)``: a real ImageNet photo as (C, 224, 224) uint8."""
    return functools.partial(photo_array, imagenet_dir)


@pytest.fixture(scope="module")
def raw_message(photo: Photo) -> bytes:
    """The real photo, 147 of 196 16x16 patches, raw: 112,944 bytes."""
    return encode(photo(), random_mask(196, 147), 16, "raw")


def test_too_large_is_checked_before_parsing(raw_message: bytes) -> None:
    data = raw_message
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


def test_bad_magic(raw_message: bytes) -> None:
    with pytest.raises(WireError, match="bad magic b'XVIT'"):
        decode(b"XVIT" + raw_message[4:])


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
def test_header_refusals(fields: dict[str, Any], match: str, raw_message: bytes) -> None:
    with pytest.raises(WireError, match=match):
        decode(reframe(raw_message, **fields))


def test_jpeg_quality_byte_must_be_1_to_100() -> None:
    data = small_message("jpeg", 3)
    assert decode(data).quality == 80
    for bad in (0, 101, 255):
        with pytest.raises(WireError, match=f"bad quality byte {bad} for jpeg"):
            decode(reframe(data, quality=bad))
    with pytest.raises(WireError, match="bad quality byte 80 for png"):
        decode(reframe(small_message("png", 3), quality=80))


def test_length_disagrees_when_truncated_or_extended(raw_message: bytes) -> None:
    data = raw_message
    for broken in (data[:-1], data[:-1000], data + b"\0", data + data):
        with pytest.raises(WireError, match="declared payload length 112896 disagrees"):
            decode(broken)


def test_crc_mismatch(raw_message: bytes) -> None:
    data = bytearray(raw_message)
    data[500] ^= 0x10
    with pytest.raises(WireError, match="CRC mismatch"):
        decode(bytes(data))
    mask_flipped = bytearray(raw_message)
    mask_flipped[HEADER_SIZE] ^= 0x01
    with pytest.raises(WireError, match="CRC mismatch"):
        decode(bytes(mask_flipped))
    flipped = raw_message[:-4] + bytes(b ^ 0xFF for b in raw_message[-4:])
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


def test_raw_mask_and_payload_disagree(raw_message: bytes) -> None:
    data = raw_message
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
def test_corrupt_image_data_is_a_pillow_failure(codec: str, photo: Photo) -> None:
    data = encode(photo(), random_mask(196, 147), 16, codec, 90)
    body = data[HEADER_SIZE + 25 : -4]
    start = body.index(b"IDAT") + 8 if codec == "png" else body.index(b"\xff\xda") + 20
    cut = body[:start]  # headers intact, image data gone
    fields = list(HEADER.unpack_from(data))
    fields[-1] = len(cut)
    broken = with_crc(HEADER.pack(*fields) + data[HEADER_SIZE : HEADER_SIZE + 25] + cut)
    with pytest.raises(WireError, match=f"{codec} payload could not be decoded by Pillow"):
        decode(broken)


def test_expect_geometry(raw_message: bytes) -> None:
    data = raw_message
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
def test_decode_argument_refusals(
    kwargs: dict[str, object], match: str, raw_message: bytes
) -> None:
    with pytest.raises(WireError, match=match):
        decode(raw_message, **kwargs)  # type: ignore[arg-type]


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
