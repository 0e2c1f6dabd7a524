"""Issue 16, items 11 and 13 (data side): no image of --data vanishes without a word.

Every image-like file under ``--data`` is either a sample or in ``skipped``
with its reason (and counted in one warning); ambiguous folders, repeated
labels rows, ``--limit`` below 1 and a file given as ``--data`` are one line.
Real photos from the shared ImageNet validation set, copied into tmp_path.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from collabvit.cli import main
from collabvit.data import Skipped, discover
from collabvit.errors import DataError
from collabvit.labels import read_labels


@pytest.fixture(scope="module")
def rows(imagenet_dir: Path) -> list[tuple[str, str, str]]:
    """(file, label, synset) of the first 6 photos."""
    lines = (imagenet_dir / "labels.csv").read_text().splitlines()[1:7]
    return [tuple(line.split(",")[:3]) for line in lines]  # type: ignore[misc]


@pytest.fixture
def flat(imagenet_dir: Path, rows: list[tuple[str, str, str]], tmp_path: Path) -> Path:
    """A flat folder of 6 real photos, no labels file inside."""
    folder = tmp_path / "flat"
    folder.mkdir()
    for name, _, _ in rows:
        shutil.copy(imagenet_dir / "images" / name, folder / name)
    return folder


def _csv(path: Path, lines: list[str], header: str = "file,label") -> Path:
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


def _cli_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI expecting a failure: non-zero exit, one ``error:`` line, no traceback."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code  # type: ignore[assignment]
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code not in (0, None), err
    assert len(errors) == 1, err
    assert "Traceback" not in err
    return errors[0]


def _evaluate(pair: tuple[Path, Path], data: Path, *extra: str) -> list[str]:
    edge, server = (str(p) for p in pair)
    return ["evaluate", "--edge", edge, "--server", server, "--data", str(data), *extra]


# ----------------------------------------------------------------------------- item 11


def test_root_images_beside_a_sub_folder_are_one_error(flat: Path, imagenet_dir: Path) -> None:
    """Today: read as an ImageFolder with one class, 'stray', and the 6 root photos vanish."""
    (flat / "stray").mkdir()
    shutil.copy(next(flat.glob("*.JPEG")), flat / "stray" / "extra.JPEG")
    with pytest.raises(DataError, match=r"6 image\(s\) at its top level.*'stray'") as info:
        discover(flat)
    assert "\n" not in str(info.value) and "--labels" in str(info.value)


def test_root_images_beside_a_sub_folder_fail_the_cli_in_one_line(
    flat: Path, small_pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    (flat / "stray").mkdir()
    shutil.copy(next(flat.glob("*.JPEG")), flat / "stray" / "extra.JPEG")
    line = _cli_error(_evaluate(small_pair, flat), capsys)
    assert line.startswith("collabvit evaluate: error:") and "top level" in line


def test_sub_folders_without_images_leave_a_flat_folder_flat(flat: Path) -> None:
    """Nothing in them can be lost: the 6 photos are read (before: two classes, no photo)."""
    (flat / "empty").mkdir()
    (flat / "notes").mkdir()
    (flat / "notes" / "README.txt").write_text("where the photos come from")
    skipped: list[Skipped] = []
    samples, classes = discover(flat, skipped=skipped)
    assert classes is None and len(samples) == 6
    assert skipped == [Skipped("notes/README.txt", "not an image file")]


def test_class_folders_of_extensionless_images_are_still_classes(flat: Path) -> None:
    """Files without an image extension in class folders are samples (decoded when loaded)."""
    for i, photo in enumerate(sorted(flat.glob("*.JPEG"))):
        (flat / f"class{i % 2}").mkdir(exist_ok=True)
        photo.rename(flat / f"class{i % 2}" / photo.stem)
    samples, classes = discover(flat)
    assert classes == ["class0", "class1"] and len(samples) == 6


def test_hidden_sub_folder_does_not_turn_a_flat_folder_into_classes(flat: Path) -> None:
    """A notebook's .ipynb_checkpoints/ is no class: the 6 photos stay, the folder is listed."""
    (flat / ".ipynb_checkpoints").mkdir()
    shutil.copy(next(flat.glob("*.JPEG")), flat / ".ipynb_checkpoints" / "copy.JPEG")
    skipped: list[Skipped] = []
    samples, classes = discover(flat, skipped=skipped)
    assert classes is None and len(samples) == 6
    assert [(s.file, s.reason) for s in skipped] == [(".ipynb_checkpoints/copy.JPEG", "hidden")]


def test_images_without_a_csv_row_are_listed_as_skipped(
    flat: Path, rows: list[tuple[str, str, str]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Today: the 2 photos the CSV does not name are dropped without a word."""
    labels = _csv(tmp_path / "labels.csv", [f"{f},{label}" for f, label, _ in rows[:4]])
    skipped: list[Skipped] = []
    with caplog.at_level(logging.WARNING, logger="collabvit.data"):
        samples, _ = discover(flat, labels, num_classes=1000, skipped=skipped)
    assert [s.file for s in samples] == [f for f, _, _ in rows[:4]]
    assert sorted(s.file for s in skipped) == sorted(f for f, _, _ in rows[4:])
    assert all("labels.csv" in s.reason for s in skipped)
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "2 of 6" in warning and rows[4][0] in warning


def test_every_image_is_a_sample_or_skipped_with_a_reason(
    flat: Path, rows: list[tuple[str, str, str]], tmp_path: Path
) -> None:
    (flat / "notes.txt").write_text("not an image")
    (flat / "._mac-resource.JPEG").write_bytes(b"\x00\x05\x16\x07")
    (flat / "sub").mkdir()
    shutil.copy(flat / rows[0][0], flat / "sub" / "nested.JPEG")
    labels = _csv(tmp_path / "labels.csv", [f"{f},{label}" for f, label, _ in rows[1:]])
    skipped: list[Skipped] = []
    samples, _ = discover(flat, labels, skipped=skipped)
    images = {
        str(p.relative_to(flat)) for p in flat.rglob("*") if p.suffix == ".JPEG" and p.is_file()
    }
    assert {s.file for s in samples} | {s.file for s in skipped} == images
    assert not {s.file for s in samples} & {s.file for s in skipped}
    assert all(s.reason for s in skipped)


def test_kaggle_images_not_in_the_file_are_listed_as_skipped(
    flat: Path, rows: list[tuple[str, str, str]], tmp_path: Path
) -> None:
    labels = _csv(
        tmp_path / "LOC_val_solution.csv",
        [f"{Path(f).stem},{synset} 1 2 3 4" for f, _, synset in rows[:3]],
        header="ImageId,PredictionString",
    )
    skipped: list[Skipped] = []
    samples, _ = discover(flat, labels, num_classes=1000, skipped=skipped)
    assert len(samples) == 3 and sorted(s.file for s in skipped) == sorted(
        f for f, _, _ in rows[3:]
    )
    assert all("kaggle" in s.reason for s in skipped)


def test_a_repeated_csv_row_is_kept_once_with_a_warning(
    flat: Path, rows: list[tuple[str, str, str]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Today: the same photo listed three times is evaluated three times."""
    name, label, _ = rows[0]
    labels = _csv(tmp_path / "labels.csv", [f"{name},{label}"] * 3 + [f"./{name},{label}"])
    with caplog.at_level(logging.WARNING, logger="collabvit.labels"):
        samples, _ = discover(flat, labels, num_classes=1000)
    assert [s.file for s in samples] == [name]
    assert any("3 repeated row(s)" in r.getMessage() for r in caplog.records)


def test_a_csv_row_repeated_with_another_label_is_one_error(
    flat: Path, rows: list[tuple[str, str, str]], tmp_path: Path
) -> None:
    name, label, _ = rows[0]
    other = (int(label) + 1) % 1000
    labels = _csv(
        tmp_path / "labels.csv", [f"{name},{label}", f"{rows[1][0]},1", f"{name},{other}"]
    )
    with pytest.raises(DataError, match=rf"line 4: {name} is listed again .*line 2"):
        read_labels(labels, 1000)


@pytest.mark.parametrize("limit", [0, -1])
def test_limit_below_one_is_an_error(flat: Path, limit: int) -> None:
    """Today --limit 0 returns no samples and the run ends 'every file was skipped'."""
    with pytest.raises(DataError, match=rf"--limit must be >= 1, not {limit}"):
        discover(flat, limit=limit)


def test_limit_zero_fails_the_cli_in_one_line(
    flat: Path, small_pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    line = _cli_error(_evaluate(small_pair, flat, "--limit", "0"), capsys)
    assert "--limit" in line and ">= 1" in line and "unreadable" not in line


# ----------------------------------------------------------------------------- item 13


def test_a_utf8_bom_csv_reads_like_a_plain_one(
    flat: Path, rows: list[tuple[str, str, str]], tmp_path: Path
) -> None:
    plain = _csv(
        tmp_path / "plain.csv", [f"{f},{label},{s}" for f, label, s in rows], "file,label,synset"
    )
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes().replace(b"\n", b"\r\n"))
    expected = [(s.file, s.label) for s in discover(flat, plain, num_classes=1000)[0]]
    assert [(s.file, s.label) for s in discover(flat, bom, num_classes=1000)[0]] == expected
    assert len(expected) == 6


def test_a_utf16_csv_is_one_line_saying_utf8(
    flat: Path, rows: list[tuple[str, str, str]], tmp_path: Path
) -> None:
    labels = tmp_path / "excel.csv"
    labels.write_text("file,label\n" + "\n".join(f"{f},{label}" for f, label, _ in rows), "utf-16")
    with pytest.raises(DataError, match="UTF-8"):
        discover(flat, labels)


def test_data_that_is_a_file_is_one_line(
    flat: Path, tmp_path: Path, small_pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Today: 'data folder X does not exist' for a file that does."""
    labels = _csv(tmp_path / "labels.csv", ["a.jpg,1"])
    with pytest.raises(DataError, match=r"is a file, not a folder.*--labels"):
        discover(labels)
    line = _cli_error(_evaluate(small_pair, labels), capsys)
    assert "is a file, not a folder" in line


def test_labels_outside_the_models_classes_are_one_line(
    flat: Path,
    rows: list[tuple[str, str, str]],
    tmp_path: Path,
    small_pair: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    labels = _csv(tmp_path / "labels.csv", [f"{rows[0][0]},1000"])
    with pytest.raises(DataError, match="line 2: class 1000 is not one of the model's classes"):
        discover(flat, labels, num_classes=1000)
    line = _cli_error(_evaluate(small_pair, flat, "--labels", str(labels)), capsys)
    assert "class 1000" in line
    folders = tmp_path / "folders"
    for number in ("3", "1500"):
        (folders / number).mkdir(parents=True)
        shutil.copy(flat / rows[0][0], folders / number / "a.JPEG")
    with pytest.raises(DataError, match="class 1500 is not one of the model's classes"):
        discover(folders, num_classes=1000)


def test_the_cli_warns_of_the_skipped_images_and_evaluates_the_rest(
    flat: Path,
    rows: list[tuple[str, str, str]],
    tmp_path: Path,
    small_pair: tuple[Path, Path],
    caplog: pytest.LogCaptureFixture,
    one_thread: None,
) -> None:
    labels = _csv(tmp_path / "labels.csv", [f"{f},{label}" for f, label, _ in rows[:4]])
    records = tmp_path / "records.csv"
    argv = _evaluate(small_pair, flat, "--labels", str(labels), "--records", str(records))
    with caplog.at_level(logging.WARNING):
        assert main(argv) == 0
    assert len(records.read_text().splitlines()) == 1 + 4
    warnings = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(warnings) == 1 and "skipping 2 of 6 file(s)" in warnings[0]
    assert f"{rows[4][0]} (not in csv labels file labels.csv)" in warnings[0]


def test_spaces_after_the_commas_of_a_csv_are_not_part_of_the_names(
    flat: Path, rows: list[tuple[str, str, str]], tmp_path: Path
) -> None:
    """Today: 'needs a header with file and label columns' for a header 'file, label'."""
    lines = [f"{f}, {label}, {synset}" for f, label, synset in rows[:3]]
    labels = _csv(tmp_path / "labels.csv", lines, header="file, label, synset")
    samples, _ = discover(flat, labels, num_classes=1000)
    assert [(s.file, s.label) for s in samples] == [(f, int(label)) for f, label, _ in rows[:3]]


def test_a_utf8_bom_class_map_reads_like_a_plain_one(flat: Path, tmp_path: Path) -> None:
    folders = tmp_path / "folders"
    for i, name in enumerate(("tench", "goldfish")):
        (folders / name).mkdir(parents=True)
        shutil.copy(sorted(flat.glob("*.JPEG"))[i], folders / name / "a.JPEG")
    class_map = tmp_path / "map.csv"
    class_map.write_bytes(b"\xef\xbb\xbffolder,class\r\ntench,n01440764\r\ngoldfish,1\r\n")
    samples, _ = discover(folders, num_classes=1000, class_map=class_map)
    assert [(s.file, s.label) for s in samples] == [("goldfish/a.JPEG", 1), ("tench/a.JPEG", 0)]
