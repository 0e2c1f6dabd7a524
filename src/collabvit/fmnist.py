"""Fashion-MNIST: reading the idx files, and the test split shipped with collabvit.

Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017; MIT licence, notice in
``assets/fashion-mnist/LICENSE``) is 70,000 28x28 grey images of 10 clothing
classes. The idx files come from Debian's ``dataset-fashion-mnist`` package
(``/usr/share/datasets/fashion-mnist``), any folder holding the four files
(gzipped or not), or torchvision's downloader when online. The 10,000-image
test split ships inside the package so that ``collabvit demo`` runs offline.

Cluttered translated Fashion-MNIST (after the Cluttered Translated MNIST of
Mnih et al., 2014, "Recurrent Models of Visual Attention", and Jaderberg et al.,
2015, "Spatial Transformer Networks") is generated on the fly from the same idx
data, seeded per image: a garment pasted at a uniformly random position on a
larger black canvas, strewn with fragments (random crops) of other garments of
the same split. No image file of it is stored; :func:`render_cluttered` rebuilds
any image from ``(seed, index)``, with the object's box.
"""

from __future__ import annotations

import gzip
import logging
import struct
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from .errors import DataError

__all__ = [
    "CLASS_NAMES",
    "DEBIAN_DIR",
    "Clutter",
    "Cluttered",
    "builtin_image",
    "cluttered_samples",
    "cluttered_test_split",
    "load_split",
    "named_samples",
    "read_idx",
    "render_cluttered",
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


@dataclass(frozen=True)
class Clutter:
    """How a cluttered canvas is made (defaults: 56x56, six 10x10 fragments)."""

    canvas: int = 56
    distractors: int = 6
    fragment: int = 10
    # a fragment may lie over at most this share of its area inside the object's box
    max_overlap: float = 0.2
    tries: int = 16  # placements drawn per fragment; none fitting -> the fragment is left out

    def __post_init__(self) -> None:
        if self.canvas < 28 or not 1 <= self.fragment <= 28 or self.distractors < 0:
            raise DataError(
                f"cluttered canvas {self.canvas} must be >= 28, fragment {self.fragment} in "
                f"1..28 and distractors {self.distractors} >= 0"
            )
        if not 0.0 <= self.max_overlap < 1.0 or self.tries < 1:
            raise DataError(f"max_overlap {self.max_overlap} must be in [0, 1), tries >= 1")


@dataclass(frozen=True)
class Cluttered:
    """Rendered cluttered images and where everything went.

    Boxes are ``(x0, y0, x1, y1)`` in canvas pixels, ``x1``/``y1`` exclusive.
    ``boxes`` is the tight box of the object's non-zero pixels, ``offsets`` the
    ``(y, x)`` top-left corner of its 28x28 paste, ``sources`` its index in the
    split; ``fragment_boxes`` (N, K, 4) is -1 where a fragment was left out.
    """

    images: np.ndarray  # (N, canvas, canvas) uint8
    labels: np.ndarray  # (N,)
    boxes: np.ndarray  # (N, 4)
    offsets: np.ndarray  # (N, 2)
    sources: np.ndarray  # (N,)
    fragment_boxes: np.ndarray  # (N, K, 4)

    def object_mask(self, i: int, split_images: np.ndarray) -> np.ndarray:
        """(canvas, canvas) bool: the pixels of image ``i``'s garment (its non-zero pixels)."""
        canvas = self.images.shape[-1]
        mask = np.zeros((canvas, canvas), dtype=bool)
        (y, x), src = self.offsets[i], self.sources[i]
        mask[y : y + 28, x : x + 28] = split_images[src] > 0
        return mask

    def object_masks(self, split_images: np.ndarray) -> np.ndarray:
        """(N, canvas, canvas) bool: :meth:`object_mask` of every image."""
        return np.stack([self.object_mask(i, split_images) for i in range(len(self.images))])


def _tight_boxes(images: np.ndarray) -> np.ndarray:
    """(N, 4) ``(x0, y0, x1, y1)`` of each 28x28 image's non-zero pixels (whole image if blank)."""
    rows = np.asarray((images > 0).any(axis=2))
    cols = np.asarray((images > 0).any(axis=1))
    out = np.tile(np.array([0, 0, 28, 28]), (len(images), 1))
    for k in range(len(images)):
        if rows[k].any():
            ys, xs = np.flatnonzero(rows[k]), np.flatnonzero(cols[k])
            out[k] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return out


def _overlap(box: np.ndarray, x: np.ndarray, y: np.ndarray, f: int) -> np.ndarray:
    """Area of each ``f x f`` square at ``(x, y)`` inside ``box``."""
    w = np.clip(np.minimum(x + f, box[2]) - np.maximum(x, box[0]), 0, None)
    h = np.clip(np.minimum(y + f, box[3]) - np.maximum(y, box[1]), 0, None)
    return w * h


def render_cluttered(
    images: np.ndarray,
    labels: np.ndarray,
    indices: np.ndarray | list[int],
    seed: int,
    clutter: Clutter = Clutter(),
    tight: np.ndarray | None = None,
) -> Cluttered:
    """Cluttered canvases of ``images[indices]`` (28x28 uint8), each seeded by ``(seed, index)``.

    Image ``i`` depends only on ``seed``, ``i``, ``clutter`` and the split, never on
    which other indices are rendered with it. Fragments come from other images of
    the split and are composited by maximum, so no object pixel is ever darkened.
    ``tight``: the split's :func:`_tight_boxes`, to reuse across calls.
    """
    if seed < 0:
        raise DataError(f"cluttered seed must be >= 0, not {seed}")
    idx = np.asarray(indices, dtype=np.int64)
    n, c, f, k = len(images), clutter.canvas, clutter.fragment, clutter.distractors
    tight = _tight_boxes(images) if tight is None else tight
    out = np.zeros((len(idx), c, c), dtype=np.uint8)
    boxes = np.zeros((len(idx), 4), dtype=np.int64)
    offsets = np.zeros((len(idx), 2), dtype=np.int64)
    frags = np.full((len(idx), k, 4), -1, dtype=np.int64)
    for j, i in enumerate(idx.tolist()):
        rng = np.random.default_rng((seed, i))
        oy, ox = rng.integers(0, c - 27, size=2)
        src = rng.integers(0, max(1, n - 1), size=k)
        src = src + (src >= i) if n > 1 else src  # never the object itself
        crop = rng.integers(0, 29 - f, size=(k, 2))
        cand = rng.integers(0, c - f + 1, size=(k, clutter.tries, 2))
        box = tight[i] + np.array([ox, oy, ox, oy])
        canvas = out[j]
        canvas[oy : oy + 28, ox : ox + 28] = images[i]
        for d in range(k):
            fits = _overlap(box, cand[d, :, 1], cand[d, :, 0], f) <= clutter.max_overlap * f * f
            if not fits.any():
                continue
            y, x = cand[d, int(np.argmax(fits))]
            cy, cx = crop[d]
            piece = images[src[d], cy : cy + f, cx : cx + f]
            np.maximum(canvas[y : y + f, x : x + f], piece, out=canvas[y : y + f, x : x + f])
            frags[j, d] = (x, y, x + f, y + f)
        boxes[j], offsets[j] = box, (oy, ox)
    return Cluttered(out, np.asarray(labels)[idx], boxes, offsets, idx, frags)


def cluttered_test_split(
    seed: int = 0, limit: int | None = None, clutter: Clutter = Clutter()
) -> Cluttered:
    """The cluttered test set: the shipped t10k split on canvases seeded by ``seed``."""
    images, labels = shipped_test_split()
    count = len(images) if limit is None else min(limit, len(images))
    return render_cluttered(images, labels, np.arange(count), seed, clutter)


def named_samples(name: str, limit: int | None = None) -> list | None:
    """Samples of a built-in data name, or None when ``name`` is not one (or is a folder).

    ``fmnist``: the shipped test split; ``cfmnist`` or ``cfmnist:SEED``: its
    cluttered canvases (seed 0 by default). Names are ``t10k/00042`` /
    ``cfmnist-SEED/00042``.
    """
    base, _, seed_text = name.partition(":")
    if Path(name).exists() or base not in ("fmnist", "cfmnist"):
        return None
    if base == "fmnist" and not seed_text:
        return shipped_samples(limit)
    if base == "fmnist" or (not seed_text.isdigit() and seed_text):
        raise DataError(f"--data {name}: use fmnist, cfmnist or cfmnist:SEED (SEED >= 0)")
    seed = int(seed_text or 0)
    return cluttered_samples(cluttered_test_split(seed, limit), seed)


def cluttered_samples(data: Cluttered, seed: int) -> list:
    """:func:`collabvit.data.array_samples` of cluttered canvases, named ``cfmnist-SEED/00042``."""
    from .data import array_samples

    return array_samples(data.images, data.labels, prefix=f"cfmnist-{seed}/")


def builtin_image(name: str) -> tuple[np.ndarray, int, tuple[int, int, int, int] | None] | None:
    """A shipped test image by the name :func:`named_samples` gives it, or None if not one.

    ``t10k/00042``: (28x28 pixels, label, None); ``cfmnist-SEED/00042``: (the
    canvas, label, the garment's box ``(x0, y0, x1, y1)``).
    """
    folder, _, number = name.partition("/")
    if not number.isdigit() or not (folder == "t10k" or folder.startswith("cfmnist-")):
        return None
    seed_text = folder.removeprefix("cfmnist-")
    if folder != "t10k" and not seed_text.isdigit():
        return None
    images, labels = shipped_test_split()
    i = int(number)
    if i >= len(images):
        raise DataError(
            f"{name}: the test split has {len(images):,} images (00000-{len(images) - 1})"
        )
    if folder == "t10k":
        return images[i], int(labels[i]), None
    one = render_cluttered(images, labels, [i], int(seed_text))
    x0, y0, x1, y1 = (int(v) for v in one.boxes[0])
    return one.images[0], int(one.labels[0]), (x0, y0, x1, y1)
