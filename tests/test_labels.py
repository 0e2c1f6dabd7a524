"""Tests of collabvit.labels and discover's class mapping, label files and subsets.

Every folder and labels file here is made in the test from the 1,300 real
ImageNet validation photos (symlinks into tmp_path), so the "true" label of each
photo is the one in shared/data/imagenet-val-1300/labels.csv.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import Counter
from pathlib import Path

import pytest

from collabvit.cli import main
from collabvit.data import discover, stratified_subset
from collabvit.errors import DataError
from collabvit.labels import (
    devkit_synsets,
    folder_classes,
    imagenet_synsets,
    read_class_map,
    read_labels,
)


@pytest.fixture(scope="module")
def truth(imagenet_dir: Path) -> list[dict[str, str]]:
    """labels.csv rows: file, label (ImageNet-1k index), synset."""
    with open(imagenet_dir / "labels.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _image_folder(
    imagenet_dir: Path, rows: list[dict[str, str]], root: Path, folder_of: dict[str, str]
) -> dict[str, int]:
    """Symlink the photos whose label is in ``folder_of`` into root/FOLDER/; -> file -> label."""
    expected = {}
    for row in rows:
        folder = folder_of.get(row["label"])
        if folder is None:
            continue
        (root / folder).mkdir(parents=True, exist_ok=True)
        os.symlink(imagenet_dir / "images" / row["file"], root / folder / row["file"])
        expected[f"{folder}/{row['file']}"] = int(row["label"])
    return expected


def _one_line_error(info: pytest.ExceptionInfo[DataError]) -> str:
    message = str(info.value)
    assert "\n" not in message and message
    return message


# ----------------------------------------------------------------------------- shipped tables


def test_shipped_synsets_are_the_model_order(imagenet_dir: Path) -> None:
    with open(imagenet_dir / "classes.tsv", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert [r["synset"] for r in sorted(rows, key=lambda r: int(r["index"]))] == list(
        imagenet_synsets()
    )
    assert list(imagenet_synsets()) == sorted(imagenet_synsets())


def test_shipped_devkit_table_is_a_permutation_in_devkit_order() -> None:
    devkit = devkit_synsets()
    assert len(devkit) == 1000 and set(devkit) == set(imagenet_synsets())
    assert list(devkit) != list(imagenet_synsets())  # devkit ids are not synset order
    # ILSVRC2012_ID 1 is kit fox; the first validation image (ground truth 490) a sea snake
    assert devkit[0] == "n02119789" and devkit[489] == "n01751748"


# ----------------------------------------------------------------------------- ImageFolder


def test_synset_folders_get_the_true_imagenet_indices(
    imagenet_dir: Path, truth: list[dict[str, str]], tmp_path: Path
) -> None:
    synset_of = {r["label"]: r["synset"] for r in truth}
    chosen = {label: synset_of[label] for label in ("2", "100", "974")}  # n09288635 is 974
    expected = _image_folder(imagenet_dir, truth, tmp_path, chosen)
    samples, classes = discover(tmp_path, num_classes=1000)
    assert classes == sorted(chosen.values())
    assert {s.file: s.label for s in samples} == expected
    assert {s.label for s in samples} == {2, 100, 974}
    # a caller that does not know the model keeps the old sorted numbering
    assert {s.label for s in discover(tmp_path)[0]} == {0, 1, 2}


def test_numeric_folders_map_by_value(
    imagenet_dir: Path, truth: list[dict[str, str]], tmp_path: Path
) -> None:
    chosen = {label: label for label in ("0", "2", "10", "100")}  # "10" sorts before "2"
    expected = _image_folder(imagenet_dir, truth, tmp_path, chosen)
    samples, classes = discover(tmp_path, num_classes=1000)
    assert classes == ["0", "10", "100", "2"]
    assert {s.file: s.label for s in samples} == expected
    assert {s.label for s in samples} == {0, 2, 10, 100}


@pytest.mark.parametrize(
    ("folders", "num_classes", "match"),
    [
        (["n01440764", "n01443537"], 10, "synset class folders .*'n01440764'.* 10 classes"),
        (["n01440764", "n99999999"], 1000, "n99999999 is not one of the 1,000"),
        (["n01440764", "n01443537", "misc"], 1000, "'misc' is not a synset"),
        (
            ["0", "5", "1000"],
            1000,
            r"'1000'.*class 1000 is not one of the model's classes 0\.\.999",
        ),
        (["cats", "dogs", "birds"], 1000, "3 class folders .*'birds'.*1000 classes.*--class-map"),
    ],
)
def test_unmappable_folders_are_a_one_line_error(
    tmp_path: Path, folders: list[str], num_classes: int, match: str
) -> None:
    for folder in folders:
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=match) as info:
        discover(tmp_path, num_classes=num_classes)
    _one_line_error(info)


def test_real_photo_folders_with_a_wrong_model_are_an_error(
    imagenet_dir: Path, truth: list[dict[str, str]], tmp_path: Path
) -> None:
    synset_of = {r["label"]: r["synset"] for r in truth}
    _image_folder(imagenet_dir, truth, tmp_path, {"2": synset_of["2"], "974": synset_of["974"]})
    with pytest.raises(DataError, match="ImageNet-1k") as info:
        discover(tmp_path, num_classes=10)
    _one_line_error(info)


def test_arbitrary_names_keep_sorted_numbering_only_at_the_model_size(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="collabvit.labels"):
        assert folder_classes(["cat", "dog"], num_classes=2) == [0, 1]
    assert "sorted order" in caplog.text and "--class-map" in caplog.text
    with pytest.raises(DataError, match="--class-map"):
        folder_classes(["cat", "dog"], num_classes=3)


def test_class_map_maps_any_names(
    imagenet_dir: Path, truth: list[dict[str, str]], tmp_path: Path
) -> None:
    synset_of = {r["label"]: r["synset"] for r in truth}
    data = tmp_path / "data"
    expected = _image_folder(imagenet_dir, truth, data, {"2": "shark", "974": "geyser"})
    class_map = tmp_path / "classes.csv"
    class_map.write_text(f"folder,class\nshark,2\ngeyser,{synset_of['974']}\n# note\n")
    assert read_class_map(class_map, 1000) == {"shark": 2, "geyser": 974}
    samples, _ = discover(data, num_classes=1000, class_map=class_map)
    assert {s.file: s.label for s in samples} == expected
    class_map.write_text("shark,2\n")
    with pytest.raises(DataError, match="'geyser' is not in class map") as info:
        discover(data, num_classes=1000, class_map=class_map)
    _one_line_error(info)


# ----------------------------------------------------------------------------- labels files


def _label_files(truth: list[dict[str, str]], folder: Path) -> dict[str, Path]:
    """The 1,300 photos' labels written as our CSV, a synset CSV, the devkit txt, Kaggle's CSV."""
    files = {k: folder / n for k, n in [("ours", "labels.csv"), ("synsets", "synsets.csv"),
             ("devkit", "ILSVRC2012_validation_ground_truth.txt"),
             ("kaggle", "LOC_val_solution.csv")]}  # fmt: skip
    files["ours"].write_text(
        "file,label,synset\n" + "".join(f"{r['file']},{r['label']},{r['synset']}\n" for r in truth)
    )
    files["synsets"].write_text(
        "file,label\n" + "".join(f"{r['file']},{r['synset']}\n" for r in truth)
    )
    devkit_id = {s: k for k, s in enumerate(devkit_synsets(), start=1)}
    number = {int(r["file"][len("ILSVRC2012_val_") : -len(".JPEG")]): r["synset"] for r in truth}
    # lines of images not among the 1,300 name another class: those files are absent
    lines = [devkit_id[number.get(n, "n02119789")] for n in range(1, max(number) + 1)]
    files["devkit"].write_text("".join(f"{k}\n" for k in lines))
    files["kaggle"].write_text(
        "ImageId,PredictionString\n"
        + "".join(
            f"{r['file'][: -len('.JPEG')]},{r['synset']} 10 20 200 300 {r['synset']} 1 2 3 4\n"
            for r in reversed(truth)
        )
    )
    return files


def test_every_labels_format_gives_the_same_labels(
    imagenet_dir: Path, truth: list[dict[str, str]], tmp_path: Path
) -> None:
    files = _label_files(truth, tmp_path)
    expected = {r["file"]: int(r["label"]) for r in truth}
    assert len(expected) == 1300
    formats = {}
    for kind, path in files.items():
        formats[kind] = read_labels(path, 1000).format
        samples, classes = discover(imagenet_dir / "images", path, num_classes=1000)
        assert classes is None
        assert {s.file: s.label for s in samples} == expected, kind
        assert all(s.path is not None and s.path.is_file() for s in samples)
    assert formats == {"ours": "csv", "synsets": "csv", "devkit": "devkit", "kaggle": "kaggle"}
    # without a model the labels are the same ImageNet-1k indices
    assert {s.file: s.label for s in discover(imagenet_dir / "images", files["devkit"])[0]} == (
        expected
    )


def test_labels_that_disagree_or_do_not_fit_the_model_are_errors(
    imagenet_dir: Path, truth: list[dict[str, str]], tmp_path: Path
) -> None:
    first, second = truth[0], truth[1]
    bad = tmp_path / "bad.csv"
    bad.write_text(f"file,label,synset\n{first['file']},{second['label']},{first['synset']}\n")
    with pytest.raises(DataError, match=r"line 2: label .* but the synset column says") as info:
        discover(imagenet_dir / "images", bad, num_classes=1000)
    _one_line_error(info)
    with pytest.raises(DataError, match=r"class \d+ is not one of the model's classes 0\.\.9"):
        discover(imagenet_dir / "images", imagenet_dir / "labels.csv", num_classes=10)
    devkit = _label_files(truth[:3], tmp_path)["devkit"]
    with pytest.raises(DataError, match="ImageNet-1k classes but the model has 10"):
        discover(imagenet_dir / "images", devkit, num_classes=10)
    devkit.write_text("490\n1001\n")
    with pytest.raises(DataError, match="line 2: '1001' is not a devkit id"):
        read_labels(devkit)
    devkit.write_text("490\n")  # ILSVRC2012_val_00000001 is not among the 1,300
    with pytest.raises(DataError, match="none of the 1 images"):
        discover(imagenet_dir / "images", devkit)


# ----------------------------------------------------------------------------- subsets


@pytest.fixture(scope="module")
def forty_classes(
    imagenet_dir: Path, truth: list[dict[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """An ImageFolder of the 40 synsets with the most photos (3-4 each) among the 1,300."""
    counts = Counter(r["label"] for r in truth)
    chosen = sorted(counts, key=lambda label: (-counts[label], int(label)))[:40]
    synset_of = {r["label"]: r["synset"] for r in truth}
    root = tmp_path_factory.mktemp("forty")
    _image_folder(imagenet_dir, truth, root, {label: synset_of[label] for label in chosen})
    return root


def test_seeded_subset_draws_from_every_class(forty_classes: Path) -> None:
    everything, classes = discover(forty_classes, num_classes=1000)
    assert classes is not None and len(classes) == 40 and len(everything) > 100
    subset, _ = discover(forty_classes, limit=100, num_classes=1000, subset_seed=0)
    per_class = Counter(s.label for s in subset)
    assert len(subset) == 100 and len(per_class) == 40
    assert max(per_class.values()) - min(per_class.values()) <= 1
    order = [s.file for s in everything]
    assert [s.file for s in subset] == sorted((s.file for s in subset), key=order.index)
    assert [s.index for s in subset] == list(range(100))
    again, _ = discover(forty_classes, limit=100, num_classes=1000, subset_seed=0)
    other, _ = discover(forty_classes, limit=100, num_classes=1000, subset_seed=1)
    assert [s.file for s in again] == [s.file for s in subset]
    assert [s.file for s in other] != [s.file for s in subset]
    # without a seed: the first N, i.e. the first classes only
    first, _ = discover(forty_classes, limit=100, num_classes=1000)
    assert [s.file for s in first] == order[:100] and len({s.label for s in first}) < 40


def test_stratified_subset_edges() -> None:
    entries = [(f"{c}{i}", c) for c in range(3) for i in range(5 if c else 1)]
    assert stratified_subset(entries, 0, 0) == []
    assert stratified_subset(entries, 100, 0) == entries
    picked = stratified_subset(entries, 5, 7)
    assert len(picked) == 5 and {label for _, label in picked} == {0, 1, 2}
    with pytest.raises(DataError, match="--limit"):
        discover(Path(__file__).parent, limit=-1)


def test_cli_limit_and_subset_seed_reach_every_class(
    forty_classes: Path, small_pair: tuple[Path, Path], tmp_path: Path, one_thread: None
) -> None:
    edge, server = (str(p) for p in small_pair)
    records = tmp_path / "records.csv"
    code = main(
        ["evaluate", "--edge", edge, "--server", server, "--data", str(forty_classes),
         "--limit", "100", "--subset-seed", "0", "--records", str(records),
         "--json", str(tmp_path / "summary.json")]
    )  # fmt: skip
    assert code == 0
    with open(records, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 100
    assert len({row["file"].split("/")[0] for row in rows}) == 40
    assert json.loads((tmp_path / "summary.json").read_text())
