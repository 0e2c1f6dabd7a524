"""Collaborative inference over a dataset: one operating point (``collabvit evaluate``).

Algorithm 1 of the paper, batched: the edge model classifies every image and
scores its patches; the gate (Sec. V) decides which images go to the server;
the selection rule (Sec. IV-B) picks their patches; the server classifies the
transmitted images from those patches only. Metrics follow the paper:
communication cost = transmitted patches / all patches of all images (Sec. VI-A),
server cost = eq. 9 relative to the server on every full image.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import wire
from .attention import SCORES, forward_with_scores
from .data import Sample, iter_batches
from .errors import ConfigError, DataError
from .gating import MEASURES, transmit_mask, uncertainty
from .models import LoadedModel, forward_subset
from .selection import RULES, Selection, select_patches

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
    "make_record",
    "summarise",
    "wire_bytes",
    "write_records",
]

logger = logging.getLogger(__name__)

RECORD_FIELDS = (
    "index",
    "file",
    "label",
    "edge_pred",
    "uncertainty",
    "transmitted",
    "num_patches",
    "server_pred",
    "final_pred",
)


def check_method(score: str, rule: str, measure: str) -> None:
    """Raise ConfigError unless score, rule and measure are ones the method knows."""
    if score not in SCORES:
        raise ConfigError(f"unknown score {score!r}: use one of {', '.join(SCORES)}")
    if rule not in RULES:
        raise ConfigError(f"unknown rule {rule!r}: use one of {', '.join(RULES)}")
    if measure not in MEASURES:
        raise ConfigError(f"unknown measure {measure!r}: use one of {', '.join(MEASURES)}")


@dataclass(frozen=True)
class OperatingPoint:
    """One setting of the method: patch score, selection rule, gate."""

    score: str = "mean"  # mean | rollout | rollout-standard
    rule: str = "attention-sum"  # top-k | threshold | attention-sum | random
    threshold: float = 0.97  # k, delta or delta_sum
    measure: str = "min-entropy"  # min-entropy | shannon | margin | none
    eta: float = 0.8
    include_crossing: bool = False  # attention-sum: keep the patch that crosses delta_sum
    seed: int = 0  # random rule

    def __post_init__(self) -> None:
        check_method(self.score, self.rule, self.measure)
        if not math.isfinite(self.threshold) or self.threshold < 0:
            raise ConfigError(f"threshold must be a finite number >= 0, got {self.threshold}")
        if not math.isfinite(self.eta):
            raise ConfigError(f"eta must be a finite number, got {self.eta}")


@dataclass
class ImageRecord:
    """What happened to one image (one row of the records CSV)."""

    index: int
    file: str
    label: int
    edge_pred: int
    uncertainty: float
    transmitted: bool
    num_patches: int  # patches sent (0 when kept on the edge)
    server_pred: int | None
    final_pred: int
    bytes_sent: int | None = None  # wire bytes when a codec is given (0 when kept on the edge)


def make_record(
    sample: Sample,
    edge_pred: int,
    value: float,
    transmitted: bool,
    num_patches: int,
    server_pred: int | None,
    bytes_sent: int | None = None,
) -> ImageRecord:
    """One image's record: the server's answer when transmitted, the edge's otherwise.

    The one record builder of :func:`evaluate` and :func:`collabvit.sweep.run_sweep`.
    """
    final = server_pred if transmitted and server_pred is not None else edge_pred
    return ImageRecord(
        sample.index,
        sample.file,
        sample.label,
        int(edge_pred),
        float(value),
        bool(transmitted),
        int(num_patches) if transmitted else 0,
        int(server_pred) if transmitted and server_pred is not None else None,
        int(final),
        bytes_sent,
    )


@dataclass
class EvaluationResult:
    records: list[ImageRecord]
    summary: dict[str, Any]
    skipped: list[Sample] = field(default_factory=list)


def check_pair(edge: LoadedModel, server: LoadedModel) -> None:
    """Edge and server must share input size and patch grid (the wire carries edge pixels)."""
    if edge.preprocessing.input_size != server.preprocessing.input_size:
        raise ConfigError(
            f"edge {edge.name} takes {edge.preprocessing.input_size} images but server "
            f"{server.name} takes {server.preprocessing.input_size}: pick a pair with one input "
            "size"
        )
    if edge.patch_size != server.patch_size:
        raise ConfigError(
            f"edge patch {edge.patch_size} != server patch {server.patch_size}: the selected "
            "patches must be the server's patches"
        )
    if edge.num_classes != server.num_classes:
        raise ConfigError(
            f"edge has {edge.num_classes} classes but server has {server.num_classes}"
        )


def summarise(
    records: Sequence[ImageRecord],
    num_patches: int,
    server: LoadedModel | None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON summary of a set of records (paper Sec. VI-A metrics)."""
    n = len(records)
    labelled = [r for r in records if r.label >= 0]
    sent = [r for r in records if r.transmitted]
    total_patches = sum(r.num_patches for r in sent)
    summary: dict[str, Any] = {
        "images": n,
        "edge_accuracy": (
            sum(r.edge_pred == r.label for r in labelled) / len(labelled) if labelled else None
        ),
        "accuracy": (
            sum(r.final_pred == r.label for r in labelled) / len(labelled) if labelled else None
        ),
        "transmit_ratio": len(sent) / n if n else 0.0,
        "mean_patches_transmitted": total_patches / len(sent) if sent else 0.0,
        "communication_cost": total_patches / (n * num_patches) if n else 0.0,
    }
    if server is not None:
        full = float(server.flops(num_patches))
        used = sum(float(server.flops(r.num_patches)) for r in sent)
        summary["server_flops_ratio"] = used / (n * full) if n else 0.0
    if extra:
        summary.update(extra)
    return summary


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


@dataclass
class EdgeBatchDecision:
    """The edge's half of Algorithm 1 for one batch: predict, gate, select."""

    edge_pred: list[int]  # (B,)
    uncertainty: torch.Tensor  # (B,) float64, the gate's statistic
    transmitted: torch.Tensor  # (B,) bool
    rows: list[int]  # positions of the transmitted images in the batch
    selection: Selection | None  # keep masks of ``rows`` (None when nothing is sent)


@torch.no_grad()
def decide_on_edge(
    edge: LoadedModel, pixels: torch.Tensor, samples: Sequence[Sample], point: OperatingPoint
) -> EdgeBatchDecision:
    """Edge forward, gate and patch selection for one batch of uint8 pixels (B, C, H, W).

    Shared by :func:`evaluate` and the edge client, so both decide identically.
    """
    logits, scores = forward_with_scores(edge, edge.normalise(pixels), (point.score,))
    values = uncertainty(logits, point.measure)
    sent = transmit_mask(values, point.measure, point.eta)
    rows = sent.nonzero().flatten().tolist()
    selection = None
    if rows:
        ids = torch.tensor([s.index for s in samples])
        selection = select_patches(
            scores[point.score][rows],
            point.rule,
            point.threshold,
            point.include_crossing,
            point.seed,
            ids[rows],
        )
    return EdgeBatchDecision(logits.argmax(-1).tolist(), values, sent, rows, selection)


def _hwc(pixels: torch.Tensor) -> np.ndarray:
    """(C, H, W) uint8 tensor -> (H, W, C) numpy for Pillow."""
    return pixels.permute(1, 2, 0).cpu().numpy()


def wire_bytes(
    pixels: torch.Tensor, keep_mask: torch.Tensor, patch_size: int, codec: str, quality: int = 90
) -> int:
    """Bytes of one image's selected patches on the wire (header, mask, payload, CRC)."""
    payload = wire.encode(
        pixels.cpu().numpy(), keep_mask.cpu().numpy().astype(bool), patch_size, codec, quality
    )
    return len(payload)


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
    """
    check_pair(edge, server)
    device = edge.device
    skipped: list[Sample] = []
    records: list[ImageRecord] = []
    raised = 0
    skipped_seen = 0
    full_sizes = {"jpeg": 0, "png": 0}
    for batch in iter_batches(samples, edge.preprocessing, batch_size, skipped):
        pixels = batch.pixels.to(device)
        decided = decide_on_edge(edge, pixels, batch.samples, point)
        edge_pred, values, sent, rows, sel = (
            decided.edge_pred,
            decided.uncertainty,
            decided.transmitted,
            decided.rows,
            decided.selection,
        )
        server_pred: list[int | None] = [None] * len(batch.samples)
        counts = [0] * len(batch.samples)
        sizes: list[int | None] = [None if codec is None else 0] * len(batch.samples)
        if sel is not None:
            raised += int(sel.raised_to_one.sum())
            server_in = server.normalise(pixels[rows].to(server.device))
            out = forward_subset(server, server_in, sel.keep_mask.to(server.device))
            for j, row in enumerate(rows):
                server_pred[row] = int(out[j].argmax())
                counts[row] = int(sel.num_patches[j])
                if codec is not None:
                    sizes[row] = wire_bytes(
                        pixels[row], sel.keep_mask[j], edge.patch_size, codec, quality
                    )
        if codec is not None:
            for j in range(len(batch.samples)):
                full_sizes["jpeg"] += wire.full_image_bytes(_hwc(pixels[j]), "jpeg", 90)
                full_sizes["png"] += wire.full_image_bytes(_hwc(pixels[j]), "png")
        for j, s in enumerate(batch.samples):
            records.append(
                make_record(
                    s,
                    edge_pred[j],
                    float(values[j]),
                    bool(sent[j]),
                    counts[j],
                    server_pred[j],
                    sizes[j],
                )
            )
        if progress is not None:
            progress(len(batch.samples) + len(skipped) - skipped_seen)
        skipped_seen = len(skipped)
    if skipped:
        logger.warning(
            "%d file(s) skipped as unreadable (first: %s)", len(skipped), skipped[0].file
        )
    if not records:
        raise DataError("no image could be read: every file was skipped as unreadable")
    extra = {
        "skipped_files": len(skipped),
        "raised_to_one_patch": raised,
        "num_patches_per_image": edge.num_patches,
        "point": asdict(point),
        "edge": edge.name,
        "server": server.name,
    }
    if codec is not None:
        n = len(records)
        sent_sizes = [r.bytes_sent or 0 for r in records if r.transmitted]
        extra["bytes"] = {
            "codec": codec,
            "quality": quality if codec == "jpeg" else None,
            "per_image": sum(sent_sizes) / n,
            "per_transmitted_image": sum(sent_sizes) / len(sent_sizes) if sent_sizes else 0.0,
            "full_image_jpeg_q90_per_image": full_sizes["jpeg"] / n,
            "full_image_png_per_image": full_sizes["png"] / n,
            "paper_bits_per_image": sum(
                wire.payload_bits(r.num_patches, edge.patch_size, edge.preprocessing.channels)
                for r in records
            )
            / n,
        }
    summary = summarise(records, edge.num_patches, server, extra)
    return EvaluationResult(records, summary, skipped)
