"""The comparison figures of a sweep (paper Figs. 10-14), from the rows of ``results.csv``.

- ``random`` (Fig. 10): random patches vs attention-aware selection at equal counts;
- ``scores`` (Fig. 11): every patch score of :data:`~collabvit.attention.SCORES`;
- ``rules`` (Fig. 12): every rule of :data:`~collabvit.selection.RULES` with a parameter;
- ``measures`` (Fig. 13): every gating measure of :data:`~collabvit.gating.MEASURES`
  on whole images (rules without a parameter);
- ``encoder`` (Fig. 14): the edge's vs the server's mean attention choosing.

Each returns the written paths, or nothing when the grid lacks its series.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..attention import SCORES
from ..gating import MEASURES
from ..selection import RULES
from ..sweep.grid import EDGE, SERVER
from . import drawing as dr
from .drawing import Row

__all__ = ["plot_encoder", "plot_measures", "plot_random", "plot_rules", "plot_scores"]

RANDOM_RULE = "random"  # Fig. 10's subject (the MOT-style baseline) ...
RANDOM_REFERENCES = ("top-k", "attention-sum")  # ... and the rules it is compared with


def _ungated(r: Row) -> bool:
    return not dr.gates(r["measure"])


def plot_random(
    rows: Sequence[Row], frontier: Sequence[Row], info: Mapping[str, Any], stem: Path
) -> list[Path]:
    """Fig. 10: random patches (MOT-style) vs attention-aware selection at equal counts."""
    random = dr.select(rows, _ungated, encoder=EDGE, rule=RANDOM_RULE)
    if not random:
        return []
    score = random[0]["score"]
    fig, (ax,) = dr.new_figure()
    dr.line(ax, random, f"{dr.rule_label(RANDOM_RULE)} patches", color="tab:orange", marker="s")
    for i, rule in enumerate(RANDOM_REFERENCES):
        pts = dr.select(rows, _ungated, encoder=EDGE, rule=rule, score=score)
        style = dr.STYLES[(i + 1) % len(dr.STYLES)]
        dr.line(ax, pts, f"{dr.rule_label(rule)}, no gating", color=dr.PALETTE[i + 2], **style)
    front = [r for r in frontier if r.get("accuracy") is not None]
    dr.line(ax, front, "achievable trade-off (every edge point)", color="black", lw=2.0, ms=4)
    dr.references(ax, info)
    dr.finish(ax, dr.pair_title(info, "Random vs attention-aware patch selection"))
    return dr.save(fig, stem)


def plot_scores(rows: Sequence[Row], info: Mapping[str, Any], stem: Path) -> list[Path]:
    """Fig. 11: the patch scores compared (attention-sum, no gating), with a zoom."""
    rule = info["frontier"]["rule"]
    series = {s: dr.select(rows, _ungated, encoder=EDGE, rule=rule, score=s) for s in SCORES}
    series = {s: v for s, v in series.items() if v}
    if len(series) < 2:
        return []
    fig, axes = dr.new_figure(ncols=2, width=12.0)
    for ax in axes:
        for i, (s, pts) in enumerate(series.items()):
            style = dr.STYLES[i % len(dr.STYLES)]
            dr.line(ax, pts, dr.score_label(s), color=dr.PALETTE[i % len(dr.PALETTE)], **style)
        dr.references(ax, info)
    axes[0].set_xlabel(dr.X_LABEL)
    axes[0].set_ylabel(dr.Y_LABEL)
    axes[0].set_title("(a) overall", fontsize=10)
    axes[0].grid(alpha=0.3)
    dr.fit_y(axes[0])
    server = info.get("server_accuracy")  # (b): the region near the server's accuracy
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
    title = f"Patch importance: the scores compared ({dr.rule_label(rule)}, no gating)"
    fig.suptitle(dr.pair_title(info, title), fontsize=10)
    dr.finish(axes[1], "(b) near the server's accuracy (within 5 points)")
    if near and server is not None:
        lo = min(100.0 * r["accuracy"] for r in near)
        hi = max(max(100.0 * r["accuracy"] for r in near), 100.0 * server)
        if hi - lo >= 0.5:
            pad = 0.06 * (hi - lo)
            axes[1].set_ylim(lo - pad, hi + pad)
    return dr.save(fig, stem)


def plot_rules(rows: Sequence[Row], info: Mapping[str, Any], stem: Path) -> list[Path]:
    """Fig. 12: the selection rules with a parameter (one score, no gating)."""
    score = info["frontier"]["score"]
    series = {
        rule: dr.select(rows, _ungated, encoder=EDGE, rule=rule, score=score)
        for rule, spec in RULES.items()
        if spec.parameter
    }
    series = {k: v for k, v in series.items() if v}
    if len(series) < 2:
        return []
    fig, (ax,) = dr.new_figure()
    for i, (rule, pts) in enumerate(series.items()):
        style = dr.STYLES[i % len(dr.STYLES)]
        color = dr.PALETTE[i % len(dr.PALETTE)]
        dr.line(ax, pts, f"{dr.rule_label(rule)} selection", color=color, **style)
    dr.references(ax, info)
    dr.finish(ax, dr.pair_title(info, f"Patch selection rules ({score} score, no gating)"))
    return dr.save(fig, stem)


def plot_measures(rows: Sequence[Row], info: Mapping[str, Any], stem: Path) -> list[Path]:
    """Fig. 13: the gate measures compared, whole images transmitted."""
    series = {}
    for m, spec in MEASURES.items():
        if not spec.gates:
            continue
        pts = dr.select(rows, lambda r: not dr.has_parameter(r["rule"]), encoder=EDGE, measure=m)
        if pts:
            series[m] = pts
    if not series:
        return []
    fig, (ax,) = dr.new_figure()
    for i, (m, pts) in enumerate(series.items()):
        style = dr.STYLES[i % len(dr.STYLES)]
        dr.line(ax, pts, dr.measure_label(m), color=dr.PALETTE[i % len(dr.PALETTE)], **style)
    dr.references(ax, info)
    dr.finish(
        ax,
        dr.pair_title(info, "Entropy-aware transmission (whole images, no patch selection)"),
        xlabel="communication cost (fraction of images transmitted, whole images)",
    )
    return dr.save(fig, stem)


def plot_encoder(rows: Sequence[Row], info: Mapping[str, Any], stem: Path) -> list[Path]:
    """Fig. 14: edge vs server as the semantic encoder; the server classifies."""
    server_enc = dr.select(rows, _ungated, encoder=SERVER)
    if not server_enc:
        return []
    score, rule = server_enc[0]["score"], server_enc[0]["rule"]
    edge_enc = dr.select(rows, _ungated, encoder=EDGE, score=score, rule=rule)
    fig, (ax,) = dr.new_figure()
    dr.line(ax, edge_enc, f"edge model ({info['edge']}) selects", color="tab:green")
    label = f"server model ({info['server']}) selects"
    dr.line(ax, server_enc, label, color="tab:blue", marker="s", ls="--")
    dr.references(ax, info, edge=False)
    what = f"Semantic encoder: whose {score} attention picks the patches ({rule}, no gating)"
    dr.finish(ax, dr.pair_title(info, what), ylabel="top-1 accuracy of the server (%)")
    return dr.save(fig, stem)
