"""Evaluate one operating point of collaborative inference over a dataset.

Writes one CSV row per image (--records) and a JSON summary (--json):
accuracy, transmit ratio, mean patches, communication cost (paper Sec. VI-A)
and the server's eq. 9 cost relative to server-only.
"""

from __future__ import annotations

import argparse

from ..cli import (
    add_data_options,
    add_model_options,
    add_point_options,
    add_precision_option,
    load_pair,
    load_samples,
    point_from_args,
    progress_bar,
)
from ..wire import CODECS
from ._outputs import check_outputs, writing
from ._runinfo import run_info

HELP = "one operating point over a dataset: records CSV + summary JSON"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    add_precision_option(parser)
    add_data_options(parser)
    add_point_options(parser)
    parser.add_argument(
        "--codec",
        choices=tuple(CODECS),
        help="also report bytes on the wire per image with this codec",
    )
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of --codec jpeg")
    parser.add_argument(
        "--records", metavar="FILE.csv", help="per-image records (its folder must exist)"
    )
    parser.add_argument(
        "--json", metavar="FILE.json", help="summary, with the run's versions and weights"
    )


def run(args: argparse.Namespace) -> int:
    from ..engine import evaluate, write_records, write_summary

    check_outputs(files={"--records": args.records, "--json": args.json})
    point = point_from_args(args)
    edge, server = load_pair(args)
    samples = load_samples(args, server.num_classes)
    with progress_bar(len(samples), "evaluate") as bar:
        result = evaluate(
            edge,
            server,
            samples,
            point,
            args.batch_size,
            progress=bar.update,
            codec=args.codec,
            quality=args.quality,
            workers=args.workers,
        )
    if args.records:
        with writing("--records", args.records):
            write_records(result.records, args.records)
    if args.json:
        run = run_info(args, {"edge": edge, "server": server})
        with writing("--json", args.json):
            write_summary({**result.summary, "run": run}, args.json)
    s = result.summary

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.2f}%"

    print(
        f"{s['images']} images ({s['skipped_files']} skipped) | edge {pct(s['edge_accuracy'])} "
        f"-> collaborative {pct(s['accuracy'])}{_ci(s)} | transmitted {pct(s['transmit_ratio'])}, "
        f"{s['mean_patches_transmitted']:.1f}/{s['num_patches_per_image']} patches | "
        f"communication cost {s['communication_cost']:.4f} | "
        f"server FLOPs {s['server_flops_ratio']:.4f}"
    )
    if "bytes" in s:
        b = s["bytes"]
        print(
            f"bytes per image ({b['codec']}): {b['per_image']:.0f} | whole-image uploads: "
            f"JPEG q90 {b['full_image_jpeg_q90_per_image']:.0f}, "
            f"PNG {b['full_image_png_per_image']:.0f}"
        )
    return 0


def _ci(summary: dict[str, object]) -> str:
    """`` (95% CI a-b%)`` of the collaborative accuracy (Wilson), or nothing without labels."""
    low, high = summary.get("accuracy_low"), summary.get("accuracy_high")
    if not isinstance(low, float) or not isinstance(high, float):
        return ""
    return f" (95% CI {100 * low:.2f}-{100 * high:.2f}%)"
