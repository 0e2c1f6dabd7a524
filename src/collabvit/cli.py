"""The ``collabvit`` command line: one sub-command per module in ``collabvit.commands``.

Only this layer talks to the terminal: it sets up logging (``-v`` debug,
``-q`` warnings only, before or after the command), shows progress bars (on
a terminal only), prints short summaries, and turns an error into one line
on stderr and an exit status (:data:`EXIT_STATUS`): 2 for a usage error
(argparse, a bad option value, model, checkpoint, data or labels file: a
:class:`CollabViTError` of that kind), 1 for a failure during the work (the
server, the wire, I/O).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .commands._point import add_point_options, point_from_args
from .commands._values import count, crop_ratio
from .errors import CollabViTError, exit_status

__all__ = [
    "COMMANDS",
    "add_data_options",
    "add_model_options",
    "add_point_options",
    "add_precision_option",
    "load_pair",
    "load_samples",
    "main",
    "point_from_args",
    "progress_bar",
]

COMMANDS = (
    "evaluate",
    "sweep",
    "demo",
    "calibrate",
    "visualize",
    "train",
    "serve",
    "edge",
    "export",
)

logger = logging.getLogger("collabvit")

EXIT_STATUS = (
    "exit status: 0 success, 1 a runtime failure (server, wire, I/O during the work; "
    "collabvit edge: see docs/serving.md), 2 a usage error (a bad option value, model, "
    "checkpoint, data or labels file, found before the work), 130/143 interrupted "
    "(SIGINT/SIGTERM)"
)
"""The epilog of every ``--help``."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: ``collabvit CMD: error: ...`` and status 2."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each default shown once: not for options without one, nor when the help says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default is None or action.default is False or "default" in text:
            return text
        return super()._get_help_string(action)


def add_model_options(
    parser: argparse.ArgumentParser,
    roles: Sequence[str] = ("edge", "server"),
    defaults: dict[str, str] | None = None,
) -> None:
    """--edge/--server (+ -checkpoint), --ema, --random-init, --crop-pct, --device."""
    defaults = defaults or {}
    group = parser.add_argument_group("models")
    for role in roles:
        group.add_argument(
            f"--{role}",
            default=defaults.get(role),
            required=role not in defaults,
            metavar="NAME",
            help=f"{role} model: a timm ViT name, an hf-hub:OWNER/REPO id, a shipped model "
            "(fmnist-tiny, fmnist-base) or a model JSON",
        )
        group.add_argument(
            f"--{role}-checkpoint",
            metavar="PATH",
            help=f"{role} weights: timm/DeiT .pth/.safetensors, a timm train checkpoint, or a "
            "transformers ViT/DeiT folder or file",
        )
    group.add_argument(
        "--ema",
        action="store_true",
        help="take the EMA weights (state_dict_ema/model_ema) of timm/DeiT train checkpoints",
    )
    group.add_argument(
        "--random-init",
        type=int,
        metavar="SEED",
        help="randomly initialised weights (models without a checkpoint)",
    )
    group.add_argument(
        "--crop-pct",
        type=crop_ratio,
        metavar="R",
        help="crop ratio in (0, 1] (default: the model's, 0.875 for timm models as the DeiT "
        "authors)",
    )
    group.add_argument(
        "--device",
        default="cpu",
        help="auto (cuda when there is a GPU), cpu, cuda or cuda:N; checked before loading",
    )


# models.precision.PRECISION_CHOICES, spelled here so that the parser imports no torch
# (an edge install has none); tests/test_cli_precision.py checks the two agree
PRECISIONS = ("fp32", "bf16", "fp16", "auto")


def add_precision_option(parser: argparse.ArgumentParser) -> None:
    """--precision (:mod:`collabvit.models.precision`): the weights' dtype, cast once."""
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=PRECISIONS,
        help="model weights in fp32 (TF32 matmuls on CUDA), bf16 or fp16, cast once after "
        "loading; auto: bf16 where the device runs it natively; the gate, the attention "
        "scores and the logits stay float32 (docs/precision.md)",
    )


def add_data_options(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """--data, --labels, --class-map, --limit, --subset-seed, --batch-size."""
    group = parser.add_argument_group("data")
    group.add_argument(
        "--data",
        required=required,
        metavar="DIR",
        help="ImageFolder (synset folders n01440764.. or class-number folders 0..999 map to "
        "the model's classes; other names need --class-map), or a flat folder with --labels",
    )
    group.add_argument(
        "--labels",
        metavar="FILE",
        help="labels of a flat folder: a CSV with file and label (class index or synset) "
        "columns, the devkit's ILSVRC2012_validation_ground_truth.txt, or Kaggle's "
        "LOC_val_solution.csv (told apart by content)",
    )
    group.add_argument(
        "--class-map",
        metavar="CSV",
        help="folder,class lines (class: index or synset) for ImageFolder class folders",
    )
    group.add_argument(
        "--limit",
        type=count,
        metavar="N",
        help="N images only: the first N, or with --subset-seed a class-stratified subset",
    )
    group.add_argument(
        "--subset-seed",
        type=int,
        metavar="S",
        help="with --limit: a seeded subset drawing round-robin from every class "
        "(default: no seed, the first N images in folder order)",
    )
    group.add_argument(
        "--batch-size", type=count, default=64, metavar="B", help="images per model forward"
    )
    group.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="loader processes decoding the images (default: the usable cores; 0: in the "
        "main process); the results do not depend on it",
    )


def load_role(args: argparse.Namespace, role: str) -> Any:
    """Load the ``edge`` or ``server`` model named by the options.

    ``--device`` is resolved first (:func:`collabvit.models.devices.resolve_device`):
    a GPU that is not there is a one-line ConfigError before any model is built.
    """
    from .models import load_model
    from .models.devices import resolve_device
    from .models.precision import apply_precision, check_precision

    device = resolve_device(args.device)
    precision = check_precision(getattr(args, "precision", "fp32"), device)  # before loading

    name = getattr(args, role)
    checkpoint = getattr(args, f"{role}_checkpoint", None)
    random_init = args.random_init if checkpoint is None else None
    loaded = load_model(
        name,
        checkpoint=checkpoint,
        random_init=random_init,
        crop_pct=args.crop_pct,
        device=device,
        ema=getattr(args, "ema", False),
    )
    return apply_precision(loaded, precision)


def load_pair(args: argparse.Namespace) -> tuple[Any, Any]:
    """The edge and server models named by :func:`add_model_options` options."""
    from .pipeline import check_pair

    edge, server = load_role(args, "edge"), load_role(args, "server")
    check_pair(edge, server)
    return edge, server


def load_samples(args: argparse.Namespace, num_classes: int) -> list[Any]:
    """The images of :func:`add_data_options` options, labelled for a model of ``num_classes``."""
    from .data import discover
    from .fmnist import named_samples

    named = named_samples(args.data, args.limit)  # fmnist, cfmnist[:SEED]: built-in test sets
    if named is not None:
        return named
    samples, _ = discover(
        args.data,
        args.labels,
        args.limit,
        num_classes=num_classes,
        class_map=args.class_map,
        subset_seed=args.subset_seed,
    )
    return samples


def progress_bar(total: int, desc: str, unit: str = "img") -> Any:
    """A tqdm bar on stderr, drawn only when stderr is a terminal (no frames in a log file)."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        dynamic_ncols=True,
        file=sys.stderr,
        mininterval=0.5,
        disable=not sys.stderr.isatty(),
    )


def _build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable[..., int | None]]]:
    parser = _Parser(
        prog="collabvit",
        description="Attention-aware collaborative inference between an edge ViT and a server ViT",
        epilog=EXIT_STATUS,
    )
    _add_verbosity(parser, False)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    runners: dict[str, Callable[..., int | None]] = {}
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"collabvit.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"collabvit.commands.{name}":
                continue  # command not part of this build
            raise
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=module.__doc__,
            formatter_class=_HelpFormatter,
            epilog=EXIT_STATUS,
        )
        _add_verbosity(p, argparse.SUPPRESS)  # after the command too; unset: the top level's
        try:
            module.add_arguments(p)
        except ModuleNotFoundError as exc:  # an edge install: no torch, timm, ...
            if _research_module(exc) is None:
                raise
            p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
            runners[name] = _needs_research(exc)
            continue
        runners[name] = module.run
    return parser, runners


def _add_verbosity(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=default, help="debug logging"
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", default=default, help="warnings and errors only"
    )


# the packages of the [research] extra that an edge install (collabvit[edge]) lacks
_RESEARCH_MODULES = {
    "torch",
    "torchvision",
    "timm",
    "huggingface_hub",
    "safetensors",
    "matplotlib",
    "fastapi",
    "uvicorn",
    "prometheus_client",
    "onnx",
    "onnxscript",
}


def _research_module(exc: ModuleNotFoundError) -> str | None:
    top = (exc.name or "").split(".")[0]
    return top if top in _RESEARCH_MODULES else None


def _needs_research(exc: ModuleNotFoundError) -> Callable[..., int | None]:
    def run(_args: argparse.Namespace) -> int | None:
        raise exc

    return run


def _version() -> str:
    from . import __version__

    return f"collabvit {__version__}"


def _logging_level(args: argparse.Namespace) -> int:
    """-v: DEBUG, -q: WARNING, else INFO; the ``collabvit`` logger is set to it."""
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(levelname)s %(name)s: %(message)s" if args.verbose else "%(message)s",
    )
    # third-party chatter stays quiet unless asked for
    for noisy in ("timm", "httpx", "httpcore", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    return level


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``collabvit`` script; returns the exit status (:data:`EXIT_STATUS`)."""
    from .commands._runinfo import started_utc

    parser, runners = _build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.verbose and args.quiet:
        parser.error("give -v (debug) or -q (warnings only), not both")
    args.command_line = ["collabvit", *argv]
    args.started_utc = started_utc()
    ours = logging.getLogger("collabvit")
    previous = ours.level
    ours.setLevel(_logging_level(args))
    from tqdm.contrib.logging import logging_redirect_tqdm

    try:
        with logging_redirect_tqdm():  # log lines go above progress bars, not into them
            return int(runners[args.command](args) or 0)
    except CollabViTError as exc:
        print(f"collabvit {args.command}: error: {exc}", file=sys.stderr)
        return exit_status(exc)
    except ModuleNotFoundError as exc:
        if _research_module(exc) is None:
            raise
        print(
            f"collabvit {args.command}: error: needs the research install ({exc.name} is not "
            "installed): pip install 'collabvit[research]'",
            file=sys.stderr,
        )
        return 2
    except OSError as exc:  # a disk full, a file gone while working: a runtime failure
        print(f"collabvit {args.command}: error: {exc}", file=sys.stderr)
        return exit_status(exc)
    except KeyboardInterrupt:
        print(f"collabvit {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        ours.setLevel(previous)


if __name__ == "__main__":
    sys.exit(main())
