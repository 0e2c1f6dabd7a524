"""What ``collabvit demo`` says next to its chosen point: Fig. 8's comparison, coverage, Fig. 14.

Read from a finished :class:`~collabvit.sweep.SweepResult`; no model runs here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..report.tables import describe_point
from ..sweep.grid import ALL, EDGE, SERVER
from ..sweep.points import ResultRow, best_point

if TYPE_CHECKING:
    from ..sweep.run import SweepResult

__all__ = ["comparisons", "fig14_line", "jsonable", "point_json"]


def comparisons(
    result: SweepResult, target_drop: float, objects: Any, patch_size: int
) -> dict[str, Any]:
    """What the headline adds to the chosen point (Fig. 8's comparison, coverage, Fig. 14).

    ``selection`` / ``paper_score`` / ``gate_only``: the cheapest point within
    ``target_drop`` that selects patches / that selects them by eq. 10's mean
    score / that sends whole images (the most accurate when none is);
    with ``objects``, ``object_coverage`` of the selection point's kept patches
    and ``semantic_encoder``: edge vs server attention choosing, no gate, per delta_sum.
    """
    server_accuracy = result.server_accuracy
    grid = result.grid_rows()
    sel = best_point([r for r in grid if r.rule != ALL], server_accuracy, target_drop)
    mean = [r for r in grid if r.rule != ALL and r.score == "mean"]
    paper = best_point(mean, server_accuracy, target_drop)
    gate = best_point([r for r in grid if r.rule == ALL], server_accuracy, target_drop)
    out: dict[str, Any] = {"selection": sel, "paper_score": paper, "gate_only": gate}
    if objects is not None and sel is not None:
        out["object_coverage"] = _coverage(result, sel.row, objects, patch_size)
    if objects is not None:
        out["semantic_encoder"] = _encoders(grid)
    return out


def _coverage(result: SweepResult, row: ResultRow, objects: Any, patch_size: int) -> dict:
    """Mean share of the garment's pixels in the kept patches: all images, and those sent."""
    from ..metrics import object_coverage

    data, split = objects
    point = result.point_of(row)
    positions, keep = result.keep_masks(point)
    cover = object_coverage(keep, data.object_masks(split)[positions], patch_size)
    sent = result.outcomes(point).transmitted
    return {
        "point": describe_point(row),
        "all_images": float(np.nanmean(cover)),
        "transmitted_images": float(np.nanmean(cover[sent])) if sent.any() else None,
        "images_below_half": int(np.sum(cover < 0.5)),
    }


def _encoders(grid: list[ResultRow]) -> list[dict[str, Any]]:
    """Fig. 14 as numbers: per delta_sum, the server's accuracy when each one's attention picks."""
    edge = {
        (r.score, r.rule, r.threshold): r for r in grid if r.encoder == EDGE and r.measure == "none"
    }
    out = []
    for s in (r for r in grid if r.encoder == SERVER):
        e = edge.get((s.score, s.rule, s.threshold))
        if e is not None:
            out.append(
                {
                    "rule": s.rule,
                    "threshold": s.threshold,
                    "edge_selects": {"accuracy": e.accuracy, "cost": e.communication_cost},
                    "server_selects": {"accuracy": s.accuracy, "cost": s.communication_cost},
                }
            )
    return out


def point_json(best: Any) -> dict[str, Any] | None:
    """A chosen point (a :class:`~collabvit.sweep.points.BestPoint`) as JSON: its row's
    fields, its name as ``tables.md`` gives it, and whether it is within the target."""
    if best is None:
        return None
    return best.row.to_dict() | {
        "point": describe_point(best.row),
        "within_target": best.within_target,
    }


def jsonable(extra: dict[str, Any]) -> dict[str, Any]:
    """:func:`comparisons`' output with its chosen points as :func:`point_json`."""
    picks = {
        "selection": point_json(extra["selection"]),
        "paper_score": point_json(extra["paper_score"]),
        "gate_only": point_json(extra["gate_only"]),
    }
    return extra | picks


def fig14_line(extra: dict[str, Any]) -> str | None:
    """Fig. 14 at the selection point's delta_sum (else the paper's 0.97, else the first)."""
    encoders = extra.get("semantic_encoder") or []
    if not encoders:
        return None
    sel = extra.get("selection")
    wanted = [sel.row.threshold] if sel is not None else []
    pick = next((e for t in (*wanted, 0.97) for e in encoders if e["threshold"] == t), encoders[0])
    e, s = pick["edge_selects"], pick["server_selects"]
    return (
        f"  whose attention picks the patches (Fig. 14, {pick['rule']} {pick['threshold']:g}, "
        f"no gate): the edge's {100 * (e['accuracy'] or 0):.2f}% at cost "
        f"{e['cost']:.4f}, the server's {100 * (s['accuracy'] or 0):.2f}% at cost {s['cost']:.4f}"
    )
