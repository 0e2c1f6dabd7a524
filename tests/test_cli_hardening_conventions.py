"""Issue 16, item 15: the command line's conventions.

-v/-q on either side of the command; exit status 2 for usage errors and 1 for
runtime failures (documented in --help); progress bars only on a terminal;
--json on sweep and edge; run metadata in every summary JSON; a rerun into
the same --out removes the figures it did not draw; each default shown once.
"""

from __future__ import annotations

import io
import json
import re
import sys
from datetime import datetime
from pathlib import Path

import pytest

from collabvit import __version__
from collabvit.cli import COMMANDS, _build_parser, main, progress_bar
from collabvit.errors import ConfigError, DataError, ServerError, WireError, exit_status


def test_verbosity_flags_on_either_side() -> None:
    parser, _ = _build_parser()
    tail = ["export", "--edge", "x", "--out", "x.onnx"]
    assert parser.parse_args(["-v", *tail]).verbose
    assert parser.parse_args([*tail, "-v"]).verbose
    assert parser.parse_args([*tail, "-q"]).quiet and parser.parse_args(["-q", *tail]).quiet
    plain = parser.parse_args(tail)
    assert not plain.verbose and not plain.quiet


def test_quiet_keeps_warnings_only(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """main's logging set-up, around a command that logs at every level."""
    import logging

    import collabvit.commands.export as export

    def run(args: object) -> int:
        log = logging.getLogger("collabvit.test")
        log.debug("a debug line")
        log.info("an info line")
        log.warning("a warning line")
        return 0

    monkeypatch.setattr(export, "run", run)
    caplog.set_level(logging.DEBUG)
    argv = ["export", "--edge", "x", "--out", "x.onnx"]
    seen = {}
    for flags in ([], ["-q"], ["-v"]):
        caplog.clear()
        assert main([*argv, *flags]) == 0
        seen[" ".join(flags)] = [r.getMessage() for r in caplog.records]
    assert seen["-q"] == ["a warning line"]
    assert seen[""] == ["an info line", "a warning line"]
    assert seen["-v"] == ["a debug line", "an info line", "a warning line"]
    assert logging.getLogger("collabvit").level == logging.NOTSET  # restored after the run
    with pytest.raises(SystemExit) as info:
        main([*argv, "-q", "-v"])
    assert info.value.code == 2


def test_exit_status_2_for_usage_1_for_runtime() -> None:
    assert exit_status(ConfigError("x")) == 2
    assert exit_status(DataError("x")) == 2
    assert exit_status(ServerError("x", status_code=None)) == 1
    assert exit_status(WireError("x")) == 1
    assert exit_status(OSError(28, "No space left on device")) == 1


def test_help_documents_the_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["evaluate", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        text = " ".join(capsys.readouterr().out.split())
        assert "exit status: 0 success, 1 a runtime failure" in text, text
        assert "2 a usage error" in text


def test_progress_bars_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: redirected stderr filled with carriage-return frames."""
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with progress_bar(3, "x") as bar:
        bar.update(3)
        drawn = not bar.disable  # (close() disables every bar)
    assert not drawn and sys.stderr.getvalue() == ""

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Tty())
    with progress_bar(3, "x") as bar:
        bar.update(3)
        drawn = not bar.disable
    assert drawn and "3/3" in sys.stderr.getvalue()


def _help_entries(text: str) -> list[str]:
    """Each option's help, continuation lines joined."""
    entries: list[str] = []
    for line in text.splitlines():
        if re.match(r"^\s{2}\S", line):
            entries.append(line.strip())
        elif line.startswith("    ") and entries:
            entries[-1] += " " + line.strip()
    return entries


def test_every_default_is_shown_once(capsys: pytest.CaptureFixture[str]) -> None:
    """Before: "(default 0.875 for timm models, ...) (default: None)"."""
    parser, _ = _build_parser()
    for command in COMMANDS:
        try:
            with pytest.raises(SystemExit):
                main([command, "--help"])
        except KeyError:  # not part of this build
            continue
        text = capsys.readouterr().out
        assert "(default: None)" not in text, command
        for entry in _help_entries(text):
            assert len(re.findall(r"\(default", entry)) <= 1, (command, entry)
    assert parser


def _runinfo(body: dict[str, object], models: tuple[str, ...]) -> None:
    run = body["run"]
    assert isinstance(run, dict)
    assert run["collabvit"] == __version__
    assert isinstance(run["command"], list) and run["command"][0] == "collabvit"
    assert run["device"] == "cpu" and run["precision"] == "fp32"
    assert set(run["weights_sha256"]) == set(models)
    assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in run["weights_sha256"].values())
    assert datetime.fromisoformat(run["time_utc"]).utcoffset() is not None


def _names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if not p.name.startswith(".")}


def test_summaries_record_the_run_and_sweep_reruns_drop_stale_figures(
    tmp_path: Path, small_pair: tuple[Path, Path], photo_dir: Path, one_thread: None,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    pair = ["--edge", str(small_pair[0]), "--server", str(small_pair[1])]
    data = ["--data", str(photo_dir), "--labels", str(photo_dir / "labels.csv"), "--limit", "6"]
    assert main(["evaluate", *pair, *data, "--json", str(tmp_path / "e.json")]) == 0
    evaluated = json.loads((tmp_path / "e.json").read_text())
    _runinfo(evaluated, ("edge", "server"))
    assert evaluated["run"]["command"][1] == "evaluate"

    out = tmp_path / "sweep"
    two = tmp_path / "two.toml"  # the rules comparison and more
    two.write_text(
        'base = "none"\nreference_delta_sums = [0.9]\nreference_etas = [0.5]\n'
        '[[series]]\nrule = "attention-sum"\nthresholds = [0.9]\nmeasure = "min-entropy"\n'
        "etas = [0.5]\n"
        '[[series]]\nrule = "top-k"\nthresholds = [4]\nmeasure = "min-entropy"\netas = [0.5]\n'
    )
    sweep = ["sweep", *pair, *data, "--batch-size", "6", "--out", str(out), "--no-cache"]
    assert main([*sweep, "--grid", "small", "--json", str(tmp_path / "s.json")]) == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    _runinfo(summary, ("edge", "server"))
    assert summary["images"] == 6 and summary["out"] == str(out)
    first = _names(out / "figures")
    (out / "figures" / "mine.png").write_bytes(b"a user's own file")
    assert main([*sweep, "--grid", str(two)]) == 0
    second = _names(out / "figures")
    assert "mine.png" in second  # a file the sweep did not write is kept
    drawn = second - {"mine.png"}
    assert drawn and drawn < first, (first, second)  # the stale figures are gone
    manifest = json.loads((out / "figures" / ".collabvit-written.json").read_text())
    assert set(manifest["files"]) == drawn
    assert main([*sweep, "--grid", str(two), "--no-figures"]) == 0
    assert _names(out / "figures") == {"mine.png"}
    assert not (out / "figures" / ".collabvit-written.json").exists()
    capsys.readouterr()


def test_edge_json_records_the_run(
    tmp_path: Path, small_pair: tuple[Path, Path], photo_dir: Path, one_thread: None,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """--json on edge: the summary, even when the run fails (no server: exit 1)."""
    argv = ["edge", "--edge", str(small_pair[0]), str(photo_dir), "--labels",
            str(photo_dir / "labels.csv"), "--limit", "3", "--measure", "none",
            "--server-url", "http://127.0.0.1:9", "--retries", "0",
            "--out", str(tmp_path / "a.jsonl"), "--json", str(tmp_path / "s.json")]  # fmt: skip
    assert main(argv) == 1
    body = json.loads((tmp_path / "s.json").read_text())
    _runinfo(body, ("edge",))
    assert body["images"] == 3 and body["sources"]["edge-fallback"] == 3
    assert body["exit_status"] == 1
    capsys.readouterr()
