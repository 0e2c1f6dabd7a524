"""Collaborative inference over a dataset: one operating point (``collabvit evaluate``).

Algorithm 1 of the paper, batched (:mod:`collabvit.pipeline`): the edge model
classifies every image and scores its patches; the gate (Sec. V) decides which
images go to the server; the selection rule (Sec. IV-B) picks their patches;
the server classifies the transmitted images from those patches only. The
metrics are :func:`collabvit.metrics.summarise` (Sec. VI-A). :func:`evaluate`
returns its results and writes nothing; :func:`write_records` and
:func:`write_summary` are the separate presenting calls.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import wire
from .data import Sample
from .errors import DataError, WireError
from .loader import iter_batches
from .metrics import (
    RECORD_FIELDS,
    ImageRecord,
    accuracy_interval,
    make_record,
    summarise_records,
)
from .models import LoadedModel
from .pipeline import (
    EdgeDecision,
    OperatingPoint,
    check_method,
    check_pair,
    classify_on_server,
    decide_on_edge,
)
from .workers import resolve_workers

__all__ = [
    "RECORD_FIELDS",
    "EdgeBatchDecision",
    "EvaluationResult",
    "ImageRecord",
    "OperatingPoint",
    "check_method",
    "check_pair",
    "decide_on_edge",
    "evaluate",
    "flops_table",
    "make_record",
    "wire_bytes",
    "write_records",
    "write_summary",
]

logger = logging.getLogger(__name__)

EdgeBatchDecision = EdgeDecision  # the name before pipeline.py existed


@dataclass
class EvaluationResult:
    records: list[ImageRecord]
    summary: dict[str, Any]
    skipped: list[Sample] = field(default_factory=list)


def flops_table(server: LoadedModel, num_patches: int) -> np.ndarray:
    """Eq. 9 cost of the server on k = 0..num_patches patches, (num_patches + 1,)."""
    return np.asarray([float(server.flops(k)) for k in range(num_patches + 1)])


def write_records(records: Sequence[ImageRecord], path: str | Path) -> None:
    """The records CSV: one row per image, columns :data:`RECORD_FIELDS` (+ bytes_sent)."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        with_bytes = any(r.bytes_sent is not None for r in records)
        writer.writerow(RECORD_FIELDS + (("bytes_sent",) if with_bytes else ()))
        for r in records:
            writer.writerow(
                [
                    r.index,
                    r.file,
                    r.label,
                    r.edge_pred,
                    f"{r.uncertainty:.6f}",
                    int(r.transmitted),
                    r.num_patches,
                    "" if r.server_pred is None else r.server_pred,
                    r.final_pred,
                ]
                + ([r.bytes_sent] if with_bytes else [])
            )


def write_summary(summary: dict[str, Any], path: str | Path) -> None:
    """The summary JSON."""
    Path(path).write_text(json.dumps(summary, indent=2) + "\n")


def _hwc(pixels: torch.Tensor) -> np.ndarray:
    """(C, H, W) uint8 tensor -> (H, W, C) numpy for Pillow."""
    return pixels.permute(1, 2, 0).cpu().numpy()


def wire_bytes(
    pixels: torch.Tensor, keep_mask: Any, patch_size: int, codec: str, quality: int = 90
) -> int:
    """Bytes of one image's selected patches on the wire (header, mask, payload, CRC)."""
    px, mask = pixels.cpu().numpy(), np.asarray(keep_mask, dtype=bool)
    try:
        return len(wire.encode(px, mask, patch_size, codec, quality))
    except WireError:  # Pillow cannot write it (e.g. JPEG of noise): the edge sends raw
        logger.warning("%s could not encode an image's patches: counted as raw", codec)
        return len(wire.encode(px, mask, patch_size, "raw", 0))


def _file_size(hwc: np.ndarray, fmt: str) -> int:
    """Bytes of the whole image as one JPEG (q90) or PNG file; raw pixels if Pillow fails."""
    try:
        return wire.full_image_bytes(hwc, fmt, 90)
    except WireError:
        return int(hwc.size)


@dataclass
class _Totals:
    raised: int = 0
    full_jpeg: int = 0
    full_png: int = 0


def _batch_records(
    server: LoadedModel,
    batch_samples: Sequence[Sample],
    pixels: torch.Tensor,
    decided: EdgeDecision,
    codec: str | None,
    quality: int,
    totals: _Totals,
) -> list[ImageRecord]:
    """Steps 6-9 for the transmitted images of one batch, and every image's record."""
    b = len(batch_samples)
    server_pred: list[int | None] = [None] * b
    counts = [0] * b
    sizes: list[int | None] = [None if codec is None else 0] * b
    sel = decided.selection
    if sel is not None:
        totals.raised += int(sel.raised_to_one.sum())
        out = classify_on_server(server, pixels[decided.rows], sel.keep_mask)
        patch = server.patch_size
        for j, row in enumerate(decided.rows):
            server_pred[row] = int(out[j].argmax())
            counts[row] = int(sel.num_patches[j])
            if codec is not None:
                sizes[row] = wire_bytes(pixels[row], sel.keep_mask[j], patch, codec, quality)
    if codec is not None:
        for j in range(b):
            totals.full_jpeg += _file_size(_hwc(pixels[j]), "jpeg")
            totals.full_png += _file_size(_hwc(pixels[j]), "png")
    return [
        make_record(
            s,
            int(decided.edge_pred[j]),
            float(decided.uncertainty[j]),
            bool(decided.transmitted[j]),
            counts[j],
            server_pred[j],
            sizes[j],
        )
        for j, s in enumerate(batch_samples)
    ]


def _bytes_summary(
    records: Sequence[ImageRecord], edge: LoadedModel, codec: str, quality: int, totals: _Totals
) -> dict[str, Any]:
    n = len(records)
    sent_sizes = [r.bytes_sent or 0 for r in records if r.transmitted]
    return {
        "codec": codec,
        "quality": quality if codec == "jpeg" else None,
        "per_image": sum(sent_sizes) / n,
        "per_transmitted_image": sum(sent_sizes) / len(sent_sizes) if sent_sizes else 0.0,
        "full_image_jpeg_q90_per_image": totals.full_jpeg / n,
        "full_image_png_per_image": totals.full_png / n,
        "paper_bits_per_image": sum(
            wire.payload_bits(r.num_patches, edge.patch_size, edge.preprocessing.channels)
            for r in records
        )
        / n,
    }


def _intervals(records: Sequence[ImageRecord]) -> dict[str, float | None]:
    """95 % Wilson intervals of the collaborative and the edge accuracy (None: no labels)."""
    labels = [r.label for r in records]
    out: dict[str, float | None] = {}
    for name, pred in (
        ("accuracy", [r.final_pred for r in records]),
        ("edge_accuracy", [r.edge_pred for r in records]),
    ):
        interval = accuracy_interval(pred, labels)
        out[f"{name}_low"], out[f"{name}_high"] = interval or (None, None)
    return out


@torch.no_grad()
def evaluate(
    edge: LoadedModel,
    server: LoadedModel,
    samples: Sequence[Sample],
    point: OperatingPoint,
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
    codec: str | None = None,
    quality: int = 90,
    workers: int | None = 0,
) -> EvaluationResult:
    """Run the collaborative system at one operating point over ``samples``.

    Args:
        edge, server: the two models (same input size and patch grid).
        samples: images from :func:`collabvit.data.discover`.
        point: score, rule, threshold, measure, eta.
        batch_size: images per edge batch (the server batches the transmitted ones).
        progress: called with the number of images done after each batch.
        codec: also measure bytes on the wire with this codec (raw, png, jpeg),
            next to whole-image JPEG (q=90) and PNG uploads of the same pixels.
        quality: JPEG quality of the ``jpeg`` codec.
        workers: loader processes decoding the images (:mod:`collabvit.loader`; 0: this
            process, None: the usable cores); the batches, hence the results, are the same.
    """
    check_pair(edge, server)
    skipped: list[Sample] = []
    records: list[ImageRecord] = []
    totals = _Totals()
    skipped_seen = 0
    pin = edge.device.type == "cuda"
    n_workers = resolve_workers(workers, len(samples), batch_size)
    for batch in iter_batches(
        samples, edge.preprocessing, batch_size, skipped, workers=n_workers, pin=pin
    ):
        pixels = batch.pixels.to(edge.device, non_blocking=pin)
        decided = decide_on_edge(edge, pixels, batch.samples, point)
        records += _batch_records(server, batch.samples, pixels, decided, codec, quality, totals)
        if progress is not None:
            progress(len(batch.samples) + len(skipped) - skipped_seen)
        skipped_seen = len(skipped)
    if skipped:
        logger.warning(
            "%d file(s) skipped as unreadable (first: %s)", len(skipped), skipped[0].file
        )
    if not records:
        raise DataError("no image could be read: every file was skipped as unreadable")
    summary = summarise_records(
        records, edge.num_patches, flops_table(server, edge.num_patches)
    ).to_dict()
    summary.update(_intervals(records))
    summary.update(
        {
            "skipped_files": len(skipped),
            "raised_to_one_patch": totals.raised,
            "num_patches_per_image": edge.num_patches,
            "point": asdict(point),
            "edge": edge.name,
            "server": server.name,
        }
    )
    if codec is not None:
        summary["bytes"] = _bytes_summary(records, edge, codec, quality, totals)
    return EvaluationResult(records, summary, skipped)
