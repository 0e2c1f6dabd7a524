"""The metrics of the paper (Sec. VI-A), computed once for every caller.

:func:`summarise` turns per-image outcomes into accuracy, transmit ratio,
communication cost and server cost; ``collabvit evaluate``, every point of a
sweep, the demo and the edge client all call it. :func:`cheapest_within` is
the one rule that picks "the" operating point of a trade-off (the demo's
headline, ``best.json``, ``tables.md`` and the star in the figures), and
:func:`pareto_frontier` the one frontier.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from .cost import communication_cost

__all__ = [
    "CONFIDENCE",
    "RECORD_FIELDS",
    "ImageRecord",
    "Summary",
    "accuracy",
    "accuracy_interval",
    "cheapest_within",
    "make_record",
    "object_coverage",
    "pareto_frontier",
    "summarise",
    "summarise_records",
    "wilson_interval",
]

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
"""Columns of the records CSV (``bytes_sent`` follows when a codec was measured)."""


class SampleLike(Protocol):
    """What a record needs of an image (``collabvit.data.Sample`` is one)."""

    @property
    def index(self) -> int: ...
    @property
    def file(self) -> str: ...
    @property
    def label(self) -> int: ...


TOLERANCE_POINTS = 1e-9  # accuracy points: float noise allowed at the target boundary
CONFIDENCE = 0.95
"""The level of every accuracy interval the outputs report (two-sided Wilson)."""


@dataclass
class ImageRecord:
    """What happened to one image (one row of the records CSV)."""

    index: int
    file: str
    label: int  # -1 when unknown
    edge_pred: int
    uncertainty: float
    transmitted: bool
    num_patches: int  # patches sent (0 when kept on the edge)
    server_pred: int | None
    final_pred: int
    bytes_sent: int | None = None  # wire bytes when a codec is given (0 when kept on the edge)


@dataclass(frozen=True)
class Summary:
    """Sec. VI-A metrics of one operating point over a set of images.

    Accuracies and ratios are fractions (None: no labelled image). Communication
    cost is transmitted patches over all patches of all images; the server FLOPs
    ratio is eq. 9 over the transmitted patch counts relative to the server on
    every full image.
    """

    images: int
    accuracy: float | None
    edge_accuracy: float | None
    transmit_ratio: float
    mean_patches_transmitted: float
    mean_patches_all: float
    communication_cost: float
    server_flops_ratio: float | None
    bytes_per_image: float | None
    bytes_per_transmitted_image: float | None
    raised_to_one_patch: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def accuracy(pred: Any, labels: Any) -> float | None:
    """Top-1 accuracy over the labelled images (label >= 0); None when none is labelled."""
    p, y = np.asarray(pred), np.asarray(labels)
    labelled = y >= 0
    k = int(labelled.sum())
    return int((p[labelled] == y[labelled]).sum()) / k if k else None


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson's (1927) score interval for a proportion: ``successes`` out of ``n`` (> 0).

    ``(p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)`` with z the
    two-sided normal quantile; unlike the normal interval it stays in [0, 1]
    and keeps its coverage near 0 and 1.
    """
    if n <= 0:
        raise ValueError("a Wilson interval needs at least one trial")
    if not 0 <= successes <= n:
        raise ValueError(f"successes {successes} not in 0..{n}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    z2n = z * z / n
    centre = (p + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * math.sqrt(p * (1 - p) / n + z2n / (4 * n))
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def accuracy_interval(
    pred: Any, labels: Any, confidence: float = CONFIDENCE
) -> tuple[float, float] | None:
    """:func:`wilson_interval` of the top-1 accuracy over the labelled images; None when none."""
    p, y = np.asarray(pred), np.asarray(labels)
    labelled = y >= 0
    k = int(labelled.sum())
    return wilson_interval(int((p[labelled] == y[labelled]).sum()), k, confidence) if k else None


def summarise(
    labels: Any,
    edge_pred: Any,
    final_pred: Any,
    transmitted: Any,
    num_patches: Any,
    patches_per_image: int,
    flops_table: npt.NDArray[np.float64] | None = None,
    nbytes: Any = None,
    raised: Any = None,
) -> Summary:
    """The metrics of one operating point from per-image arrays (all of length n).

    Args:
        labels: (n,) int, -1 where unknown.
        edge_pred, final_pred: (n,) int predictions of the edge and of the system.
        transmitted: (n,) bool, the gate's decision (eq. 11).
        num_patches: (n,) int patches kept per image (read where transmitted).
        patches_per_image: N, the patches of a whole image.
        flops_table: ``flops_table[k]`` = eq. 9 cost of the server on k patches
            (k = 0..N), or None to skip the server cost.
        nbytes: (n,) int wire bytes per image (read where transmitted), or None.
        raised: (n,) bool, the rule kept nothing and the top patch was kept, or None.
    """
    sent = np.asarray(transmitted, dtype=bool)
    n = int(sent.size)
    k = int(sent.sum())
    counts = np.asarray(num_patches, dtype=np.int64)[sent]
    total_patches = int(counts.sum())
    flops = None
    if flops_table is not None and n:
        full = n * flops_table[patches_per_image]
        flops = float(flops_table[counts].sum() / full)
    per_image = per_sent = None
    if nbytes is not None:
        total_bytes = int(np.asarray(nbytes, dtype=np.int64)[sent].sum())
        per_image = total_bytes / n if n else 0.0
        per_sent = total_bytes / k if k else 0.0
    return Summary(
        images=n,
        accuracy=accuracy(final_pred, labels),
        edge_accuracy=accuracy(edge_pred, labels),
        transmit_ratio=k / n if n else 0.0,
        mean_patches_transmitted=total_patches / k if k else 0.0,
        mean_patches_all=total_patches / n if n else 0.0,
        communication_cost=communication_cost(total_patches, n, patches_per_image),
        server_flops_ratio=flops,
        bytes_per_image=per_image,
        bytes_per_transmitted_image=per_sent,
        raised_to_one_patch=0 if raised is None else int(np.asarray(raised)[sent].sum()),
    )


def summarise_records(
    records: Sequence[ImageRecord],
    patches_per_image: int,
    flops_table: npt.NDArray[np.float64] | None = None,
) -> Summary:
    """:func:`summarise` over a list of :class:`ImageRecord`."""
    with_bytes = any(r.bytes_sent is not None for r in records)
    return summarise(
        labels=[r.label for r in records],
        edge_pred=[r.edge_pred for r in records],
        final_pred=[r.final_pred for r in records],
        transmitted=np.asarray([r.transmitted for r in records], dtype=bool),
        num_patches=[r.num_patches for r in records],
        patches_per_image=patches_per_image,
        flops_table=flops_table,
        nbytes=[r.bytes_sent or 0 for r in records] if with_bytes else None,
    )


def pareto_frontier(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The rows no other row beats on both communication cost and accuracy, cheapest first.

    A row is kept when it is strictly more accurate than every cheaper (or
    equally cheap) row; rows without an accuracy are ignored.
    """
    usable = [r for r in rows if r.get("accuracy") is not None]
    usable.sort(key=lambda r: (r["communication_cost"], -r["accuracy"]))
    out: list[dict[str, Any]] = []
    best = -math.inf
    for r in usable:
        if r["accuracy"] > best:
            out.append(dict(r))
            best = r["accuracy"]
    return out


def cheapest_within(
    rows: Sequence[Mapping[str, Any]], server_accuracy: float | None, drop_points: float
) -> dict[str, Any] | None:
    """The one rule for "the" operating point: the cheapest row within ``drop_points``.

    Among rows whose accuracy is at most ``drop_points`` accuracy points (%)
    below ``server_accuracy``, the one of lowest communication cost; ties on
    cost go to the more accurate row, then to the earlier row. When no row is
    close enough the most accurate one is returned, marked
    ``within_target: false``. None when no row has an accuracy.

    Returns:
        a copy of the row plus ``target_drop_points``, ``within_target``,
        ``accuracy_drop_points`` and ``communication_reduction``.
    """
    usable = [r for r in rows if r.get("accuracy") is not None]
    if not usable or server_accuracy is None:
        return None
    close = [
        r
        for r in usable
        if 100.0 * (server_accuracy - r["accuracy"]) <= drop_points + TOLERANCE_POINTS
    ]
    if close:
        pick = min(close, key=lambda r: (r["communication_cost"], -r["accuracy"]))
    else:
        pick = max(usable, key=lambda r: (r["accuracy"], -r["communication_cost"]))
    best = dict(pick)
    best.update(
        {
            "target_drop_points": drop_points,
            "within_target": bool(close),
            "accuracy_drop_points": 100.0 * (server_accuracy - pick["accuracy"]),
            "communication_reduction": 1.0 - pick["communication_cost"],
        }
    )
    return best


def object_coverage(keep: Any, object_masks: Any, patch_size: int) -> npt.NDArray[np.float64]:
    """Share of each image's object pixels that lie in its kept patches (NaN: no object).

    ``keep`` (B, N) bool over row-major ``patch_size`` patches of ``object_masks``
    (B, H, W) bool: whether the patches the edge sends hold the object, the
    paper's claim about Fig. 3 measured on images whose object is known.
    """
    k = np.asarray(keep, dtype=bool)
    masks = np.asarray(object_masks, dtype=bool)
    b, h, w = masks.shape
    p = patch_size
    if h % p or w % p or k.shape != (b, (h // p) * (w // p)):
        raise ValueError(f"keep {k.shape} does not match {b} masks of {h}x{w} in {p}-px patches")
    per_patch = masks.reshape(b, h // p, p, w // p, p).sum(axis=(2, 4)).reshape(b, -1)
    total = per_patch.sum(axis=1).astype(np.float64)
    covered = (per_patch * k).sum(axis=1).astype(np.float64)
    out = np.full(b, np.nan)
    np.divide(covered, total, out=out, where=total > 0)
    return out


def make_record(
    sample: SampleLike,
    edge_pred: int,
    value: float,
    transmitted: bool,
    num_patches: int,
    server_pred: int | None,
    bytes_sent: int | None = None,
) -> ImageRecord:
    """One image's record: the server's answer when transmitted, the edge's otherwise.

    The one record builder of :func:`collabvit.engine.evaluate`, the sweep and the client.
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
