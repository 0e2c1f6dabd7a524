"""One demo run names one chosen point: the --json headline, best.json, tables.md, the star."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from collabvit.cli import main
from collabvit.report.tables import IDENTITY_KEYS, describe_point


def test_demo_headline_best_tables_and_star_are_one_point(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    out = tmp_path / "demo"
    code = main(["demo", "--limit", "400", "--json", str(tmp_path / "d.json"), "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    head = json.loads((tmp_path / "d.json").read_text())
    best = json.loads((out / "best.json").read_text())
    with Image.open(out / "figures" / "tradeoff.png") as im:
        star = json.loads(im.text["collabvit:star"])
        frontier = json.loads(im.text["collabvit:frontier"])
    tables = (out / "tables.md").read_text()

    def named(d: dict[str, object]) -> dict[str, object]:
        return {k: d[k] for k in IDENTITY_KEYS if k in d}

    point = named(best)
    assert point["encoder"] == "edge"
    assert named(head) == {k: v for k, v in point.items() if k != "encoder"}
    assert named(star) == point
    for key in ("accuracy", "communication_cost"):
        assert head[key] == best[key] == star[key]
    name = describe_point(best)
    assert head["point"] == name
    (chosen,) = [line for line in tables.splitlines() if line.startswith("- chosen point")]
    assert f": {name} ->" in chosen
    assert f"communication cost {best['communication_cost']:.4f}" in chosen
    assert f"collaborative  {100 * best['accuracy']:6.2f}%" in printed
    assert f"at {name}:" in printed
    # the chosen point is the cheapest within the target over every edge point, and the
    # figure's frontier is the frontier of every point it draws (as frontier.csv)
    rows = json.loads((out / "results.json").read_text())["rows"]
    edge = [r for r in rows if r["kind"] == "grid" and r["encoder"] == "edge"]
    ok = [r for r in edge if 100 * (head["server_accuracy"] - r["accuracy"]) <= 1.0 + 1e-9]
    assert best["communication_cost"] == min(r["communication_cost"] for r in ok)
    assert any(r["rule"] == "all" for r in edge)
    lines = (out / "frontier.csv").read_text().splitlines()[1:]
    assert [float(line.split(",")[14]) for line in lines] == [
        f["communication_cost"] for f in frontier
    ]
