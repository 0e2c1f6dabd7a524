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
import logging
import os
from typing import Any

from ..cli import add_model_options, add_precision_option

ENGINES = ("uvicorn", "ray")
RAY_ONLY = (
    "replicas",
    "autoscale",
    "ray_address",
    "replica_cpus",
    "replica_gpus",
    "max_ongoing",
    "drain_delay",
)
UVICORN_ONLY = ("header_timeout", "max_connections", "access_log")
MODEL_KEYS = (
    "server", "server_checkpoint", "ema", "random_init", "crop_pct", "device", "precision",
)  # fmt: skip
log = logging.getLogger(__name__)

HELP = "HTTP server for the server model (batched, /v1/infer, /healthz, /metrics)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE.toml",
        help="options from a TOML file, one key per option (max-batch-size = 16); options "
        "given on the command line win (docs/deploy.md)",
    )
    add_model_options(parser, roles=("server",), defaults={"server": ""})
    add_precision_option(parser)
    net = parser.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1", help="address to listen on")
    net.add_argument("--port", type=int, default=8000, help="port to listen on (1..65535)")
    net.add_argument(
        "--token",
        help="bearer token required on /v1/* and /metrics (default: $COLLABVIT_TOKEN; "
        "unset: no authentication; empty: an error); printable ASCII without spaces; "
        "/healthz and /readyz stay open",
    )
    net.add_argument("--ssl-certfile", metavar="PEM", help="serve HTTPS with this certificate")
    net.add_argument("--ssl-keyfile", metavar="PEM", help="the certificate's private key")
    _add_engine_options(parser.add_argument_group("engine (docs/deploy.md)"))
    _add_limit_options(parser.add_argument_group("limits (see docs/serving.md, Limits)"))
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
    parser.set_defaults(serve_actions=suppress_defaults(parser))


def _add_limit_options(limits: Any) -> None:
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


def suppress_defaults(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Make every option absent unless given, for --config; return dest -> action.

    The defaults move to ``real_default`` on each action (and into the help);
    :func:`collabvit.server.settings.fill_in` puts them back where neither the
    command line nor the file gave a value.
    """
    actions: dict[str, argparse.Action] = {}
    for action in parser._actions:  # NOTE: argparse keeps its actions here; no public list
        if action.dest in {"help", "config"} or not action.option_strings:
            continue
        actions[action.dest] = action
        shown = action.default
        action.default = argparse.SUPPRESS  # set on the namespace only when given
        action.__dict__["real_default"] = shown
        if action.help and shown not in (None, False, "", argparse.SUPPRESS):
            action.help += f" (default: {shown})"
    return actions


def _autoscale(text: str) -> tuple[int, int]:
    low, sep, high = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return int(low), int(high)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN:MAX, e.g. 1:4, got {text!r}") from None


def _add_engine_options(engine: Any) -> None:
    engine.add_argument(
        "--engine",
        choices=ENGINES,
        default="uvicorn",
        help="uvicorn: one process, one model worker; ray: a Ray Serve app (collabvit[ray])",
    )
    engine.add_argument("--replicas", type=int, metavar="N", help="ray: model replicas (1)")
    engine.add_argument(
        "--autoscale",
        type=_autoscale,
        metavar="MIN:MAX",
        help="ray: scale model replicas between MIN and MAX on ongoing requests",
    )
    engine.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="ray: join this cluster (ray://HOST:10001 or HOST:6379); unset: a local Ray",
    )
    engine.add_argument(
        "--replica-cpus", type=float, metavar="N", help="ray: CPUs reserved per replica (1)"
    )
    engine.add_argument(
        "--replica-gpus", type=float, metavar="N", help="ray: GPUs reserved per replica (0)"
    )
    engine.add_argument(
        "--max-ongoing",
        type=int,
        metavar="N",
        help="ray: requests one model replica holds (2 x --max-batch-size); more wait in "
        "Ray's queue (--max-queue), beyond it 503",
    )
    engine.add_argument(
        "--drain-delay",
        type=float,
        metavar="S",
        help="ray: after SIGTERM, /readyz answers 503 for S seconds before Serve stops (2)",
    )


def run(args: argparse.Namespace) -> int:
    """Both engines; bad options are one line each, before any model loads."""
    from ..errors import ConfigError
    from ..server.settings import check_tls

    _complete(args)
    config = _server_config(args)
    check_tls(args.ssl_certfile, args.ssl_keyfile)
    if not args.server:
        raise ConfigError('--server NAME is required (or server = "NAME" in --config)')
    if args.threads is not None:
        import torch

        torch.set_num_threads(max(1, args.threads))
    if args.engine == "ray":
        return _run_ray(args, config)
    return _run_uvicorn(args, config)


def _complete(args: argparse.Namespace) -> None:
    """Options from --config under those given; the engine-specific ones checked."""
    from ..errors import ConfigError
    from ..server.settings import fill_in, read_config

    actions = args.serve_actions
    from_file = read_config(args.config, actions) if args.config else {}
    given = fill_in(args, actions, from_file)
    if not 1 <= args.port <= 65535:
        raise ConfigError(f"--port must be 1..65535, got {args.port}")
    other = RAY_ONLY if args.engine == "uvicorn" else UVICORN_ONLY
    misplaced = [dest for dest in other if dest in given]
    if misplaced:
        flag = "--" + misplaced[0].replace("_", "-")
        raise ConfigError(f"{flag} does not apply to --engine {args.engine}")
    if args.replicas is not None and args.autoscale is not None:
        raise ConfigError("give --replicas N or --autoscale MIN:MAX, not both")


def _token(args: argparse.Namespace) -> str | None:
    from ..server import check_token

    token, source = args.token, "--token"
    if token is None:
        token, source = os.environ.get("COLLABVIT_TOKEN"), "COLLABVIT_TOKEN"
    if token is not None:
        check_token(token, source)  # "" would turn authentication off without a word
    return token


def _server_config(args: argparse.Namespace) -> Any:
    from ..server import ServerConfig
    from ..server.settings import is_loopback

    token = _token(args)
    if token is None and not is_loopback(args.host):
        log.warning(
            "serving on %s without a bearer token: anyone who can reach it may use the model; "
            "set --token or COLLABVIT_TOKEN (docs/deploy.md)",
            args.host,
        )
    return ServerConfig(
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


def _run_ray(args: argparse.Namespace, config: Any) -> int:
    import functools

    from ..cli import load_role
    from ..models.devices import resolve_device

    try:
        from ..server.ray_app import RayOptions
        from ..server.ray_driver import serve_forever
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "ray":
            raise
        from ..errors import ConfigError

        raise ConfigError("--engine ray needs Ray Serve: pip install 'collabvit[ray]'") from None
    options = RayOptions(
        replicas=args.replicas or 1,
        autoscale=args.autoscale,
        replica_cpus=1.0 if args.replica_cpus is None else args.replica_cpus,
        replica_gpus=args.replica_gpus or 0.0,
        threads=args.threads,
        max_ongoing=args.max_ongoing,
        address=args.ray_address,
        graceful_timeout_s=args.graceful_timeout,
        drain_delay_s=2.0 if args.drain_delay is None else args.drain_delay,
    )
    model_args = argparse.Namespace(**{k: getattr(args, k) for k in MODEL_KEYS if hasattr(args, k)})
    loader = functools.partial(load_role, model_args, "server")
    # a bad model or device is one line here, before Ray starts (the replicas load it
    # again); the driver's copy stays on the CPU and is dropped
    resolve_device(args.device)
    load_role(
        argparse.Namespace(**{**vars(model_args), "device": "cpu", "precision": "fp32"}), "server"
    )
    http = {"host": args.host, "port": args.port}
    if args.ssl_certfile:
        http |= {"ssl_certfile": args.ssl_certfile, "ssl_keyfile": args.ssl_keyfile}
    status = serve_forever(loader, config, options, http)
    _skip_final_gc()
    return status


def _run_uvicorn(args: argparse.Namespace, config: Any) -> int:
    import signal
    import threading

    import uvicorn

    from ..cli import load_role
    from ..server import create_app
    from ..server.app import begin_draining
    from ..server.protocol import http_protocol

    loaded = load_role(args, "server")
    app = create_app(loaded, config)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            begin_draining(app)  # /readyz: 503 from now on
            app.state.batcher.flush()  # answer requests in flight now, not after max-wait

    server = Server(
        uvicorn.Config(
            app,
            http=http_protocol(config.header_timeout_s),  # closes slow-header connections
            loop="asyncio",  # not uvloop, which ray[serve] installs: the same loop either way
            host=args.host,
            port=args.port,
            ssl_certfile=args.ssl_certfile,
            ssl_keyfile=args.ssl_keyfile,
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
