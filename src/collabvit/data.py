"""Images in, uint8 model-size pixels out.

A data folder is either an ImageFolder (one sub-folder per class, classes
numbered in sorted order) or a flat folder with a labels CSV (``file,label``
columns, extra columns ignored). Unreadable or non-image files are skipped
with a warning and counted, never silently dropped; grey, CMYK, palette and
alpha images are converted to the model's channels.

Preprocessing (DeiT evaluation): resize the shorter side to
``floor(H / crop_pct)``, centre-crop ``H x W``. The uint8 result is what the
edge puts on the wire; each model normalises it with its own mean and std.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from .errors import DataError

__all__ = [
    "AUTHORS_CROP_PCT",
    "IMAGE_EXTENSIONS",
    "Batch",
    "Preprocessing",
    "Sample",
    "array_samples",
    "discover",
    "iter_batches",
    "load_image",
    "preprocess",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
}


AUTHORS_CROP_PCT = 0.875  # DeiT evaluation: resize 256, centre crop 224


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the model's input tensor.

    Resize the shorter side to ``floor(H / crop_pct)`` with ``interpolation``,
    centre-crop ``H x W``, scale to [0, 1], normalise with ``mean``/``std``.
    The uint8 pixels after the crop are what the edge puts on the wire.
    """

    input_size: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"
    crop_pct: float = AUTHORS_CROP_PCT

    @property
    def channels(self) -> int:
        return self.input_size[0]

    @property
    def resize_to(self) -> int:
        return int(self.input_size[1] / self.crop_pct)


@dataclass(frozen=True, eq=False)
class Sample:
    """One image of a dataset: its position, name (path relative to the data root), label.

    ``path`` points at the file; in-memory datasets (the shipped Fashion-MNIST
    test split) give ``array`` instead, (H, W) or (H, W, C) uint8.
    """

    index: int
    file: str
    path: Path | None
    label: int  # -1 when unknown
    array: np.ndarray | None = None


@dataclass
class Batch:
    samples: list[Sample]
    pixels: torch.Tensor  # (B, C, H, W) uint8


def _read_labels(labels_csv: Path, root: Path) -> list[tuple[str, int]]:
    try:
        with open(labels_csv, newline="") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not {"file", "label"} <= set(reader.fieldnames):
                raise DataError(
                    f"labels file {labels_csv} needs a header with 'file' and 'label' columns"
                )
            rows = []
            for line, row in enumerate(reader, start=2):
                try:
                    rows.append((row["file"], int(row["label"])))
                except (TypeError, ValueError):
                    raise DataError(
                        f"labels file {labels_csv} line {line}: label {row.get('label')!r} is "
                        "not an integer class index"
                    ) from None
    except OSError as exc:
        raise DataError(f"cannot read labels file {labels_csv}: {exc.strerror}") from None
    missing = [f for f, _ in rows if not (root / f).is_file()]
    if missing:
        raise DataError(
            f"labels file {labels_csv} names {len(missing)} file(s) missing from {root} "
            f"(first: {missing[0]}): fix the CSV or the --data folder"
        )
    return rows


def discover(
    data_dir: str | Path, labels_csv: str | Path | None = None, limit: int | None = None
) -> tuple[list[Sample], list[str] | None]:
    """List the images of a data folder, in a stable order.

    Returns:
        the samples and, for an ImageFolder, the class (sub-folder) names.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    class_names: list[str] | None = None
    if labels_csv is not None:
        entries = _read_labels(Path(labels_csv), root)
    else:
        subdirs = sorted(p for p in root.iterdir() if p.is_dir())
        if subdirs:
            class_names = [d.name for d in subdirs]
            entries = [
                (str(f.relative_to(root)), label)
                for label, d in enumerate(subdirs)
                for f in sorted(d.rglob("*"))
                if f.is_file() and not f.name.startswith(".")
            ]
        else:
            files = sorted(f for f in root.iterdir() if f.is_file() and not f.name.startswith("."))
            entries = [(f.name, -1) for f in files if f.suffix.lower() in IMAGE_EXTENSIONS]
            ignored = [f.name for f in files if f.suffix.lower() not in IMAGE_EXTENSIONS]
            if ignored:
                logger.warning(
                    "ignoring %d file(s) without an image extension in %s (first: %s)",
                    len(ignored),
                    root,
                    ignored[0],
                )
    if not entries:
        raise DataError(
            f"data folder {root} holds no images: use an ImageFolder (one sub-folder per class) "
            "or a flat folder of images with --labels CSV"
        )
    if limit is not None:
        entries = entries[:limit]
    samples = [Sample(i, f, root / f, label) for i, (f, label) in enumerate(entries)]
    return samples, class_names


def array_samples(images: np.ndarray, labels: np.ndarray, prefix: str = "") -> list[Sample]:
    """In-memory samples from uint8 images (N, H, W[, C]) and labels (N,)."""
    return [
        Sample(i, f"{prefix}{i:05d}", None, int(labels[i]), images[i]) for i in range(len(images))
    ]


def load_image(path: Path, channels: int) -> Image.Image | None:
    """Open an image and convert it to RGB (3 channels) or L (1); None if unreadable."""
    try:
        with Image.open(path) as im:
            im.load()
            mode = "RGB" if channels == 3 else "L"
            # NOTE: a palette with transparency goes through RGBA first, as Pillow
            # asks; no warning filter is touched (they are process-wide).
            transparent_palette = im.mode == "P" and "transparency" in im.info
            if (im.mode in ("RGBA", "LA", "P") and mode == "RGB") or transparent_palette:
                im = im.convert("RGBA")
                base = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(base, im)
            return im.convert(mode)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        logger.warning("skipping %s: not a readable image (%s)", path, type(exc).__name__)
        return None


_INTERPOLATION = {
    "bicubic": InterpolationMode.BICUBIC,
    "bilinear": InterpolationMode.BILINEAR,
    "nearest": InterpolationMode.NEAREST,
}


def preprocess(image: Image.Image, prep: Preprocessing) -> torch.Tensor:
    """Resize (shorter side to ``floor(H / crop_pct)``) and centre-crop. -> (C, H, W) uint8."""
    _, h, w = prep.input_size
    interp = _INTERPOLATION.get(prep.interpolation, InterpolationMode.BICUBIC)
    if prep.crop_pct >= 1.0 and image.size == (w, h):
        out = image
    else:
        out = TF.resize(image, prep.resize_to, interpolation=interp)
        out = TF.center_crop(out, [h, w])
    array = np.asarray(out, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1)  # (C, H, W)


def iter_batches(
    samples: Sequence[Sample],
    prep: Preprocessing,
    batch_size: int,
    skipped: list[Sample] | None = None,
) -> Iterator[Batch]:
    """Load, convert and preprocess images in batches, in dataset order.

    Unreadable files are skipped with a warning and appended to ``skipped``.
    """
    pending: list[tuple[Sample, torch.Tensor]] = []
    for sample in samples:
        if sample.array is not None:
            image: Image.Image | None = Image.fromarray(sample.array).convert(
                "RGB" if prep.channels == 3 else "L"
            )
        else:
            assert sample.path is not None
            image = load_image(sample.path, prep.channels)
        if image is None:
            if skipped is not None:
                skipped.append(sample)
            continue
        pending.append((sample, preprocess(image, prep)))
        if len(pending) == batch_size:
            yield Batch([s for s, _ in pending], torch.stack([p for _, p in pending]))
            pending = []
    if pending:
        yield Batch([s for s, _ in pending], torch.stack([p for _, p in pending]))
