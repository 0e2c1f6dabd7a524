"""The rows of ``results.csv``: one :class:`ResultRow` per grid point and per baseline.

Every row's numbers come from :func:`collabvit.metrics.summarise` (Sec. VI-A),
the one metric computation of evaluate, sweep and client. :func:`best_point`
is :func:`collabvit.metrics.cheapest_within` over every edge grid point (whole
images included) and :func:`frontier_rows` is
:func:`collabvit.metrics.pareto_frontier` over the same points plus the
edge-only baseline: the points the trade-off figure draws. Torch-free, so the
report can read these types without loading a model.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ..metrics import Summary, accuracy_interval, cheapest_within, pareto_frontier, summarise
from .grid import EDGE

if TYPE_CHECKING:
    from .edge_pass import EdgeData
    from .grid import GridPoint, SelectionKey
    from .server_pass import SelectionData

__all__ = [
    "EDGE_ONLY",
    "RESULT_FIELDS",
    "BestPoint",
    "ResultRow",
    "RowContext",
    "baseline_rows",
    "best_point",
    "frontier_rows",
    "grid_rows",
    "score_histogram",
]

EDGE_ONLY = "edge-only"
SERVER_ONLY = "server-only"
FULL_IMAGE_FILE = "full-image-file"


@dataclass(frozen=True)
class ResultRow(Mapping[str, Any]):
    """One row of ``results.csv`` (accuracies and ratios are fractions, not %).

    A grid point (``kind = "grid"``) or a baseline (``kind = "baseline"``, its
    name in ``rule``). Fields are attributes; the row is also a read-only
    mapping of its fields, in column order, for the CSV writer and the
    row-generic functions of :mod:`collabvit.metrics`.
    """

    kind: str
    encoder: str
    score: str
    rule: str
    threshold: float | None  # None: the rule takes no parameter, or a baseline
    measure: str
    eta: float | None
    images: int
    accuracy: float | None
    edge_accuracy: float | None
    server_accuracy: float | None
    transmit_ratio: float
    mean_patches_transmitted: float
    mean_patches_all: float
    communication_cost: float
    server_flops_ratio: float | None
    codec: str
    bytes_per_image: float | None
    bytes_per_transmitted_image: float | None
    raised_to_one_patch: int
    # appended last, so the columns before keep their positions: 95 % Wilson interval
    accuracy_low: float | None = None
    accuracy_high: float | None = None

    def __getitem__(self, key: str) -> Any:
        if key not in _FIELD_SET:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(RESULT_FIELDS)

    def __len__(self) -> int:
        return len(RESULT_FIELDS)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_mapping(cls, row: Mapping[str, Any]) -> ResultRow:
        """The row named by the result-field keys of ``row`` (extra keys are dropped; the
        interval columns may be absent, as in rows written before they existed)."""
        return cls(**{f: row[f] for f in RESULT_FIELDS if f in row or f not in _OPTIONAL})


RESULT_FIELDS = tuple(f.name for f in fields(ResultRow))
"""Columns of ``results.csv`` (accuracies and ratios are fractions, not %)."""
_FIELD_SET = frozenset(RESULT_FIELDS)
_OPTIONAL = frozenset(("accuracy_low", "accuracy_high"))


@dataclass(frozen=True)
class BestPoint:
    """The chosen point: the cheapest edge grid point within the target drop.

    ``to_dict()`` is ``best.json``: the row's fields plus the four below.
    """

    row: ResultRow
    target_drop_points: float
    within_target: bool  # False: no point was close enough, the most accurate one is given
    accuracy_drop_points: float
    communication_reduction: float

    def to_dict(self) -> dict[str, Any]:
        extra = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "row"}
        return self.row.to_dict() | extra


def _row(kind: str, encoder: str, score: str, rule: str, threshold: float | None,
         measure: str, eta: float | None, summary: Summary, server_accuracy: float | None,
         codec: str, interval: tuple[float, float] | None) -> ResultRow:  # fmt: skip
    s = summary
    low, high = interval if interval is not None else (None, None)
    return ResultRow(
        kind=kind,
        encoder=encoder,
        score=score,
        rule=rule,
        threshold=threshold,
        measure=measure,
        eta=eta,
        images=s.images,
        accuracy=s.accuracy,
        edge_accuracy=s.edge_accuracy,
        server_accuracy=server_accuracy,
        transmit_ratio=s.transmit_ratio,
        mean_patches_transmitted=s.mean_patches_transmitted,
        mean_patches_all=s.mean_patches_all,
        communication_cost=s.communication_cost,
        server_flops_ratio=s.server_flops_ratio,
        codec=codec,
        bytes_per_image=s.bytes_per_image,
        bytes_per_transmitted_image=s.bytes_per_transmitted_image,
        raised_to_one_patch=s.raised_to_one_patch,
        accuracy_low=low,
        accuracy_high=high,
    )


@dataclass(frozen=True)
class RowContext:
    """What every row of one sweep shares."""

    labels: npt.NDArray[np.int64]  # (n,) -1 where unknown
    flops_table: npt.NDArray[np.float64]  # eq. 9 server cost of k = 0..N patches
    num_patches: int  # N
    codec: str  # the wire codec's name in the rows (jpeg-q90, raw, png)
    server_accuracy: float | None


def grid_rows(
    points: Sequence[GridPoint],
    edge: EdgeData,
    selections: Mapping[SelectionKey, SelectionData],
    ctx: RowContext,
) -> list[ResultRow]:
    """One row per grid point: its gate over the cached edge and server results."""
    rows = []
    for p in points:
        sent, _ = edge.transmitted(p.measure, p.eta, p.encoder)
        data = selections[p.selection]
        final = np.where(sent, data.pred, edge.edge_pred)
        summary = summarise(
            ctx.labels,
            edge.edge_pred,
            final,
            sent,
            data.count,
            ctx.num_patches,
            ctx.flops_table,
            data.nbytes,
            data.raised,
        )
        where = (p.encoder, p.score, p.rule, p.threshold, p.measure, p.eta)
        interval = accuracy_interval(final, ctx.labels)
        rows.append(_row("grid", *where, summary, ctx.server_accuracy, ctx.codec, interval))
    return rows


def baseline_rows(edge: EdgeData, whole: SelectionData, ctx: RowContext) -> list[ResultRow]:
    """Edge only (cost 0), server only (every image whole over the wire codec), and
    (when measured, ``baseline_bytes``) the whole image uploaded as one JPEG
    (quality 90) or PNG file."""
    n = len(edge.positions)
    none, every = np.zeros(n, dtype=bool), np.ones(n, dtype=bool)

    def summary(sent: npt.NDArray[np.bool_], final: Any, nbytes: Any) -> Summary:
        counts = np.full(n, ctx.num_patches, dtype=np.int64)
        return summarise(ctx.labels, edge.edge_pred, final, sent, counts, ctx.num_patches,
                         ctx.flops_table, nbytes)  # fmt: skip

    def baseline(name: str, codec: str, s: Summary, final: Any) -> ResultRow:
        interval = accuracy_interval(final, ctx.labels)
        return _row("baseline", "", "", name, None, "", None, s, ctx.server_accuracy, codec,
                    interval)  # fmt: skip

    zeros = np.zeros(n, dtype=np.int64)
    rows = [
        baseline(EDGE_ONLY, "", summary(none, edge.edge_pred, zeros), edge.edge_pred),
        baseline(SERVER_ONLY, ctx.codec, summary(every, whole.pred, whole.nbytes), whole.pred),
    ]
    for fmt, key in (("jpeg-q90", "jpeg_q90"), ("png", "png")):
        if key not in edge.full_bytes:  # measured only with baseline_bytes
            continue
        s = summary(every, whole.pred, edge.full_bytes[key])
        rows.append(baseline(FULL_IMAGE_FILE, fmt, s, whole.pred))
    return rows


def _edge_points(rows: Sequence[ResultRow]) -> list[ResultRow]:
    return [r for r in rows if r.kind == "grid" and r.encoder == EDGE]


def best_point(
    rows: Sequence[ResultRow], server_accuracy: float | None, target_drop: float
) -> BestPoint | None:
    """:func:`collabvit.metrics.cheapest_within` over every edge grid row (whole images too)."""
    pick = cheapest_within(_edge_points(rows), server_accuracy, target_drop)
    if pick is None:
        return None
    return BestPoint(
        ResultRow.from_mapping(pick),
        float(pick["target_drop_points"]),
        bool(pick["within_target"]),
        float(pick["accuracy_drop_points"]),
        float(pick["communication_reduction"]),
    )


def frontier_rows(rows: Sequence[ResultRow]) -> list[ResultRow]:
    """The Pareto frontier of every edge grid row plus the edge-only baseline."""
    drawn = _edge_points(rows) + [r for r in rows if r.kind == "baseline" and r.rule == EDGE_ONLY]
    return [ResultRow.from_mapping(r) for r in pareto_frontier(drawn)]


def score_histogram(scores: npt.NDArray[np.float32], bins: int = 60) -> dict[str, Any] | None:
    """Fig. 7: log-spaced histogram of patch scores, as fractions of all patches."""
    flat = scores.reshape(-1).astype(np.float64)
    if flat.size == 0:
        return None
    positive = flat[flat > 0]
    zeros = int(flat.size - positive.size)
    if positive.size == 0:
        return {"edges": [0.0, 1.0], "fractions": [0.0], "zeros": zeros, "total": int(flat.size)}
    lo, hi = float(positive.min()), float(positive.max())
    if hi <= lo:
        lo, hi = lo * 0.9, hi * 1.1
    edges = np.geomspace(lo, hi, bins + 1)
    counts, _ = np.histogram(positive, bins=edges)
    return {
        "edges": edges.tolist(),
        "fractions": (counts / flat.size).tolist(),
        "zeros": zeros,
        "total": int(flat.size),
        "num_patches": int(scores.shape[1]) if scores.ndim == 2 else None,
    }
