"""Issue 16, item 14: each selection rule has its own validated parameter, eta its range.

``--k`` (top-k, random), ``--delta`` (threshold), ``--delta-sum`` (attention-sum),
``--threshold`` an alias of whichever the rule takes; a parameter the rule does
not use, a missing one, or one out of the table's range is one ConfigError line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from collabvit.cli import _build_parser, main, point_from_args
from collabvit.errors import ConfigError
from collabvit.gating import MEASURES
from collabvit.selection import RULES

EDGE = ["edge", "--edge", "fmnist-tiny", "--out", "o.jsonl", "--server-url", "http://h:1", "x.png"]


def _point(*flags: str) -> object:
    parser, _ = _build_parser()
    return point_from_args(parser.parse_args([*EDGE, *flags]))


def _refused(match: str, *flags: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _point(*flags)


def test_top_k_needs_its_k_and_takes_it() -> None:
    """Before: --rule top-k silently used --threshold's default 0.97, i.e. one patch."""
    _refused("--rule top-k needs --k", "--rule", "top-k")
    assert _point("--rule", "top-k", "--k", "5").threshold == 5  # type: ignore[attr-defined]
    assert _point("--rule", "random", "--k", "3", "--seed", "2").threshold == 3  # type: ignore[attr-defined]
    _refused("--k", "--rule", "top-k", "--k", "0")


def test_k_must_be_a_whole_number(capsys: pytest.CaptureFixture[str]) -> None:
    parser, _ = _build_parser()
    with pytest.raises(SystemExit) as info:
        parser.parse_args([*EDGE, "--rule", "top-k", "--k", "2.5"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--k" in err[0], err


def test_delta_sum_in_0_1_and_threshold_is_its_alias() -> None:
    """Before: --threshold 1.5 for attention-sum and 0 passed without a word."""
    assert _point("--delta-sum", "0.9").threshold == 0.9  # type: ignore[attr-defined]
    assert _point("--threshold", "0.9").threshold == 0.9  # type: ignore[attr-defined]
    assert _point().threshold == 0.97  # type: ignore[attr-defined]  # the paper's default
    for bad in ("1.5", "0", "-0.1", "nan"):
        _refused("delta_sum", "--delta-sum", bad)
        _refused("delta_sum", "--threshold", bad)
    _refused("give one of", "--delta-sum", "0.9", "--threshold", "0.9")


def test_a_parameter_the_rule_does_not_use_is_an_error() -> None:
    _refused("--rule attention-sum does not use --k", "--k", "5")
    _refused("--rule top-k does not use --delta-sum", "--rule", "top-k", "--delta-sum", "0.9")
    _refused("--rule threshold does not use --k", "--rule", "threshold", "--k", "3")
    _refused("--rule all does not use --threshold", "--rule", "all", "--threshold", "0.5")
    _refused("--include-crossing", "--rule", "top-k", "--k", "3", "--include-crossing")
    _refused("--seed", "--rule", "top-k", "--k", "3", "--seed", "4")
    assert _point("--rule", "threshold", "--delta", "0.01").threshold == 0.01  # type: ignore[attr-defined]
    _refused("delta", "--rule", "threshold", "--delta", "2")
    _refused("--rule threshold needs --delta", "--rule", "threshold")
    assert _point("--rule", "all").rule == "all"  # type: ignore[attr-defined]


def test_eta_is_checked_against_its_measure() -> None:
    """Before: --eta -1 passed (every image sent under min-entropy, no word)."""
    _refused("min-entropy", "--eta", "-1")
    _refused("shannon", "--measure", "shannon", "--eta", "-0.5")
    _refused("margin", "--measure", "margin", "--eta", "1.5")
    _refused("does not use --eta", "--measure", "none", "--eta", "0.5")
    assert _point("--measure", "margin", "--eta", "0.3").eta == 0.3  # type: ignore[attr-defined]
    assert _point("--measure", "none").measure == "none"  # type: ignore[attr-defined]
    assert _point("--eta", "2").eta == 2.0  # type: ignore[attr-defined]  # bits: no upper bound


def test_the_ranges_come_from_the_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rule or measure added to the tables gets its check without a CLI change."""
    from dataclasses import replace

    monkeypatch.setitem(RULES, "attention-sum", replace(RULES["attention-sum"], upper=0.5))
    _refused("<= 0.5", "--delta-sum", "0.6")
    monkeypatch.setitem(MEASURES, "margin", replace(MEASURES["margin"], eta_high=0.25))
    _refused("<= 0.25", "--delta-sum", "0.4", "--measure", "margin", "--eta", "0.3")


def test_point_file_still_fixes_everything(tmp_path: Path) -> None:
    point = {"score": "mean", "rule": "top-k", "threshold": 7, "measure": "margin", "eta": 0.2,
             "include_crossing": False, "seed": 0}  # fmt: skip
    path = tmp_path / "calibrated.json"
    path.write_text(json.dumps({"point": point}))
    got = _point("--point", str(path))
    assert (got.rule, got.threshold, got.eta) == ("top-k", 7, 0.2)  # type: ignore[attr-defined]
    _refused("drop --k", "--point", str(path), "--k", "3")


def test_the_cli_refuses_it_in_one_line(
    capsys: pytest.CaptureFixture[str], small_pair: tuple[Path, Path], photo_dir: Path
) -> None:
    argv = ["evaluate", "--edge", str(small_pair[0]), "--server", str(small_pair[1]),
            "--data", str(photo_dir), "--rule", "top-k"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["collabvit evaluate: error: --rule top-k needs --k N (patches kept per image)"]
