"""Images in, uint8 model-size pixels out, with Pillow only (no torchvision).

The same pixels as :func:`collabvit.data.load_image` + :func:`collabvit.data.preprocess`
(DeiT evaluation): convert to the model's channels (alpha composited on white),
resize the shorter side to ``int(H / crop_pct)`` with the model's filter, the
longer side to ``int(short * long / short_before)`` (torchvision's rule), then
centre-crop H x W at ``round((size - crop) / 2)``, zero-padding first if the
image is smaller than the crop. torchvision resizes a PIL image with Pillow's
own ``Image.resize``, so the two give the same bytes; a test checks it on real
photos.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from .metadata import EdgeMetadata

__all__ = ["load_image", "pixels_from_array", "pixels_from_file", "preprocess"]

logger = logging.getLogger(__name__)

UInt8Array = npt.NDArray[np.uint8]

_FILTERS = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}


def _convert(im: Image.Image, channels: int) -> Image.Image:
    mode = "RGB" if channels == 3 else "L"
    # NOTE: a palette with transparency goes through RGBA first, as Pillow asks
    transparent_palette = im.mode == "P" and "transparency" in im.info
    if (im.mode in ("RGBA", "LA", "P") and mode == "RGB") or transparent_palette:
        im = im.convert("RGBA")
        base = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(base, im)
    return im.convert(mode)


def load_image(path: str | Path, channels: int) -> Image.Image | None:
    """Open an image as RGB (3 channels) or L (1); None (and a warning) if unreadable."""
    try:
        with Image.open(path) as im:
            im.load()
            return _convert(im, channels)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        logger.warning("skipping %s: not a readable image (%s)", path, type(exc).__name__)
        return None


def _resized_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the shorter side at ``short_side`` (torchvision's rounding)."""
    if width <= height:
        return short_side, int(short_side * height / width)
    return int(short_side * width / height), short_side


def _centre_crop(im: Image.Image, height: int, width: int) -> Image.Image:
    if width > im.width or height > im.height:  # zero padding, as torchvision's centre crop
        left = (width - im.width) // 2 if width > im.width else 0
        top = (height - im.height) // 2 if height > im.height else 0
        padded = Image.new(im.mode, (max(width, im.width), max(height, im.height)), 0)
        padded.paste(im, (left, top))
        im = padded
        if im.size == (width, height):
            return im
    top = round((im.height - height) / 2.0)  # torchvision's int(round(..))
    left = round((im.width - width) / 2.0)
    return im.crop((left, top, left + width, top + height))


def preprocess(image: Image.Image, meta: EdgeMetadata) -> UInt8Array:
    """Resize the shorter side to ``int(H / crop_pct)``, centre-crop H x W. -> (C, H, W) uint8."""
    _, h, w = meta.input_size
    out = image
    if not (meta.crop_pct >= 1.0 and image.size == (w, h)):
        size = _resized_size(image.width, image.height, meta.resize_to)
        if size != image.size:
            out = image.resize(size, _FILTERS.get(meta.interpolation, Image.Resampling.BICUBIC))
        out = _centre_crop(out, h, w)
    array = np.asarray(out, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return np.ascontiguousarray(array.transpose(2, 0, 1))  # (C, H, W)


def pixels_from_file(path: str | Path, meta: EdgeMetadata) -> UInt8Array | None:
    """One image file as the model's (C, H, W) uint8 pixels; None if unreadable."""
    image = load_image(path, meta.channels)
    return None if image is None else preprocess(image, meta)


def pixels_from_array(array: npt.NDArray[np.uint8], meta: EdgeMetadata) -> UInt8Array:
    """An in-memory (H, W) or (H, W, C) uint8 image as the model's (C, H, W) pixels."""
    image = Image.fromarray(array).convert("RGB" if meta.channels == 3 else "L")
    return preprocess(image, meta)
