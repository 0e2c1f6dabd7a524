"""The edge command's inputs and outputs: its images, --resume, the exit reason, the summary.

Split from :mod:`collabvit.commands.edge` (which parses and runs) to keep each
module short.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..client import ImageResult
    from ..data import Sample

log = logging.getLogger("collabvit.edge")

__all__ = ["failure", "in_input_order", "print_summary", "resumable", "samples"]


def samples(args: argparse.Namespace) -> list[Sample]:
    import csv
    from pathlib import Path

    from ..data import Sample, discover
    from ..errors import DataError

    paths = [Path(p) for p in args.inputs]
    if len(paths) == 1 and paths[0].is_dir():
        samples, _ = discover(paths[0], args.labels, args.limit)
        return samples
    if any(p.is_dir() for p in paths):
        raise DataError("give either one folder or image files, not both")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"{len(missing)} input file(s) do not exist (first: {missing[0]})")
    labels: dict[str, int] = {}
    if args.labels:
        try:
            with open(args.labels, newline="") as fh:
                for row in csv.DictReader(fh):
                    labels[row["file"]] = int(row["label"])
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise DataError(
                f"labels file {args.labels} is not a CSV with file,label columns ({exc})"
            ) from None
    if args.limit is not None:
        paths = paths[: args.limit]
    return [
        Sample(i, str(p), p, labels.get(str(p), labels.get(p.name, -1)))
        for i, p in enumerate(paths)
    ]


def failure(results: list[ImageResult], fail_on_fallback: bool) -> str | None:
    """Why the run failed (exit status 1), in one line; None when it did not.

    It failed when the server refused an image (a 4xx but 429: wrong token,
    geometry, size; see NON_TRANSIENT), when it answered none of the images
    sent (dead, or not a collabvit server), or, with --fail-on-fallback,
    when any image fell back.
    """
    from ..client.results import NON_TRANSIENT

    sent = [r for r in results if r.source in ("server", "edge-fallback")]
    fallbacks = [r for r in sent if r.source == "edge-fallback"]
    refused = [r for r in fallbacks if r.fallback in NON_TRANSIENT]
    if refused:
        why, first = f"the server refused {len(refused)} of {len(sent)} images sent", refused[0]
    elif fallbacks and len(fallbacks) == len(sent):
        why, first = f"the server answered none of the {len(sent)} images sent", fallbacks[0]
    elif fallbacks and fail_on_fallback:
        why = f"{len(fallbacks)} of {len(sent)} images sent fell back to the edge"
        why, first = why + " (--fail-on-fallback)", fallbacks[0]
    else:
        return None
    return f"{why}; first {first.file}: {first.error}"


def resumable(out: Path, samples: list[Sample]) -> list[ImageResult]:
    """The answers in ``out`` that a rerun keeps: all but the edge fallbacks (tried again)."""
    from ..client import read_jsonl

    if not out.is_file():
        log.info("--resume: %s does not exist yet: answering every image", out)
        return []
    previous = read_jsonl(out)
    kept = [r for r in previous if r.source != "edge-fallback"]
    wanted = {s.file for s in samples}
    log.info(
        "--resume: %d of %d images already answered in %s (%d edge fallback(s) tried again)",
        sum(r.file in wanted for r in kept),
        len(samples),
        out,
        len(previous) - len(kept),
    )
    return kept


def in_input_order(results: list[ImageResult], samples: list[Sample]) -> list[ImageResult]:
    """Results ordered as the samples; lines for other files (an earlier run's) at the end."""
    position = {s.file: i for i, s in enumerate(samples)}
    return sorted(results, key=lambda r: position.get(r.file, len(samples)))


def print_summary(s: dict[str, Any], results: list[ImageResult]) -> None:
    fallbacks = [r for r in results if r.source == "edge-fallback"]
    if fallbacks:
        log.warning(
            "%d image(s) answered by the edge because the server did not (first: %s: %s)",
            len(fallbacks),
            fallbacks[0].file,
            fallbacks[0].error,
        )

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.2f}%"

    src = s["sources"]
    full = s["mean_full_jpeg_bytes"]
    vs_full = (
        f" vs {full:,.0f} B/image as whole JPEG q90 ({pct(s['mean_bytes_per_image'] / full)})"
        if full
        else ""
    )
    reasons = ", ".join(f"{k} {n}" for k, n in s["fallbacks"].items())
    print(
        f"{s['images']} images | accuracy {pct(s['accuracy'])} (edge alone "
        f"{pct(s['edge_accuracy'])}) | transmitted {pct(s['transmit_ratio'])}, communication "
        f"cost {pct(s['communication_cost'])} | "
        f"server {src['server']}, edge {src['edge']}, fallbacks {src['edge-fallback']}"
        + (f" ({reasons})" if reasons else "")
        + (f", unreadable {src['unreadable']}" if src["unreadable"] else "")
        + (f", sent raw (codec failed) {s['codec_fallbacks']}" if s["codec_fallbacks"] else "")
        + f" | sent {s['mean_bytes_per_image']:,.0f} B/image{vs_full}"
    )
