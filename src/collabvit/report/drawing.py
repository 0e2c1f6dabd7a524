"""Shared drawing helpers of the sweep figures: axes, lines, references, saving.

matplotlib is imported only when a figure is drawn, through its
object-oriented API on the Agg canvas, so importing collabvit never touches
the user's matplotlib backend.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..attention import SCORES
from ..gating import MEASURES
from ..selection import RULES

__all__ = [
    "PALETTE",
    "STYLES",
    "X_LABEL",
    "Y_LABEL",
    "Row",
    "finish",
    "fit_y",
    "gates",
    "has_parameter",
    "interval_band",
    "line",
    "measure_label",
    "new_figure",
    "pair_title",
    "references",
    "rule_label",
    "save",
    "score_label",
    "select",
]

Row = Mapping[str, Any]
"""A results row (:class:`collabvit.sweep.ResultRow` or a dict with its keys)."""

X_LABEL = "communication cost (fraction of all patches transmitted)"
Y_LABEL = "top-1 accuracy (%)"
STYLES: tuple[dict[str, Any], ...] = (  # distinct dashes and markers: equal curves stay visible
    {"ls": "-", "marker": "o"},
    {"ls": "--", "marker": "s"},
    {"ls": ":", "marker": "^", "lw": 1.8},
    {"ls": "-.", "marker": "D"},
)
PALETTE = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink")


def gates(measure: str) -> bool:
    """Whether the measure gates (False for ``none`` and for names not in MEASURES)."""
    m = MEASURES.get(measure)
    return m is not None and m.gates


def has_parameter(rule: str) -> bool:
    """Whether the rule selects by a parameter (False for ``all``: whole images)."""
    r = RULES.get(rule)
    return r is None or bool(r.parameter)


def measure_label(measure: str) -> str:
    m = MEASURES.get(measure)
    return m.label if m is not None and m.label else measure


def rule_label(rule: str) -> str:
    r = RULES.get(rule)
    return r.label if r is not None and r.label else rule


def score_label(score: str) -> str:
    s = SCORES.get(score)
    return s.label if s is not None and s.label else score


def new_figure(ncols: int = 1, width: float = 7.0, height: float = 4.6) -> tuple[Any, list[Any]]:
    """A constrained-layout figure on the Agg canvas and its ``ncols`` axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(1, ncols, squeeze=False)[0])
    return fig, axes


def save(fig: Any, stem: Path, png_text: Mapping[str, Any] | None = None) -> list[Path]:
    """``stem.png`` and ``stem.pdf``; ``png_text`` goes into the PNG's text chunks as JSON."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        path = stem.with_suffix(f".{ext}")
        extra: dict[str, Any] = {}
        if ext == "png" and png_text:
            extra["metadata"] = {k: json.dumps(v, sort_keys=True) for k, v in png_text.items()}
        fig.savefig(path, bbox_inches="tight", dpi=150, **extra)
        paths.append(path)
    return paths


def select(
    rows: Sequence[Row], where: Callable[[Row], bool] | None = None, **want: Any
) -> list[Row]:
    """The grid rows with an accuracy whose fields equal ``want`` (and pass ``where``), by cost."""
    out = []
    for r in rows:
        if r.get("kind") != "grid" or r.get("accuracy") is None:
            continue
        if all(r.get(k) == v for k, v in want.items()) and (where is None or where(r)):
            out.append(r)
    return sorted(out, key=lambda r: (r["communication_cost"], r["threshold"] or 0.0))


def line(ax: Any, rows: Sequence[Row], label: str, band: bool = True, **kw: Any) -> None:
    """Accuracy (%) against communication cost, one marker per row, with its 95 % interval.

    The interval (the rows' ``accuracy_low`` / ``accuracy_high``, Wilson) is a
    shaded band around a line and an error bar on a point series (``ls="none"``);
    rows without it (results written before the columns existed) draw none.
    """
    if not rows:
        return
    x = [r["communication_cost"] for r in rows]
    y = [100.0 * r["accuracy"] for r in rows]
    style: dict[str, Any] = {"marker": "o", "ms": 3.5, "lw": 1.3}
    style.update(kw)
    (drawn,) = ax.plot(x, y, label=label, **style)
    if band:
        interval_band(ax, rows, drawn.get_color(), points=style.get("ls") == "none")


def interval_band(ax: Any, rows: Sequence[Row], color: Any, points: bool = False) -> None:
    """The rows' 95 % accuracy intervals (%): a band along a line, or error bars."""
    if not rows or any(r.get("accuracy_low") is None for r in rows):
        return
    x = [r["communication_cost"] for r in rows]
    lo = [100.0 * r["accuracy_low"] for r in rows]
    hi = [100.0 * r["accuracy_high"] for r in rows]
    if points or len(rows) == 1:
        y = [100.0 * r["accuracy"] for r in rows]
        yerr = [[a - b for a, b in zip(y, lo, strict=True)],
                [b - a for a, b in zip(y, hi, strict=True)]]  # fmt: skip
        ax.errorbar(x, y, yerr=yerr, fmt="none", ecolor=color, elinewidth=0.8, alpha=0.6,
                    capsize=0)  # fmt: skip
    else:
        ax.fill_between(x, lo, hi, color=color, alpha=0.12, lw=0)


def references(ax: Any, info: Mapping[str, Any], edge: bool = True) -> None:
    """Horizontal lines at the edge's and the server's accuracy alone."""
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


def fit_y(ax: Any, min_span: float = 2.0) -> None:
    """Keep at least ``min_span`` accuracy points visible (flat curves of untrained models)."""
    ys: list[float] = []
    for ln in ax.get_lines():
        ys += [float(v) for v in ln.get_ydata()]
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


def finish(ax: Any, title: str, xlabel: str = X_LABEL, ylabel: str = Y_LABEL) -> None:
    """Axis range, labels, title, grid and the legend outside the axes."""
    fit_y(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)


def pair_title(info: Mapping[str, Any], what: str) -> str:
    return f"{what}\nedge {info['edge']} → server {info['server']}, {info['images']} images"
