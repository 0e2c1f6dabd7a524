"""``run_sweep``: every point of a grid from one edge pass and one server pass per selection.

It computes and returns a :class:`SweepResult`; the only file it writes is the
model-output cache (its resumable state). Writing results, tables and figures
is :func:`collabvit.report.write_outputs`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import wire
from ..data import Sample
from ..errors import ConfigError, DataError
from ..gating import get_measure
from ..metrics import ImageRecord, accuracy, make_record
from ..models import LoadedModel
from ..pipeline import OperatingPoint, check_pair
from ..selection import get_rule
from ..workers import resolve_workers
from .cache import Cache, cache_identity
from .context import ProgressFn, SweepContext, SweepStats
from .edge_pass import EdgeData, run_edge_pass
from .grid import WHOLE_IMAGE, GridPoint, SelectionKey, SweepGrid
from .outcomes import PointOutcomes, point_outcomes
from .pixels import PixelStore
from .points import (
    BestPoint,
    ResultRow,
    RowContext,
    baseline_rows,
    best_point,
    frontier_rows,
    grid_rows,
    score_histogram,
)
from .resolve import resolve_points
from .server_pass import SelectionData, keep_masks, run_server_pass

__all__ = ["DEFAULT_CHUNK", "SweepResult", "iter_points", "run_sweep"]

logger = logging.getLogger(__name__)

DEFAULT_CHUNK = 512


@dataclass
class SweepResult:
    """Every grid point of a sweep, plus what is needed to rebuild its records."""

    rows: list[ResultRow]  # grid points, then baselines: results.csv
    frontier: list[ResultRow]  # frontier.csv: the Pareto frontier of the edge points
    best: BestPoint | None  # best.json
    edge_accuracy: float | None
    server_accuracy: float | None
    stats: SweepStats
    points: list[GridPoint]
    grid: SweepGrid
    meta: dict[str, Any]
    histogram: dict[str, Any] | None = None
    _samples: list[Sample] = field(default_factory=list, repr=False)
    _edge: EdgeData | None = field(default=None, repr=False)
    _selections: dict[SelectionKey, SelectionData] = field(default_factory=dict, repr=False)

    def grid_rows(self) -> list[ResultRow]:
        return [r for r in self.rows if r.kind == "grid"]

    def _find(self, point: GridPoint | OperatingPoint) -> GridPoint:
        if isinstance(point, OperatingPoint):
            if point.include_crossing != self.grid.include_crossing or (
                point.rule == "random" and point.seed != self.grid.seed
            ):
                raise ConfigError("this sweep ran with another include_crossing/seed")
            threshold = float(point.threshold) if get_rule(point.rule).parameter else None
            key = GridPoint(point.score, point.rule, threshold, point.measure, float(point.eta))
        else:
            key = point
        for p in self.points:
            if (p.encoder, p.score, p.rule, p.measure) != (
                key.encoder,
                key.score,
                key.rule,
                key.measure,
            ):
                continue
            if _close(p.threshold, key.threshold) and (
                not get_measure(p.measure).gates or _close(p.eta, key.eta)
            ):
                return p
        raise ConfigError(f"{key} is not a point of this sweep")

    def outcomes(self, point: GridPoint | OperatingPoint) -> PointOutcomes:
        """The per-image arrays at one grid point: labels, edge, server-only and final
        predictions, transmit mask, patches sent (what calibration reads)."""
        assert self._edge is not None
        p = self._find(point)
        n = int(self.meta["num_patches_per_image"])
        return point_outcomes(p, self._samples, self._edge, self._selections, n)

    def point_of(self, row: ResultRow) -> GridPoint:
        """The grid point of a grid row of :attr:`rows`."""
        eta = 0.0 if row.eta is None else row.eta
        return self._find(
            GridPoint(row.score, row.rule, row.threshold, row.measure, eta, row.encoder)
        )

    def keep_masks(self, point: GridPoint) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """A grid point's selection on every readable image: (sample positions, (n, N) keep),
        as the server pass selected them (for measuring what the kept patches hold)."""
        assert self._edge is not None
        edge, n = self._edge, int(self.meta["num_patches_per_image"])
        rows = np.arange(len(edge.positions), dtype=np.int64)
        keep, _ = keep_masks(edge, point.selection, rows, self._samples, self.grid, n)
        return edge.positions, keep

    def records(self, point: GridPoint | OperatingPoint) -> list[ImageRecord]:
        """The per-image records at one grid point (equal to ``engine.evaluate``'s)."""
        p = self._find(point)
        assert self._edge is not None
        edge = self._edge
        sent, values = edge.transmitted(p.measure, p.eta, p.encoder)
        data = self._selections[p.selection]
        out = []
        for j, pos in enumerate(edge.positions.tolist()):
            s = bool(sent[j])
            server_pred = int(data.pred[j]) if s else None
            out.append(
                make_record(
                    self._samples[pos],
                    int(edge.edge_pred[j]),
                    float(values[j]),
                    s,
                    int(data.count[j]),
                    server_pred,
                )
            )
        return out


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=0, abs_tol=1e-12)


def _check_arguments(
    codec: str, quality: int, batch_size: int, target_drop: float, samples: Sequence[Sample]
) -> None:
    if codec not in wire.CODECS:
        raise ConfigError(f"unknown codec {codec!r}: use one of {', '.join(wire.CODECS)}")
    if not 1 <= quality <= 100:
        raise ConfigError(f"quality must be 1..100, got {quality}")
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    if not math.isfinite(target_drop) or target_drop < 0:
        raise ConfigError(
            f"target drop must be a number of accuracy points >= 0, got {target_drop}"
        )
    if not samples:
        raise DataError("no images to sweep")


def run_sweep(
    edge: LoadedModel,
    server: LoadedModel,
    samples: Sequence[Sample],
    grid: SweepGrid | None = None,
    *,
    batch_size: int = 64,
    codec: str = "raw",
    quality: int = 90,
    cache_dir: str | Path | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    target_drop: float = 1.0,
    progress: ProgressFn | None = None,
    workers: int | None = 0,
    baseline_bytes: bool = False,
) -> SweepResult:
    """Evaluate every point of ``grid`` with one edge pass and one server pass per selection.

    Args:
        edge, server: the two models (same input size and patch grid).
        samples: images from :func:`collabvit.data.discover`.
        grid: the points (default :meth:`SweepGrid.paper`).
        batch_size: images per edge batch (as ``evaluate``), and per server batch.
        codec: wire codec for the bytes columns: raw, png or jpeg (``quality``).
        cache_dir: the model-output cache (None: in memory only, nothing written).
        chunk_size: images per cache chunk (rounded up to whole batches).
        target_drop: accuracy points (%) below the server alone that ``best`` may lose.
        progress: ``progress(phase, n, total)`` after each batch (see :data:`ProgressFn`).
        workers: loader processes decoding the images (:mod:`collabvit.loader`; 0: this
            process, None: the usable cores). The results do not depend on it.
        baseline_bytes: also measure every image's whole crop as one JPEG (q90) and one
            PNG file, the ``full-image-file`` baseline rows (off: those rows are left out).

    Returns:
        a :class:`SweepResult`; ``stats`` counts the model calls made.
    """
    t0 = time.monotonic()
    grid = grid or SweepGrid.paper()
    check_pair(edge, server)
    _check_arguments(codec, quality, batch_size, target_drop, samples)
    n_workers = resolve_workers(workers, len(samples), batch_size)
    identity = cache_identity(edge, server, samples, batch_size)
    root = Path(cache_dir) if cache_dir is not None else None
    cache = Cache(root, identity, max(1, math.ceil(chunk_size / batch_size)))
    ctx = SweepContext(
        edge, server, list(samples), grid, batch_size, codec, quality, cache, PixelStore(cache.dir)
    )
    ctx.workers, ctx.baseline_bytes, ctx.progress = n_workers, baseline_bytes, progress
    logger.info(
        "sweep: %d images, cache %s, %d loader worker(s)",
        len(samples),
        cache.dir or "in memory",
        n_workers,
    )
    try:
        edge_data = run_edge_pass(ctx)
        points, derived = resolve_points(grid, edge_data)
        logger.info("sweep: %d grid points", len(points))
        selections = run_server_pass(ctx, edge_data, points)
    finally:
        if ctx.stream is not None:
            ctx.stream.close()
        ctx.pixels.close()
    ctx.stats.wall_s = time.monotonic() - t0
    result = _result(ctx, edge_data, points, selections, target_drop)
    result.meta = _meta(ctx, result, edge_data, derived, target_drop)
    st = ctx.stats
    logger.info(
        "sweep done in %.1fs: %d edge images, %d server selections (%d cached)",
        st.wall_s,
        st.edge_images,
        st.server_images,
        st.cached_selections,
    )
    return result


def _result(
    ctx: SweepContext,
    edge_data: EdgeData,
    points: list[GridPoint],
    selections: dict[SelectionKey, SelectionData],
    target_drop: float,
) -> SweepResult:
    """The rows of every point and baseline, the frontier and the chosen point."""
    n_patches = ctx.num_patches
    labels = np.asarray([ctx.samples[int(p)].label for p in edge_data.positions], np.int64)
    whole = selections[WHOLE_IMAGE]
    server_acc = accuracy(whole.pred, labels)
    rows_ctx = RowContext(
        labels=labels,
        flops_table=np.asarray([float(ctx.server.flops(k)) for k in range(n_patches + 1)]),
        num_patches=n_patches,
        codec=_codec_name(ctx),
        server_accuracy=server_acc,
    )
    rows = grid_rows(points, edge_data, selections, rows_ctx)
    rows += baseline_rows(edge_data, whole, rows_ctx)
    scores = edge_data.scores
    return SweepResult(
        rows=rows,
        frontier=frontier_rows(rows),
        best=best_point(rows, server_acc, target_drop),
        edge_accuracy=accuracy(edge_data.edge_pred, labels),
        server_accuracy=server_acc,
        stats=ctx.stats,
        points=points,
        grid=ctx.grid,
        meta={},
        histogram=score_histogram(scores["mean"]) if "mean" in scores else None,
        _samples=ctx.samples,
        _edge=edge_data,
        _selections=selections,
    )


def _codec_name(ctx: SweepContext) -> str:
    """The codec as the rows name it: ``raw``, ``png``, ``jpeg-q90``."""
    takes_quality = wire.CODECS[ctx.codec].takes_quality
    return f"{ctx.codec}-q{ctx.quality}" if takes_quality else ctx.codec


def _meta(
    ctx: SweepContext,
    result: SweepResult,
    edge_data: EdgeData,
    derived: dict[str, Any],
    target_drop: float,
) -> dict[str, Any]:
    """``results.json`` → ``meta``: models, data, grid, derived values, cache, model calls."""
    edge, server = ctx.edge, ctx.server
    _, h, w = edge.preprocessing.input_size
    return {
        "edge": edge.name,
        "server": server.name,
        "edge_source": edge.source,
        "server_source": server.source,
        "images": len(edge_data.positions),
        "skipped_files": len(edge_data.skipped),
        "num_patches_per_image": edge.num_patches,
        "patch_size": edge.patch_size,
        "codec": _codec_name(ctx),
        "target_drop_points": target_drop,
        "edge_accuracy": result.edge_accuracy,
        "server_accuracy": result.server_accuracy,
        "grid": ctx.grid.to_dict(),
        "derived": {k: _jsonable(v) for k, v in derived.items()},
        "fingerprint": ctx.cache.fingerprint,
        "cache": str(ctx.cache.dir) if ctx.cache.dir else None,
        "batch_size": ctx.batch_size,
        "baseline_bytes": ctx.baseline_bytes,
        "loader_workers": ctx.workers,
        "full_image_note": (
            "full-image-file rows: bytes of the whole preprocessed "
            f"{h}x{w} crop as one JPEG (quality 90) or PNG file; accuracy is the server on the "
            "uncompressed pixels"
            if ctx.baseline_bytes
            else "full-image-file rows (whole-crop JPEG q90 / PNG file sizes): not measured, "
            "ask for them with --baseline-bytes"
        ),
        "stats": asdict(ctx.stats),
    }


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def iter_points(result: SweepResult) -> Iterator[tuple[GridPoint, ResultRow]]:
    """(point, row) pairs of a sweep, in grid order."""
    yield from zip(result.points, result.grid_rows(), strict=True)
