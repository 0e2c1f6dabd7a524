"""The main job, offline: a shipped edge/server pair on its shipped test set.

``--pair cfmnist`` (the default): cfmnist-tiny on the edge, cfmnist-base on the
server, over the 10,000 cluttered Fashion-MNIST test canvases (seed 0), where
the garment covers a fraction of the image and patch selection pays; ``--pair
fmnist``: fmnist-tiny / fmnist-base on the plain 28x28 test split. Runs the
sweep and prints what the paper's Fig. 8 says: edge-only and server-only
accuracy, the chosen point (the cheapest edge grid point, whole images
included, within --target-drop points of server-only: best.json, tables.md
and the star of figures/tradeoff.png; --json writes it), the cheapest point
that selects patches, and the gate alone (whole images) within the same
points at its cost. On the cluttered pair also: the cheapest point of the
paper's own score (eq. 10) when the chosen one uses our neighbourhood-weighted
``mean-local``, how much of each garment the selected patches hold (from the
recorded boxes) and whose attention picks the better patches (Fig. 14). Writes
the tables and figures.
"""

from __future__ import annotations

import argparse
import json
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cli import add_precision_option
from ..errors import DataError
from ..report.tables import describe_point
from ..sweep.grid import ALL, Series, SweepGrid
from ..sweep.paper import PAPER_ETAS
from ..sweep.points import EDGE_ONLY, SERVER_ONLY, ResultRow
from ._demo_summary import comparisons, fig14_line, jsonable, point_json
from ._outputs import check_outputs, writing
from ._runinfo import run_info
from ._values import count

if TYPE_CHECKING:
    from ..sweep.run import SweepResult

HELP = "run a shipped pair on its shipped test set (offline)"


@dataclass(frozen=True)
class DemoPair:
    """A shipped pair and the test set the demo runs it on."""

    edge: str
    server: str
    data: str  # how the headline names the images
    cluttered: bool  # the cluttered canvases (object boxes, Fig. 14) or the plain split


PAIRS = {
    "cfmnist": DemoPair(
        "cfmnist-tiny",
        "cfmnist-base",
        "cluttered Fashion-MNIST test set (56x56 canvases, seed 0)",
        cluttered=True,
    ),
    "fmnist": DemoPair("fmnist-tiny", "fmnist-base", "Fashion-MNIST test set", cluttered=False),
}
"""``--pair``: the shipped pairs the demo can run."""

DEMO_KEYS = (
    "edge_accuracy",
    "server_accuracy",
    "accuracy",
    "accuracy_low",
    "accuracy_high",
    "communication_cost",
    "transmit_ratio",
    "mean_patches_transmitted",
    "score",
    "rule",
    "threshold",
    "measure",
    "eta",
    "point",
    "pair",
    "selection",
    "paper_score",
    "gate_only",
)
"""The keys of ``--json``: the chosen point (as ``best.json``), how it is named, the pair,
the cheapest point with patch selection, the cheapest with the paper's mean score (eq. 10)
and the cheapest whole-image one (each within
--target-drop, or the most accurate); the cluttered pair adds ``object_coverage`` and
``semantic_encoder`` (Fig. 14)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pair",
        choices=tuple(PAIRS),
        default="cfmnist",
        help="cfmnist: the cluttered pair (default); fmnist: the plain Fashion-MNIST pair",
    )
    parser.add_argument(
        "--out", default="collabvit-demo", metavar="DIR", help="tables, figures and results"
    )
    parser.add_argument(
        "--json", metavar="FILE", help="headline numbers and the run's versions, as JSON"
    )
    parser.add_argument("--limit", type=count, metavar="N", help="first N test images only")
    parser.add_argument(
        "--target-drop",
        type=float,
        default=1.0,
        metavar="P",
        help="accuracy points below server-only allowed",
    )
    parser.add_argument(
        "--grid",
        choices=("demo", "paper"),
        default="demo",
        help="demo: the paper's delta_sum x eta_m trade-off grid and the "
        "comparisons at fewer points; paper: every default grid",
    )
    parser.add_argument("--batch-size", type=count, default=256, metavar="B")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N")
    add_precision_option(parser)
    parser.add_argument("--no-figures", action="store_true", help="skip the figures")


def run(args: argparse.Namespace) -> int:
    from ..models import load_model
    from ..models.devices import resolve_device
    from ..models.precision import apply_precision, check_precision
    from ..report import write_outputs
    from ..sweep import run_sweep
    from .sweep import sweep_progress

    check_outputs(files={"--json": args.json}, dirs={"--out": args.out})
    device = resolve_device(args.device)  # a missing GPU is one line, before any loading
    precision = check_precision(args.precision, device)
    pair = PAIRS[args.pair]
    edge = apply_precision(load_model(pair.edge, device=device), precision)
    server = apply_precision(load_model(pair.server, device=device), precision)
    samples, objects = _test_set(pair, args.limit)
    grid = SweepGrid.paper() if args.grid == "paper" else demo_grid(cluttered=pair.cluttered)
    out = Path(args.out)
    with ExitStack() as stack:
        result = run_sweep(
            edge,
            server,
            samples,
            grid,
            batch_size=args.batch_size,
            cache_dir=out / "cache",
            target_drop=args.target_drop,
            progress=sweep_progress(stack),
        )
    write_outputs(result, out, figures=not args.no_figures)
    if result.edge_accuracy is None or result.server_accuracy is None:
        raise DataError("the shipped test split has no labels")
    extra = comparisons(result, args.target_drop, objects, edge.patch_size)
    if args.json:
        run_ = {"run": run_info(args, {"edge": edge, "server": server})}
        body = headline(result) | {"pair": args.pair} | jsonable(extra) | run_
        with writing("--json", args.json):
            Path(args.json).write_text(json.dumps(body, indent=2) + "\n")
    n = len(samples)
    print(
        f"{pair.data[0].upper()}{pair.data[1:]}, {n:,} images: edge {edge.name} "
        f"({_params(edge)}) / server {server.name} ({_params(server)})"
    )
    _print_headline(result, extra, edge.num_patches, args.target_drop)
    print(f"  tables, figures and results in {out}/")
    return 0


def _test_set(pair: DemoPair, limit: int | None) -> tuple[list[Any], Any]:
    """The pair's samples and, for the cluttered set, (its canvases, the 28x28 split)."""
    from ..fmnist import (
        cluttered_samples,
        cluttered_test_split,
        shipped_samples,
        shipped_test_split,
    )

    if not pair.cluttered:
        return shipped_samples(limit), None
    data = cluttered_test_split(0, limit)
    return cluttered_samples(data, 0), (data, shipped_test_split()[0])


def _print_headline(
    result: SweepResult, extra: dict[str, Any], num_patches: int, target_drop: float
) -> None:
    assert result.edge_accuracy is not None and result.server_accuracy is not None
    edge_row, server_row = _baseline(result, EDGE_ONLY), _baseline(result, SERVER_ONLY)
    print(
        f"  edge only      {100 * result.edge_accuracy:6.2f}%{_ci(edge_row)}   communication cost 0"
    )
    print(
        f"  server only    {100 * result.server_accuracy:6.2f}%{_ci(server_row)}   "
        "communication cost 1"
    )
    best, sel, gate = result.best, extra["selection"], extra["gate_only"]
    if best is None:
        print("  no grid point has an accuracy")
    else:
        close = "" if best.within_target else f" (none within {target_drop:g} points)"
        print(f"  collaborative  {_describe(best.row, num_patches)}{close}")
    if sel is not None and (best is None or sel.row != best.row):
        close = "" if sel.within_target else _none_within("patch selection", target_drop)
        print(f"  with patch selection: {_describe(sel.row, num_patches)}{close}")
    paper = extra["paper_score"]
    if paper is not None and sel is not None and paper.row != sel.row:
        close = "" if paper.within_target else _none_within("the paper's score", target_drop)
        print(f"  with the paper's score (eq. 10): {_describe(paper.row, num_patches)}{close}")
    if gate is not None and (best is None or gate.row != best.row):
        close = "" if gate.within_target else _none_within("whole images", target_drop)
        print(f"  the gate alone, whole images: {_describe(gate.row, num_patches)}{close}")
    if sel is not None and gate is not None and gate.row.communication_cost > 0:
        ratio = sel.row.communication_cost / gate.row.communication_cost
        both = sel.within_target and gate.within_target
        points = "point" if target_drop == 1 else "points"
        within = f"both within {target_drop:g} {points} of server-only"
        where = within if both else "each at its best"
        print(f"  patch selection costs {ratio:.2f}x the gate alone ({where})")
    cover = extra.get("object_coverage")
    if cover is not None:
        sent = cover["transmitted_images"]
        print(
            f"  the kept patches hold {100 * cover['all_images']:.1f}% of the garment's pixels "
            "(mean over the images"
            + ("" if sent is None else f"; {100 * sent:.1f}% over the images sent")
            + ")"
        )
    line = fig14_line(extra)
    if line:
        print(line)


def headline(result: SweepResult) -> dict[str, Any]:
    """The ``--json`` body: the chosen point of ``best.json``, named as ``tables.md`` names it."""
    best = result.best
    body: dict[str, Any] = {
        "edge_accuracy": result.edge_accuracy,
        "server_accuracy": result.server_accuracy,
    }
    keys = [k for k in DEMO_KEYS[: DEMO_KEYS.index("point")] if k not in body]  # the row's fields
    chosen = point_json(best)
    if chosen is None:
        return body | dict.fromkeys(keys) | {"point": None}
    return body | {k: chosen[k] for k in (*keys, "point", "within_target")}


def _none_within(what: str, target_drop: float) -> str:
    return (
        f"\n                 (no point with {what} is within {target_drop:g} points: "
        "the most accurate)"
    )


def _baseline(result: SweepResult, name: str) -> ResultRow | None:
    return next((r for r in result.rows if r.kind == "baseline" and r.rule == name), None)


def _ci(row: ResultRow | None) -> str:
    """`` (95% CI a-b%)``: the row's Wilson interval, or nothing."""
    if row is None or row.accuracy_low is None or row.accuracy_high is None:
        return ""
    return f" (95% CI {100 * row.accuracy_low:.2f}-{100 * row.accuracy_high:.2f}%)"


def _describe(row: ResultRow, num_patches: int) -> str:
    cost = row.communication_cost
    return (
        f"{100 * (row.accuracy or 0.0):6.2f}%{_ci(row)}   communication cost {cost:.4f} "
        f"({100 * (1 - cost):.1f}% reduction)\n"
        f"                 at {describe_point(row)}: "
        f"{100 * row.transmit_ratio:.1f}% of images sent, "
        f"{row.mean_patches_transmitted:.1f} of {num_patches} patches each"
    )


def demo_grid(cluttered: bool = False) -> SweepGrid:
    """The paper's trade-off (Fig. 8: attention-sum x min-entropy) at fewer delta_sums.

    About six server selections per transmitted image, so the 10,000 shipped
    test images sweep in a couple of minutes on two CPU cores. ``cluttered`` (the
    cluttered pair) adds Fig. 8 at delta_sum 0.9 and 0.93 (both in the paper's
    grid), where a garment on a cluttered canvas is kept in far fewer patches,
    Fig. 8 with our ``mean-local`` score at delta_sum 0.8 and 0.85 (eq. 10
    weighted by its 3x3 neighbourhood: clutter fragments stand alone, the
    garment does not), and Fig. 14: the paper's delta_sums ungated, chosen by
    the edge's and by the server's attention.
    """
    deltas = (0.95, 0.97, 0.99)
    fig8 = (0.9, 0.93, *deltas) if cluttered else deltas
    # The paper's eta_m plus the midpoints where a small model's trade-off bends;
    # more etas cost no server forwards, only bookkeeping.
    etas = tuple(sorted({*PAPER_ETAS, 0.25, 0.35, 0.5}))
    fig14 = (Series("attention-sum", deltas, "none"),) if cluttered else ()
    local = (Series("attention-sum", (0.8, 0.85), "min-entropy", etas, score="mean-local"),)
    return SweepGrid(
        series=(
            Series("attention-sum", fig8, "min-entropy", etas),  # Fig. 8
            *(local if cluttered else ()),  # Fig. 8 with the neighbourhood-weighted score
            *fig14,  # the edge's attention choosing, no gate
            Series(ALL, measure="none"),  # server only
            Series(ALL, measure="min-entropy", etas=etas),  # the gate alone: whole images
        ),
        encoder_thresholds=deltas if cluttered else (),  # the server's attention choosing
        reference_delta_sums=fig8,
        reference_etas=PAPER_ETAS,
    )


def _params(model: object) -> str:
    count = sum(p.numel() for p in model.model.parameters())  # type: ignore[attr-defined]
    return f"{count / 1e6:.2f}M parameters"
