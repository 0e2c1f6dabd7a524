"""collabvit.wire.decode on random and mutated bytes: WireError or a valid payload, nothing else."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from wire_support import (
    FIELDS,
    FUZZ,
    assert_valid,
    patches_of,
    reframe,
    small_message,
    with_crc,
)

from collabvit.errors import WireError
from collabvit.wire import CODECS, HEADER_SIZE, MAGIC, Geometry, decode, encode


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
    codec=st.sampled_from(list(CODECS)),
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
