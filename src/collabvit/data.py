"""Images in, uint8 model-size pixels out.

A data folder is either an ImageFolder (one sub-folder per class; synset,
numeric or ``--class-map`` folders mapped to the model's classes, see
:func:`collabvit.labels.folder_classes`) or a flat folder with a labels file
(our CSV, the devkit's ground-truth txt or Kaggle's CSV; :mod:`collabvit.labels`).
Images at the top level beside sub-folders are neither, and an error (say which
with ``--labels``). Every image under the folder is a sample or a
:class:`Skipped` with its reason (not in the labels file, hidden, not an image
file), counted in one warning; unreadable files are skipped and counted when
loaded. Grey, CMYK, palette and alpha images are converted to the model's channels.

Preprocessing (DeiT evaluation): resize the shorter side to
``floor(H / crop_pct)``, centre-crop ``H x W``. The uint8 result is what the
edge puts on the wire; each model normalises it with its own mean and std.
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DataError
from .labels import folder_classes, read_labels, stratified_subset

if TYPE_CHECKING:  # torch is imported where pixels become tensors: discovery needs none
    import torch

__all__ = [
    "AUTHORS_CROP_PCT",
    "IMAGE_EXTENSIONS",
    "Batch",
    "Preprocessing",
    "Sample",
    "Skipped",
    "array_samples",
    "discover",
    "iter_batches",
    "load_image",
    "preprocess",
    "stratified_subset",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}
IMAGE_EXTENSIONS |= {".tif", ".tiff", ".ppm", ".pgm"}


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


@dataclass(frozen=True)
class Skipped:
    """A file under the data folder that is no sample, and why (one line)."""

    file: str  # relative to the data root
    reason: str


@dataclass
class Batch:
    samples: list[Sample]
    pixels: torch.Tensor  # (B, C, H, W) uint8


def _walk(root: Path) -> list[PurePath]:
    """Every file under ``root``, relative to it, sorted folder by folder; symlinked
    folders (class folders linked from elsewhere) are followed, each real one once."""
    seen: set[tuple[int, int]] = set()
    files: list[PurePath] = []
    for top, dirs, names in os.walk(root, onerror=_raise, followlinks=True):
        st = os.stat(top)
        if (st.st_dev, st.st_ino) in seen:  # a link back up the tree
            dirs.clear()
            continue
        seen.add((st.st_dev, st.st_ino))
        rel = PurePath(top).relative_to(root)
        files.extend(rel / n for n in names if os.path.isfile(os.path.join(top, n)))
    return sorted(files, key=lambda f: f.parts)


def _raise(exc: OSError) -> None:
    raise exc


def _hidden(path: PurePath) -> bool:
    return any(part.startswith(".") for part in path.parts)


def _is_image(path: PurePath) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _labelled_entries(
    labels_file: Path, root: Path, files: list[PurePath], num_classes: int | None
) -> tuple[list[tuple[str, int]], str]:
    """The ``(file, label)`` entries of a labels file, checked against the data folder,
    and the reason an image it does not name is skipped."""
    found = read_labels(labels_file, num_classes)
    unlisted = f"not in {found.format} labels file {labels_file.name}"
    if found.whole_split:  # devkit / Kaggle: stems of a whole split, keep those present
        present = {
            f.stem: f.name for f in files if len(f.parts) == 1 and not _hidden(f) and _is_image(f)
        }
        entries = [(present[stem], label) for stem, label in found.entries if stem in present]
        if not entries:
            first = found.entries[0][0] if found.entries else "-"
            raise DataError(
                f"none of the {len(found.entries)} images of {found.format} labels file "
                f"{labels_file} is in {root} (first: {first}): is --data the right folder?"
            )
        if len(entries) < len(found.entries):
            kept = f"{len(entries)} of its {len(found.entries)} images"
            logger.info("%s labels file %s: %s are in %s", found.format, labels_file, kept, root)
        return entries, unlisted
    missing = [f for f, _ in found.entries if not (root / f).is_file()]
    if missing:
        raise DataError(
            f"labels file {labels_file} names {len(missing)} file(s) missing from {root} "
            f"(first: {missing[0]}): fix the CSV or the --data folder"
        )
    return found.entries, unlisted


def _folder_entries(
    root: Path,
    files: list[PurePath],
    num_classes: int | None,
    class_map: str | Path | None,
    skipped: list[Skipped],
) -> tuple[list[tuple[str, int]], list[str] | None]:
    """ImageFolder entries (class folders mapped by :func:`folder_classes`), or a flat folder's.

    Hidden sub-folders (``.ipynb_checkpoints``) are no classes, nor are sub-folders
    when none holds an image; images at the top level beside class folders are an
    error, not silently left out.
    """
    subdirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    shown = [f for f in files if not _hidden(f)]
    loose = [f.name for f in shown if len(f.parts) == 1 and _is_image(f)]
    if loose and not any(len(f.parts) > 1 and _is_image(f) for f in shown):
        subdirs = []  # sub-folders without images (an empty out/) lose no image: flat
    if not subdirs:
        skipped.extend(Skipped(str(f), "not an image file") for f in shown if not _is_image(f))
        return [(name, -1) for name in loose], None
    if loose:
        raise DataError(
            f"data folder {root} holds {len(loose)} image(s) at its top level (first: "
            f"{loose[0]}) and {len(subdirs)} sub-folder(s) (first: {subdirs[0]!r}): an "
            "ImageFolder keeps every image in a class sub-folder, a flat folder has none; "
            "move the images or the sub-folders, or give --labels FILE naming the images to use"
        )
    label_of = dict(zip(subdirs, folder_classes(subdirs, num_classes, class_map), strict=True))
    entries = [
        (str(f), label_of[f.parts[0]])
        for f in files
        if len(f.parts) > 1 and f.parts[0] in label_of and not _hidden(f)
    ]
    return entries, subdirs


def _report(root: Path, skipped: list[Skipped], used: int) -> None:
    """One warning for the files under ``root`` that are no sample (each of them with -v)."""
    n, shown = len(skipped), ", ".join(f"{s.file} ({s.reason})" for s in skipped[:3])
    if n:
        more = f" and {n - 3} more (-v lists them)" if n > 3 else ""
        logger.warning("skipping %d of %d file(s) in %s: %s%s", n, n + used, root, shown, more)
    for s in skipped[3:]:
        logger.debug("skipping %s: %s", s.file, s.reason)


def discover(
    data_dir: str | Path,
    labels_csv: str | Path | None = None,
    limit: int | None = None,
    *,
    num_classes: int | None = None,
    class_map: str | Path | None = None,
    subset_seed: int | None = None,
    skipped: list[Skipped] | None = None,
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
        skipped: if given, gets a :class:`Skipped` for each file under the folder that
            is no sample (before ``limit``), with its reason; they are also logged.

    Returns:
        the samples and, for an ImageFolder, the class (sub-folder) names.

    Raises:
        DataError: one line: no such folder, a file, ``limit`` below 1, images both
            at the top level and in sub-folders, a bad labels file, no image.
    """
    root = Path(data_dir)
    if root.is_file():
        raise DataError(
            f"--data {root} is a file, not a folder: give the folder that holds the images "
            "(a labels file goes to --labels)"
        )
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    if limit is not None and limit < 1:
        raise DataError(f"--limit must be >= 1, not {limit}")
    try:
        files = _walk(root)
    except OSError as exc:
        where = exc.filename or root
        raise DataError(f"cannot list data folder {where}: {exc.strerror or exc}") from None
    class_names: list[str] | None = None
    left_out: list[Skipped] = []
    unlisted = ""  # why an image a labels file does not name is no sample
    if labels_csv is not None:
        entries, unlisted = _labelled_entries(Path(labels_csv), root, files, num_classes)
    else:
        entries, class_names = _folder_entries(root, files, num_classes, class_map, left_out)
    used = {posixpath.normpath(f) for f, _ in entries}
    left_out += [
        Skipped(str(f), "hidden" if _hidden(f) else unlisted)
        for f in files
        if _is_image(f) and str(f) not in used and (unlisted or _hidden(f))
    ]
    left_out.sort(key=lambda s: PurePath(s.file).parts)
    _report(root, left_out, len(used))
    if skipped is not None:
        skipped.extend(left_out)
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
