"""Fashion-MNIST: reading the idx files, and the test split shipped with collabvit.

Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017; MIT licence, notice in
``assets/fashion-mnist/LICENSE``) is 70,000 28x28 grey images of 10 clothing
classes. The idx files come from Debian's ``dataset-fashion-mnist`` package
(``/usr/share/datasets/fashion-mnist``), any folder holding the four files
(gzipped or not), or torchvision's downloader when online. The 10,000-image
test split ships inside the package so that ``collabvit demo`` runs offline.
"""

from __future__ import annotations

import gzip
import logging
import struct
from importlib import resources
from pathlib import Path

import numpy as np

from .errors import DataError

__all__ = [
    "CLASS_NAMES",
    "DEBIAN_DIR",
    "load_split",
    "read_idx",
    "shipped_samples",
    "shipped_test_split",
]

logger = logging.getLogger(__name__)

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

CLASS_NAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path) -> np.ndarray:
    """Read one idx file (gzipped when its name ends in ``.gz``) into an array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read idx file {path}: {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte idx file")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(">" + "I" * ndim, data[4:header])
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise DataError(f"{path} is truncated: {len(data) - header} bytes for shape {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    # torchvision's layout: ROOT/FashionMNIST/raw/
    for name in (stem, stem + ".gz"):
        candidate = folder / "FashionMNIST" / "raw" / name
        if candidate.is_file():
            return candidate
    return None


def load_split(split: str, root: str | Path | None = None, download: bool = False):
    """Return ``(images, labels)`` of one split as uint8 arrays (N, 28, 28) and (N,).

    Args:
        split: ``"train"`` or ``"test"``.
        root: a folder holding the idx files; default: the Debian package's folder.
        download: when the files are not found, fetch them with torchvision
            (needs internet) into ``root``.
    """
    if split not in _FILES:
        raise DataError(f"unknown Fashion-MNIST split {split!r}: use 'train' or 'test'")
    folder = Path(root) if root is not None else DEBIAN_DIR
    img_stem, lbl_stem = _FILES[split]
    img_path, lbl_path = _find(folder, img_stem), _find(folder, lbl_stem)
    if (img_path is None or lbl_path is None) and download:
        from torchvision.datasets import FashionMNIST

        try:
            FashionMNIST(str(folder), train=split == "train", download=True)
        except Exception as exc:  # network failure of any kind
            raise DataError(f"could not download Fashion-MNIST into {folder}: {exc}") from None
        img_path, lbl_path = _find(folder, img_stem), _find(folder, lbl_stem)
    if img_path is None or lbl_path is None:
        raise DataError(
            f"Fashion-MNIST {split} files not found in {folder}: install Debian's "
            "dataset-fashion-mnist (apt-get install dataset-fashion-mnist), pass "
            "--data-dir with the four idx files, or add --download when online"
        )
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(
            f"Fashion-MNIST files in {folder} disagree: {images.shape} vs {labels.shape}"
        )
    return images, labels


def shipped_samples(limit: int | None = None) -> list:
    """The shipped test split as :class:`collabvit.data.Sample` objects (names ``t10k/00042``)."""
    from .data import array_samples

    images, labels = shipped_test_split()
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return array_samples(images, labels, prefix="t10k/")


def shipped_test_split() -> tuple[np.ndarray, np.ndarray]:
    """The 10,000-image Fashion-MNIST test split shipped inside the package."""
    base = resources.files("collabvit") / "assets" / "fashion-mnist"
    with resources.as_file(base) as folder:
        return load_split("test", Path(folder))
