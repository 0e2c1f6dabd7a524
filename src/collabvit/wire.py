"""Wire format for the image patches an edge device sends to the server.

In attention-aware collaborative inference the edge device runs a small ViT,
keeps the patches its attention ranks highest, and uploads only those. The
paper counts the cost of that upload as one bit per patch for the selection
mask plus the pixels of each selected patch: a 16x16 RGB patch of 8-bit pixels
is 16 * 16 * 3 * 8 = 6,144 bits. This module turns a selection into bytes and
back:

* :func:`encode` packs a (C, H, W) ``uint8`` image and a (N,) ``bool`` mask
  into one self-describing message: a 19-byte header, the mask at 1 bit per
  patch, the selected patches (``raw``, lossless ``png`` or lossy ``jpeg``) and
  a CRC32.
* :func:`decode` checks every field of an untrusted message and rebuilds the
  image, unselected patches left at 0. It raises
  :class:`~collabvit.errors.WireError`, and nothing else, for any malformed
  input, with a message that names the check that failed.
* :func:`payload_bits` is the paper's count; :func:`full_image_bytes` is the
  baseline of uploading the whole image as a JPEG or PNG file.

The byte layout is documented in ``docs/wire-format.md``. The module needs only
numpy, Pillow and zlib.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
from PIL import Image

from .errors import WireError

__all__ = [
    "CODECS",
    "DEFAULT_MAX_BYTES",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_CANVAS_PIXELS",
    "WIRE_VERSION",
    "Geometry",
    "Payload",
    "decode",
    "encode",
    "full_image_bytes",
    "payload_bits",
]

CODECS: Final = ("raw", "png", "jpeg")
"""Codec names; a codec's position in this tuple is its id on the wire."""

WIRE_VERSION: Final = 1
"""The only format version this module writes and reads."""

MAGIC: Final = b"CVIT"
"""The four bytes every message starts with."""

DEFAULT_MAX_BYTES: Final = 16 * 1024 * 1024
"""Largest message :func:`decode` accepts unless told otherwise (16 MiB)."""

MAX_CANVAS_PIXELS: Final = 8192 * 8192
"""Largest height * width a message may declare (the decoder allocates it)."""

_HEADER: Final = struct.Struct("<4sBBBBBHHHI")
HEADER_SIZE: Final = _HEADER.size
"""Size of the fixed header in bytes (19)."""

_CRC: Final = struct.Struct("<I")
_CRC_SIZE: Final = _CRC.size
# Smallest possible message: header, a 1-byte mask (N >= 1), no payload, CRC.
_MIN_MESSAGE: Final = HEADER_SIZE + 1 + _CRC_SIZE
_U16_MAX: Final = 0xFFFF

_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers: 0xC0-0xCF except DHT (C4), JPG (C8) and DAC (CC).
_JPEG_SOF: Final = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_MAX_SEGMENTS: Final = 1024
_PIL_FORMAT: Final = {"png": "PNG", "jpeg": "JPEG"}
# 4:4:4 (no chroma subsampling): on ImageNet photos it gives equal or better PSNR per
# byte than 4:2:0 at quality 75..95, and 8x8 blocks never straddle 8- or 16-pixel patches.
_JPEG_SUBSAMPLING: Final = 0


@dataclass(frozen=True)
class Geometry:
    """The image geometry a server model takes.

    Attributes:
        channels: Colour channels C (1 or 3).
        height: Image height H in pixels, a multiple of ``patch_size``.
        width: Image width W in pixels, a multiple of ``patch_size``.
        patch_size: Side P of the square patches.
    """

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


@dataclass(frozen=True, eq=False)
class Payload:
    """A decoded message: the image with only the selected patches filled in.

    Equality is identity (arrays have no single truth value); compare the
    fields with ``np.array_equal`` instead.

    Attributes:
        pixels: (C, H, W) ``uint8`` image; patches the mask does not select
            are 0.
        keep_mask: (N,) ``bool``, N = (H / P) * (W / P), patch index
            ``row * (W / P) + col`` (row-major).
        patch_size: Side P of the square patches.
        codec: One of :data:`CODECS`.
        quality: JPEG quality 1..100 for ``jpeg``, 0 for ``raw`` and ``png``.
    """

    pixels: npt.NDArray[np.uint8]
    keep_mask: npt.NDArray[np.bool_]
    patch_size: int
    codec: str
    quality: int

    def __post_init__(self) -> None:
        pixels, mask, p = self.pixels, self.keep_mask, self.patch_size
        if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 3:
            raise WireError("Payload.pixels must be a (C, H, W) uint8 array")
        _check_int("patch_size", p, 1)
        c, h, w = pixels.shape
        if c not in (1, 3) or h == 0 or w == 0 or h % p or w % p:
            raise WireError(
                f"Payload.pixels has shape {pixels.shape}: C must be 1 or 3 and H, W "
                f"positive multiples of patch_size {p}"
            )
        n = (h // p) * (w // p)
        if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.shape != (n,):
            raise WireError(f"Payload.keep_mask must be a ({n},) bool array")
        if self.codec not in CODECS:
            raise WireError(f"Payload.codec must be one of {', '.join(CODECS)}")

    @property
    def channels(self) -> int:
        """Number of colour channels C."""
        return int(self.pixels.shape[0])

    @property
    def height(self) -> int:
        """Image height H in pixels."""
        return int(self.pixels.shape[1])

    @property
    def width(self) -> int:
        """Image width W in pixels."""
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

    def selected_patches(self) -> npt.NDArray[np.uint8]:
        """Return the selected patches as a (k, C, P, P) ``uint8`` array, ascending index."""
        return _to_patches(self.pixels, self.patch_size)[self.keep_mask]


def payload_bits(num_selected: int, patch_size: int, channels: int) -> int:
    """Return the paper's upload cost of the selected patches' pixels, in bits.

    That is ``num_selected * P * P * C * 8``: 6,144 bits per 16x16 RGB patch.
    The 1-bit-per-patch mask and this format's header and CRC are not counted.

    Args:
        num_selected: Number of selected patches k (>= 0).
        patch_size: Patch side P (>= 1).
        channels: Colour channels C (>= 1).

    Returns:
        The number of bits.

    Raises:
        WireError: If an argument is not an int in its range.
    """
    _check_int("num_selected", num_selected, 0)
    _check_int("patch_size", patch_size, 1)
    _check_int("channels", channels, 1)
    return num_selected * patch_size * patch_size * channels * 8


def encode(
    pixels: npt.NDArray[np.uint8],
    keep_mask: npt.NDArray[np.bool_],
    patch_size: int,
    codec: str = "raw",
    quality: int = 90,
) -> bytes:
    """Pack the selected patches of an image into one wire message.

    Args:
        pixels: (C, H, W) ``uint8`` preprocessed image, C = 1 or 3, H and W
            positive multiples of ``patch_size``.
        keep_mask: (N,) ``bool`` selection, N = (H / P) * (W / P), row-major.
            An all-False mask is legal and sends no patches.
        patch_size: Side P of the square patches, 1..65535.
        codec: ``"raw"`` (C * P * P bytes per patch), ``"png"`` (lossless) or
            ``"jpeg"`` (lossy).
        quality: JPEG quality 1..100. Ignored by ``raw`` and ``png``, which
            store 0; for them 0..100 is accepted so that a decoded
            :class:`Payload`'s fields can be passed back in.

    Returns:
        The message bytes; :func:`decode` turns them back into a :class:`Payload`.

    Raises:
        WireError: If an argument has the wrong type, dtype, shape or value.
    """
    p = _check_int("patch_size", patch_size, 1, _U16_MAX)
    image = _check_pixels(pixels, p)
    c, h, w = image.shape
    mask = _check_mask(keep_mask, (h // p) * (w // p), h // p, w // p)
    if not isinstance(codec, str) or codec not in CODECS:
        raise WireError(f"unknown codec {codec!r}: use one of {', '.join(CODECS)}")
    if codec == "jpeg":
        q = _check_int("quality", quality, 1, 100)
    else:
        _check_int("quality", quality, 0, 100)
        q = 0

    selected = _to_patches(image, p)[mask]
    if codec == "raw":
        body = selected.tobytes()
    elif selected.shape[0] == 0:
        body = b""
    else:
        picture = _to_pil(_arrange(selected))
        body = _png_bytes(picture) if codec == "png" else _jpeg_bytes(picture, q)

    header = _HEADER.pack(MAGIC, WIRE_VERSION, CODECS.index(codec), q, 0, c, p, h, w, len(body))
    message = header + np.packbits(mask, bitorder="little").tobytes() + body
    return message + _CRC.pack(zlib.crc32(message))


def decode(
    data: bytes | bytearray | memoryview,
    max_bytes: int = DEFAULT_MAX_BYTES,
    expect: Geometry | None = None,
) -> Payload:
    """Check an untrusted wire message and rebuild the image it carries.

    The checks run in this order, each with its own message: size against
    ``max_bytes``; too short; magic; version; codec id; quality byte; flags;
    channels; patch size and image size; declared against actual payload
    length; CRC32; mask padding bits; mask against payload (``raw``), or the
    embedded PNG/JPEG (declared size and mode before any pixel is decoded,
    then the decode itself); and last the geometry ``expect`` asks for.

    Args:
        data: The message bytes.
        max_bytes: Largest message accepted; checked before anything is parsed.
        expect: Geometry the server model takes, or None to accept any.

    Returns:
        The :class:`Payload`: (C, H, W) ``uint8`` pixels with unselected
        patches 0, and the (N,) ``bool`` mask.

    Raises:
        WireError: If the message is malformed or does not match ``expect``;
            never any other exception.
    """
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise WireError(f"max_bytes must be a positive int, got {max_bytes!r}")
    if expect is not None and not isinstance(expect, Geometry):
        raise WireError(f"expect must be a Geometry or None, got {type(expect).__name__}")
    try:
        return _decode(data, max_bytes, expect)
    except WireError:
        raise
    except Exception as exc:  # last defence: the checks above should catch everything
        raise WireError(
            f"payload could not be decoded ({type(exc).__name__}: {exc}); "
            "the message is malformed, resend it from an up-to-date collabvit sender"
        ) from exc


def full_image_bytes(
    image: Image.Image | npt.NDArray[np.uint8], fmt: str, quality: int = 90
) -> int:
    """Return the size of uploading the whole image as one JPEG or PNG file.

    The baseline against which patch selection is compared. PNG and JPEG are
    written with the same settings the ``png`` and ``jpeg`` codecs use.

    Args:
        image: A PIL image (modes other than L and RGB are converted to RGB),
            or a ``uint8`` array of shape (H, W), (H, W, C) or (C, H, W) with
            C = 1 or 3 (the last axis is tried as C first).
        fmt: ``"jpeg"`` or ``"png"``.
        quality: JPEG quality 1..100 (ignored for PNG).

    Returns:
        The encoded file size in bytes.

    Raises:
        WireError: If the image or an option is not usable.
    """
    if fmt not in ("jpeg", "png"):
        raise WireError(f"unknown image format {fmt!r}: use 'jpeg' or 'png'")
    q = _check_int("quality", quality, 1, 100)
    if isinstance(image, Image.Image):
        picture = image if image.mode in ("L", "RGB") else image.convert("RGB")
    elif isinstance(image, np.ndarray):
        picture = _to_pil(_as_chw(image))
    else:
        raise WireError(
            f"image must be a PIL image or a uint8 numpy array, got {type(image).__name__}"
        )
    if picture.width < 1 or picture.height < 1:
        raise WireError(f"image is {picture.width}x{picture.height}: it has no pixels")
    return len(_png_bytes(picture) if fmt == "png" else _jpeg_bytes(picture, q))


# --------------------------------------------------------------------------- decoding


def _decode(data: object, max_bytes: int, expect: Geometry | None) -> Payload:
    if isinstance(data, memoryview):
        size = data.nbytes
    elif isinstance(data, (bytes, bytearray)):
        size = len(data)
    else:
        raise WireError(f"decode() needs bytes, got {type(data).__name__}")
    if size > max_bytes:
        raise WireError(
            f"payload too large: {size} bytes, more than max_bytes={max_bytes}; "
            "send fewer patches or a lossy codec, or raise max_bytes on the server"
        )
    buf = data.tobytes() if isinstance(data, memoryview) else bytes(data)
    if size < _MIN_MESSAGE:
        raise WireError(
            f"payload too short: {size} bytes, but a message has at least {_MIN_MESSAGE} "
            f"({HEADER_SIZE}-byte header, 1-byte mask, {_CRC_SIZE}-byte CRC); "
            "it was truncated, resend the complete message"
        )
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
    if codec_id >= len(CODECS):
        raise WireError(
            f"unknown codec id {codec_id}: expected 0 (raw), 1 (png) or 2 (jpeg); "
            "the sender uses a newer or foreign format"
        )
    codec = CODECS[codec_id]
    if codec == "jpeg" and not 1 <= quality <= 100:
        raise WireError(f"bad quality byte {quality} for jpeg: must be 1..100; resend")
    if codec != "jpeg" and quality != 0:
        raise WireError(f"bad quality byte {quality} for {codec}: must be 0; resend")
    if flags != 0:
        raise WireError(
            f"nonzero flags 0x{flags:02x}: version {WIRE_VERSION} defines no flags and "
            "the byte must be 0; the sender uses a newer or foreign format"
        )
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
    grid_h, grid_w = h // p, w // p
    n = grid_h * grid_w
    mask_len = (n + 7) // 8
    start = HEADER_SIZE + mask_len
    actual = size - start - _CRC_SIZE
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
    stored_crc = _CRC.unpack_from(buf, size - _CRC_SIZE)[0]
    crc = zlib.crc32(memoryview(buf)[: size - _CRC_SIZE])
    if crc != stored_crc:
        raise WireError(
            f"CRC mismatch: stored 0x{stored_crc:08x}, computed 0x{crc:08x}; "
            "the message was corrupted on the way, resend it"
        )
    packed = np.frombuffer(buf, dtype=np.uint8, count=mask_len, offset=HEADER_SIZE)
    bits = np.unpackbits(packed, bitorder="little").astype(bool)
    if bits[n:].any():
        raise WireError(
            f"nonzero padding bits in the mask: bits {n}..{8 * mask_len - 1} of the "
            f"{mask_len}-byte mask must be 0 for a {grid_h}x{grid_w} grid; "
            "the sender's mask does not match its image size"
        )
    mask = bits[:n].copy()
    k = int(np.count_nonzero(mask))
    body = buf[start : size - _CRC_SIZE]

    if codec == "raw":
        need = k * c * p * p
        if len(body) != need:
            raise WireError(
                f"mask and payload disagree: the mask selects {k} patches, which take "
                f"{need} raw bytes ({k}*{c}*{p}*{p}), but the payload has {len(body)}; "
                "resend the message"
            )
        selected = np.frombuffer(body, dtype=np.uint8).reshape(k, c, p, p)
    elif k == 0 or not body:
        if k != 0 or body:
            raise WireError(
                f"mask and payload disagree: the mask selects {k} patches but the "
                f"{codec} payload has {len(body)} bytes; resend the message"
            )
        selected = np.zeros((0, c, p, p), dtype=np.uint8)
    else:
        selected = _decode_picture(body, codec, c, p, k)

    patches = np.zeros((n, c, p, p), dtype=np.uint8)
    patches[mask] = selected
    payload = Payload(
        pixels=np.ascontiguousarray(_from_patches(patches, grid_h, grid_w)),
        keep_mask=mask,
        patch_size=p,
        codec=codec,
        quality=quality,
    )
    if expect is not None and payload.geometry != expect:
        raise WireError(
            f"payload is {payload.geometry.describe()} but the server model takes "
            f"{expect.describe()}; preprocess the image on the edge device for this model"
        )
    return payload


def _decode_picture(body: bytes, codec: str, c: int, p: int, k: int) -> npt.NDArray[np.uint8]:
    """Decode the PNG/JPEG arrangement of k patches into (k, C, P, P)."""
    rows, cols = _arrangement(k)
    want = (cols * p, rows * p)
    mode = "L" if c == 1 else "RGB"
    need = f"{want[0]}x{want[1]} {mode}, the arrangement of {k} patches of {p}x{p}"
    if codec == "png":
        _check_png_header(body, want, c, need)
    else:
        _check_jpeg_header(body, want, c, need)
    try:
        with Image.open(io.BytesIO(body), formats=[_PIL_FORMAT[codec]]) as picture:
            if picture.size != want or picture.mode != mode:
                raise WireError(
                    f"{codec} image is {picture.width}x{picture.height} {picture.mode}, "
                    f"which does not match the arrangement: expected {need}; resend"
                )
            picture.load()
            if picture.size != want or picture.mode != mode:
                raise WireError(
                    f"decoded {codec} image is {picture.width}x{picture.height} "
                    f"{picture.mode}, which does not match the arrangement: expected {need}"
                )
            array = np.asarray(picture, dtype=np.uint8)
    except WireError:
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, bomb errors...
        raise WireError(
            f"{codec} payload could not be decoded by Pillow ({type(exc).__name__}: {exc}); "
            "the image data is corrupt, resend the message"
        ) from exc
    chw = array.reshape(want[1], want[0], c).transpose(2, 0, 1)
    return _to_patches(chw, p)[:k]


def _check_png_header(body: bytes, want: tuple[int, int], c: int, need: str) -> None:
    """Refuse a PNG whose IHDR is not the expected size and 8-bit L/RGB, before Pillow."""
    if len(body) < 26 or body[:8] != _PNG_SIGNATURE or body[12:16] != b"IHDR":
        raise WireError(
            "png payload could not be decoded: it does not start with a PNG signature "
            "and IHDR chunk; the image data is corrupt, resend the message"
        )
    width, height = struct.unpack_from(">II", body, 16)
    depth, colour = body[24], body[25]
    if (width, height) != want or depth != 8 or colour != (0 if c == 1 else 2):
        raise WireError(
            f"png image is declared as {width}x{height} (bit depth {depth}, colour type "
            f"{colour}), which does not match the arrangement: expected {need}; resend"
        )


def _check_jpeg_header(body: bytes, want: tuple[int, int], c: int, need: str) -> None:
    """Refuse a JPEG whose frame headers are not the expected size, before Pillow."""
    corrupt = "the image data is corrupt, resend the message"
    if body[:2] != b"\xff\xd8":
        raise WireError(f"jpeg payload could not be decoded: it has no SOI marker; {corrupt}")
    frames: list[tuple[int, int, int]] = []
    i, end = 2, len(body)
    for _ in range(_JPEG_MAX_SEGMENTS):
        if i + 1 >= end:
            break
        if body[i] != 0xFF:
            raise WireError(f"jpeg payload could not be decoded: no marker at byte {i}; {corrupt}")
        marker = body[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xDA, 0xD9):  # start of scan / end of image
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        if i + 4 > end:
            break
        length = (body[i + 2] << 8) | body[i + 3]
        if length < 2:
            raise WireError(f"jpeg payload could not be decoded: bad segment; {corrupt}")
        if marker in _JPEG_SOF:
            if length < 8 or i + 10 > end:
                raise WireError(f"jpeg payload could not be decoded: short frame header; {corrupt}")
            height, width = struct.unpack_from(">HH", body, i + 5)
            frames.append((width, height, body[i + 9]))
        i += 2 + length
    else:
        raise WireError(
            f"jpeg payload could not be decoded: more than {_JPEG_MAX_SEGMENTS} "
            f"segments before the image data; {corrupt}"
        )
    if not frames:
        raise WireError(f"jpeg payload could not be decoded: no frame header; {corrupt}")
    for width, height, components in frames:
        if (width, height) != want or components != c:
            raise WireError(
                f"jpeg image is declared as {width}x{height} with {components} components, "
                f"which does not match the arrangement: expected {need}; resend"
            )


# --------------------------------------------------------------------------- helpers


def _check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    """Return ``value`` if it is an int (not bool) in ``low..high``, else raise WireError."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise WireError(f"{name} must be an int, got {type(value).__name__}")
    number = int(value)
    if number < low or (high is not None and number > high):
        span = f"{low}..{high}" if high is not None else f">= {low}"
        raise WireError(f"{name} must be {span}, got {number}")
    return number


def _check_pixels(pixels: object, p: int) -> npt.NDArray[np.uint8]:
    """Validate the (C, H, W) uint8 image handed to :func:`encode`."""
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
    return np.ascontiguousarray(pixels)


def _check_mask(keep_mask: object, n: int, grid_h: int, grid_w: int) -> npt.NDArray[np.bool_]:
    """Validate the (N,) bool selection mask handed to :func:`encode`."""
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
    return keep_mask


def _as_chw(array: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Return a (H, W), (H, W, C) or (C, H, W) uint8 image as (C, H, W)."""
    if array.dtype != np.uint8:
        raise WireError(f"image array must be uint8, got {array.dtype}")
    if array.size == 0:
        raise WireError(f"image array has shape {array.shape}: it has no pixels")
    if array.ndim == 2:
        return array[None]
    if array.ndim == 3 and array.shape[2] in (1, 3):
        return array.transpose(2, 0, 1)
    if array.ndim == 3 and array.shape[0] in (1, 3):
        return array
    raise WireError(
        f"image array must be (H, W), (H, W, C) or (C, H, W) with C = 1 or 3, "
        f"got shape {array.shape}"
    )


def _to_patches(image: npt.NDArray[np.uint8], p: int) -> npt.NDArray[np.uint8]:
    """Cut a (C, H, W) image into (N, C, P, P) patches, row-major."""
    c, h, w = image.shape
    grid = image.reshape(c, h // p, p, w // p, p).transpose(1, 3, 0, 2, 4)
    return grid.reshape((h // p) * (w // p), c, p, p)


def _from_patches(
    patches: npt.NDArray[np.uint8], grid_h: int, grid_w: int
) -> npt.NDArray[np.uint8]:
    """Put (grid_h * grid_w, C, P, P) patches back into a (C, H, W) image."""
    _, c, p, _ = patches.shape
    grid = patches.reshape(grid_h, grid_w, c, p, p).transpose(2, 0, 3, 1, 4)
    return grid.reshape(c, grid_h * p, grid_w * p)


def _arrangement(k: int) -> tuple[int, int]:
    """Return (rows, cols) of the compact grid for k >= 1 patches: ceil(sqrt(k)) columns."""
    cols = math.isqrt(k - 1) + 1
    return -(-k // cols), cols


def _arrange(selected: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Lay (k, C, P, P) patches out row-major as a (C, rows * P, cols * P) image."""
    k, c, p, _ = selected.shape
    rows, cols = _arrangement(k)
    cells = np.zeros((rows * cols, c, p, p), dtype=np.uint8)
    cells[:k] = selected
    return _from_patches(cells, rows, cols)


def _to_pil(image: npt.NDArray[np.uint8]) -> Image.Image:
    """Turn a (C, H, W) uint8 array (C = 1 or 3) into a PIL image of mode L or RGB."""
    if image.shape[0] == 1:
        return Image.fromarray(np.ascontiguousarray(image[0]))
    return Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)))


def _png_bytes(picture: Image.Image) -> bytes:
    """Encode a PIL image as PNG, smallest zlib setting."""
    out = io.BytesIO()
    picture.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _jpeg_bytes(picture: Image.Image, quality: int) -> bytes:
    """Encode a PIL image as baseline JPEG with optimised Huffman tables."""
    out = io.BytesIO()
    picture.save(out, format="JPEG", quality=quality, optimize=True, subsampling=_JPEG_SUBSAMPLING)
    return out.getvalue()
