"""``collabvit sweep --json FILE``: the printed headline as one JSON object, with the run."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ._outputs import writing
from ._runinfo import run_info

__all__ = ["sweep_summary", "write_sweep_summary"]


def sweep_summary(
    args: argparse.Namespace, result: Any, models: dict[str, Any], files: list[Path], wall: float
) -> dict[str, Any]:
    """Images, grid points, edge/server accuracy, the best point, model calls, files, run."""
    from ..report import describe_point

    best = result.best
    return {
        "images": result.meta["images"],
        "skipped_files": result.meta["skipped_files"],
        "grid_points": len(result.points),
        "edge_accuracy": result.edge_accuracy,
        "server_accuracy": result.server_accuracy,
        "target_drop_points": args.target_drop,
        "best": None if best is None else best.to_dict() | {"point": describe_point(best.row)},
        "model_calls": asdict(result.stats),
        "wall_s": wall,
        "out": str(args.out),
        "files": [str(p) for p in files],
        "run": run_info(args, models),
    }


def write_sweep_summary(
    args: argparse.Namespace, result: Any, models: dict[str, Any], files: list[Path], wall: float
) -> None:
    """:func:`sweep_summary` to ``args.json``."""
    body = sweep_summary(args, result, models, files, wall)
    with writing("--json", args.json):
        Path(args.json).write_text(json.dumps(body, indent=2) + "\n")
