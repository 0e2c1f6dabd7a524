"""Images in, uint8 model-size pixels out.

A data folder is either an ImageFolder (one sub-folder per class; synset,
numeric or ``--class-map`` folders mapped to the model's classes, see
:func:`collabvit.labels.folder_classes`) or a flat folder with a labels file
(our CSV, the devkit's ground-truth txt or Kaggle's CSV; :mod:`collabvit.labels`).
Unreadable or non-image files are skipped with a warning and counted, never
silently dropped; grey, CMYK, palette and alpha images are converted to the
model's channels.

Preprocessing (DeiT evaluation): resize the shorter side to
``floor(H / crop_pct)``, centre-crop ``H x W``. The uint8 result is what the
edge puts on the wire; each model normalises it with its own mean and std.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DataError
from .labels import folder_classes, read_labels

if TYPE_CHECKING:  # torch is imported where pixels become tensors: discovery needs none
    import torch

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
    "stratified_subset",
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


def _labelled_entries(
    labels_file: Path, root: Path, num_classes: int | None
) -> list[tuple[str, int]]:
    """The ``(file, label)`` entries of a labels file, checked against the data folder."""
    found = read_labels(labels_file, num_classes)
    if found.whole_split:  # devkit / Kaggle: stems of a whole split, keep those present
        present = {
            f.stem: f.name
            for f in sorted(root.iterdir())
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
        }
        entries = [(present[stem], label) for stem, label in found.entries if stem in present]
        if not entries:
            first = found.entries[0][0] if found.entries else "-"
            raise DataError(
                f"none of the {len(found.entries)} images of {found.format} labels file "
                f"{labels_file} is in {root} (first: {first}): is --data the right folder?"
            )
        if len(entries) < len(found.entries):
            logger.info(
                "%s labels file %s: %d of its %d images are in %s",
                found.format,
                labels_file,
                len(entries),
                len(found.entries),
                root,
            )
        return entries
    missing = [f for f, _ in found.entries if not (root / f).is_file()]
    if missing:
        raise DataError(
            f"labels file {labels_file} names {len(missing)} file(s) missing from {root} "
            f"(first: {missing[0]}): fix the CSV or the --data folder"
        )
    return found.entries


def _folder_entries(
    root: Path, num_classes: int | None, class_map: str | Path | None
) -> tuple[list[tuple[str, int]], list[str] | None]:
    """ImageFolder entries (class folders mapped by :func:`folder_classes`), or a flat folder's."""
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    if not subdirs:
        files = sorted(f for f in root.iterdir() if f.is_file() and not f.name.startswith("."))
        ignored = [f.name for f in files if f.suffix.lower() not in IMAGE_EXTENSIONS]
        if ignored:
            logger.warning(
                "ignoring %d file(s) without an image extension in %s (first: %s)",
                len(ignored),
                root,
                ignored[0],
            )
        return [(f.name, -1) for f in files if f.suffix.lower() in IMAGE_EXTENSIONS], None
    class_names = [d.name for d in subdirs]
    classes = folder_classes(class_names, num_classes, class_map)
    entries = [
        (str(f.relative_to(root)), label)
        for label, d in zip(classes, subdirs, strict=True)
        for f in sorted(d.rglob("*"))
        if f.is_file() and not f.name.startswith(".")
    ]
    return entries, class_names


def stratified_subset(
    entries: Sequence[tuple[str, int]], limit: int, seed: int
) -> list[tuple[str, int]]:
    """A seeded, class-stratified subset of ``limit`` entries, in their original order.

    Round-robin over the classes in a seeded order, each class's images in a
    seeded order: with ``limit >= classes`` every class is drawn from, and class
    counts differ by at most one (until a class runs out). Uses its own
    ``random.Random(seed)``, never the global RNG.
    """
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, (_, label) in enumerate(entries):
        by_class.setdefault(label, []).append(i)
    order = sorted(by_class)
    rng.shuffle(order)
    queues = []
    for label in order:
        queue = by_class[label]
        rng.shuffle(queue)
        queues.append(queue)
    picked: list[int] = []
    depth = 0
    while len(picked) < min(limit, len(entries)):
        for queue in queues:
            if depth < len(queue) and len(picked) < limit:
                picked.append(queue[depth])
        depth += 1
    return [entries[i] for i in sorted(picked)]


def discover(
    data_dir: str | Path,
    labels_csv: str | Path | None = None,
    limit: int | None = None,
    *,
    num_classes: int | None = None,
    class_map: str | Path | None = None,
    subset_seed: int | None = None,
) -> tuple[list[Sample], list[str] | None]:
    """List the images of a data folder, in a stable order.

    Args:
        data_dir: an ImageFolder (one sub-folder per class) or a flat folder.
        labels_csv: a labels file of any format :func:`collabvit.labels.read_labels` reads.
        limit: keep N images: the first N, or with ``subset_seed`` a seeded
            class-stratified subset (:func:`stratified_subset`).
        num_classes: the model's classes: labels must be among them, and ImageFolder
            classes are mapped by synset / number (:func:`collabvit.labels.folder_classes`).
            None (a caller that does not know the model): sorted folder position.
        class_map: a ``folder,class`` CSV for ImageFolder classes named otherwise.

    Returns:
        the samples and, for an ImageFolder, the class (sub-folder) names.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    if limit is not None and limit < 0:
        raise DataError(f"--limit must be at least 0, not {limit}")
    class_names: list[str] | None = None
    if labels_csv is not None:
        entries = _labelled_entries(Path(labels_csv), root, num_classes)
    else:
        entries, class_names = _folder_entries(root, num_classes, class_map)
    if not entries:
        raise DataError(
            f"data folder {root} holds no images: use an ImageFolder (one sub-folder per class) "
            "or a flat folder of images with --labels CSV"
        )
    if limit is not None:
        if subset_seed is None:
            entries = entries[:limit]
        else:
            entries = stratified_subset(entries, limit, subset_seed)
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


def preprocess(image: Image.Image, prep: Preprocessing) -> torch.Tensor:
    """Resize (shorter side to ``floor(H / crop_pct)``) and centre-crop. -> (C, H, W) uint8."""
    import torch
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    _, h, w = prep.input_size
    modes = {"bilinear": InterpolationMode.BILINEAR, "nearest": InterpolationMode.NEAREST}
    interp = modes.get(prep.interpolation, InterpolationMode.BICUBIC)
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
    import torch

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
