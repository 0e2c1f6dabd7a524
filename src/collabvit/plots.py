"""Figures of a sweep (paper Figs. 7-14), written as PNG and PDF.

Each figure is drawn from the rows of ``results.csv`` (see
:mod:`collabvit.sweep`); a figure whose series the grid did not include is
skipped with a log line. matplotlib is imported only when a figure is drawn,
through its object-oriented API on the Agg canvas, so importing collabvit never
touches the user's matplotlib backend.

Axes: communication cost is the fraction of all patches of all images that is
transmitted (paper Sec. VI-A), accuracy is top-1 in percent.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .sweep import SweepResult

__all__ = ["FIGURES", "render_figures", "render_figures_from"]

logger = logging.getLogger(__name__)

FIGURES = ("tradeoff", "random", "scores", "rules", "measures", "encoder", "histogram")

X_LABEL = "communication cost (fraction of all patches transmitted)"
Y_LABEL = "top-1 accuracy (%)"
SCORE_LABELS = {
    "mean": "mean attention (last layer)",
    "rollout": "attention rollout (per-head product)",
    "rollout-standard": "attention rollout (standard, heads averaged first)",
}
RULE_LABELS = {
    "top-k": "top-k selection",
    "threshold": "attention threshold selection",
    "attention-sum": "attention-sum threshold selection",
    "random": "random patches (MOT-style)",
}
MEASURE_LABELS = {
    "min-entropy": "min-entropy",
    "shannon": "Shannon entropy",
    "margin": "margin (p1 − p2)",
}
Row = Mapping[str, Any]
STYLES: tuple[dict[str, Any], ...] = (  # distinct dashes and markers: equal curves stay visible
    {"ls": "-", "marker": "o"},
    {"ls": "--", "marker": "s"},
    {"ls": ":", "marker": "^", "lw": 1.8},
    {"ls": "-.", "marker": "D"},
)


def _figure(ncols: int = 1, width: float = 7.0, height: float = 4.6) -> tuple[Any, list[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(1, ncols, squeeze=False)[0])
    return fig, axes


def _save(fig: Any, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        path = stem.with_suffix(f".{ext}")
        fig.savefig(path, bbox_inches="tight", dpi=150)
        paths.append(path)
    return paths


def _select(rows: Sequence[Row], **want: Any) -> list[Row]:
    out = []
    for r in rows:
        if r.get("kind") != "grid" or r.get("accuracy") is None:
            continue
        if all(r.get(k) == v for k, v in want.items()):
            out.append(r)
    return sorted(out, key=lambda r: (r["communication_cost"], r["threshold"]))


def _line(ax: Any, rows: Sequence[Row], label: str, **kw: Any) -> None:
    if not rows:
        return
    x = [r["communication_cost"] for r in rows]
    y = [100.0 * r["accuracy"] for r in rows]
    style = {"marker": "o", "ms": 3.5, "lw": 1.3}
    style.update(kw)
    ax.plot(x, y, label=label, **style)


def _references(ax: Any, info: Mapping[str, Any], edge: bool = True) -> None:
    if edge and info.get("edge_accuracy") is not None:
        ax.axhline(
            100.0 * info["edge_accuracy"],
            color="tab:red",
            ls="--",
            lw=1.0,
            label=f"edge only ({info['edge']}): {100 * info['edge_accuracy']:.2f}%",
        )
    if info.get("server_accuracy") is not None:
        ax.axhline(
            100.0 * info["server_accuracy"],
            color="tab:blue",
            ls=":",
            lw=1.2,
            label=f"server only ({info['server']}): {100 * info['server_accuracy']:.2f}%",
        )


def _fit_y(ax: Any, min_span: float = 2.0) -> None:
    """Keep at least ``min_span`` accuracy points visible (flat curves of untrained models)."""
    ys: list[float] = []
    for line in ax.get_lines():
        ys += [float(v) for v in line.get_ydata()]
    if not ys:
        return
    lo, hi = min(ys), max(ys)
    if hi - lo < min_span:
        mid = 0.5 * (lo + hi)
        lo = max(0.0, mid - min_span / 2)
        hi = lo + min_span
    pad = 0.06 * (hi - lo)
    ax.set_ylim(lo - pad, hi + pad)
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")


def _finish(ax: Any, title: str, xlabel: str = X_LABEL, ylabel: str = Y_LABEL) -> None:
    _fit_y(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)


def _frontier_line(ax: Any, frontier: Sequence[Row], label: str) -> None:
    pts = [r for r in frontier if r.get("accuracy") is not None]
    if len(pts) >= 1:
        _line(ax, pts, label, color="black", lw=2.0, ms=4, zorder=5)


def _pair_title(info: Mapping[str, Any], what: str) -> str:
    return f"{what}\nedge {info['edge']} → server {info['server']}, {info['images']} images"


# --------------------------------------------------------------------------- figures


def plot_tradeoff(
    rows: Sequence[Row],
    frontier: Sequence[Row],
    best: Row | None,
    info: Mapping[str, Any],
    stem: Path,
) -> list[Path]:
    """Figs. 8/9: accuracy vs cost, one line per eta, the frontier, references, chosen point."""
    spec = info["frontier"]
    gated = [m for m in spec["measures"] if m != "none"]
    measure = gated[0] if gated else None
    base = {"encoder": "edge", "score": spec["score"], "rule": spec["rule"]}
    lines = _select(rows, measure=measure, **base) if measure else []
    ungated = _select(rows, measure="none", **base) if "none" in spec["measures"] else []
    if not lines and not ungated:
        return []
    from matplotlib import colormaps

    fig, (ax,) = _figure(width=7.4)
    etas = sorted({r["eta"] for r in lines})
    cmap = colormaps["viridis"]
    for i, eta in enumerate(etas):
        color = cmap(i / max(1, len(etas) - 1) * 0.9)
        sym = "η_m" if measure == "min-entropy" else "η"
        _line(ax, [r for r in lines if r["eta"] == eta], f"{sym} = {eta:g}", color=color)
    _line(ax, ungated, "no gating", color="tab:gray", ls="--")
    _frontier_line(ax, frontier, "achievable trade-off (Pareto frontier)")
    _references(ax, info)
    if best is not None and best.get("accuracy") is not None:
        eta_text = "" if best["measure"] == "none" else f", η = {best['eta']:g}"
        ax.plot(
            [best["communication_cost"]],
            [100.0 * best["accuracy"]],
            marker="*",
            ms=16,
            color="red",
            mec="black",
            ls="none",
            zorder=6,
            label=(
                f"chosen: threshold {best['threshold']:g}{eta_text}\n"
                f"cost {best['communication_cost']:.3f}, {100 * best['accuracy']:.2f}%"
            ),
        )
    rule = RULE_LABELS.get(spec["rule"], spec["rule"])
    gate = MEASURE_LABELS.get(measure or "", "no gating")
    _finish(ax, _pair_title(info, f"Trade-off: {rule}, {gate} gate ({spec['score']} score)"))
    return _save(fig, stem)


def plot_random(
    rows: Sequence[Row], frontier: Sequence[Row], info: Mapping[str, Any], stem: Path
) -> list[Path]:
    """Fig. 10: random patches (MOT-style) vs attention-aware selection at equal counts."""
    random = _select(rows, encoder="edge", rule="random", measure="none")
    if not random:
        return []
    score = random[0]["score"]
    fig, (ax,) = _figure()
    _line(ax, random, RULE_LABELS["random"], color="tab:orange", marker="s")
    _line(
        ax,
        _select(rows, encoder="edge", rule="top-k", measure="none", score=score),
        "top-k attention (same patch counts)",
        color="tab:green",
        ls="--",
        marker="^",
    )
    _line(
        ax,
        _select(rows, encoder="edge", rule="attention-sum", measure="none", score=score),
        "attention-sum, no gating",
        color="tab:purple",
        ls="-.",
        marker="D",
    )
    _frontier_line(ax, frontier, "proposed (frontier with gating)")
    _references(ax, info)
    _finish(ax, _pair_title(info, "Random vs attention-aware patch selection"))
    return _save(fig, stem)


def plot_scores(rows: Sequence[Row], info: Mapping[str, Any], stem: Path) -> list[Path]:
    """Fig. 11: mean attention vs the two rollouts (attention-sum, no gating), with a zoom."""
    series = {
        s: _select(rows, encoder="edge", rule="attention-sum", measure="none", score=s)
        for s in SCORE_LABELS
    }
    series = {s: v for s, v in series.items() if v}
    if len(series) < 2:
        return []
    fig, axes = _figure(ncols=2, width=12.0)
    colors = {"mean": "tab:blue", "rollout": "tab:orange", "rollout-standard": "tab:green"}
    for ax in axes:
        for s, pts in series.items():
            _line(ax, pts, SCORE_LABELS[s], color=colors[s], **STYLES[list(SCORE_LABELS).index(s)])
        _references(ax, info)
    axes[0].set_xlabel(X_LABEL)
    axes[0].set_ylabel(Y_LABEL)
    axes[0].set_title("(a) overall", fontsize=10)
    axes[0].grid(alpha=0.3)
    _fit_y(axes[0])
    # (b): the region near the server's accuracy
    server = info.get("server_accuracy")
    near = [
        r
        for pts in series.values()
        for r in pts
        if server is not None and 100.0 * r["accuracy"] >= 100.0 * server - 5.0
    ]
    if near and server is not None:
        xs = [r["communication_cost"] for r in near]
        xpad = max(0.01, 0.05 * (max(xs) - min(xs)))
        axes[1].set_xlim(min(xs) - xpad, max(xs) + xpad)
    fig.suptitle(
        _pair_title(info, "Patch importance: mean attention vs attention rollout"), fontsize=10
    )
    _finish(axes[1], "(b) near the server's accuracy (within 5 points)")
    if near and server is not None:
        lo = min(100.0 * r["accuracy"] for r in near)
        hi = max(max(100.0 * r["accuracy"] for r in near), 100.0 * server)
        if hi - lo >= 0.5:
            pad = 0.06 * (hi - lo)
            axes[1].set_ylim(lo - pad, hi + pad)
    return _save(fig, stem)


def plot_rules(rows: Sequence[Row], info: Mapping[str, Any], stem: Path) -> list[Path]:
    """Fig. 12: top-k vs attention threshold vs attention-sum (mean score, no gating)."""
    score = info["frontier"]["score"]
    series = {
        rule: _select(rows, encoder="edge", rule=rule, measure="none", score=score)
        for rule in ("top-k", "threshold", "attention-sum")
    }
    series = {k: v for k, v in series.items() if v}
    if len(series) < 2:
        return []
    fig, (ax,) = _figure()
    colors = {"top-k": "tab:green", "threshold": "tab:orange", "attention-sum": "tab:purple"}
    for i, (rule, pts) in enumerate(series.items()):
        _line(ax, pts, RULE_LABELS[rule], color=colors[rule], **STYLES[i])
    _references(ax, info)
    _finish(ax, _pair_title(info, f"Patch selection rules ({score} score, no gating)"))
    return _save(fig, stem)


def plot_measures(rows: Sequence[Row], info: Mapping[str, Any], stem: Path) -> list[Path]:
    """Fig. 13: min-entropy vs Shannon vs margin gates, whole images transmitted."""
    n = float(info["num_patches"])
    series = {}
    for m in MEASURE_LABELS:
        pts = [
            r
            for r in _select(rows, encoder="edge", measure=m)
            if r["rule"] in ("top-k", "random") and r["threshold"] >= n
        ]
        if pts:
            series[m] = pts
    if not series:
        return []
    fig, (ax,) = _figure()
    colors = {"min-entropy": "tab:blue", "shannon": "tab:orange", "margin": "tab:green"}
    for m, pts in series.items():
        _line(ax, pts, MEASURE_LABELS[m], color=colors[m], **STYLES[list(MEASURE_LABELS).index(m)])
    _references(ax, info)
    _finish(
        ax,
        _pair_title(info, "Entropy-aware transmission (whole images, no patch selection)"),
        xlabel="communication cost (fraction of images transmitted, whole images)",
    )
    return _save(fig, stem)


def plot_encoder(rows: Sequence[Row], info: Mapping[str, Any], stem: Path) -> list[Path]:
    """Fig. 14: edge vs server as the semantic encoder; the server classifies."""
    server_enc = _select(rows, encoder="server", rule="attention-sum", measure="none")
    if not server_enc:
        return []
    edge_enc = _select(rows, encoder="edge", score="mean", rule="attention-sum", measure="none")
    fig, (ax,) = _figure()
    _line(ax, edge_enc, f"edge model ({info['edge']}) selects", color="tab:green")
    _line(
        ax,
        server_enc,
        f"server model ({info['server']}) selects",
        color="tab:blue",
        marker="s",
        ls="--",
    )
    _references(ax, info, edge=False)
    _finish(
        ax,
        _pair_title(
            info,
            "Semantic encoder: whose mean attention picks the patches (attention-sum, no gating)",
        ),
        ylabel="top-1 accuracy of the server (%)",
    )
    return _save(fig, stem)


def plot_histogram(hist: Mapping[str, Any], info: Mapping[str, Any], stem: Path) -> list[Path]:
    """Fig. 7: normalised histogram of the edge's mean attention scores (log x)."""
    edges = hist["edges"]
    fractions = hist["fractions"]
    if len(edges) < 2:
        return []
    fig, (ax,) = _figure()
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
    return _save(fig, stem)


# --------------------------------------------------------------------------- all at once


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
    ``score``, ``rule``, ``measures``).
    """
    out = Path(out_dir)
    paths: list[Path] = []
    has_acc = any(r.get("accuracy") is not None for r in rows)
    if has_acc:
        paths += plot_tradeoff(rows, frontier, best, info, out / "tradeoff")
        paths += plot_random(rows, frontier, info, out / "random")
        paths += plot_scores(rows, info, out / "scores")
        paths += plot_rules(rows, info, out / "rules")
        paths += plot_measures(rows, info, out / "measures")
        paths += plot_encoder(rows, info, out / "encoder")
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
    return render_figures_from(
        result.rows, result.frontier, result.best, info, result.histogram, out_dir
    )
