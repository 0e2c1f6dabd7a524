"""`collabvit calibrate` end to end on the real photos, its bad-input lines, and `--point`."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from collabvit.cli import _build_parser, main, point_from_args

GRID = """
base = "none"
reference_delta_sums = [0.9]
reference_etas = [2.0]

[[series]]
rule = "attention-sum"
thresholds = [0.9, 0.97]
measure = "min-entropy"
etas = [2.0, 9.5]

[[series]]
rule = "all"
measure = "none"
"""

POINT = {
    "score": "mean",
    "rule": "attention-sum",
    "threshold": 0.9,
    "measure": "min-entropy",
    "eta": 2.0,
    "include_crossing": False,
    "seed": 0,
}


def _errors(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


def test_random_deit_on_the_real_photos_certifies_nothing(
    imagenet_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID)
    out = tmp_path / "calibrate"
    argv = [
        "calibrate",
        "--edge", "deit_tiny_patch16_224",
        "--server", "deit_small_patch16_224",
        "--random-init", "0",
        "--data", str(imagenet_dir / "images"),
        "--labels", str(imagenet_dir / "labels.csv"),
        "--limit", "100",
        "--subset-seed", "0",
        "--batch-size", "25",
        "--grid", str(grid),
        "--max-drop", "1",
        "--max-cost", "0.5",
        "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "NO POINT IS CERTIFIED to lose at most 1 point at risk 0.1" in printed
    assert "closest: " in printed and "100 images are too few" in printed
    assert "not clearly more accurate than the edge alone" in printed  # random weights
    assert "the server alone is not above chance (" in printed
    body = json.loads((out / "calibrated.json").read_text())
    assert body["format"] == "collabvit-calibrated/1"
    assert body["point"] is None and body["certified"] is False and body["chosen"] is None
    assert "guessing gets 0.1%" in body["refused"]
    assert body["closest"]["certified"] is False and body["closest"]["p_value"] > 0.1
    assert body["guarantee"]["max_drop_points"] == 1.0 and body["guarantee"]["min_images"] == 230
    assert len(body["points"]) == 5 and not any(p["certified"] for p in body["points"])
    assert body["data"]["images"] == 100 and len(body["data"]["files_sha256"]) == 64
    assert body["models"]["edge"]["name"] == "deit_tiny_patch16_224"
    assert body["models"]["server"]["source"] == "random:0"
    assert body["budget"]["max_cost"] == 0.5 and body["budget"]["candidates"] >= 1
    # a second run reuses the sweep's cache: no model forward at all
    caplog.set_level(logging.INFO, logger="collabvit")
    assert main(argv) == 0
    assert any("0 edge images" in r.getMessage() for r in caplog.records)
    # an uncertified file is refused by --point with one line
    capsys.readouterr()
    code = main(["evaluate", "--edge", "x", "--server", "y", "--data", str(tmp_path),
                 "--point", str(out / "calibrated.json")])  # fmt: skip
    errors = _errors(capsys)
    assert code == 2 and len(errors) == 1 and "certified no operating point" in errors[0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-drop", "-0.5"], "--max-drop must be a number of accuracy points >= 0"),
        (["--max-drop", "1", "--risk", "0"], "--risk must be a probability in (0, 1)"),
        (["--max-drop", "1", "--risk", "1.5"], "--risk must be a probability in (0, 1)"),
        (["--max-drop", "1", "--grid", "ONE"], "has 1 edge point(s): calibration chooses"),
        (["--max-drop", "1", "FLAT"], "have no labels: calibration compares"),
        ([], "give --max-drop D"),
    ],
)
def test_bad_input_is_one_line_before_any_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    one = tmp_path / "one.toml"
    one.write_text('base = "none"\n[[series]]\nrule = "all"\nmeasure = "none"\n')
    flat = tmp_path / "flat"  # images without a labels file
    flat.mkdir()
    Image.new("RGB", (8, 8)).save(flat / "a.png")
    folders = tmp_path / "image-folder"  # one class folder: labelled
    (folders / "0").mkdir(parents=True)
    data = flat if "FLAT" in extra else folders
    extra = [str(one) if a == "ONE" else a for a in extra if a != "FLAT"]
    # models that do not exist: every check must come before a model is loaded
    argv = ["calibrate", "--edge", "no-such-model", "--server", "no-such-model",
            "--data", str(data), *extra]  # fmt: skip
    assert main(argv) == 2
    errors = _errors(capsys)
    assert len(errors) == 1 and message in errors[0], errors


def test_point_file_feeds_evaluate_like_the_flags(
    small_pair: tuple[Path, Path], photo_dir: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    edge, server = small_pair
    point = tmp_path / "calibrated.json"
    point.write_text(json.dumps({"format": "collabvit-calibrated/1", "point": POINT}))
    common = ["evaluate", "--edge", str(edge), "--server", str(server), "--data", str(photo_dir),
              "--labels", str(photo_dir / "labels.csv"), "--batch-size", "6"]  # fmt: skip
    flags = ["--rule", "attention-sum", "--threshold", "0.9", "--eta", "2"]
    assert main([*common, "--point", str(point), "--json", str(tmp_path / "a.json")]) == 0
    assert main([*common, *flags, "--json", str(tmp_path / "b.json")]) == 0
    a = json.loads((tmp_path / "a.json").read_text())
    b = json.loads((tmp_path / "b.json").read_text())
    a.pop("run"), b.pop("run")  # the run block differs: its command line and time
    assert a == b and a["point"] == POINT
    for key in ("accuracy", "edge_accuracy"):  # every accuracy has its 95 % interval
        assert a[f"{key}_low"] <= a[key] <= a[f"{key}_high"]
    assert "95% CI" in capsys.readouterr().out
    assert main([*common, "--point", str(point), "--eta", "0.5"]) == 2
    errors = _errors(capsys)
    assert len(errors) == 1 and "--point" in errors[0] and "drop --eta" in errors[0]


def test_edge_takes_the_point_file_too(tmp_path: Path) -> None:
    from collabvit.errors import ConfigError

    point = tmp_path / "calibrated.json"
    point.write_text(json.dumps({"point": POINT}))
    parser, _ = _build_parser()
    edge = ["edge", "--edge", "fmnist-tiny", "--out", "o.jsonl",
            "--server-url", "http://127.0.0.1:9", "img.png"]  # fmt: skip
    assert point_from_args(parser.parse_args([*edge, "--point", str(point)])).threshold == 0.9
    args = parser.parse_args([*edge, "--point", str(point), "--include-crossing"])
    with pytest.raises(ConfigError, match="drop --include-crossing"):
        point_from_args(args)
    # the flags alone still work as before (the store_true flag included)
    assert point_from_args(parser.parse_args([*edge, "--include-crossing"])).include_crossing


def test_help_lists_calibrate() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "collabvit.cli", "--help"], capture_output=True, text=True
    ).stdout
    assert "calibrate" in out
