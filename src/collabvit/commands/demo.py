"""The main job, offline: the shipped edge/server pair on the shipped Fashion-MNIST test set.

Runs the sweep of the shipped pair (fmnist-tiny on the edge, fmnist-base on
the server) over the 10,000 shipped test images, prints edge-only and
server-only accuracy and the chosen point: the cheapest edge grid point
(whole images included) within --target-drop points of server-only, the same
point as best.json, tables.md and the star of figures/tradeoff.png (--json
writes it). A second line gives the cheapest point that selects patches.
Writes the tables and figures.
"""

from __future__ import annotations

import argparse
import json
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cli import add_precision_option
from ..errors import DataError
from ..report.tables import describe_point
from ..sweep.grid import ALL, Series, SweepGrid
from ..sweep.paper import PAPER_ETAS
from ..sweep.points import EDGE_ONLY, SERVER_ONLY, ResultRow, best_point
from ._outputs import check_outputs, writing
from ._runinfo import run_info
from ._values import count

if TYPE_CHECKING:
    from ..sweep.run import SweepResult

HELP = "run the shipped pair on the shipped Fashion-MNIST test set (offline)"

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
)
"""The keys of ``--json``: the chosen point (as ``best.json``) and how it is named."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
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
    from ..fmnist import shipped_samples
    from ..models import load_model
    from ..models.devices import resolve_device
    from ..models.precision import apply_precision, check_precision
    from ..report import write_outputs
    from ..sweep import run_sweep
    from .sweep import sweep_progress

    check_outputs(files={"--json": args.json}, dirs={"--out": args.out})
    device = resolve_device(args.device)  # a missing GPU is one line, before any loading
    precision = check_precision(args.precision, device)
    edge = apply_precision(load_model("fmnist-tiny", device=device), precision)
    server = apply_precision(load_model("fmnist-base", device=device), precision)
    samples = shipped_samples(args.limit)
    grid = SweepGrid.paper() if args.grid == "paper" else demo_grid()
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
    best = result.best
    # the same rule on the points that select patches (every rule but whole images)
    with_selection = best_point(
        [r for r in result.rows if r.rule != ALL], result.server_accuracy, args.target_drop
    )
    if args.json:
        body = headline(result) | {"run": run_info(args, {"edge": edge, "server": server})}
        with writing("--json", args.json):
            Path(args.json).write_text(json.dumps(body, indent=2) + "\n")
    n = len(samples)
    print(
        f"Fashion-MNIST test set, {n:,} images: edge {edge.name} "
        f"({_params(edge)}) / server {server.name} ({_params(server)})"
    )
    edge_row, server_row = _baseline(result, EDGE_ONLY), _baseline(result, SERVER_ONLY)
    print(
        f"  edge only      {100 * result.edge_accuracy:6.2f}%{_ci(edge_row)}   communication cost 0"
    )
    print(
        f"  server only    {100 * result.server_accuracy:6.2f}%{_ci(server_row)}   "
        "communication cost 1"
    )
    if best is None:
        print("  no grid point has an accuracy")
    else:
        close = "" if best.within_target else f" (none within {args.target_drop:g} points)"
        print(f"  collaborative  {_describe(best.row, edge.num_patches)}{close}")
    if with_selection is not None and (best is None or with_selection.row != best.row):
        close = (
            ""
            if with_selection.within_target
            else (
                f"\n                 (no point with patch selection is within "
                f"{args.target_drop:g} points: the most accurate)"
            )
        )
        print(f"  with patch selection: {_describe(with_selection.row, edge.num_patches)}{close}")
    print(f"  tables, figures and results in {out}/")
    return 0


def headline(result: SweepResult) -> dict[str, Any]:
    """The ``--json`` body: the chosen point of ``best.json``, named as ``tables.md`` names it."""
    best = result.best
    body: dict[str, Any] = {
        "edge_accuracy": result.edge_accuracy,
        "server_accuracy": result.server_accuracy,
    }
    keys = [k for k in DEMO_KEYS if k not in body and k != "point"]  # the row's fields
    if best is None:
        return body | dict.fromkeys(keys) | {"point": None}
    row = best.row.to_dict()
    return (
        body
        | {k: row[k] for k in keys}
        | {
            "point": describe_point(best.row),
            "within_target": best.within_target,
        }
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


def demo_grid() -> SweepGrid:
    """The paper's trade-off (Fig. 8: attention-sum x min-entropy) at fewer delta_sums.

    About six server selections per transmitted image, so the 10,000 shipped
    test images sweep in a couple of minutes on two CPU cores.
    """
    deltas = (0.95, 0.97, 0.99)
    # The paper's eta_m plus the midpoints where a small model's trade-off bends;
    # more etas cost no server forwards, only bookkeeping.
    etas = tuple(sorted({*PAPER_ETAS, 0.25, 0.35, 0.5}))
    return SweepGrid(
        series=(
            Series("attention-sum", deltas, "min-entropy", etas),  # Fig. 8
            Series(ALL, measure="none"),  # server only
            Series(ALL, measure="min-entropy", etas=etas),  # the gate alone: whole images
        ),
        reference_delta_sums=deltas,
        reference_etas=PAPER_ETAS,
    )


def _params(model: object) -> str:
    count = sum(p.numel() for p in model.model.parameters())  # type: ignore[attr-defined]
    return f"{count / 1e6:.2f}M parameters"
