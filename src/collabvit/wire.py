"""Wire format of the image patches an edge device uploads (``docs/wire-format.md``).

A message is a 19-byte header, the mask at 1 bit per patch, the selected patches in one
of the :data:`CODECS` and a CRC32; :func:`encode` writes it, :func:`decode` checks and
reads it. :func:`payload_bits` is the paper's count, :func:`full_image_bytes` the
whole-image baseline. Needs numpy, Pillow and zlib, never torch.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Final, TypeAlias

import numpy as np
import numpy.typing as npt
from PIL import Image

from .errors import WireError

__all__ = ["CODECS", "DEFAULT_MAX_BYTES", "HEADER_SIZE", "MAGIC", "MAX_CANVAS_PIXELS"]
__all__ += ["WIRE_VERSION", "Codec", "Geometry", "Payload", "decode", "encode", "full_image_bytes"]
__all__ += ["get_codec", "payload_bits"]

UInt8Array: TypeAlias = npt.NDArray[np.uint8]
BoolArray: TypeAlias = npt.NDArray[np.bool_]
_FileCheck: TypeAlias = Callable[[bytes, tuple[int, int], int, str], None]  # (body, W H, C, need)

WIRE_VERSION: Final = 1  # the only format version this module writes and reads
MAGIC: Final = b"CVIT"  # the four bytes every message starts with
DEFAULT_MAX_BYTES: Final = 16 * 1024 * 1024  # largest message decode() takes by default
MAX_CANVAS_PIXELS: Final = 8192 * 8192  # largest H * W a message may declare
_HEADER: Final = struct.Struct("<4sBBBBBHHHI")
HEADER_SIZE: Final = _HEADER.size  # the fixed header: 19 bytes
_CRC: Final = struct.Struct("<I")
_MIN_MESSAGE: Final = HEADER_SIZE + 1 + _CRC.size  # header, 1-byte mask, no payload, CRC
_U16_MAX: Final = 0xFFFF
_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
_JPEG_SOF: Final = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOFn, not DHT/JPG/DAC
_JPEG_MAX_SEGMENTS: Final = 1024
_JPEG_SUBSAMPLING: Final = 0  # 4:4:4: better PSNR per byte than 4:2:0 (docs/wire-format.md)
_CORRUPT: Final = "the image data is corrupt, resend the message"


@dataclass(frozen=True)
class Geometry:
    """The image geometry a server model takes: C (1 or 3), H, W (multiples of P), P."""

    channels: int
    height: int
    width: int
    patch_size: int

    @property
    def num_patches(self) -> int:
        """Number of patches N = (H / P) * (W / P) of the grid."""
        return (self.height // self.patch_size) * (self.width // self.patch_size)

    def describe(self) -> str:
        """Return the geometry as ``"CxHxW with patch P"``."""
        return f"{self.channels}x{self.height}x{self.width} with patch {self.patch_size}"


@dataclass(frozen=True)
class Codec:
    """One way of writing the selected patches into the payload section.

    Attributes:
        name: What callers pass (``encode(..., codec=NAME)``, ``--codec NAME``).
        wire_id: The header's codec id byte, 0..255: never renumber or reuse one.
        encode_body: ``(selected (k, C, P, P) uint8, quality) -> payload bytes``.
        decode_body: ``(payload, k, C, P) -> (k, C, P, P) uint8``, or WireError.
        lossless, takes_quality: Decoding gives the exact pixels; the quality byte is 1..100.
    """

    name: str
    wire_id: int
    encode_body: Callable[[UInt8Array, int], bytes]
    decode_body: Callable[[bytes, int, int, int], UInt8Array]
    lossless: bool
    takes_quality: bool


def _encode_raw(selected: UInt8Array, quality: int) -> bytes:
    """The k patches in ascending index order, C * P * P bytes each in (C, P, P) order."""
    return selected.tobytes()


def _decode_raw(body: bytes, k: int, c: int, p: int) -> UInt8Array:
    if len(body) != k * c * p * p:
        need = f"{k * c * p * p} raw bytes ({k}*{c}*{p}*{p})"
        raise _disagree(k, f", which take {need}, but the payload has {len(body)}")
    return np.frombuffer(body, dtype=np.uint8).reshape(k, c, p, p)


def _encode_picture(selected: UInt8Array, quality: int, fmt: str) -> bytes:
    """The compact arrangement of the k patches as one PNG or JPEG file; empty for k = 0."""
    return _file_bytes(_arrange(selected), fmt, quality) if len(selected) else b""


def _decode_picture(body: bytes, k: int, c: int, p: int, fmt: str, check: _FileCheck) -> UInt8Array:
    """Check 13 for png and jpeg: the file's own headers, then Pillow; (k, C, P, P)."""
    if k == 0 or not body:
        if k != 0 or body:
            raise _disagree(k, f" but the {fmt} payload has {len(body)} bytes")
        return np.zeros((0, c, p, p), dtype=np.uint8)
    rows, cols = _arrangement(k)
    want, mode = (cols * p, rows * p), "L" if c == 1 else "RGB"
    need = f"{want[0]}x{want[1]} {mode}, the arrangement of {k} patches of {p}x{p}"
    check(body, want, c, need)  # a bomb never reaches Pillow
    try:
        with Image.open(io.BytesIO(body), formats=[fmt.upper()]) as picture:
            got = f"{picture.width}x{picture.height} {picture.mode}"
            if picture.size != want or picture.mode != mode:
                raise _unarranged(f"{fmt} image is {got}", f"{need}; resend")
            picture.load()
            if picture.size != want or picture.mode != mode:
                got = f"{picture.width}x{picture.height} {picture.mode}"
                raise _unarranged(f"decoded {fmt} image is {got}", need)
            array = np.asarray(picture, dtype=np.uint8)  # (rows * P, cols * P[, C])
    except WireError:
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, bomb errors...
        raise WireError(
            f"{fmt} payload could not be decoded by Pillow ({type(exc).__name__}: {exc}); "
            f"{_CORRUPT}"
        ) from exc
    return _to_patches(array.reshape(want[1], want[0], c).transpose(2, 0, 1), p)[:k]


def _check_png_header(body: bytes, want: tuple[int, int], c: int, need: str) -> None:
    """Refuse a PNG whose IHDR is not the expected size and 8-bit L/RGB, before Pillow."""
    if len(body) < 26 or body[:8] != _PNG_SIGNATURE or body[12:16] != b"IHDR":
        raise WireError(
            "png payload could not be decoded: it does not start with a PNG signature "
            f"and IHDR chunk; {_CORRUPT}"
        )
    (width, height), depth, colour = struct.unpack_from(">II", body, 16), body[24], body[25]
    if (width, height) != want or depth != 8 or colour != (0 if c == 1 else 2):
        got = f"{width}x{height} (bit depth {depth}, colour type {colour})"
        raise _unarranged(f"png image is declared as {got}", f"{need}; resend")


def _check_jpeg_header(body: bytes, want: tuple[int, int], c: int, need: str) -> None:
    """Refuse a JPEG whose frame headers are not the expected size, before Pillow."""
    if body[:2] != b"\xff\xd8":
        raise _bad_jpeg("it has no SOI marker")
    frames: list[tuple[int, int, int]] = []  # (width, height, components) of each SOF
    i, end = 2, len(body)
    for _ in range(_JPEG_MAX_SEGMENTS):
        if i + 1 >= end or (body[i] == 0xFF and body[i + 1] in (0xDA, 0xD9)):
            break  # the end, or start of scan / end of image
        if body[i] != 0xFF:
            raise _bad_jpeg(f"no marker at byte {i}")
        marker = body[i + 1]
        if marker == 0xFF or marker == 0x01 or 0xD0 <= marker <= 0xD8:  # no length field
            i += 1 if marker == 0xFF else 2  # a fill byte, or TEM / RSTn / SOI
            continue
        if i + 4 > end:
            break
        length = (body[i + 2] << 8) | body[i + 3]
        if length < 2:
            raise _bad_jpeg("bad segment")
        if marker in _JPEG_SOF:
            if length < 8 or i + 10 > end:
                raise _bad_jpeg("short frame header")
            height, width = struct.unpack_from(">HH", body, i + 5)
            frames.append((width, height, body[i + 9]))
        i += 2 + length
    else:
        raise _bad_jpeg(f"more than {_JPEG_MAX_SEGMENTS} segments before the image data")
    if not frames:
        raise _bad_jpeg("no frame header")
    for width, height, components in frames:
        if (width, height) != want or components != c:
            got = f"{width}x{height} with {components} components"
            raise _unarranged(f"jpeg image is declared as {got}", f"{need}; resend")


def _disagree(k: int, detail: str) -> WireError:
    return WireError(
        f"mask and payload disagree: the mask selects {k} patches{detail}; resend the message"
    )


def _bad_jpeg(why: str) -> WireError:
    return WireError(f"jpeg payload could not be decoded: {why}; {_CORRUPT}")


def _unarranged(what: str, need: str) -> WireError:
    return WireError(f"{what}, which does not match the arrangement: expected {need}")


# png and jpeg send the compact arrangement of the k patches as one file.
_encode_png = partial(_encode_picture, fmt="png")
_decode_png = partial(_decode_picture, fmt="png", check=_check_png_header)
_encode_jpeg = partial(_encode_picture, fmt="jpeg")
_decode_jpeg = partial(_decode_picture, fmt="jpeg", check=_check_jpeg_header)

CODECS: Final[dict[str, Codec]] = {
    "raw": Codec("raw", 0, _encode_raw, _decode_raw, lossless=True, takes_quality=False),
    "png": Codec("png", 1, _encode_png, _decode_png, lossless=True, takes_quality=False),
    "jpeg": Codec("jpeg", 2, _encode_jpeg, _decode_jpeg, lossless=False, takes_quality=True),
}
"""The codecs by name. Adding one is a body encode/decode pair and one entry."""


def get_codec(name: str) -> Codec:
    """The :data:`CODECS` entry called ``name``; WireError listing the names otherwise."""
    if isinstance(name, str) and name in CODECS:
        return CODECS[name]
    raise WireError(f"unknown codec {name!r}: use one of {', '.join(CODECS)}")


@dataclass(frozen=True, eq=False)
class Payload:
    """A decoded message: the image with only the selected patches filled in.

    Attributes:
        pixels: (C, H, W) ``uint8`` image; unselected patches are 0.
        keep_mask: (N,) ``bool``, patch index ``row * (W / P) + col`` (row-major).
        patch_size: Side P of the square patches.
        codec: A name in :data:`CODECS`.
        quality: 1..100 for a codec that takes a quality (``jpeg``), else 0.

    Equality is identity (arrays have no single truth value): compare the fields.
    """

    pixels: UInt8Array
    keep_mask: BoolArray
    patch_size: int
    codec: str
    quality: int

    def __post_init__(self) -> None:  # the checks of encode(): a Payload can be re-encoded
        _check_image(self.pixels, self.keep_mask, _check_int("patch_size", self.patch_size, 1))
        if not isinstance(self.codec, str) or self.codec not in CODECS:
            raise WireError(f"Payload.codec must be one of {', '.join(CODECS)}")

    @property
    def channels(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[2])

    @property
    def num_patches(self) -> int:
        """Number of patches N of the whole grid, selected or not."""
        return int(self.keep_mask.shape[0])

    @property
    def num_selected(self) -> int:
        """Number of selected patches k (the set bits of the mask)."""
        return int(np.count_nonzero(self.keep_mask))

    @property
    def geometry(self) -> Geometry:
        """The image geometry (C, H, W, P) of this payload."""
        return Geometry(self.channels, self.height, self.width, self.patch_size)

    def selected_indices(self) -> npt.NDArray[np.intp]:
        """Return the (k,) row-major indices of the selected patches, ascending."""
        return np.flatnonzero(self.keep_mask)

    def selected_patches(self) -> UInt8Array:
        """Return the selected patches as a (k, C, P, P) ``uint8`` array, ascending index."""
        return _to_patches(self.pixels, self.patch_size)[self.keep_mask]


def payload_bits(num_selected: int, patch_size: int, channels: int) -> int:
    """The paper's upload cost of k selected patches' pixels: ``k * P * P * C * 8`` bits.

    6,144 bits per 16x16 RGB patch; the mask, header and CRC are not counted.
    """
    _check_int("num_selected", num_selected, 0)
    _check_int("patch_size", patch_size, 1)
    _check_int("channels", channels, 1)
    return num_selected * patch_size * patch_size * channels * 8


def encode(
    pixels: UInt8Array, keep_mask: BoolArray, patch_size: int, codec: str = "raw", quality: int = 90
) -> bytes:
    """Pack the selected patches of an image into one wire message, or raise WireError.

    Args:
        pixels: (C, H, W) ``uint8`` preprocessed image, C = 1 or 3, H and W
            positive multiples of ``patch_size``.
        keep_mask: (N,) ``bool`` selection, row-major; all-False sends no patch.
        patch_size: Side P of the square patches, 1..65535.
        codec: A name in :data:`CODECS` (``raw``, lossless ``png``, lossy ``jpeg``).
        quality: 1..100 for a codec that takes one (``jpeg``); the others store 0
            and accept 0..100, so that a decoded :class:`Payload` can be re-encoded.
    """
    p = _check_int("patch_size", patch_size, 1, _U16_MAX)
    image, mask = _check_image(pixels, keep_mask, p)
    c, h, w = image.shape
    spec = get_codec(codec)
    q = _check_int("quality", quality, 1 if spec.takes_quality else 0, 100)
    q = q if spec.takes_quality else 0  # a codec without a quality stores 0
    body = spec.encode_body(_to_patches(image, p)[mask], q)  # (k, C, P, P) -> bytes
    header = _HEADER.pack(MAGIC, WIRE_VERSION, spec.wire_id, q, 0, c, p, h, w, len(body))
    message = header + np.packbits(mask, bitorder="little").tobytes() + body
    return message + _CRC.pack(zlib.crc32(message))


def decode(
    data: bytes | bytearray | memoryview,
    max_bytes: int = DEFAULT_MAX_BYTES,
    expect: Geometry | None = None,
) -> Payload:
    """Check an untrusted wire message and rebuild the :class:`Payload` it carries.

    ``max_bytes`` is checked before anything is parsed; ``expect`` is the geometry the server
    model takes (None: any). The checks run in this order, each with its own message (numbered
    in ``docs/wire-format.md``, as are the steps below): size against ``max_bytes``; too short;
    magic; version; codec id; quality byte; flags; channels; patch size and image size;
    declared against actual payload length; CRC32; mask padding bits; mask against payload
    (``raw``), or the embedded PNG/JPEG (declared size and mode before any pixel is decoded,
    then the decode itself); and last the geometry ``expect`` asks for. Unselected patches
    are 0. Raises WireError, and never any other exception.
    """
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise WireError(f"max_bytes must be a positive int, got {max_bytes!r}")
    if expect is not None and not isinstance(expect, Geometry):
        raise WireError(f"expect must be a Geometry or None, got {type(expect).__name__}")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError(f"decode() needs bytes, got {type(data).__name__}")
    try:
        size = data.nbytes if isinstance(data, memoryview) else len(data)
        if size > max_bytes:  # check 1
            raise WireError(
                f"payload too large: {size} bytes, more than max_bytes={max_bytes}; "
                "send fewer patches or a lossy codec, or raise max_bytes on the server"
            )
        if size < _MIN_MESSAGE:  # check 2
            raise WireError(
                f"payload too short: {size} bytes, but a message has at least {_MIN_MESSAGE} "
                f"({HEADER_SIZE}-byte header, 1-byte mask, {_CRC.size}-byte CRC); "
                "it was truncated, resend the complete message"
            )
        return _decode(data.tobytes() if isinstance(data, memoryview) else bytes(data), expect)
    except WireError:
        raise
    except Exception as exc:  # last defence: the checks above should catch everything
        raise WireError(
            f"payload could not be decoded ({type(exc).__name__}: {exc}); "
            "the message is malformed, resend it from an up-to-date collabvit sender"
        ) from exc


def full_image_bytes(image: Image.Image | UInt8Array, fmt: str, quality: int = 90) -> int:
    """The bytes of uploading the whole image as one JPEG or PNG file (the baseline).

    Written as the ``png`` and ``jpeg`` codecs write. ``image`` is a PIL image (modes
    other than L and RGB become RGB) or a ``uint8`` array (H, W), (H, W, C) or
    (C, H, W), C = 1 or 3 (last axis tried as C first); ``fmt`` is ``"jpeg"`` or
    ``"png"``; ``quality`` 1..100 (ignored for PNG). WireError if not usable.
    """
    if fmt not in ("jpeg", "png"):
        raise WireError(f"unknown image format {fmt!r}: use 'jpeg' or 'png'")
    q = _check_int("quality", quality, 1, 100)
    if isinstance(image, np.ndarray):
        return len(_file_bytes(_as_chw(image), fmt, q))
    if not isinstance(image, Image.Image):
        raise WireError(
            f"image must be a PIL image or a uint8 numpy array, got {type(image).__name__}"
        )
    if image.width < 1 or image.height < 1:
        raise WireError(f"image is {image.width}x{image.height}: it has no pixels")
    return len(_file_bytes(image if image.mode in ("L", "RGB") else image.convert("RGB"), fmt, q))


def _decode(buf: bytes, expect: Geometry | None) -> Payload:
    """The steps of :func:`decode` after checks 1-2, each named after the checks it makes."""
    codec, quality, geometry, declared = _read_header(buf)  # checks 3-9
    c, p, n = geometry.channels, geometry.patch_size, geometry.num_patches
    body = _read_body(buf, declared, n)  # checks 10-11
    mask = _read_mask(buf, geometry)  # check 12
    patches = np.zeros((n, c, p, p), dtype=np.uint8)  # (N, C, P, P)
    patches[mask] = codec.decode_body(body, int(np.count_nonzero(mask)), c, p)  # check 13
    pixels = _from_patches(patches, geometry.height // p, geometry.width // p)
    payload = Payload(np.ascontiguousarray(pixels), mask, p, codec.name, quality)
    if expect is not None and payload.geometry != expect:  # check 14
        raise WireError(
            f"payload is {payload.geometry.describe()} but the server model takes "
            f"{expect.describe()}; preprocess the image on the edge device for this model"
        )
    return payload


def _read_header(buf: bytes) -> tuple[Codec, int, Geometry, int]:
    """Checks 3-9: the codec, quality byte, geometry and declared payload length L."""
    magic, version, codec_id, quality, flags, c, p, h, w, declared = _HEADER.unpack_from(buf)
    if magic != MAGIC:
        raise WireError(
            f"bad magic {magic!r}, expected {MAGIC!r}: this is not a collabvit wire "
            "message; check what the client sends to this endpoint"
        )
    if version != WIRE_VERSION:
        raise WireError(
            f"unsupported wire version {version}: this decoder reads version {WIRE_VERSION}; "
            "use the same collabvit version on the edge device and the server"
        )
    by_id = {codec.wire_id: codec for codec in CODECS.values()}
    if codec_id not in by_id:
        known = [f"{i} ({by_id[i].name})" for i in sorted(by_id)]
        listed = " or ".join([", ".join(known[:-1]), known[-1]] if len(known) > 1 else known)
        raise WireError(
            f"unknown codec id {codec_id}: expected {listed}; "
            "the sender uses a newer or foreign format"
        )
    codec = by_id[codec_id]
    if codec.takes_quality and not 1 <= quality <= 100:
        raise WireError(f"bad quality byte {quality} for {codec.name}: must be 1..100; resend")
    if not codec.takes_quality and quality != 0:
        raise WireError(f"bad quality byte {quality} for {codec.name}: must be 0; resend")
    if flags != 0:
        raise WireError(
            f"nonzero flags 0x{flags:02x}: version {WIRE_VERSION} defines no flags and "
            "the byte must be 0; the sender uses a newer or foreign format"
        )
    return codec, int(quality), _read_geometry(c, p, h, w), int(declared)


def _read_geometry(c: int, p: int, h: int, w: int) -> Geometry:
    """Checks 8-9: channels, patch size, image size against patch size and canvas."""
    if c not in (1, 3):
        raise WireError(f"bad channels {c}: must be 1 (grey) or 3 (RGB); resend")
    if p == 0:
        raise WireError("bad patch_size 0: must be positive; resend")
    if h == 0 or w == 0 or h % p or w % p:
        raise WireError(
            f"bad image size {h}x{w}: height and width must be positive multiples "
            f"of patch_size {p}; resend"
        )
    if h * w > MAX_CANVAS_PIXELS:
        raise WireError(
            f"image too large: {h}x{w} is more than {MAX_CANVAS_PIXELS} pixels; "
            "send a smaller image"
        )
    return Geometry(int(c), int(h), int(w), int(p))


def _read_body(buf: bytes, declared: int, n: int) -> bytes:
    """Checks 10-11: room for the mask, declared against actual length, CRC32."""
    size, mask_len = len(buf), (n + 7) // 8
    actual = size - HEADER_SIZE - mask_len - _CRC.size
    if actual < 0:
        raise WireError(
            f"payload truncated: {size} bytes cannot hold the header, the {mask_len}-byte "
            f"mask of {n} patches and the CRC; resend the complete message"
        )
    if declared != actual:
        raise WireError(
            f"declared payload length {declared} disagrees with the actual payload "
            f"length {actual}: the message was truncated or extended, resend it"
        )
    stored_crc = _CRC.unpack_from(buf, size - _CRC.size)[0]
    crc = zlib.crc32(memoryview(buf)[: size - _CRC.size])
    if crc != stored_crc:
        raise WireError(
            f"CRC mismatch: stored 0x{stored_crc:08x}, computed 0x{crc:08x}; "
            "the message was corrupted on the way, resend it"
        )
    return buf[HEADER_SIZE + mask_len : size - _CRC.size]


def _read_mask(buf: bytes, geometry: Geometry) -> BoolArray:
    """Check 12: the (N,) mask, little-endian bits; its padding bits must be 0."""
    n, p, mask_len = geometry.num_patches, geometry.patch_size, (geometry.num_patches + 7) // 8
    packed = np.frombuffer(buf, dtype=np.uint8, count=mask_len, offset=HEADER_SIZE)
    bits = np.unpackbits(packed, bitorder="little").astype(np.bool_)  # (8 * mask_len,)
    if bits[n:].any():
        raise WireError(
            f"nonzero padding bits in the mask: bits {n}..{8 * mask_len - 1} of the "
            f"{mask_len}-byte mask must be 0 for a {geometry.height // p}x"
            f"{geometry.width // p} grid; the sender's mask does not match its image size"
        )
    return np.copy(bits[:n])


def _check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise WireError(f"{name} must be an int, got {type(value).__name__}")
    number = int(value)
    if number < low or (high is not None and number > high):
        span = f"{low}..{high}" if high is not None else f">= {low}"
        raise WireError(f"{name} must be {span}, got {number}")
    return number


def _check_image(pixels: object, keep_mask: object, p: int) -> tuple[UInt8Array, BoolArray]:
    """Validate the (C, H, W) uint8 image and (N,) bool mask handed to :func:`encode`."""
    if not isinstance(pixels, np.ndarray):
        raise WireError(f"pixels must be a numpy array, got {type(pixels).__name__}")
    if pixels.dtype != np.uint8:
        raise WireError(
            f"pixels must be uint8, got {pixels.dtype}; quantise the preprocessed "
            "image to 0..255 before encoding"
        )
    if pixels.ndim != 3:
        raise WireError(f"pixels must have shape (C, H, W), got {pixels.shape}")
    c, h, w = pixels.shape
    if c not in (1, 3):
        hint = "; it looks like (H, W, C): pass pixels.transpose(2, 0, 1)" if w in (1, 3) else ""
        raise WireError(f"pixels must have 1 or 3 channels first, got shape {pixels.shape}{hint}")
    if h == 0 or w == 0 or h % p or w % p:
        raise WireError(
            f"image size {h}x{w} must be positive multiples of patch_size {p}; "
            "resize or crop before encoding"
        )
    if h > _U16_MAX or w > _U16_MAX or h * w > MAX_CANVAS_PIXELS:
        raise WireError(
            f"image size {h}x{w} is too large: each side at most {_U16_MAX} and "
            f"at most {MAX_CANVAS_PIXELS} pixels"
        )
    grid_h, grid_w, n = h // p, w // p, (h // p) * (w // p)
    if not isinstance(keep_mask, np.ndarray) or keep_mask.dtype != np.bool_:
        kind = keep_mask.dtype if isinstance(keep_mask, np.ndarray) else type(keep_mask).__name__
        raise WireError(
            f"keep_mask must be a numpy bool array, got {kind}; for indices use "
            "np.isin(np.arange(N), indices)"
        )
    if keep_mask.shape != (n,):
        raise WireError(
            f"keep_mask has shape {keep_mask.shape} but the {grid_h}x{grid_w} patch grid "
            f"needs ({n},)"
        )
    return np.ascontiguousarray(pixels), keep_mask


def _as_chw(array: UInt8Array) -> UInt8Array:
    """Return a (H, W), (H, W, C) or (C, H, W) uint8 image as (C, H, W)."""
    if array.dtype != np.uint8:
        raise WireError(f"image array must be uint8, got {array.dtype}")
    if array.size == 0:
        raise WireError(f"image array has shape {array.shape}: it has no pixels")
    if array.ndim == 2:
        return array[None]
    if array.ndim == 3 and array.shape[2] in (1, 3):
        return np.transpose(array, (2, 0, 1))
    if array.ndim == 3 and array.shape[0] in (1, 3):
        return array
    raise WireError(
        f"image array must be (H, W), (H, W, C) or (C, H, W) with C = 1 or 3, "
        f"got shape {array.shape}"
    )


def _to_patches(image: UInt8Array, p: int) -> UInt8Array:
    """Cut a (C, H, W) image into (N, C, P, P) patches, row-major."""
    c, h, w = image.shape
    grid = np.transpose(image.reshape(c, h // p, p, w // p, p), (1, 3, 0, 2, 4))
    return grid.reshape(-1, c, p, p)


def _from_patches(patches: UInt8Array, grid_h: int, grid_w: int) -> UInt8Array:
    """Put (grid_h * grid_w, C, P, P) patches back into a (C, H, W) image."""
    _, c, p, _ = patches.shape
    grid = np.transpose(patches.reshape(grid_h, grid_w, c, p, p), (2, 0, 3, 1, 4))
    return grid.reshape(c, grid_h * p, grid_w * p)


def _arrangement(k: int) -> tuple[int, int]:
    """Return (rows, cols) of the compact grid for k >= 1 patches: ceil(sqrt(k)) columns."""
    cols = math.isqrt(k - 1) + 1
    return -(-k // cols), cols


def _arrange(selected: UInt8Array) -> UInt8Array:
    """Lay (k, C, P, P) patches out row-major as a (C, rows * P, cols * P) image."""
    k, c, p, _ = selected.shape
    rows, cols = _arrangement(k)
    cells = np.concatenate([selected, np.zeros((rows * cols - k, c, p, p), np.uint8)])
    return _from_patches(cells, rows, cols)  # unused cells 0


def _file_bytes(image: Image.Image | UInt8Array, fmt: str, quality: int = 0) -> bytes:
    """An L/RGB image or a (C, H, W) uint8 array as PNG (zlib 9) or baseline 4:4:4 JPEG."""
    if isinstance(image, np.ndarray):
        hwc = image.transpose(1, 2, 0)  # (H, W, C)
        image = Image.fromarray(np.ascontiguousarray(hwc[..., 0] if image.shape[0] == 1 else hwc))
    out, jpeg = io.BytesIO(), {"quality": quality, "subsampling": _JPEG_SUBSAMPLING}
    try:  # any failure is a WireError, e.g. OSError "broken data stream" on JPEG of noise
        image.save(out, format=fmt.upper(), optimize=True, **(jpeg if fmt == "jpeg" else {}))
        return out.getvalue()
    except Exception as exc:
        raise WireError(f"Pillow could not write {fmt} ({type(exc).__name__}: {exc})") from exc
