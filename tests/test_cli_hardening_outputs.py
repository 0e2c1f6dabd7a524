"""Issue 16, items 12-13: bad output paths and bad option values fail first, in one line.

Every case runs ``collabvit.cli.main`` in this process (torch is imported once)
and must end with status 2 and exactly one stderr line
``collabvit CMD: error: ...`` naming the option, before any model is loaded
or any image is read (the cases would otherwise run the whole command and
crash with a traceback when the result is written, as they did before).
"""

from __future__ import annotations

import math
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from collabvit.cli import main


def _fails(capsys: pytest.CaptureFixture[str], argv: list[str], says: str, code: int = 2) -> str:
    start = time.monotonic()
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse's own errors
        status = exc.code if isinstance(exc.code, int) else 1
    took = time.monotonic() - start
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert status == code, err
    assert len(err) == 1, err
    assert err[0].startswith(f"collabvit {argv[0]}: error: "), err
    assert says in err[0], err[0]
    assert took < 10.0, took  # the check, not the work (well under a second unloaded)
    return err[0]


@pytest.fixture
def pair(small_pair: tuple[Path, Path]) -> list[str]:
    return ["--edge", str(small_pair[0]), "--server", str(small_pair[1])]


@pytest.fixture
def data(photo_dir: Path) -> list[str]:
    return ["--data", str(photo_dir), "--labels", str(photo_dir / "labels.csv"), "--limit", "2"]


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody can write in: chattr +i as root (root ignores modes), else chmod 500."""
    folder = tmp_path / "locked"
    folder.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("root without chattr +i: no folder is unwritable")
        yield folder
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o500)
        yield folder
        folder.chmod(0o700)


# -- item 12: output paths ------------------------------------------------------------------


def test_evaluate_outputs_are_checked_before_the_models(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, pair: list[str], data: list[str],
    read_only: Path,
) -> None:  # fmt: skip
    base = ["evaluate", *pair, *data]
    line = _fails(capsys, [*base, "--json", str(tmp_path)], "--json")
    assert "is a folder" in line
    line = _fails(capsys, [*base, "--records", str(tmp_path / "no" / "r.csv")], "--records")
    assert "does not exist" in line and str(tmp_path / "no") in line
    line = _fails(capsys, [*base, "--records", str(read_only / "r.csv")], "--records")
    assert "not writable" in line
    (tmp_path / "file").write_text("x")
    _fails(capsys, [*base, "--json", str(tmp_path / "file" / "s.json")], "is not a folder")
    assert not list(tmp_path.glob("**/*.csv"))  # nothing was written


def test_demo_sweep_calibrate_visualize_export_check_their_outputs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, pair: list[str], data: list[str],
    photo_dir: Path, read_only: Path,
) -> None:  # fmt: skip
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    missing = str(tmp_path / "missing" / "x.json")
    demo = ["demo", "--limit", "2", "--no-figures", "--out", str(tmp_path / "demo")]
    _fails(capsys, [*demo, "--json", missing], "--json")
    _fails(capsys, ["demo", "--limit", "2", "--out", str(a_file)], "--out")
    _fails(capsys, ["demo", "--limit", "2", "--out", str(read_only / "demo")], "not writable")
    sweep = ["sweep", *pair, *data, "--grid", "small"]
    _fails(capsys, [*sweep, "--out", str(a_file)], "is not a folder")
    _fails(capsys, [*sweep, "--out", str(tmp_path / "s"), "--json", missing], "does not exist")
    _fails(capsys, [*sweep, "--out", str(tmp_path / "s"), "--cache", str(a_file)], "--cache")
    calibrate = ["calibrate", *pair, *data, "--max-drop", "5"]
    _fails(capsys, [*calibrate, "--out", str(a_file)], "--out")
    photo = str(next(photo_dir.glob("*.JPEG")))
    _fails(capsys, ["visualize", photo, pair[0], pair[1], "--out", str(a_file)], "--out")
    export = ["export", pair[0], pair[1]]
    _fails(capsys, [*export, "--out", str(tmp_path)], "is a folder")
    _fails(capsys, [*export, "--out", missing], "does not exist")
    _fails(capsys, ["train", "fmnist-tiny", "--out", str(a_file)], "is not a folder")
    assert not (tmp_path / "s").exists()  # the sweep wrote nothing


def test_edge_outputs_are_checked_before_the_model(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, pair: list[str], photo_dir: Path
) -> None:
    base = ["edge", pair[0], pair[1], str(photo_dir), "--server-url", "http://127.0.0.1:9"]
    _fails(capsys, [*base, "--out", str(tmp_path)], "--out")
    out = ["--out", str(tmp_path / "a.jsonl")]
    _fails(capsys, [*base, *out, "--json", str(tmp_path / "no" / "s.json")], "--json")
    assert not (tmp_path / "a.jsonl").exists()


def test_an_output_that_fails_during_the_work_is_exit_1_in_one_line(
    capsys: pytest.CaptureFixture[str], pair: list[str], data: list[str]
) -> None:
    """/dev/full passes the checks (a writable device) but every write is ENOSPC: a runtime
    I/O failure, status 1, one line (before: a traceback after the whole evaluation)."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    line = _fails(capsys, ["evaluate", *pair, *data, "--json", "/dev/full"], "/dev/full", code=1)
    assert "No space left" in line


# -- item 13: option values ------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-1", "nan", "5", "inf", "x"])
def test_crop_pct_outside_0_1_is_one_line(
    capsys: pytest.CaptureFixture[str], pair: list[str], data: list[str], value: str
) -> None:
    line = _fails(capsys, ["evaluate", *pair, *data, f"--crop-pct={value}"], "--crop-pct")
    assert "(0, 1]" in line


def test_crop_pct_1_is_accepted() -> None:
    from collabvit.cli import _build_parser

    parser, _ = _build_parser()
    args = parser.parse_args(["export", "--edge", "x", "--out", "x.onnx", "--crop-pct", "1"])
    assert args.crop_pct == 1.0 and not math.isnan(args.crop_pct)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://[::1", "--server-url"),
        ("ftp://127.0.0.1:8000", "http:// or https://"),
        ("127.0.0.1:8000", "http:// or https://"),
        ("http://", "no host"),
        ("http://127.0.0.1:99999", "out of range"),
        ("http://127.0.0.1:8000/v1?x=1", "--server-url"),
    ],
)
def test_malformed_server_url_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, pair: list[str], photo_dir: Path,
    url: str, says: str,
) -> None:  # fmt: skip
    argv = ["edge", pair[0], pair[1], str(photo_dir), "--out", str(tmp_path / "a.jsonl")]
    _fails(capsys, [*argv, "--server-url", url], says)
    assert not (tmp_path / "a.jsonl").exists()


@pytest.mark.parametrize("option", ["--batch-size", "--limit"])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_counts_below_1_are_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, pair: list[str], photo_dir: Path,
    option: str, value: str,
) -> None:  # fmt: skip
    for argv in (
        ["evaluate", *pair, "--data", str(photo_dir), "--labels", str(photo_dir / "labels.csv")],
        ["edge", pair[0], pair[1], str(photo_dir), "--out", str(tmp_path / "a.jsonl"),
         "--server-url", "http://127.0.0.1:9"],
        ["demo", "--out", str(tmp_path / "demo")],
    ):  # fmt: skip
        line = _fails(capsys, [*argv, option, value], option)
        assert ">= 1" in line


def test_device_gpu_is_one_line(
    capsys: pytest.CaptureFixture[str], pair: list[str], data: list[str]
) -> None:
    line = _fails(capsys, ["evaluate", *pair, *data, "--device", "gpu"], "'gpu'")
    assert "cuda" in line
