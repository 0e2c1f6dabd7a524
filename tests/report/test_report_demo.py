"""`collabvit demo`: the shipped pair on the shipped test split, offline, with its headline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from collabvit.commands.demo import DEMO_KEYS


def _demo(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "collabvit.cli", "demo", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_demo_prints_and_writes_the_headline(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = _demo("--limit", "600", "--out", str(out), "--json", str(tmp_path / "d.json"))
    assert result.returncode == 0, result.stderr
    head = json.loads((tmp_path / "d.json").read_text())
    assert set(DEMO_KEYS) <= head.keys()
    assert head["edge_accuracy"] + 0.03 <= head["server_accuracy"]  # the gap the method recovers
    # the chosen point is within a point of server-only and is cheaper than sending everything
    assert 100 * (head["server_accuracy"] - head["accuracy"]) <= 1.0 + 1e-9
    assert 0 < head["communication_cost"] < 1
    expected_cost = head["transmit_ratio"] * head["mean_patches_transmitted"] / 49
    assert abs(head["communication_cost"] - expected_cost) < 1e-3
    # the printed headline says the same numbers, and names the point as the JSON does
    assert f"{100 * head['server_accuracy']:6.2f}%" in result.stdout
    assert f"communication cost {head['communication_cost']:.4f}" in result.stdout
    assert f"at {head['point']}:" in result.stdout
    assert head["rule"] != "top-k" or head["threshold"] != 49  # whole images are rule "all"
    assert (out / "figures" / "tradeoff.png").stat().st_size > 10_000
    assert (out / "results.csv").is_file()


def test_demo_bad_limit_is_one_clear_line(tmp_path: Path) -> None:
    result = _demo("--limit", "0", "--out", str(tmp_path / "demo"), "--no-figures")
    assert result.returncode == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "--limit: 0 is too small" in lines[0] and ">= 1" in lines[0]
