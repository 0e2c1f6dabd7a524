"""collabvit.report figures: every figure from synthetic sweep rows, PNG and PDF, skipped when
absent; the trade-off figure's frontier and star are what it says they are."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from collabvit.metrics import pareto_frontier
from collabvit.report import FIGURES, render_figures_from
from collabvit.report.tables import point_identity

N = 196


def _row(score: str, rule: str, threshold: float | None, measure: str, eta: float, cost: float,
         acc: float, encoder: str = "edge") -> dict[str, Any]:  # fmt: skip
    return {
        "kind": "grid",
        "encoder": encoder,
        "score": score,
        "rule": rule,
        "threshold": threshold,
        "measure": measure,
        "eta": eta,
        "communication_cost": cost,
        "accuracy": acc,
    }


def _rows() -> list[dict[str, Any]]:
    rows = []
    deltas = (0.87, 0.9, 0.95, 0.97, 0.99)
    for i, d in enumerate(deltas):
        base = 0.45 + 0.1 * i
        for eta, share in ((0.2, 0.85), (0.8, 0.43)):
            rows.append(
                _row("mean", "attention-sum", d, "min-entropy", eta, share * base, 0.76 + 0.01 * i)
            )
        rows.append(_row("mean", "attention-sum", d, "none", 0.0, base, 0.77 + 0.01 * i))
        rows.append(_row("rollout", "attention-sum", d, "none", 0.0, base + 0.05, 0.75 + 0.01 * i))
        rows.append(
            _row("rollout-standard", "attention-sum", d, "none", 0.0, base + 0.1, 0.74 + 0.01 * i)
        )
        k = round(base * N)
        rows.append(_row("mean", "top-k", k, "none", 0.0, base, 0.76 + 0.01 * i))
        rows.append(_row("mean", "random", k, "none", 0.0, base, 0.6 + 0.04 * i))
        rows.append(_row("mean", "threshold", 0.001 * (5 - i), "none", 0.0, base, 0.765 + 0.01 * i))
        rows.append(
            _row("mean", "attention-sum", d, "none", 0.0, base + 0.02, 0.7 + 0.01 * i, "server")
        )
    for m in ("min-entropy", "shannon", "margin"):  # whole images: rule "all"
        for j, ratio in enumerate((0.3, 0.6, 0.9)):
            rows.append(_row("mean", "all", None, m, 0.1 * j, ratio, 0.75 + 0.02 * j))
    return rows


def _info(**kw: Any) -> dict[str, Any]:
    info = {
        "edge": "deit_tiny_patch16_224",
        "server": "deit_base_patch16_224",
        "images": 50000,
        "num_patches": N,
        "edge_accuracy": 0.7213,
        "server_accuracy": 0.818,
        "frontier": {
            "score": "mean",
            "rule": "attention-sum",
            "measures": ["min-entropy", "none"],
        },
    }
    info.update(kw)
    return info


def _hist() -> dict[str, Any]:
    scores = np.random.default_rng(0).lognormal(np.log(1 / N), 1.0, size=10_000)
    edges = np.geomspace(scores.min(), scores.max(), 41)
    counts, _ = np.histogram(scores, bins=edges)
    return {
        "edges": edges.tolist(),
        "fractions": (counts / scores.size).tolist(),
        "zeros": 0,
        "total": scores.size,
        "num_patches": N,
    }


def test_every_figure_png_and_pdf(tmp_path: Path) -> None:
    rows = _rows()
    family = [r for r in rows if r["rule"] == "attention-sum" and r["encoder"] == "edge"
              and r["score"] == "mean"]  # fmt: skip
    frontier = pareto_frontier(family)
    best = dict(min(family, key=lambda r: r["communication_cost"]))
    paths = render_figures_from(rows, frontier, best, _info(), _hist(), tmp_path)
    assert sorted({p.stem for p in paths}) == sorted(FIGURES)
    for name in FIGURES:
        png = tmp_path / f"{name}.png"
        with Image.open(png) as im:
            assert im.width > 600 and im.height > 400
        assert (tmp_path / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"


def test_missing_series_and_labels_skip_figures(tmp_path: Path) -> None:
    rows = [r for r in _rows() if r["rule"] == "attention-sum" and r["score"] == "mean"
            and r["encoder"] == "edge"]  # fmt: skip
    paths = render_figures_from(rows, pareto_frontier(rows), None, _info(), None, tmp_path)
    assert {p.stem for p in paths} == {"tradeoff"}
    unlabelled = [dict(r, accuracy=None) for r in _rows()]
    info = _info(edge_accuracy=None, server_accuracy=None)
    paths = render_figures_from(unlabelled, [], None, info, _hist(), tmp_path / "u")
    assert {p.stem for p in paths} == {"histogram"}


def test_flat_curves_keep_a_readable_axis(tmp_path: Path) -> None:
    """Untrained models give identical accuracies; the axis must still span whole points."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from collabvit.report.drawing import fit_y as _fit_y

    fig = Figure()
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot([0.5, 0.9], [0.1, 0.1])
    ax.axhline(0.1)
    _fit_y(ax)
    lo, hi = ax.get_ylim()
    assert hi - lo >= 2.0 and lo >= -0.5  # no 1e-17 offset axis, no negative accuracies
    ax.plot([0.5], [80.0])
    _fit_y(ax)
    assert ax.get_ylim()[1] > 80.0


def _png_text(path: Path) -> dict[str, Any]:
    with Image.open(path) as im:
        return {k: json.loads(v) for k, v in im.text.items() if k.startswith("collabvit:")}


def test_tradeoff_frontier_is_the_frontier_of_what_it_draws(tmp_path: Path) -> None:
    """Every edge point is drawn (whole images too); the line is their frontier; the star
    is the point it was given."""
    rows = [*_rows(), _row("mean", "all", None, "min-entropy", 0.35, 0.15, 0.79)]
    edge_only = {"kind": "baseline", "encoder": "", "rule": "edge-only", "score": "",
                 "threshold": None, "measure": "", "eta": None,
                 "communication_cost": 0.0, "accuracy": 0.7213}  # fmt: skip
    edge_points = [r for r in rows if r["encoder"] == "edge"]
    star = max(edge_points, key=lambda r: (r["accuracy"], -r["communication_cost"]))
    render_figures_from([*rows, edge_only], [], star, _info(), None, tmp_path)
    text = _png_text(tmp_path / "tradeoff.png")
    expected = pareto_frontier([*edge_points, edge_only])
    assert text["collabvit:frontier"] == [
        point_identity(r) | {"communication_cost": r["communication_cost"],
                             "accuracy": r["accuracy"]} for r in expected
    ]  # fmt: skip
    assert any(r["rule"] == "all" for r in text["collabvit:frontier"])  # whole images count
    assert text["collabvit:star"]["rule"] == star["rule"]
    assert text["collabvit:star"]["threshold"] == star["threshold"]
    assert text["collabvit:star"]["communication_cost"] == star["communication_cost"]
