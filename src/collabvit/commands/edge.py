"""Run the edge side of collaborative inference against a collabvit server.

The edge model classifies every image locally; the images the gate marks
uncertain have their selected patches sent to the server (collabvit serve).
With the raw codec the predictions equal `collabvit evaluate`'s at the same
models and operating point. If the server cannot answer, the image keeps the
edge's prediction (source edge-fallback): every image gets an answer. Writes
one JSON line per image to --out as it is answered, and the whole file in
input order at the end; SIGINT or SIGTERM ends the run early with what was
answered (--resume answers the rest). With --baseline-bytes the
summary also compares the bytes sent with uploading every whole image as a
JPEG q90 file (a measurement, off by default). See docs/serving.md.

Without torch: --runtime onnx --model edge.onnx runs a `collabvit export` file with
ONNX Runtime (docs/edge-device.md); file and server geometry are checked first.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cli import add_model_options, add_point_options, add_precision_option
from ._values import count, server_url
from .serve import _skip_final_gc

if TYPE_CHECKING:
    from ..client import ClientConfig, EdgeClient, ImageResult
    from ..data import Sample
    from ..onnx_edge import EdgePoint, OnnxEdge

log = logging.getLogger("collabvit.edge")

HELP = "edge client: classify locally, send uncertain images' patches to a server"


def _add_runtime_options(runtime: Any) -> None:
    runtime.add_argument(
        "--runtime",
        default="torch",
        choices=("torch", "onnx"),
        help="torch: the edge model --edge NAME (research install); onnx: an exported "
        "--model FILE.onnx with ONNX Runtime (no torch)",
    )
    runtime.add_argument(
        "--model", metavar="FILE.onnx", help="--runtime onnx: the file `collabvit export` wrote"
    )
    runtime.add_argument(
        "--providers",
        default="CPUExecutionProvider",
        metavar="EP[,EP...]",
        help="--runtime onnx: ONNX Runtime execution providers, in order of preference",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser, roles=("edge",), defaults={"edge": ""})
    add_precision_option(parser)
    _add_runtime_options(parser.add_argument_group("runtime"))
    add_point_options(parser)
    parser.add_argument(
        "inputs", nargs="+", metavar="IMAGE|DIR", help="image files, or one folder of images"
    )
    parser.add_argument("--labels", metavar="CSV", help="CSV with file,label columns")
    parser.add_argument("--limit", type=count, metavar="N", help="first N images only")
    parser.add_argument("--batch-size", type=count, default=64, metavar="B", help="edge batch")
    parser.add_argument(
        "--out",
        required=True,
        metavar="FILE.jsonl",
        help="one line per image, written as each is answered (its folder must exist)",
    )
    parser.add_argument(
        "--json", metavar="FILE", help="the summary and the run's versions, as JSON"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the answers already in --out and answer only the other images "
        "(edge fallbacks are tried again)",
    )
    net = parser.add_argument_group("server")
    net.add_argument(
        "--server-url", required=True, type=server_url, metavar="URL", help="http://HOST:PORT"
    )
    net.add_argument("--ca-file", metavar="PEM", help="CA bundle of an https:// server")
    net.add_argument("--codec", default="raw", choices=("raw", "png", "jpeg"))
    net.add_argument("--quality", type=int, default=90, help="jpeg quality 1..100")
    net.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    net.add_argument(
        "--timeout", type=float, default=30.0, metavar="S", help="per network operation"
    )
    net.add_argument(
        "--deadline",
        type=float,
        default=10.0,
        metavar="S",
        help="one image's whole exchange with the server, retries included; after it the "
        "image is answered by the edge",
    )
    net.add_argument("--retries", type=int, default=2, help="extra attempts on 5xx/timeouts")
    net.add_argument(
        "--token",
        help="bearer token (default: $COLLABVIT_TOKEN)",
    )
    net.add_argument(
        "--fail-on-fallback",
        action="store_true",
        help="exit 1 when any image fell back to the edge (default: only when the server "
        "refused images, 4xx, or answered none)",
    )
    net.add_argument(
        "--wait-for-server",
        type=float,
        default=0.0,
        metavar="S",
        help="before the first upload, wait up to S seconds for the server's /healthz",
    )
    net.add_argument(
        "--threads", type=int, metavar="N", help="CPU threads of the runtime (default: its choice)"
    )
    net.add_argument(
        "--baseline-bytes",
        action="store_true",
        help="also measure each original image as a whole JPEG q90 upload (the baseline the "
        "summary compares against; costs one decode and encode per image)",
    )


def run(args: argparse.Namespace) -> int:
    status = execute(args)
    _skip_final_gc()
    return status


def execute(args: argparse.Namespace) -> int:
    """The command, without the fast exit: the exit status (docs/serving.md, Exit status)."""
    from ..cli import load_role, point_from_args
    from ..client import EdgeClient
    from ..errors import ConfigError
    from . import _edge_io as io
    from ._outputs import check_outputs

    if args.runtime == "torch" and args.threads is not None:
        import torch

        torch.set_num_threads(max(1, args.threads))
    if args.runtime == "torch" and not args.edge:
        raise ConfigError("--edge NAME is required (or --runtime onnx --model FILE.onnx)")
    check_outputs(files={"--out": args.out, "--json": args.json})
    point = point_from_args(args) if args.runtime == "torch" else _edge_point(args)
    config = _config(args)  # a bad token or option fails here, before any work
    edge = _load_edge(args, config) if args.runtime == "onnx" else None  # file, /healthz
    samples = io.samples(args)
    out = Path(args.out)
    kept = io.resumable(out, samples) if args.resume else []
    done = {r.file for r in kept}
    todo = [s for s in samples if s.file not in done]
    edge = edge or load_role(args, "edge")
    answered, signum = _answer(EdgeClient(edge, point, config), kept, todo, out)
    results = io.in_input_order([*kept, *answered], samples)
    return _finish(args, edge, results, len(samples), signum)


def _answer(
    client: EdgeClient, kept: list[ImageResult], todo: list[Sample], out: Path
) -> tuple[list[ImageResult], int | None]:
    """Answer ``todo``, each line appended to ``out`` (after ``kept``) as it is answered."""
    from ..cli import progress_bar
    from ..client import JsonlWriter, write_jsonl

    write_jsonl(kept, out)  # the lines a resumed run keeps (none for a fresh run)
    with JsonlWriter(out, append=True) as sink, progress_bar(len(todo), "edge") as bar:

        def on_result(result: ImageResult) -> None:
            sink.write(result)  # on disk (flushed) as soon as it is answered
            bar.update(1)

        return _run_until_signal(client, todo, on_result)


def _finish(
    args: argparse.Namespace,
    edge: Any,
    results: list[ImageResult],
    total: int,
    signum: int | None,
) -> int:
    """The file in input order, the summary (and --json), the exit status and its line."""
    import json

    from ..client import summarise, write_jsonl
    from . import _edge_io as io
    from ._outputs import writing
    from ._runinfo import run_info

    out = Path(args.out)
    write_jsonl(results, out)
    summary = summarise(results, edge.num_patches)
    io.print_summary(summary, results)
    failure = None if signum is not None else io.failure(results, args.fail_on_fallback)
    status = 128 + signum if signum is not None else 0 if failure is None else 1
    if args.json:
        body = summary | {"exit_status": status, "run": run_info(args, {"edge": edge})}
        with writing("--json", args.json):
            Path(args.json).write_text(json.dumps(body, indent=2) + "\n")
    if signum is not None:
        print(
            f"collabvit edge: interrupted ({signal.Signals(signum).name}) with {len(results)} of "
            f"{total} images answered, all in {out}: rerun with --resume to answer the rest",
            file=sys.stderr,
        )
    elif failure is not None:
        print(f"collabvit edge: error: {failure} (answers in {out})", file=sys.stderr)
    return status


def _edge_point(args: argparse.Namespace) -> EdgePoint:
    """The operating point of the ONNX edge (torch-free ``EdgePoint``): options or ``--point``."""
    from ..onnx_edge import EdgePoint
    from ._point import point_fields

    return EdgePoint(**point_fields(args))


def _load_edge(args: argparse.Namespace, config: ClientConfig) -> OnnxEdge:
    """The exported model, checked against the server's ``/healthz`` geometry if it answers.

    (A server that does not answer is no error here: the run answers on the edge.)
    """
    import httpx

    from ..errors import ConfigError
    from ..onnx_edge import check_server, load_edge

    if not args.model:
        raise ConfigError("--runtime onnx needs --model FILE.onnx (written by collabvit export)")
    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    edge = load_edge(args.model, providers, args.threads)
    try:
        health = httpx.get(f"{config.server_url.rstrip('/')}/healthz", timeout=5.0)
        health.raise_for_status()
        answer = health.json()
    except (httpx.HTTPError, ValueError) as exc:
        log.warning("%s/healthz did not answer (%s): geometry not checked", config.server_url, exc)
        return edge
    if isinstance(answer, dict):
        check_server(edge, answer)
    return edge


def _config(args: argparse.Namespace) -> ClientConfig:
    from ..client import ClientConfig

    return ClientConfig(
        server_url=args.server_url,
        codec=args.codec,
        quality=args.quality,
        concurrency=args.concurrency,
        timeout_s=args.timeout,
        deadline_s=args.deadline,
        retries=args.retries,
        token=_token(args),
        batch_size=args.batch_size,
        wait_for_server_s=args.wait_for_server,
        full_jpeg_baseline=args.baseline_bytes,
        ca_file=args.ca_file,
        check_server=True,  # /healthz once: a server of another geometry is refused
    )


def _token(args: argparse.Namespace) -> str | None:
    """--token, else $COLLABVIT_TOKEN, else None; an empty or non-ASCII one is a usage error."""
    from ..client.config import check_token

    if args.token is not None:
        return check_token(args.token, "--token")
    if "COLLABVIT_TOKEN" in os.environ:
        return check_token(os.environ["COLLABVIT_TOKEN"], "COLLABVIT_TOKEN")
    return None


def _run_until_signal(
    client: EdgeClient, samples: list[Sample], on_result: Callable[[ImageResult], None]
) -> tuple[list[ImageResult], int | None]:
    """client.arun until done, or until SIGINT/SIGTERM: (the answers, the signal or None)."""
    caught: list[int] = []

    async def main() -> list[ImageResult]:
        stop = asyncio.Event()

        def on_signal(signum: int) -> None:
            caught.append(signum)
            stop.set()

        loop = asyncio.get_running_loop()
        previous = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[signum] = signal.getsignal(signum)
                loop.add_signal_handler(signum, on_signal, signum)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
                previous.pop(signum, None)
        try:
            return await client.arun(samples, on_result, stop)
        finally:
            for signum, handler in previous.items():
                loop.remove_signal_handler(signum)
                signal.signal(signum, handler)

    answered = asyncio.run(main())
    return answered, caught[0] if caught else None
