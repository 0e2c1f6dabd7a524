"""What the edge client answered: one :class:`ImageResult` per image, as JSONL and a summary.

:class:`JsonlWriter` appends each line as the image is answered (flushed), so
an interrupted run keeps its answers; :func:`read_jsonl` reads them back
(``collabvit edge --resume``); :func:`write_jsonl` replaces a file whole.

The summary's accuracy, transmit ratio and communication cost come from
:func:`collabvit.metrics.summarise`, the function ``collabvit evaluate`` and
the sweep use, so the edge client reports the same numbers for the same
decisions; the client adds answers by source, bytes and latency.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..metrics import summarise as summarise_metrics

logger = logging.getLogger(__name__)

__all__ = [
    "FALLBACK_REASONS",
    "NON_TRANSIENT",
    "SOURCES",
    "TRANSMITTED",
    "ImageResult",
    "JsonlWriter",
    "read_jsonl",
    "summarise",
    "write_jsonl",
]

SOURCES = ("edge", "server", "edge-fallback", "unreadable")
"""Who answered an image: the edge (kept), the server, the edge after the
server failed, or nobody (the file could not be read)."""

TRANSMITTED = ("server", "edge-fallback")
"""The sources of images the gate sent to the server (eq. 11)."""

FALLBACK_REASONS = {
    "deadline": "no answer within the deadline (--deadline)",
    "unavailable": "no answer, 5xx or 429 after every attempt",
    "invalid-answer": "200 answers that are not a collabvit prediction",
    "paused": "the breaker had paused the server after failures in a row",
    "rejected": "the server refused the request (4xx: token, geometry, size)",
    "error": "an unexpected error in the client",
}
"""Why an ``edge-fallback`` image was not answered by the server (``ImageResult.fallback``)."""

NON_TRANSIENT = ("rejected", "error")
"""Fallback reasons that a rerun against the same server cannot fix."""


@dataclass
class ImageResult:
    """What happened to one image: one line of the JSONL output."""

    file: str
    label: int | None  # None when unknown
    prediction: int | None  # None only for unreadable files
    class_name: str | None
    source: str  # one of SOURCES
    uncertainty: float | None
    patches_sent: int  # patches in the payload offered to the server
    bytes_sent: int  # bytes of that payload (one attempt)
    rtt_ms: float | None  # round trip of the answered attempt
    edge_prediction: int | None = None
    server_ms: float | None = None
    attempts: int = 0  # HTTP attempts made
    full_jpeg_bytes: int | None = None  # the whole original as JPEG q90 (opt-in baseline)
    codec: str | None = None  # the payload's codec (None when kept on the edge)
    codec_error: str | None = None  # why the configured codec was not used (then raw)
    error: str | None = None  # why the server did not answer (edge-fallback)
    fallback: str | None = None  # that reason's FALLBACK_REASONS key (edge-fallback)
    index: int = field(default=-1, repr=False)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        del out["index"]
        return out


def write_jsonl(results: Sequence[ImageResult], path: str | Path) -> None:
    """One JSON object per image, in the order given; the file is replaced whole.

    Written to a temporary file beside ``path`` and renamed over it, so a
    reader (or a crash) never sees half of it.
    """
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", encoding="utf-8") as fh:
        for r in results:
            fh.write(json.dumps(r.to_json()) + "\n")
    os.replace(partial, path)


class JsonlWriter:
    """Appends one JSON line per image as it is answered, flushed at once.

    A run that is interrupted (Ctrl-C, SIGTERM, a crash) leaves every answer
    given so far on disk; :func:`read_jsonl` reads them back for ``--resume``.
    """

    def __init__(self, path: str | Path, append: bool = False) -> None:
        self.path = Path(path)
        self._fh: IO[str] = open(self.path, "a" if append else "w", encoding="utf-8")  # noqa: SIM115
        self.written = 0

    def write(self, result: ImageResult) -> None:
        self._fh.write(json.dumps(result.to_json()) + "\n")
        self._fh.flush()
        self.written += 1

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def read_jsonl(path: str | Path) -> list[ImageResult]:
    """The results in a JSONL file written by :class:`JsonlWriter` or :func:`write_jsonl`.

    Lines that are not a whole result (the torn last line of a killed run)
    are left out with a warning; a file listed twice keeps its last line.
    """
    names = {f.name for f in fields(ImageResult)} - {"index"}
    by_file: dict[str, ImageResult] = {}
    torn = 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                values = json.loads(line)
                result = ImageResult(**{k: v for k, v in values.items() if k in names})
            except (ValueError, TypeError, AttributeError, RecursionError):
                torn += 1
                continue
            by_file.pop(result.file, None)
            by_file[result.file] = result
    if torn:
        logger.warning("%s: left out %d line(s) that are not a whole result", path, torn)
    return list(by_file.values())


def summarise(
    results: Sequence[ImageResult], patches_per_image: int | None = None
) -> dict[str, Any]:
    """Sec. VI-A metrics of a run plus the client's own counts.

    Accuracy (system and edge alone, over the labelled answered images),
    transmit ratio and, given ``patches_per_image`` (N), the communication
    cost are :func:`collabvit.metrics.summarise` over the answered images; an
    ``edge-fallback`` image counts as transmitted (the gate sent it). Bytes
    are those of server-answered payloads over all answered images.
    """
    answered = [r for r in results if r.prediction is not None]
    summary = summarise_metrics(
        labels=[-1 if r.label is None else r.label for r in answered],
        edge_pred=[-1 if r.edge_prediction is None else r.edge_prediction for r in answered],
        final_pred=[r.prediction for r in answered],
        transmitted=np.asarray([r.source in TRANSMITTED for r in answered], dtype=bool),
        num_patches=[r.patches_sent for r in answered],
        patches_per_image=patches_per_image or 1,
        nbytes=[r.bytes_sent if r.source == "server" else 0 for r in answered],
    )
    full = [r.full_jpeg_bytes for r in answered if r.full_jpeg_bytes is not None]
    return {
        "images": len(results),
        "answered": summary.images,
        "accuracy": summary.accuracy,
        "edge_accuracy": summary.edge_accuracy,
        "transmit_ratio": summary.transmit_ratio,
        "communication_cost": summary.communication_cost if patches_per_image else None,
        "mean_patches_transmitted": summary.mean_patches_transmitted,
        "sources": {s: sum(r.source == s for r in results) for s in SOURCES},
        "mean_bytes_per_image": summary.bytes_per_image,
        "mean_full_jpeg_bytes": sum(full) / len(full) if full else None,
        "mean_rtt_ms": _mean([r.rtt_ms for r in answered if r.rtt_ms is not None]),
        "codec_fallbacks": sum(r.codec_error is not None for r in results),
        "fallbacks": {
            reason: n
            for reason in FALLBACK_REASONS
            if (n := sum(r.fallback == reason for r in results))
        },
    }


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
