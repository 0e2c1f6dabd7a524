"""``python -m benchmarks``: measure every figure side by side and write the report.

Options: ``--quick`` (small sizes, about a minute), ``--device cpu|cuda``,
``--only NAME`` (repeatable or comma-separated: subset, tokens, edge, sweep,
serve, bytes, onnx), ``--out docs/benchmarks.md`` (the JSON goes next to it),
``--threads N`` (intra-op threads on the CPU; default 1, see below),
``--clock cpu|wall``.

NOTE: the default of one intra-op thread is deliberate. On a 2-core machine
shared with other jobs, a second OpenMP thread is often descheduled, and every
parallel op then waits for it at a barrier; small ops (one image's layer norm)
then cost milliseconds instead of microseconds and the figures follow the
machine's load rather than the code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import resource
import sys
import time
import traceback
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch

from .common import (
    REPO,
    Context,
    Result,
    Sizes,
    conditions,
    imagenet_dir,
    machine_info,
    write_report,
)

__all__ = ["ITEMS", "main", "run_items"]

ITEMS = {
    "subset": "bench_subset",
    "tokens": "bench_tokens",
    "edge": "bench_edge",
    "sweep": "bench_sweep",
    "loader": "bench_loader",
    "serve": "bench_serve",
    "bytes": "bench_bytes",
    "onnx": "bench_onnx",
    "ray": "bench_ray",
}


def _parse_only(values: Sequence[str] | None) -> tuple[str, ...]:
    if not values:
        return tuple(ITEMS)
    names = [v.strip() for value in values for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in ITEMS]
    if unknown:
        raise SystemExit(f"unknown benchmark {', '.join(unknown)}: choose from {', '.join(ITEMS)}")
    return tuple(n for n in ITEMS if n in names)


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its waited-for children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_items(ctx: Context) -> list[Result]:
    """Run the selected items in order; a failing item becomes a ``failed`` row."""
    results: list[Result] = []
    for name in ctx.selected:
        t0 = time.monotonic()
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        ctx.log(f"== {name}")
        try:
            module = importlib.import_module(f"benchmarks.{ITEMS[name]}")
            rows = module.run(ctx)
        except Exception as exc:
            ctx.log(traceback.format_exc())
            rows = [
                Result(
                    name=name,
                    figure=name,
                    measured="failed",
                    goal="",
                    met=None,
                    command=ctx.command(name),
                    status="failed",
                    notes=[f"{type(exc).__name__}: {exc}"],
                )
            ]
        for r in rows:
            r.seconds = time.monotonic() - t0
            r.mode = ctx.sizes.label
            r.measured_at = stamp
            ctx.log(f"   {r.figure}: {r.measured} (goal {r.goal}; met {r.met})")
        results += rows
    return results


def main(argv: Sequence[str] | None = None, sizes: Sizes | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, about a minute")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--only", action="append", metavar="NAME", help=", ".join(ITEMS))
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads on the CPU")
    parser.add_argument("--clock", choices=("cpu", "wall"), default=None)
    parser.add_argument("--data", type=Path, default=None, help="the ImageNet photos folder")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)

    selected = _parse_only(args.only)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here")
    if device.type == "cpu":
        torch.set_num_threads(max(1, args.threads))
    clock = args.clock or ("cpu" if device.type == "cpu" else "wall")
    if sizes is None:
        sizes = Sizes.quick() if args.quick else Sizes.full()
    data_dir = args.data or imagenet_dir()
    if not (data_dir / "labels.csv").is_file():
        raise SystemExit(
            f"ImageNet photos not found at {data_dir}: pass --data or set COLLABVIT_SHARED"
        )

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    logging.basicConfig(level=logging.WARNING)
    ctx = Context(device, sizes, data_dir, selected, clock, log=log)
    machine = machine_info(device)
    start = conditions()
    t0 = time.monotonic()
    results = run_items(ctx)
    end = conditions()
    report = write_report(
        results,
        machine,
        start,
        end,
        args.out,
        sizes.label,
        clock,
        merge=args.only is not None,
        elapsed_s=time.monotonic() - t0,
        cpu_s=_cpu_seconds(),
    )
    log(f"wrote {args.out} and {args.out.with_suffix('.json')} in {time.monotonic() - t0:.0f}s")
    for r in report["results"]:
        met = (
            r["status"]
            if r["status"] != "measured"
            else {True: "yes", False: "NO"}.get(r["met"], "n/a")
        )
        print(f"{r['name']:7s} {met:13s} {r['measured']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
