"""Class labels: the ImageNet-1k tables, the one labels-file parser, ImageFolder class mapping,
seeded class-stratified subsets.

Labels are right or loud: a label collabvit cannot tie to one of the model's
classes is a :class:`~collabvit.errors.DataError` naming the first bad line or
folder and what to do, never a silent renumbering.

A model with 1,000 classes is taken to be an ImageNet-1k head in the standard
order (class i is the i-th synset in sorted order, as in timm and torchvision).
The package ships two tables (``assets/imagenet/``, written by
``scripts/imagenet_tables.py``): that synset order, and the synset of each
ILSVRC2012 devkit id (the ``ILSVRC2012_ID`` order of the devkit's ``meta.mat``,
which is not the synset order).

Labels files, told apart by their content:

- a CSV with a ``file`` column and a ``label`` (class index or synset) and/or
  ``synset`` column; when both hold a value for an ImageNet-1k model, they must agree;
- the devkit's ``ILSVRC2012_validation_ground_truth.txt``: one 1-based devkit id
  per line, line n for ``ILSVRC2012_val_{n:08d}.JPEG``;
- Kaggle's ``LOC_val_solution.csv``: ``ImageId,PredictionString``, the first
  token of the string is the synset.

The last two list a whole split: files they name that the data folder does not
hold are skipped (a subset of the 50,000 images is fine). A CSV names exactly
the images to use: a file it names that is missing is an error. An image listed
twice is used once: a repeated row is dropped with a warning, a second row with
another class is an error.
"""

from __future__ import annotations

import csv
import functools
import logging
import posixpath
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .errors import DataError

__all__ = [
    "IMAGENET_CLASSES",
    "LabelFile",
    "class_index",
    "devkit_synsets",
    "folder_classes",
    "imagenet_synsets",
    "read_class_map",
    "read_labels",
    "stratified_subset",
]

logger = logging.getLogger(__name__)

IMAGENET_CLASSES = 1000
SYNSET = re.compile(r"n\d{8}")
NUMBER = re.compile(r"\d+")
FORMATS = (
    "a CSV with 'file' and 'label' (class index or synset) or 'synset' columns, "
    "the devkit's ILSVRC2012_validation_ground_truth.txt, or Kaggle's LOC_val_solution.csv"
)


def _table(name: str) -> tuple[str, ...]:
    path = resources.files("collabvit") / "assets" / "imagenet" / name
    return tuple(line.strip() for line in path.read_text().splitlines() if line.strip())


@functools.cache
def imagenet_synsets() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k synsets in class-index order (entry i is class i)."""
    return _table("synsets.txt")


@functools.cache
def devkit_synsets() -> tuple[str, ...]:
    """The synset of each ILSVRC2012 devkit id: entry k - 1 is devkit id k."""
    return _table("devkit_synsets.txt")


@functools.cache
def _synset_index() -> dict[str, int]:
    return {s: i for i, s in enumerate(imagenet_synsets())}


def _need_imagenet(num_classes: int | None, what: str) -> None:
    if num_classes is not None and num_classes != IMAGENET_CLASSES:
        raise DataError(
            f"{what} name ImageNet-1k classes but the model has {num_classes} classes: "
            "give class indices (or --class-map FILE) instead"
        )


def class_index(value: str, num_classes: int | None, where: str) -> int:
    """A class index from ``value``: an integer, or an ImageNet-1k synset (``n01440764``).

    Args:
        value: the text of a label.
        num_classes: the model's classes (indices must be below); None: not checked.
        where: what the value is, for the error message ("labels file X line 3").
    """
    value = value.strip()
    if re.fullmatch(r"-?\d+", value):
        index = int(value)
        if num_classes is not None and not 0 <= index < num_classes:
            raise DataError(
                f"{where}: class {index} is not one of the model's classes 0..{num_classes - 1}"
            )
        return index
    if SYNSET.fullmatch(value):
        _need_imagenet(num_classes, f"{where}: synset labels")
        if value not in _synset_index():
            raise DataError(f"{where}: {value} is not one of the 1,000 ImageNet-1k synsets")
        return _synset_index()[value]
    raise DataError(f"{where}: label {value!r} is neither a class index nor a synset")


@dataclass(frozen=True)
class LabelFile:
    """What a labels file says: ``(name, class index)`` per image, in the file's order.

    ``whole_split``: the file lists a whole split (devkit, Kaggle); names are file
    stems (no extension) and images the data folder lacks are skipped. Otherwise
    names are paths relative to the data folder and every one must exist.
    """

    format: str  # "csv", "devkit" or "kaggle"
    entries: list[tuple[str, int]]
    whole_split: bool = False


def _why(exc: OSError | UnicodeDecodeError) -> str:
    if isinstance(exc, UnicodeDecodeError):  # Excel's "Unicode text" is UTF-16
        return f"it is not UTF-8 text ({exc.reason} at byte {exc.start}): save it as CSV UTF-8"
    return exc.strerror or str(exc)


def _once(path: Path, rows: list[tuple[str, int, int]]) -> list[tuple[str, int]]:
    """``(name, index)`` of ``(name, index, line)`` rows, each image once.

    A row repeating an image with the same class is dropped (one warning for all);
    with another class it is an error: which of the two is right is not ours to guess.
    """
    first: dict[str, tuple[int, int]] = {}
    entries, repeats = [], []
    for name, index, line in rows:
        key = posixpath.normpath(name)
        if key in first:
            if first[key][0] != index:
                raise DataError(
                    f"labels file {path} line {line}: {name} is listed again with class {index} "
                    f"(line {first[key][1]} says {first[key][0]}): keep one of the rows"
                )
            repeats.append(line)
            continue
        first[key] = (index, line)
        entries.append((name, index))
    if repeats:
        logger.warning(
            "labels file %s: %d repeated row(s) dropped (first: line %d), each image is used once",
            path,
            len(repeats),
            repeats[0],
        )
    return entries


def read_labels(path: str | Path, num_classes: int | None = None) -> LabelFile:
    """Read any labels file collabvit knows (see the module docstring), detected from its content.

    Raises:
        DataError: unreadable file, unknown format, or a label that is not one of
            the model's classes (naming the line).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read labels file {path}: {_why(exc)}") from None
    lines = text.splitlines()
    first = next((line.strip() for line in lines if line.strip()), "")
    if NUMBER.fullmatch(first):
        return _read_devkit(path, lines, num_classes)
    reader = csv.DictReader(lines, skipinitialspace=True)  # "file, label" is file,label
    fields = set(reader.fieldnames or ())
    if {"ImageId", "PredictionString"} <= fields:
        return _read_kaggle(path, reader, num_classes)
    if "file" in fields and fields & {"label", "synset"}:
        return _read_csv(path, reader, num_classes)
    raise DataError(f"labels file {path} needs a header with 'file' and 'label' columns: {FORMATS}")


def _read_devkit(path: Path, lines: list[str], num_classes: int | None) -> LabelFile:
    _need_imagenet(num_classes, f"devkit labels file {path}")
    synsets = devkit_synsets()
    index = _synset_index()
    entries = []
    for n, line in enumerate(lines, start=1):
        value = line.strip()
        if not value:
            continue
        if not NUMBER.fullmatch(value) or not 1 <= int(value) <= len(synsets):
            raise DataError(
                f"devkit labels file {path} line {n}: {value!r} is not a devkit id "
                f"1..{len(synsets)}"
            )
        entries.append((f"ILSVRC2012_val_{n:08d}", index[synsets[int(value) - 1]]))
    return LabelFile("devkit", entries, whole_split=True)


def _read_kaggle(path: Path, reader: csv.DictReader[str], num_classes: int | None) -> LabelFile:
    rows: list[tuple[str, int, int]] = []
    for line, row in enumerate(reader, start=2):
        tokens = (row["PredictionString"] or "").split()
        where = f"labels file {path} line {line}"
        if not tokens or not row["ImageId"]:
            raise DataError(f"{where}: needs an ImageId and a PredictionString")
        if not SYNSET.fullmatch(tokens[0]):
            raise DataError(f"{where}: PredictionString should start with a synset")
        rows.append((row["ImageId"].strip(), class_index(tokens[0], num_classes, where), line))
    return LabelFile("kaggle", _once(path, rows), whole_split=True)


def _read_csv(path: Path, reader: csv.DictReader[str], num_classes: int | None) -> LabelFile:
    check_synset = num_classes == IMAGENET_CLASSES
    rows: list[tuple[str, int, int]] = []
    for line, row in enumerate(reader, start=2):
        where = f"labels file {path} line {line}"
        label, synset = (row.get("label") or "").strip(), (row.get("synset") or "").strip()
        if not row.get("file"):
            raise DataError(f"{where}: no file name")
        if not label and not synset:
            raise DataError(f"{where}: no label")
        index = class_index(label or synset, num_classes, where)
        if label and synset and check_synset and SYNSET.fullmatch(synset):
            other = class_index(synset, num_classes, where)
            if other != index:
                raise DataError(
                    f"{where}: label {label} is {imagenet_synsets()[index]} but the synset "
                    f"column says {synset} (class {other}): fix one of them"
                )
        rows.append((row["file"], index, line))
    return LabelFile("csv", _once(path, rows))


def read_class_map(path: str | Path, num_classes: int | None = None) -> dict[str, int]:
    """A ``folder,class`` CSV (header optional; class: an index or a synset) -> folder -> index."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read class map {path}: {_why(exc)}") from None
    mapping: dict[str, int] = {}
    for line, row in enumerate(rows, start=1):
        cells = [c.strip() for c in row]
        if not any(cells) or cells[0].startswith("#"):
            continue
        where = f"class map {path} line {line}"
        if len(cells) != 2:
            raise DataError(f"{where}: needs two columns, folder,class")
        folder, value = cells
        if not mapping and line == 1 and not (NUMBER.fullmatch(value) or SYNSET.fullmatch(value)):
            continue  # a header row
        if folder in mapping:
            raise DataError(f"{where}: folder {folder!r} is listed twice")
        mapping[folder] = class_index(value, num_classes, where)
    if not mapping:
        raise DataError(f"class map {path} lists no folder: write lines folder,class")
    return mapping


def folder_classes(
    folders: Sequence[str],
    num_classes: int | None = None,
    class_map: str | Path | None = None,
) -> list[int]:
    """The class index of each ImageFolder class folder, decided from the names and the model.

    - ``class_map`` given: its ``folder,class`` lines, and every folder must be in it;
    - ``num_classes`` None (caller does not know the model): sorted position, as before;
    - synset folders (``n01440764``): the ImageNet-1k index of the synset;
    - numeric folders (ImageNetV2's ``0``..``999``): the number;
    - other names: sorted position, with a warning, only when there are exactly
      ``num_classes`` folders (what torchvision's ImageFolder gives a model trained
      on the folder); any other count is an error.

    Raises:
        DataError: one line naming the first folder that cannot be mapped, and what to do.
    """
    if class_map is not None:
        mapping = read_class_map(class_map, num_classes)
        absent = [f for f in folders if f not in mapping]
        if absent:
            raise DataError(
                f"class folder {absent[0]!r} is not in class map {class_map} "
                f"({len(absent)} folder(s) missing): add a line {absent[0]},CLASS"
            )
        return [mapping[f] for f in folders]
    if num_classes is None:
        return list(range(len(folders)))
    for kind, pattern in (("synset", SYNSET), ("number", NUMBER)):
        named = [f for f in folders if pattern.fullmatch(f)]
        if 2 * len(named) > len(folders) and len(named) < len(folders):
            odd = next(f for f in folders if not pattern.fullmatch(f))
            raise DataError(
                f"class folder {odd!r} is not a {kind} like the other {len(named)}: "
                "rename or remove it, or give --class-map FILE (lines folder,class)"
            )
    if all(SYNSET.fullmatch(f) for f in folders):
        _need_imagenet(num_classes, f"synset class folders (first: {folders[0]!r})")
        return [class_index(f, num_classes, f"class folder {f!r}") for f in folders]
    if all(NUMBER.fullmatch(f) for f in folders):
        return [class_index(f, num_classes, f"class folder {f!r}") for f in folders]
    if len(folders) != num_classes:
        raise DataError(
            f"{len(folders)} class folders (first: {folders[0]!r}) are named neither by synset "
            f"nor by class number, and the model has {num_classes} classes: give --class-map "
            "FILE (lines folder,class)"
        )
    logger.warning(
        "class folders are not synsets or class numbers: numbered 0..%d in sorted order "
        "(torchvision's ImageFolder order); give --class-map FILE if the model was trained "
        "with another order",
        num_classes - 1,
    )
    return list(range(len(folders)))


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
