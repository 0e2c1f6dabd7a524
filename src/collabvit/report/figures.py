"""Figures of a sweep (paper Figs. 7-14), written as PNG and PDF.

Each figure is drawn from the rows of ``results.csv`` (:mod:`collabvit.sweep`);
a figure whose series the grid did not include is skipped with a log line.
Names and labels come from the tables (:data:`collabvit.attention.SCORES`,
:data:`collabvit.selection.RULES`, :data:`collabvit.gating.MEASURES`), so a
new score, rule or measure appears without a change here.

Axes: communication cost is the fraction of all patches of all images that is
transmitted (paper Sec. VI-A), accuracy is top-1 in percent.

The trade-off figure (Figs. 8/9) draws every edge grid point (and the
edge-only point) with its 95 % accuracy interval (Wilson: a band along each
line, error bars on single points and on the star); its "achievable trade-off" line is
:func:`collabvit.metrics.pareto_frontier` of exactly those points and its star
is the chosen point (``best.json``). Both are written into the PNG's text
chunks (``collabvit:star``, ``collabvit:frontier``, JSON), so a test can read
what was drawn.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..metrics import pareto_frontier
from ..sweep.grid import EDGE
from ..sweep.points import EDGE_ONLY
from . import comparisons as cmp
from . import drawing as dr
from .drawing import Row
from .tables import describe_point, point_identity

if TYPE_CHECKING:
    from ..sweep.run import SweepResult

__all__ = ["FIGURES", "plot_histogram", "plot_tradeoff", "render_figures", "render_figures_from"]

logger = logging.getLogger(__name__)

FIGURES = ("tradeoff", "random", "scores", "rules", "measures", "encoder", "histogram")


def tradeoff_points(rows: Sequence[Row]) -> list[Row]:
    """What the trade-off figure draws, in row order: every edge grid point with an
    accuracy, then the edge-only point (as :func:`collabvit.sweep.points.frontier_rows`)."""
    grid = [r for r in rows if r.get("kind") == "grid" and r.get("encoder") == EDGE]
    edge_only = [r for r in rows if r.get("kind") == "baseline" and r.get("rule") == EDGE_ONLY]
    return [r for r in grid + edge_only if r.get("accuracy") is not None]


def _tradeoff_lines(ax: Any, rows: Sequence[Row], spec: Mapping[str, Any]) -> None:
    """The family's lines (one per eta of its gate, one without), the whole-image gates,
    then every other edge grid point as a grey dot."""
    from matplotlib import colormaps

    family = {"encoder": EDGE, "score": spec["score"], "rule": spec["rule"]}
    gated = [m for m in spec["measures"] if dr.gates(m)]
    measure = gated[0] if gated else None
    drawn: set[int] = set()
    lines = dr.select(rows, measure=measure, **family) if measure else []
    etas = sorted({r["eta"] for r in lines})
    cmap = colormaps["viridis"]
    for i, eta in enumerate(etas):
        color = cmap(i / max(1, len(etas) - 1) * 0.9)
        dr.line(ax, [r for r in lines if r["eta"] == eta], f"η = {eta:g} ({measure})", color=color)
    ungated = dr.select(
        rows,
        where=lambda r: not dr.gates(r["measure"]) and r["measure"] in spec["measures"],
        **family,
    )
    dr.line(ax, ungated, "no gating", color="tab:gray", ls="--")
    drawn |= {id(r) for r in lines + ungated}
    others = [r for r in dr.select(rows, encoder=EDGE) if id(r) not in drawn]
    whole = [r for r in others if not dr.has_parameter(r["rule"])]
    groups = sorted({(r["score"], r["rule"], r["measure"]) for r in whole})
    for i, (score, rule, m) in enumerate(groups):
        pts = [r for r in whole if (r["score"], r["rule"], r["measure"]) == (score, rule, m)]
        gate = f"{dr.measure_label(m)} gate" if dr.gates(m) else "no gate"
        style = dict(dr.STYLES[(i + 1) % len(dr.STYLES)])
        dr.line(
            ax,
            pts,
            f"{dr.rule_label(rule)}, {gate}",
            color=dr.PALETTE[(i + 1) % len(dr.PALETTE)],
            **style,
        )
    rest = [r for r in others if dr.has_parameter(r["rule"])]
    if rest:
        dr.line(ax, rest, f"other grid points ({len(rest)})", ls="none", marker=".", color="0.6")


def plot_tradeoff(
    rows: Sequence[Row], best: Row | None, info: Mapping[str, Any], stem: Path
) -> list[Path]:
    """Figs. 8/9: accuracy vs cost of every edge point, the frontier, references, the star."""
    points = tradeoff_points(rows)
    if not points:
        return []
    fig, (ax,) = dr.new_figure(width=7.6)
    spec = info["frontier"]
    _tradeoff_lines(ax, rows, spec)
    edge_only = [r for r in points if r.get("kind") == "baseline"]
    if edge_only:
        dr.line(ax, edge_only, "_edge only point", ls="none", marker="o", color="tab:red")
    frontier = pareto_frontier(points)
    dr.line(
        ax,
        frontier,
        "achievable trade-off (Pareto frontier)",
        band=False,  # its points carry their series' bands
        color="black",
        lw=2.0,
        ms=4,
        zorder=5,
    )
    dr.references(ax, info)
    text: dict[str, Any] = {"collabvit:frontier": [point_identity(r) | _xy(r) for r in frontier]}
    if best is not None and best.get("accuracy") is not None:
        ax.plot(
            [best["communication_cost"]],
            [100.0 * best["accuracy"]],
            marker="*",
            ms=16,
            color="red",
            mec="black",
            ls="none",
            zorder=6,
            label=f"chosen: {describe_point(best)}\n"
            f"cost {best['communication_cost']:.3f}, {100 * best['accuracy']:.2f}%"
            f"{_interval_text(best)}",
        )
        dr.interval_band(ax, [best], "red", points=True)
        text["collabvit:star"] = point_identity(best) | _xy(best)
    family = f"{dr.rule_label(spec['rule'])} ({spec['score']} score)"
    what = f"Trade-off: every edge grid point (bands: 95% CI); lines: {family}"
    dr.finish(ax, dr.pair_title(info, what))
    return dr.save(fig, stem, text)


def _interval_text(row: Row) -> str:
    lo, hi = row.get("accuracy_low"), row.get("accuracy_high")
    return "" if lo is None or hi is None else f" (95% CI {100 * lo:.2f}-{100 * hi:.2f}%)"


def _xy(row: Row) -> dict[str, Any]:
    return {"communication_cost": row["communication_cost"], "accuracy": row["accuracy"]}


def plot_histogram(hist: Mapping[str, Any], info: Mapping[str, Any], stem: Path) -> list[Path]:
    """Fig. 7: normalised histogram of the edge's mean attention scores (log x)."""
    edges = hist["edges"]
    fractions = hist["fractions"]
    if len(edges) < 2:
        return []
    fig, (ax,) = dr.new_figure()
    ax.stairs(fractions, edges, fill=True, color="tab:blue", alpha=0.75, label="patches")
    log_x = edges[-1] > 10 * edges[0] > 0  # a log axis only when the scores span a decade
    if log_x:
        from matplotlib.ticker import NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
    n = hist.get("num_patches") or info.get("num_patches")
    if n:
        ax.axvline(1.0 / n, color="black", ls="--", lw=1.0, label=f"uniform score 1/N (N = {n})")
    zeros = hist.get("zeros", 0)
    extra = f"; {zeros} zero scores not shown" if zeros else ""
    ax.set_xlabel(
        "mean attention score of a patch (renormalised: each image sums to 1"
        + (", log scale)" if log_x else ")")
    )
    ax.set_ylabel("fraction of all patches")
    ax.set_title(
        f"Mean attention scores of the edge model {info['edge']}\n"
        f"{hist['total']} patches of {info['images']} images{extra}",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    return dr.save(fig, stem)


def render_figures_from(
    rows: Sequence[Row],
    frontier: Sequence[Row],
    best: Row | None,
    info: Mapping[str, Any],
    histogram: Mapping[str, Any] | None,
    out_dir: str | Path,
) -> list[Path]:
    """Draw every figure the rows allow into ``out_dir`` (``NAME.png`` + ``NAME.pdf``).

    ``info`` holds ``edge``, ``server``, ``images``, ``num_patches``,
    ``edge_accuracy``, ``server_accuracy`` and ``frontier`` (a dict with
    ``score``, ``rule``, ``measures``: the family drawn as lines in the
    trade-off figure). ``frontier`` is drawn as the reference line of Fig. 10.
    """
    out = Path(out_dir)
    paths: list[Path] = []
    if any(r.get("accuracy") is not None for r in rows):
        paths += plot_tradeoff(rows, best, info, out / "tradeoff")
        paths += cmp.plot_random(rows, frontier, info, out / "random")
        paths += cmp.plot_scores(rows, info, out / "scores")
        paths += cmp.plot_rules(rows, info, out / "rules")
        paths += cmp.plot_measures(rows, info, out / "measures")
        paths += cmp.plot_encoder(rows, info, out / "encoder")
    else:
        logger.warning("no labels: accuracy figures skipped")
    if histogram is not None:
        paths += plot_histogram(histogram, info, out / "histogram")
    drawn = {p.stem for p in paths}
    skipped = [f for f in FIGURES if f not in drawn]
    if skipped:
        logger.info("figures not drawn (the grid has no series for them): %s", ", ".join(skipped))
    return paths


def render_figures(result: SweepResult, out_dir: str | Path) -> list[Path]:
    """Every figure of a :class:`~collabvit.sweep.SweepResult`."""
    meta = result.meta
    info = {
        "edge": meta["edge"],
        "server": meta["server"],
        "images": meta["images"],
        "num_patches": meta["num_patches_per_image"],
        "edge_accuracy": result.edge_accuracy,
        "server_accuracy": result.server_accuracy,
        "frontier": meta["grid"]["frontier"],
    }
    best = result.best.row if result.best is not None else None
    return render_figures_from(result.rows, result.frontier, best, info, result.histogram, out_dir)
