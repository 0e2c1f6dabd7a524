"""The ``run`` block of every summary JSON: what ran, on what, with which weights, when.

``{"collabvit": version, "command": ["collabvit", ...], "device": "cpu",
"precision": "fp32", "weights_sha256": {"edge": ..., "server": ...},
"time_utc": "2026-...+00:00"}``. The weights digest is the one the sweep
cache and the ONNX export metadata use
(:func:`collabvit.sweep.cache.model_identity`; an exported ONNX edge carries
its own). ``time_utc`` is when the command started.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from typing import Any

__all__ = ["run_info", "started_utc", "weights_sha256"]


def started_utc() -> str:
    """Now, in UTC, as ISO 8601 with the offset (what ``time_utc`` holds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def weights_sha256(model: Any) -> str:
    """SHA-256 of a loaded model's weights (an ONNX edge: the digest in its metadata)."""
    metadata = getattr(model, "metadata", None)
    if metadata is not None and getattr(metadata, "weights_sha256", None):
        return str(metadata.weights_sha256)
    from ..sweep.cache import model_identity

    return str(model_identity(model)["weights_sha256"])


def _device(models: dict[str, Any], args: argparse.Namespace) -> str:
    for model in models.values():
        torch_model = getattr(model, "model", None)
        parameters = getattr(torch_model, "parameters", None)
        if parameters is not None:
            first = next(iter(parameters()), None)
            if first is not None:
                return str(first.device)
        session = getattr(model, "session", None)  # an ONNX edge: its execution providers
        if session is not None and hasattr(session, "get_providers"):
            return ",".join(session.get_providers())
    return str(getattr(args, "device", "cpu"))


def run_info(
    args: argparse.Namespace,
    models: dict[str, Any],
    digests: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The ``run`` block for ``args`` and the models used (``{"edge": m, "server": m}``).

    ``digests`` gives weight digests already computed (a sweep's meta), by role.
    """
    from .. import __version__

    known = digests or {}
    command = getattr(args, "command_line", None) or ["collabvit", *sys.argv[1:]]
    return {
        "collabvit": __version__,
        "command": list(command),
        "device": _device(models, args),
        "precision": getattr(args, "precision", "fp32"),
        "weights_sha256": {
            role: known.get(role) or weights_sha256(model) for role, model in models.items()
        },
        "time_utc": getattr(args, "started_utc", None) or started_utc(),
    }
