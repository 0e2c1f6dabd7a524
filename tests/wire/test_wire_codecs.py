"""collabvit.wire.CODECS: explicit wire ids, messages from before the table, a new codec."""

from __future__ import annotations

import dataclasses
import re
import struct
import zlib

import numpy as np
import pytest
from wire_support import HEADER, build, reframe

from collabvit.errors import WireError
from collabvit.wire import CODECS, HEADER_SIZE, Codec, Payload, decode, encode, get_codec

# An 8x8 grey gradient, 4x4 patches (2x2 grid), patches 0 and 3 selected; encoded with
# quality 75 by collabvit.wire as it was before CODECS became a table (the tuple
# ("raw", "png", "jpeg"), whose positions were the ids). Frozen here so that the ids,
# and every other byte of the format, stay as they were.
GOLDEN_PIXELS = (np.arange(64, dtype=np.uint8) * 4).reshape(1, 8, 8)
GOLDEN_MASK = np.array([True, False, False, True])
GOLDEN = {
    "raw": bytes.fromhex(
        "43564954010000000104000800080020000000090004080c2024282c4044484c6064686c9094989c"
        "b0b4b8bcd0d4d8dcf0f4f8fca5513dce"
    ),
    "png": bytes.fromhex(
        "4356495401010000010400080008004f0000000989504e470d0a1a0a0000000d4948445200000008"
        "00000004080000000096a6212c000000164944415478da636460616169616161615180624c060022"
        "ec01b217dc1a5f0000000049454e44ae426082320b676b"
    ),
    "jpeg": bytes.fromhex(
        "4356495401024b0001040008000800ad00000009ffd8ffe000104a46494600010100000100010000"
        "ffdb004300080606070605080707070909080a0c140d0c0b0b0c1912130f141d1a1f1e1d1a1c1c20"
        "242e2720222c231c1c2837292c30313434341f27393d38323c2e333432ffc0000b08000400080101"
        "1100ffc40014000100000000000000000000000000000005ffc4001b100000070100000000000000"
        "000000000000050607232553c2ffda0008010100003f0059a64c15d9c18f63ffd9bfd92847"
    ),
}


def _selected(pixels: np.ndarray) -> np.ndarray:
    """Patches 0 and 3 of the 2x2 grid of 4x4 patches, (2, 1, 4, 4)."""
    return np.stack([pixels[:, :4, :4], pixels[:, 4:, 4:]])


def test_the_table_names_its_ids_explicitly() -> None:
    assert list(CODECS) == ["raw", "png", "jpeg"]
    assert {name: codec.wire_id for name, codec in CODECS.items()} == {
        "raw": 0,
        "png": 1,
        "jpeg": 2,
    }
    assert all(codec.name == name for name, codec in CODECS.items())
    assert len({codec.wire_id for codec in CODECS.values()}) == len(CODECS)
    assert all(0 <= codec.wire_id <= 255 for codec in CODECS.values())
    assert [c.lossless for c in CODECS.values()] == [True, True, False]
    assert [c.takes_quality for c in CODECS.values()] == [False, False, True]
    with pytest.raises(dataclasses.FrozenInstanceError):
        CODECS["raw"].wire_id = 7  # type: ignore[misc]


@pytest.mark.parametrize(("codec", "wire_id"), [("raw", 0), ("png", 1), ("jpeg", 2)])
def test_the_encoded_codec_byte_is_the_id(codec: str, wire_id: int) -> None:
    data = encode(GOLDEN_PIXELS, GOLDEN_MASK, 4, codec, 75)
    assert data[5] == wire_id == HEADER.unpack_from(data)[2]
    assert data[:5] == b"CVIT\x01"
    assert data[6] == (75 if codec == "jpeg" else 0)


@pytest.mark.parametrize("codec", ["raw", "png", "jpeg"])
def test_a_message_from_before_the_table_decodes(codec: str) -> None:
    golden = GOLDEN[codec]
    payload = decode(golden)
    assert (payload.codec, payload.quality, payload.patch_size) == (
        codec,
        75 * (codec == "jpeg"),
        4,
    )
    np.testing.assert_array_equal(payload.keep_mask, GOLDEN_MASK)
    got, sent = _selected(payload.pixels), _selected(GOLDEN_PIXELS)
    if codec == "jpeg":
        assert np.abs(got.astype(int) - sent.astype(int)).mean() < 4.0
    else:
        np.testing.assert_array_equal(got, sent)
    assert not payload.pixels[:, :4, 4:].any() and not payload.pixels[:, 4:, :4].any()
    # Today's encoder writes the same header and mask (and, for raw, every byte).
    again = encode(GOLDEN_PIXELS, GOLDEN_MASK, 4, codec, 75)
    assert again[:15] == golden[:15] and again[HEADER_SIZE] == golden[HEADER_SIZE]
    if codec == "raw":
        assert again == golden


def test_a_raw_message_built_by_hand_from_the_documented_layout() -> None:
    grey = (np.arange(8, dtype=np.uint8) + 100).reshape(1, 2, 4)  # C = 1, H = 2, W = 4
    patch1 = grey[:, :, 2:].tobytes()  # P = 2: N = 2 patches, only patch 1 sent (mask 0b10)
    header = struct.pack("<4sBBBBBHHHI", b"CVIT", 1, 0, 0, 0, 1, 2, 2, 4, len(patch1))
    message = header + b"\x02" + patch1
    message += struct.pack("<I", zlib.crc32(message))
    payload = decode(message)
    np.testing.assert_array_equal(payload.keep_mask, [False, True])
    np.testing.assert_array_equal(payload.pixels[:, :, 2:], grey[:, :, 2:])
    assert not payload.pixels[:, :, :2].any()
    assert encode(grey, np.array([False, True]), 2, "raw") == message


def test_get_codec_and_its_refusals() -> None:
    assert get_codec("png") is CODECS["png"]
    for bad in ("webp", "RAW", None, 1, ["raw"]):
        with pytest.raises(WireError, match=r"unknown codec .*: use one of raw, png, jpeg"):
            get_codec(bad)  # type: ignore[arg-type]


def test_an_unknown_id_lists_the_table() -> None:
    data = encode(GOLDEN_PIXELS, GOLDEN_MASK, 4, "raw")
    message = "unknown codec id 3: expected 0 (raw), 1 (png) or 2 (jpeg); the sender uses"
    with pytest.raises(WireError, match=re.escape(message)):
        decode(reframe(data, codec=3))


def _encode_zlib(selected: np.ndarray, quality: int) -> bytes:
    return zlib.compress(selected.tobytes(), max(1, min(9, quality // 10)))


def _decode_zlib(body: bytes, k: int, c: int, p: int) -> np.ndarray:
    raw = zlib.decompress(body) if body else b""
    if len(raw) != k * c * p * p:
        raise WireError(f"mask and payload disagree: {len(raw)} bytes for {k} patches")
    return np.frombuffer(raw, dtype=np.uint8).reshape(k, c, p, p)


@pytest.mark.parametrize("takes_quality", [False, True])
def test_a_new_codec_is_one_table_entry(
    monkeypatch: pytest.MonkeyPatch, takes_quality: bool
) -> None:
    codec = Codec("zlib", 3, _encode_zlib, _decode_zlib, True, takes_quality)
    monkeypatch.setitem(CODECS, "zlib", codec)
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 4, size=(3, 32, 48), dtype=np.uint8)  # compressible
    mask = rng.random(24) < 0.5

    data = encode(pixels, mask, 8, "zlib", 60)
    assert data[5] == 3 and data[6] == (60 if takes_quality else 0)
    payload = decode(data)
    assert payload.codec == "zlib" and payload.quality == (60 if takes_quality else 0)
    np.testing.assert_array_equal(payload.keep_mask, mask)
    grid = payload.pixels.reshape(3, 4, 8, 6, 8).transpose(1, 3, 0, 2, 4).reshape(24, 3, 8, 8)
    sent = pixels.reshape(3, 4, 8, 6, 8).transpose(1, 3, 0, 2, 4).reshape(24, 3, 8, 8)
    np.testing.assert_array_equal(grid[mask], sent[mask])
    assert not grid[~mask].any()
    again = encode(payload.pixels, payload.keep_mask, 8, payload.codec, payload.quality)
    np.testing.assert_array_equal(decode(again).pixels, payload.pixels)

    assert len(data) < len(encode(pixels, mask, 8, "raw"))
    if takes_quality:
        with pytest.raises(WireError, match=r"bad quality byte 0 for zlib: must be 1\.\.100"):
            decode(reframe(data, quality=0))
    else:
        with pytest.raises(WireError, match="bad quality byte 7 for zlib: must be 0"):
            decode(reframe(data, quality=7))
    with pytest.raises(WireError, match=r"or 3 \(zlib\)"):
        decode(reframe(data, codec=4))
    Payload(payload.pixels, payload.keep_mask, 8, "zlib", 0)  # a valid codec name now


def test_the_new_codec_is_gone_with_its_entry() -> None:
    assert "zlib" not in CODECS
    with pytest.raises(WireError, match="unknown codec 'zlib'"):
        encode(GOLDEN_PIXELS, GOLDEN_MASK, 4, "zlib")
    with pytest.raises(WireError, match="unknown codec id 3"):
        decode(build(3, 1, 4, 8, 8, b"\x09", b""))
