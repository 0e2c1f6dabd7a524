"""The server's three steps, LitServe-style, with no web framework inside.

:func:`decode_request` / :func:`decode_image` turn untrusted bytes into
pixels and a keep mask (:class:`Decoded`), :func:`predict` runs one batched
forward on the kept patches (:func:`~collabvit.models.forward_subset`, eq. 9
cost) and :func:`encode_response` turns one logits row into the JSON answer.
:class:`ServerConfig` says how the server batches, bounds and guards its work.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import torch
from PIL import Image, ImageMode

from ..data import load_image, preprocess
from ..errors import ConfigError, PayloadTooLarge, WireError
from ..models import LoadedModel, forward_subset
from ..wire import DEFAULT_MAX_BYTES, HEADER_SIZE, MAGIC, WIRE_VERSION, Geometry, decode

__all__ = [
    "TOKEN_CHARACTERS",
    "Decoded",
    "ServerConfig",
    "check_declared_geometry",
    "check_token",
    "decode_image",
    "decode_request",
    "encode_response",
    "geometry_of",
    "predict",
    "predict_batch",
]

# The fixed header's first 15 bytes (docs/wire-format.md): magic, version, then codec,
# quality and flags (skipped), channels, patch_size, height, width; little-endian.
_DECLARED: Final = struct.Struct("<4sB3xBHHH")


TOKEN_CHARACTERS: Final = "printable ASCII without spaces ('!' to '~')"
"""What a bearer token may contain: the characters 0x21..0x7E."""


def check_token(token: str, source: str = "token") -> str:
    """Return ``token`` if it is a usable bearer token; raise :class:`ConfigError` if not.

    ``source`` names where it came from in the message (``--token``,
    ``COLLABVIT_TOKEN``). The token itself is never echoed: it is a secret.
    """
    if not token:
        raise ConfigError(
            f"{source} is empty: give a non-empty token, or leave it unset for no authentication"
        )
    for position, character in enumerate(token, 1):
        if not "!" <= character <= "~":
            raise ConfigError(
                f"{source} must be {TOKEN_CHARACTERS}: character {position} of {len(token)} "
                "is not; HTTP headers carry ASCII only"
            )
    return token


@dataclass(frozen=True)
class ServerConfig:
    """How the server batches, bounds and guards its work (the limits: docs/serving.md)."""

    max_batch_size: int = 32  # images per forward_subset call
    max_wait_ms: float = 5.0  # after the first request, wait this long for the batch to fill
    max_queue: int = 128  # requests waiting for the worker; beyond this: 503
    max_body_bytes: int = DEFAULT_MAX_BYTES  # larger request bodies: 413
    max_image_pixels: int = 4096 * 4096  # /v1/infer-image: larger declared images: 413
    max_decoded_bytes: int = 64 * 1024 * 1024  # what one request may decode to; beyond: 413
    max_decodes: int = 4  # requests decoded at once; more wait for a slot
    header_timeout_s: float = 10.0  # request line and headers must arrive within this
    body_timeout_s: float = 30.0  # the whole body must arrive within this of the headers: 408
    token: str | None = None  # bearer token for /v1/* and /metrics (None: no auth); ASCII !..~
    retry_after_s: int = 1  # Retry-After of a 503
    top_k: int = 5  # entries of "top5"

    def __post_init__(self) -> None:
        for name in (
            "max_batch_size",
            "max_queue",
            "max_body_bytes",
            "max_image_pixels",
            "max_decoded_bytes",
            "max_decodes",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
        for name in ("header_timeout_s", "body_timeout_s"):
            value = getattr(self, name)
            if not 0 < value <= 3600:  # also refuses nan
                raise ConfigError(f"{name} must be in (0, 3600] seconds, got {value!r}")
        if not 0 <= self.max_wait_ms < 60_000:
            raise ConfigError(f"max_wait_ms must be in [0, 60000), got {self.max_wait_ms}")
        if self.retry_after_s < 0:
            raise ConfigError(f"retry_after_s must be >= 0, got {self.retry_after_s}")
        if self.top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {self.top_k}")
        if self.token is not None:
            check_token(self.token)


@dataclass(frozen=True)
class Decoded:
    """One request, ready for the model."""

    pixels: torch.Tensor  # (C, H, W) uint8; unselected patches are 0 (never read)
    keep_mask: torch.Tensor  # (N,) bool, at least one True


def geometry_of(loaded: LoadedModel) -> Geometry:
    """The image geometry the model takes, as the wire format describes it."""
    c, h, w = loaded.preprocessing.input_size
    return Geometry(c, h, w, loaded.patch_size)


def decode_request(body: bytes, geometry: Geometry, max_bytes: int) -> Decoded:
    """A wire payload -> pixels and keep mask. Raises :class:`WireError` if malformed.

    The geometry the header declares is checked first (:func:`check_declared_geometry`):
    the decoder only ever allocates for the served geometry.
    """
    check_declared_geometry(body, geometry)
    payload = decode(body, max_bytes=max_bytes, expect=geometry)
    if payload.num_selected == 0:
        raise WireError("payload selects no patch: send at least one patch per image")
    pixels = payload.pixels if payload.pixels.flags.writeable else payload.pixels.copy()
    return Decoded(torch.from_numpy(pixels), torch.from_numpy(payload.keep_mask.copy()))


def check_declared_geometry(body: bytes, geometry: Geometry) -> None:
    """Refuse a wire message that declares another geometry, from its fixed header alone.

    The wire format's last check (``expect``) done first, before any
    allocation: a 200 KB message may declare 3x8192x8192 and decode to 192 MiB.
    Messages too short for a header, or not ``CVIT`` version 1, are left to
    :func:`~collabvit.wire.decode`, whose errors say what is wrong with them.

    Raises:
        WireError: C, H, W or P differs from ``geometry``.
    """
    if len(body) < HEADER_SIZE:
        return
    magic, version, channels, patch, height, width = _DECLARED.unpack_from(body)
    declared = Geometry(channels, height, width, patch)
    if magic == MAGIC and version == WIRE_VERSION and declared != geometry:
        raise WireError(
            f"payload is {declared.describe()} but the server model takes "
            f"{geometry.describe()}; preprocess the image on the edge device for this model"
        )


def decode_image(
    body: bytes, loaded: LoadedModel, max_pixels: int, max_decoded_bytes: int | None = None
) -> Decoded:
    """A whole image file -> the model's preprocessed pixels, every patch kept.

    Raises:
        WireError: the body is not a readable image.
        PayloadTooLarge: the image declares more than ``max_pixels`` pixels, or
            would decode to more than ``max_decoded_bytes`` (read from the
            header, before any pixel is decoded).
    """
    width, height, pixel_bytes = _declared_image(body, max_pixels)
    pixels = width * height
    if pixels > max_pixels:
        raise PayloadTooLarge(
            f"image is {width}x{height} = {pixels} pixels, more than this server's "
            f"limit of {max_pixels}: downscale it before sending"
        )
    decoded_bytes = pixels * max(pixel_bytes, loaded.preprocessing.channels)
    if max_decoded_bytes is not None and decoded_bytes > max_decoded_bytes:
        raise PayloadTooLarge(
            f"image is {width}x{height} at {pixel_bytes} bytes per pixel: it decodes to "
            f"{decoded_bytes} bytes, more than this server's limit of {max_decoded_bytes} "
            "bytes: downscale it or send 8-bit RGB"
        )
    # NOTE: PIL opens file objects as well as paths; load_image converts modes as evaluate does.
    image = load_image(io.BytesIO(body), loaded.preprocessing.channels)  # type: ignore[arg-type]
    if image is None:
        raise WireError("body is not a readable image file (JPEG, PNG, ...)")
    pixels_chw = preprocess(image, loaded.preprocessing)  # (C, H, W) uint8
    return Decoded(pixels_chw, torch.ones(loaded.num_patches, dtype=torch.bool))


def _declared_image(body: bytes, max_pixels: int) -> tuple[int, int, int]:
    """(width, height, bytes per pixel) from an image file's header; no pixel is decoded.

    Pillow refuses images over its own decompression-bomb limit as it opens
    them (an error above twice ``Image.MAX_IMAGE_PIXELS``; a warning above it,
    an error where warnings are errors): those are too large, not malformed.
    """
    try:
        with Image.open(io.BytesIO(body)) as probe:  # lazy: reads the header only
            mode = ImageMode.getmode(probe.mode)
            width, height = probe.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PayloadTooLarge(
            f"image declares more pixels than Pillow's decompression-bomb limit "
            f"({Image.MAX_IMAGE_PIXELS}), more than this server's limit of {max_pixels} "
            "pixels: downscale it before sending"
        ) from None
    except Exception:
        raise WireError("body is not a readable image file (JPEG, PNG, ...)") from None
    return width, height, len(mode.bands) * int(mode.typestr[-1])


@torch.inference_mode()
def predict(loaded: LoadedModel, pixels: torch.Tensor, keep_mask: torch.Tensor) -> torch.Tensor:
    """One batched forward on the kept patches of each image.

    Args:
        pixels: (B, C, H, W) uint8.
        keep_mask: (B, N) bool; rows may keep different numbers of patches.

    Returns:
        (B, num_classes) float32 logits, on the CPU.
    """
    device = loaded.device
    images = loaded.normalise(pixels.to(device))
    return forward_subset(loaded, images, keep_mask.to(device)).float().cpu()


def predict_batch(loaded: LoadedModel, batch: Sequence[Decoded]) -> torch.Tensor:
    """Stack decoded requests and run :func:`predict` on them: (B, num_classes) logits.

    Requests may keep different numbers of patches; ``forward_subset`` groups
    them into length buckets itself.
    """
    pixels = torch.stack([d.pixels for d in batch])  # (B, C, H, W)
    keep_mask = torch.stack([d.keep_mask for d in batch])  # (B, N)
    return predict(loaded, pixels, keep_mask)


def encode_response(loaded: LoadedModel, logits: torch.Tensor, top_k: int = 5) -> dict[str, Any]:
    """One logits row (num_classes,) -> the JSON answer (label, class_name, top5)."""
    label = int(logits.argmax())  # the label evaluate would report
    probs = logits.double().softmax(-1)
    values, indices = probs.topk(min(top_k, probs.shape[0]))
    return {
        "label": label,
        "class_name": loaded.class_name(label),
        "top5": [
            {"label": int(i), "class_name": loaded.class_name(int(i)), "probability": float(p)}
            for p, i in zip(values.tolist(), indices.tolist(), strict=True)
        ],
    }
