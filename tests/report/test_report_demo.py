"""`collabvit demo`: a shipped pair on its shipped test split, offline, with its headline."""

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
    json_path = str(tmp_path / "d.json")
    result = _demo("--pair", "fmnist", "--limit", "600", "--out", str(out), "--json", json_path)
    assert result.returncode == 0, result.stderr
    head = json.loads((tmp_path / "d.json").read_text())
    assert set(DEMO_KEYS) <= head.keys() and head["pair"] == "fmnist"
    assert "object_coverage" not in head and "semantic_encoder" not in head  # no boxes, no Fig. 14
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


def test_demo_runs_the_cluttered_pair_by_default(tmp_path: Path) -> None:
    out, json_path = tmp_path / "demo", tmp_path / "c.json"
    result = _demo("--limit", "1000", "--out", str(out), "--json", str(json_path))
    assert result.returncode == 0, result.stderr
    head = json.loads(json_path.read_text())
    assert head["pair"] == "cfmnist" and set(DEMO_KEYS) <= head.keys()
    first = result.stdout.splitlines()[0]
    assert first.startswith("Cluttered Fashion-MNIST test set (56x56 canvases, seed 0), 1,000")
    assert "edge cfmnist-tiny" in first and "server cfmnist-base" in first
    # Fig. 8's comparison: the cheapest points within a point that select / send whole images
    sel, gate = head["selection"], head["gate_only"]
    assert sel["rule"] == "attention-sum" and gate["rule"] == "all"
    ratio = sel["communication_cost"] / gate["communication_cost"]
    assert f"patch selection costs {ratio:.2f}x the gate alone" in result.stdout
    # the kept patches of the selection point, measured against the garments' pixels
    cover = head["object_coverage"]
    assert cover["point"] == sel["point"] and 0.9 <= cover["all_images"] <= 1.0
    assert f"hold {100 * cover['all_images']:.1f}% of the garment's pixels" in result.stdout
    # Fig. 14: one entry per demo delta_sum, both encoders feeding the same server
    assert [e["threshold"] for e in head["semantic_encoder"]] == [0.95, 0.97, 0.99]
    for e in head["semantic_encoder"]:
        for side in ("edge_selects", "server_selects"):
            assert 0 < e[side]["accuracy"] <= 1 and 0 < e[side]["cost"] <= 1
    assert "whose attention picks the patches (Fig. 14" in result.stdout
    assert (out / "figures" / "encoder.png").stat().st_size > 10_000
