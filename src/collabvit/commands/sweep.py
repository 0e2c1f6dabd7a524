"""Sweep a grid of operating points over a dataset with one pass of each model.

The edge model runs once per image; the server once per distinct (image,
selected patches) the grid needs; every (score, rule, threshold, measure, eta)
point is derived from those results. Writes to --out: results.csv/.json (one
row per point, plus edge-only, server-only and full-image JPEG/PNG baselines),
frontier.csv (the accuracy/communication-cost Pareto frontier of every edge
point), best.json (the cheapest edge point, whole images included, within
--target-drop points of the server alone), tables.md
(paper Tables II and III on this data), histogram.csv and figures/*.png|pdf
(paper Figs. 7-14). Model outputs are cached under --cache (default
OUT/cache): rerunning resumes an interrupted sweep, and a new grid over the
same models and data only runs the selections it has not seen. See
docs/sweep.md for the grid file format.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from ..cli import (
    add_data_options,
    add_model_options,
    add_precision_option,
    load_pair,
    load_samples,
    progress_bar,
)

HELP = "a grid of operating points in one pass: results, frontier, tables, figures"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    add_precision_option(parser)
    add_data_options(parser)
    group = parser.add_argument_group("sweep")
    group.add_argument("--out", required=True, metavar="DIR", help="output folder")
    group.add_argument(
        "--grid",
        default="paper",
        metavar="FILE.toml",
        help="grid: 'paper' (the paper's grids), 'small' (a fast demo grid) or a TOML file",
    )
    group.add_argument(
        "--codec",
        default="raw",
        choices=("raw", "png", "jpeg"),
        help="wire codec for the bytes-per-image columns",
    )
    group.add_argument("--quality", type=int, default=90, help="JPEG quality of --codec jpeg")
    group.add_argument(
        "--target-drop",
        type=float,
        default=1.0,
        metavar="P",
        help="best.json: cheapest point within P accuracy points of the server alone",
    )
    group.add_argument("--cache", metavar="DIR", help="model-output cache (default: OUT/cache)")
    group.add_argument("--no-cache", action="store_true", help="keep model outputs in memory only")
    group.add_argument(
        "--chunk-size",
        type=int,
        default=512,
        metavar="N",
        help="images per cache chunk (rounded up to whole batches)",
    )
    group.add_argument("--no-figures", action="store_true", help="skip the figures")
    group.add_argument(
        "--baseline-bytes",
        action="store_true",
        help="also measure the full-image-file baselines: every crop as one JPEG (q90) and "
        "one PNG file (costly: ~30 ms of CPU per image for PNG)",
    )
    group.add_argument(
        "--json", metavar="FILE", help="summary (headline numbers, the run's versions) as JSON"
    )


def sweep_progress(stack: ExitStack) -> Callable[[str, int, int], None]:
    """A ``run_sweep`` progress callback: one tqdm bar per phase, totals refined as given."""
    bars: dict[str, Any] = {}

    def progress(phase: str, n: int, total: int) -> None:
        bar = bars.get(phase)
        if bar is None:
            for done in bars.values():  # a finished phase keeps its own rate
                done.close()
            unit = "img" if phase == "edge" else "sel"
            desc = "edge pass" if phase == "edge" else "server (image, selection)"
            bar = stack.enter_context(progress_bar(total, desc, unit))
            bars[phase] = bar
        elif bar.total != total:  # the server total shrinks as chunks are planned
            bar.total = total
            bar.refresh()
        bar.update(n)

    return progress


def run(args: argparse.Namespace) -> int:
    from ..report import describe_point, write_outputs
    from ..sweep import SweepGrid, run_sweep
    from ..workers import resolve_workers
    from ._outputs import check_outputs

    cache = None if args.no_cache else (args.cache or Path(args.out) / "cache")
    check_outputs(files={"--json": args.json}, dirs={"--out": args.out, "--cache": cache})
    grid = SweepGrid.named(args.grid)
    resolve_workers(getattr(args, "workers", None), 0, 1)  # a bad --workers: before any model
    edge, server = load_pair(args)
    samples = load_samples(args, server.num_classes)
    out = Path(args.out)
    start = time.monotonic()
    with ExitStack() as stack:
        result = run_sweep(
            edge,
            server,
            samples,
            grid,
            batch_size=args.batch_size,
            codec=args.codec,
            quality=args.quality,
            cache_dir=None if args.no_cache else (args.cache or out / "cache"),
            chunk_size=args.chunk_size,
            target_drop=args.target_drop,
            progress=sweep_progress(stack),
            workers=getattr(args, "workers", None),
            baseline_bytes=args.baseline_bytes,
        )
    files = write_outputs(result, out, figures=not args.no_figures)
    wall = time.monotonic() - start

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.2f}%"

    st = result.stats
    print(
        f"{result.meta['images']} images ({result.meta['skipped_files']} skipped), "
        f"{len(result.points)} grid points | edge {pct(result.edge_accuracy)}, "
        f"server {pct(result.server_accuracy)}"
    )
    b = result.best
    if b is not None:
        print(
            f"best within {args.target_drop:g} points: {describe_point(b.row)} -> "
            f"{pct(b.row.accuracy)}{_ci(b.row)}, communication cost "
            f"{b.row.communication_cost:.4f}"
            + ("" if b.within_target else " (no point was within the target)")
        )
    print(
        f"model calls: edge {st.edge_images} images, server {st.server_images} selections "
        f"(+{st.server_encoder_images} full images for its own scores); "
        f"{st.cached_selections}/{st.distinct_selections} selections from the cache | "
        f"{wall:.1f}s"
    )
    print(f"wrote {len(files)} files to {out}")
    if args.json:
        from ._sweep_summary import write_sweep_summary

        write_sweep_summary(args, result, {"edge": edge, "server": server}, files, wall)
    return 0


def _ci(row: Any) -> str:
    """`` (95% CI a-b%)`` of a results row's accuracy (Wilson), or nothing without labels."""
    if row.accuracy_low is None or row.accuracy_high is None:
        return ""
    return f" (95% CI {100 * row.accuracy_low:.2f}-{100 * row.accuracy_high:.2f}%)"
