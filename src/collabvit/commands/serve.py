"""Serve the server model over HTTP for edge devices (collabvit edge).

POST /v1/infer takes a wire payload (the patches an edge selected) and answers
the label as JSON; POST /v1/infer-image takes a whole image file (server-only
baseline); GET /healthz and GET /metrics (Prometheus) report on the server.
Concurrent requests are batched into one forward. SIGTERM or Ctrl+C stops
accepting connections, answers every request already accepted, then exits.
See docs/serving.md.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..cli import add_model_options

HELP = "HTTP server for the server model (batched, /v1/infer, /healthz, /metrics)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser, roles=("server",))
    net = parser.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1", help="address to listen on")
    net.add_argument("--port", type=int, default=8000, help="port to listen on")
    net.add_argument(
        "--token",
        help="bearer token required on /v1/* and /metrics (default: $COLLABVIT_TOKEN; "
        "unset: no authentication; empty: an error); printable ASCII without spaces; "
        "/healthz stays open",
    )
    limits = parser.add_argument_group("limits (see docs/serving.md, Limits)")
    limits.add_argument(
        "--max-body-bytes", type=int, default=16 * 1024 * 1024, help="larger bodies get 413"
    )
    limits.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="close connections whose request line and headers take longer",
    )
    limits.add_argument(
        "--body-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="answer 408 (and close) when a request body takes longer",
    )
    limits.add_argument(
        "--max-image-pixels",
        type=int,
        default=4096 * 4096,
        metavar="N",
        help="/v1/infer-image: images declaring more pixels get 413",
    )
    limits.add_argument(
        "--max-decoded-bytes",
        type=int,
        default=64 * 1024 * 1024,
        metavar="N",
        help="/v1/infer-image: images that would decode to more bytes get 413",
    )
    limits.add_argument(
        "--max-decodes",
        type=int,
        default=4,
        metavar="N",
        help="requests decoded at once (each may hold --max-decoded-bytes); more wait",
    )
    net.add_argument(
        "--graceful-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="on SIGTERM, wait at most S seconds for in-flight requests",
    )
    net.add_argument(
        "--max-connections",
        type=int,
        metavar="N",
        help="open connections beyond which uvicorn answers 503 (default: no limit)",
    )
    net.add_argument("--access-log", action="store_true", help="log every request")
    batching = parser.add_argument_group("batching")
    batching.add_argument("--max-batch-size", type=int, default=32, help="images per forward")
    batching.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="after the first request, wait up to this long for a fuller batch",
    )
    batching.add_argument(
        "--max-queue", type=int, default=128, help="waiting requests beyond which 503 is answered"
    )
    batching.add_argument(
        "--threads", type=int, metavar="N", help="torch CPU threads (default: torch's choice)"
    )


def run(args: argparse.Namespace) -> int:
    import signal
    import threading

    import torch
    import uvicorn

    from ..cli import load_role
    from ..server import ServerConfig, check_token, create_app
    from ..server.protocol import http_protocol

    token, source = args.token, "--token"
    if token is None:
        token, source = os.environ.get("COLLABVIT_TOKEN"), "COLLABVIT_TOKEN"
    if token is not None:
        check_token(token, source)  # "" would turn authentication off without a word
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    config = ServerConfig(
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_body_bytes=args.max_body_bytes,
        max_image_pixels=args.max_image_pixels,
        max_decoded_bytes=args.max_decoded_bytes,
        max_decodes=args.max_decodes,
        header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout,
        token=token,
    )
    loaded = load_role(args, "server")
    app = create_app(loaded, config)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            app.state.batcher.flush()  # answer requests in flight now, not after max-wait

    server = Server(
        uvicorn.Config(
            app,
            http=http_protocol(config.header_timeout_s),  # closes slow-header connections
            host=args.host,
            port=args.port,
            log_config=None,  # the CLI configured logging
            access_log=args.access_log,
            timeout_graceful_shutdown=args.graceful_timeout,
            limit_concurrency=args.max_connections,
            lifespan="on",
        )
    )

    def on_sigterm(_sig: int, _frame: object) -> None:
        server.should_exit = True

    if threading.current_thread() is threading.main_thread():
        # uvicorn drains on SIGTERM, then re-raises it under the previous handler;
        # with this one the drained server exits with status 0 instead of dying by signal.
        signal.signal(signal.SIGTERM, on_sigterm)
    server.run()
    _skip_final_gc()
    return 0


def _skip_final_gc() -> None:
    """Exit fast: nothing is left to clean up once the work is done.

    NOTE: the interpreter's last garbage collection over torch's objects costs
    about 2 s of CPU (tens of seconds of wall-clock time on a busy machine);
    frozen objects are left out of it. Reference counting still frees the rest
    and atexit handlers (logging) still run.
    """
    import gc

    gc.freeze()
