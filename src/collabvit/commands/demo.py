"""The main job, offline: the shipped edge/server pair on the shipped Fashion-MNIST test set.

Runs the sweep of the shipped pair (fmnist-tiny on the edge, fmnist-base on
the server) over the 10,000 shipped test images, prints edge-only and
server-only accuracy and the cheapest collaborative point within
--target-drop points of server-only, and writes the tables and figures.
"""

from __future__ import annotations

import argparse
import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError

HELP = "run the shipped pair on the shipped Fashion-MNIST test set (offline)"

DEMO_KEYS = (
    "edge_accuracy",
    "server_accuracy",
    "accuracy",
    "communication_cost",
    "transmit_ratio",
    "mean_patches_transmitted",
    "delta",
    "eta",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", default="collabvit-demo", metavar="DIR", help="tables, figures and results"
    )
    parser.add_argument("--json", metavar="FILE", help="headline numbers as JSON")
    parser.add_argument("--limit", type=int, metavar="N", help="first N test images only")
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
    parser.add_argument("--batch-size", type=int, default=256, metavar="B")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-figures", action="store_true", help="skip the figures")


def run(args: argparse.Namespace) -> int:
    from ..cli import progress_bar
    from ..fmnist import shipped_samples
    from ..models import load_model
    from ..sweep import SweepGrid, run_sweep

    if args.limit is not None and args.limit < 1:
        raise ConfigError(
            f"--limit {args.limit}: give at least 1 image (the shipped test split has 10,000)"
        )
    edge = load_model("fmnist-tiny", device=args.device)
    server = load_model("fmnist-base", device=args.device)
    samples = shipped_samples(args.limit)
    grid = SweepGrid.paper() if args.grid == "paper" else demo_grid()
    out = Path(args.out)
    with ExitStack() as stack:
        bars: dict[str, Any] = {}

        def progress(phase: str, n: int, total: int) -> None:
            if phase not in bars:
                for done in bars.values():  # a finished phase keeps its own rate
                    done.close()
                desc = "edge pass" if phase == "edge" else "server (image, selection)"
                bars[phase] = stack.enter_context(
                    progress_bar(total, desc, "img" if phase == "edge" else "sel")
                )
            bars[phase].update(n)

        result = run_sweep(
            edge,
            server,
            samples,
            grid,
            out,
            batch_size=args.batch_size,
            target_drop=args.target_drop,
            progress=progress,
            figures=not args.no_figures,
            cache_dir=out / "cache",
        )
    if result.edge_accuracy is None or result.server_accuracy is None:
        raise DataError("the shipped test split has no labels")
    best = cheapest_within(result.grid_rows(), result.server_accuracy, args.target_drop)
    best_selection = cheapest_within(
        [r for r in result.grid_rows() if r["rule"] == "attention-sum"],
        result.server_accuracy,
        args.target_drop,
    )
    headline = {
        "edge_accuracy": result.edge_accuracy,
        "server_accuracy": result.server_accuracy,
        "accuracy": best["accuracy"] if best else None,
        "communication_cost": best["communication_cost"] if best else None,
        "transmit_ratio": best["transmit_ratio"] if best else None,
        "mean_patches_transmitted": best["mean_patches_transmitted"] if best else None,
        "delta": (best["threshold"] if best["rule"] == "attention-sum" else 1.0) if best else None,
        "eta": best["eta"] if best else None,
    }
    headline["rule"] = best["rule"] if best else None
    if args.json:
        Path(args.json).write_text(json.dumps(headline, indent=2) + "\n")
    n = len(samples)
    print(
        f"Fashion-MNIST test set, {n:,} images: edge {edge.name} "
        f"({_params(edge)}) / server {server.name} ({_params(server)})"
    )
    print(f"  edge only      {100 * result.edge_accuracy:6.2f}%   communication cost 0")
    print(f"  server only    {100 * result.server_accuracy:6.2f}%   communication cost 1")
    if best is None:
        print(f"  no grid point is within {args.target_drop:g} points of server-only")
    else:
        print(f"  collaborative  {_describe(best, edge.num_patches)}")
    if best_selection is not None and best_selection is not best:
        print(f"  with patch selection: {_describe(best_selection, edge.num_patches)}")
    elif best_selection is None:
        top = max(
            (r for r in result.grid_rows() if r["rule"] == "attention-sum"),
            key=lambda r: r["accuracy"],
        )
        print(
            f"  with patch selection no point is within {args.target_drop:g} points; the best is"
            f"\n                 {_describe(top, edge.num_patches)}"
        )
    print(f"  tables, figures and results in {out}/")
    return 0


def cheapest_within(
    rows: list[dict[str, Any]], server_accuracy: float, drop_points: float
) -> dict[str, Any] | None:
    """The grid row of lowest communication cost within ``drop_points`` of server-only."""
    ok = [r for r in rows if 100 * (server_accuracy - r["accuracy"]) <= drop_points + 1e-9]
    return min(ok, key=lambda r: (r["communication_cost"], -r["accuracy"])) if ok else None


def _describe(row: dict[str, Any], num_patches: int) -> str:
    cost = row["communication_cost"]
    what = (
        f"attention-sum delta={row['threshold']:g}"
        if row["rule"] == "attention-sum"
        else "all patches"
    )
    return (
        f"{100 * row['accuracy']:6.2f}%   communication cost {cost:.4f} "
        f"({100 * (1 - cost):.1f}% reduction)\n"
        f"                 at {what}, {row['measure']} eta={row['eta']:g}: "
        f"{100 * row['transmit_ratio']:.1f}% of images sent, "
        f"{row['mean_patches_transmitted']:.1f} of {num_patches} patches each"
    )


def demo_grid() -> Any:
    """The paper's trade-off (Fig. 8: attention-sum x min-entropy) at fewer delta_sums.

    About six server selections per transmitted image, so the 10,000 shipped
    test images sweep in a couple of minutes on two CPU cores.
    """
    from ..sweep import ALL, PAPER_ETAS, Series, SweepGrid

    deltas = (0.95, 0.97, 0.99)
    # The paper's eta_m plus the midpoints where a small model's trade-off bends;
    # more etas cost no server forwards, only bookkeeping.
    etas = tuple(sorted({*PAPER_ETAS, 0.25, 0.35, 0.5}))
    return SweepGrid(
        series=(
            Series("attention-sum", deltas, "min-entropy", etas),  # Fig. 8
            Series("top-k", ALL, "none"),  # server only
            Series("top-k", ALL, "min-entropy", etas),  # the gate alone: whole images
        ),
        reference_delta_sums=deltas,
        reference_etas=PAPER_ETAS,
    )


def _params(model: object) -> str:
    count = sum(p.numel() for p in model.model.parameters())  # type: ignore[attr-defined]
    return f"{count / 1e6:.2f}M parameters"
