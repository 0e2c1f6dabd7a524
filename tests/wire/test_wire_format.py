"""collabvit.wire: round trips on a real photo, sizes and byte layout, encode refusals."""

from __future__ import annotations

import functools
import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from wire_support import HEADER, patches_of, photo_array, photo_pil, random_mask

from collabvit.errors import WireError
from collabvit.wire import (
    CODECS,
    HEADER_SIZE,
    Geometry,
    decode,
    encode,
    full_image_bytes,
    payload_bits,
)

Photo = Callable[..., np.ndarray]


@pytest.fixture(scope="module")
def photo(imagenet_dir: Path) -> Photo:
    """``photo(channels=3)``: a real ImageNet photo as (C, 224, 224) uint8."""
    return functools.partial(photo_array, imagenet_dir)


@pytest.fixture(scope="module")
def pil_photo(imagenet_dir: Path) -> Callable[[str], Image.Image]:
    """``pil_photo(mode)``: the same photo as a 224x224 PIL image."""
    return functools.partial(photo_pil, imagenet_dir)


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("codec", list(CODECS))
def test_round_trip_real_photo(codec: str, channels: int, photo: Photo) -> None:
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
@pytest.mark.parametrize("codec", list(CODECS))
def test_empty_and_full_mask(codec: str, channels: int, photo: Photo) -> None:
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


def test_empty_mask_has_empty_payload_section(photo: Photo) -> None:
    for codec in CODECS:
        data = encode(photo(), np.zeros(196, dtype=bool), 16, codec)
        assert len(data) == HEADER_SIZE + 25 + 4
        assert HEADER.unpack_from(data)[-1] == 0


def test_re_encoding_a_decoded_payload(photo: Photo) -> None:
    first = decode(encode(photo(), random_mask(196, 20), 16, "png"))
    again = encode(first.pixels, first.keep_mask, first.patch_size, first.codec, first.quality)
    np.testing.assert_array_equal(decode(again).pixels, first.pixels)


# ----------------------------------------------------------------------------- sizes and layout


def test_raw_size_is_header_mask_pixels_crc(photo: Photo) -> None:
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


def test_codec_sizes_on_real_photo(photo: Photo) -> None:
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


def test_png_and_jpeg_send_a_compact_arrangement(photo: Photo) -> None:
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


def test_full_image_bytes_real_photo(pil_photo: Callable[[str], Image.Image]) -> None:
    image = pil_photo("RGB")
    jpeg, png = full_image_bytes(image, "jpeg", 90), full_image_bytes(image, "png")
    assert 0 < jpeg < png
    hwc = np.asarray(image)
    assert full_image_bytes(hwc, "png") == png
    assert full_image_bytes(np.ascontiguousarray(hwc.transpose(2, 0, 1)), "png") == png
    assert full_image_bytes(np.asarray(pil_photo("L")), "jpeg") > 0
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
