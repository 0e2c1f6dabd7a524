"""--precision through the CLI: the weights are cast once, the run block records it, and
bf16 answers as fp32 on the shipped pair (issue 11)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from collabvit.cli import PRECISIONS, _build_parser, main
from collabvit.models.precision import PRECISION_CHOICES


def _evaluate(tmp_path: Path, precision: str) -> dict:
    out = tmp_path / f"{precision}.json"
    argv = ["evaluate", "--edge", "fmnist-tiny", "--server", "fmnist-base", "--data", "fmnist",
            "--limit", "400", "--batch-size", "200", "--precision", precision,
            "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    return json.loads(out.read_text())


def test_bf16_evaluate_records_its_precision_and_agrees_with_fp32(tmp_path: Path) -> None:
    fp32, bf16 = _evaluate(tmp_path, "fp32"), _evaluate(tmp_path, "bf16")
    assert fp32["run"]["precision"] == "fp32" and bf16["run"]["precision"] == "bf16"
    # the bf16 weights are other bytes: their SHA-256 differs from the fp32 ones
    assert bf16["run"]["weights_sha256"] != fp32["run"]["weights_sha256"]
    assert abs(bf16["accuracy"] - fp32["accuracy"]) <= 0.01  # 400 images: <= 4 flips


@pytest.mark.parametrize("command", ["evaluate", "sweep", "calibrate", "serve", "edge", "demo"])
def test_every_model_command_takes_precision(command: str) -> None:
    parser, _ = _build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    options = {o for a in sub.choices[command]._actions for o in a.option_strings}
    assert "--precision" in options


def test_the_parser_offers_what_models_precision_takes() -> None:
    assert PRECISIONS == PRECISION_CHOICES


def test_a_bad_precision_is_one_usage_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--edge", "fmnist-tiny", "--server", "fmnist-base",
              "--data", "fmnist", "--precision", "fp8"])  # fmt: skip
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert exit_.value.code == 2 and len(err) == 1 and "--precision" in err[0]
