"""Tables II and III of the paper on a sweep's data, as Markdown, and how points are named.

:func:`describe_point` is the one name of an operating point: ``tables.md``,
the star of the trade-off figure and the demo headline all use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..gating import MEASURES
from ..selection import RULES
from ..sweep.grid import EDGE, SERVER
from ..sweep.paper import PAPER_TABLE_II, PAPER_TABLE_III, REFERENCE_MEASURE, REFERENCE_RULE
from ..sweep.points import EDGE_ONLY, SERVER_ONLY

if TYPE_CHECKING:
    from ..sweep.points import ResultRow
    from ..sweep.run import SweepResult

__all__ = ["describe_point", "point_identity", "tables_markdown"]

IDENTITY_KEYS = ("encoder", "score", "rule", "threshold", "measure", "eta")


def point_identity(row: Mapping[str, Any]) -> dict[str, Any]:
    """The fields that name a grid point (encoder, score, rule, threshold, measure, eta)."""
    return {k: row.get(k) for k in IDENTITY_KEYS}


def describe_point(row: Mapping[str, Any]) -> str:
    """A grid point in words, e.g. ``attention-sum delta_sum = 0.99 (mean score), min-entropy
    eta = 0.1`` or ``all patches, min-entropy eta = 0.35``."""
    rule = RULES.get(row["rule"])
    threshold = row.get("threshold")
    if rule is None:
        what = f"{row['rule']} {threshold:g}" if threshold is not None else str(row["rule"])
    elif rule.parameter and threshold is not None:
        value = f"{int(threshold)}" if rule.count else f"{threshold:g}"
        owner = "server's " if row.get("encoder") == SERVER else ""
        what = f"{rule.label} {rule.parameter} = {value} ({owner}{row['score']} score)"
    else:
        what = rule.label or rule.name
    measure = MEASURES.get(row["measure"])
    if measure is not None and not measure.gates:
        return f"{what}, no gate"
    return f"{what}, {row['measure']} eta = {row['eta']:g}"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def _ci(row: Mapping[str, Any] | None) -> str:
    """`` (95% CI a-b%)`` of a row's Wilson interval, or nothing."""
    if row is None or row.get("accuracy_low") is None:
        return ""
    return f" (95% CI {100 * row['accuracy_low']:.2f}-{100 * row['accuracy_high']:.2f}%)"


def _baseline(result: SweepResult, name: str) -> ResultRow | None:
    return next((r for r in result.rows if r.kind == "baseline" and r.rule == name), None)


def _header(result: SweepResult) -> list[str]:
    meta = result.meta
    lines = [
        "# Sweep tables",
        "",
        f"Edge `{meta['edge']}` ({meta['edge_source']}), server `{meta['server']}` "
        f"({meta['server_source']}), {meta['images']} images "
        f"({meta['skipped_files']} skipped), {meta['num_patches_per_image']} patches per image.",
        "",
        f"- edge only: {_pct(result.edge_accuracy)} top-1{_ci(_baseline(result, EDGE_ONLY))}",
        f"- server only (full image): {_pct(result.server_accuracy)} top-1"
        f"{_ci(_baseline(result, SERVER_ONLY))}",
    ]
    b = result.best
    if b is not None:
        r = b.row
        lines.append(
            f"- chosen point (cheapest edge grid point within {b.target_drop_points:g} accuracy "
            f"point(s) of the server{'' if b.within_target else '; none was, so the most accurate'}"
            f"): {describe_point(r)} -> {_pct(r.accuracy)}{_ci(r)}, communication cost "
            f"{r.communication_cost:.4f} ({100 * b.communication_reduction:.1f}% "
            f"reduction), {r.transmit_ratio:.4f} of images transmitted, "
            f"{r.mean_patches_transmitted:.2f} patches per transmitted image"
        )
    return lines


def _table_ii(result: SweepResult) -> list[str]:
    n_patches = result.meta["num_patches_per_image"]
    score = result.grid.frontier.score
    rows: list[ResultRow] = [
        r
        for r in result.grid_rows()
        if r.encoder == EDGE
        and r.rule == REFERENCE_RULE
        and r.score == score
        and not MEASURES[r.measure].gates
    ]
    lines = [
        "",
        f"## Table II: {REFERENCE_RULE} threshold and expected number of patches (no gating)",
        "",
    ]
    if not rows:
        return [*lines, f"(the grid has no {REFERENCE_RULE} series without gating)"]
    with_paper = n_patches == 196  # the paper's column only where the patch grids agree
    lines += [
        f"Score: {score}."
        + (
            " Paper column: DeiT-Tiny on the 50,000 ImageNet validation images."
            if with_paper
            else ""
        ),
        "",
        "| delta_sum | expected patches | of all patches | communication cost | accuracy |"
        + (" paper (patches) |" if with_paper else ""),
        "|---:|---:|---:|---:|---:|" + ("---:|" if with_paper else ""),
    ]
    for r in sorted(rows, key=lambda r: r.threshold or 0.0):
        t = r.threshold or 0.0
        line = (
            f"| {t:g} | {r.mean_patches_all:.2f} | {r.mean_patches_all / n_patches:.4f} | "
            f"{r.communication_cost:.4f} | {_pct(r.accuracy)} |"
        )
        if with_paper:
            paper = PAPER_TABLE_II.get(round(t, 6))
            line += f" {'' if paper is None else f'{paper:.2f}'} |"
        lines.append(line)
    return lines


def _table_iii(result: SweepResult) -> list[str]:
    lines = ["", f"## Table III: {REFERENCE_MEASURE} threshold and ratio of transmitted images", ""]
    first: dict[float, ResultRow] = {}
    for r in result.grid_rows():
        if r.encoder == EDGE and r.measure == REFERENCE_MEASURE and r.eta is not None:
            first.setdefault(r.eta, r)
    if not first:
        return [*lines, f"(the grid has no {REFERENCE_MEASURE} series)"]
    lines += [
        "Independent of the selection rule. Paper column: DeiT-Tiny on ImageNet val.",
        "",
        "| eta_m | transmitted ratio | paper |",
        "|---:|---:|---:|",
    ]
    for eta in sorted(first, reverse=True):
        paper = PAPER_TABLE_III.get(round(eta, 6))
        lines.append(
            f"| {eta:g} | {first[eta].transmit_ratio:.4f} | "
            f"{'' if paper is None else f'{paper:.4f}'} |"
        )
    return lines


def tables_markdown(result: SweepResult) -> str:
    """Tables II and III of the paper, recomputed on this sweep, as Markdown."""
    lines = _header(result) + _table_ii(result) + _table_iii(result)
    lines += ["", "## Uploads of the full image (baselines)", ""]
    lines += ["| upload | bytes per image | accuracy |", "|---|---:|---:|"]
    for r in result.rows:
        if r.kind == "baseline" and r.rule != EDGE_ONLY:
            lines.append(
                f"| {r.rule} ({r.codec}) | {r.bytes_per_image or 0.0:.0f} | {_pct(r.accuracy)} |"
            )
    lines += ["", result.meta["full_image_note"] + ".", ""]
    return "\n".join(lines)
