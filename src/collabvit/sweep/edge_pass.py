"""The sweep's edge pass: each image through the edge model once, chunk by chunk.

Per image it keeps the edge's prediction, the gate statistic of every measure
of :data:`collabvit.gating.MEASURES` that gates (eqs. 12-13 and the margin),
the patch scores the grid needs (eq. 10 and/or the rollouts) and, with
``baseline_bytes``, the bytes of the whole image as one JPEG (quality 90) or
PNG file (measured in the loader's workers). For Fig. 14 the server also
scores each full image once (its own mean attention). Chunks come from and go
to the :class:`~.cache.Cache`; a chunk that lacks only some arrays (a new
score, a new measure) recomputes what it lacks. Images are decoded by
:mod:`collabvit.loader`; their pixels are kept for the server pass
(:class:`~.pixels.PixelStore`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from ..errors import DataError
from ..gating import MEASURES, get_measure, transmit_mask, uncertainty
from ..loader import FILE_SIZES, LoadedBatch, next_batch
from ..models import forward_with_scores
from .cache import CACHE_VERSION, Arrays
from .context import SweepContext
from .grid import EDGE
from .pixels import stream_at

__all__ = ["EdgeData", "gate_measures", "run_edge_pass", "score_key", "statistic_key"]

logger = logging.getLogger(__name__)

SERVER_SCORES = "server_s_mean"  # the server's own mean attention (Fig. 14)
FULL_IMAGE_FILES = FILE_SIZES  # whole-image uploads (JPEG q90, PNG): --baseline-bytes


def gate_measures() -> tuple[str, ...]:
    """The measures whose statistic the edge pass keeps: every one of MEASURES that gates."""
    return tuple(name for name, m in MEASURES.items() if m.gates)


def statistic_key(measure: str) -> str:
    return "u_" + measure.replace("-", "_")


def score_key(score: str) -> str:
    return "s_" + score.replace("-", "_")


@dataclass
class EdgeData:
    """The edge pass of every readable image (rows in dataset order)."""

    positions: npt.NDArray[np.int64]  # (n,) sample positions of the readable images
    chunk_bounds: list[tuple[int, int, int, int]]  # (start, end, row_a, row_b) per chunk
    edge_pred: npt.NDArray[np.int64]  # (n,)
    values: dict[str, npt.NDArray[np.float64]]  # (n,) gate statistic per gating measure
    scores: dict[str, npt.NDArray[np.float32]]  # (n, N) edge patch scores per score
    server_scores: npt.NDArray[np.float32] | None  # (n, N) server mean attention
    full_bytes: dict[str, npt.NDArray[np.int64]]  # (n,) jpeg_q90, png; {} without baseline bytes
    skipped: list[int]  # sample positions of unreadable files

    def transmitted(
        self, measure: str, eta: float, encoder: str = EDGE
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
        """Eq. 11 for every image: the transmit mask and the gate statistic (as evaluate)."""
        n = len(self.positions)
        if encoder != EDGE or not get_measure(measure).gates:
            return np.ones(n, dtype=bool), np.zeros(n, dtype=np.float64)
        values = self.values[measure]
        return transmit_mask(values, measure, eta), values


@dataclass
class _Todo:
    edge: bool  # edge forward: predictions, statistics, scores
    server: bool  # server forward for its own scores
    sizes: bool  # whole-image file sizes

    def any(self) -> bool:
        return self.edge or self.server or self.sizes


@dataclass
class _Parts:
    """What a chunk's batches produced, batch by batch."""

    located: list[int] = field(default_factory=list)
    preds: list[npt.NDArray[Any]] = field(default_factory=list)
    values: dict[str, list[npt.NDArray[Any]]] = field(default_factory=dict)
    scores: dict[str, list[npt.NDArray[Any]]] = field(default_factory=dict)
    server_scores: list[npt.NDArray[Any]] = field(default_factory=list)
    sizes: dict[str, list[int]] = field(default_factory=dict)


def _missing(ctx: SweepContext, stored: Arrays | None) -> _Todo:
    want_server = bool(ctx.grid.encoder_thresholds)
    if stored is None:
        return _Todo(True, want_server, ctx.baseline_bytes)
    edge = any(statistic_key(m) not in stored for m in gate_measures()) or any(
        score_key(s) not in stored for s in ctx.grid.edge_scores()
    )
    server = want_server and SERVER_SCORES not in stored
    sizes = ctx.baseline_bytes and any(f"full_{name}" not in stored for name, _ in FULL_IMAGE_FILES)
    return _Todo(edge, server, sizes)


def _run_batch(ctx: SweepContext, todo: _Todo, batch: LoadedBatch, parts: _Parts) -> None:
    n = len(batch.positions)
    if todo.edge or todo.server:
        pixels = batch.pixels.to(ctx.edge.device, non_blocking=True)
    normed = None
    if todo.edge:
        normed = ctx.edge.normalise(pixels)
        logits, sc = forward_with_scores(ctx.edge, normed, ctx.grid.edge_scores())
        ctx.stats.edge_images += n
        parts.preds.append(logits.argmax(-1).cpu().numpy().astype(np.int64))
        for m in gate_measures():
            parts.values.setdefault(m, []).append(uncertainty(logits, m))
        for s in ctx.grid.edge_scores():
            parts.scores.setdefault(s, []).append(sc[s].cpu().numpy().astype(np.float32))
    if todo.server:
        same = _same_input(ctx.edge, ctx.server)  # the edge's input is the server's: reuse it
        spx = normed if normed is not None and same else ctx.server.normalise(pixels)
        spx = spx.to(ctx.server.device, non_blocking=True)
        _, ssc = forward_with_scores(ctx.server, spx, ("mean",))
        ctx.stats.server_encoder_images += n
        parts.server_scores.append(ssc["mean"].cpu().numpy().astype(np.float32))
    if todo.sizes:  # measured by the loader's workers (FILE_SIZES order)
        for j, (name, _) in enumerate(FULL_IMAGE_FILES):
            parts.sizes.setdefault(name, []).extend(int(sz[j]) for sz in batch.sizes)


def _same_input(edge: Any, server: Any) -> bool:
    a, b = edge.preprocessing, server.preprocessing
    return bool((a.mean, a.std) == (b.mean, b.std))


def _cat(parts: list[npt.NDArray[Any]], dtype: Any, width: int | None = None) -> npt.NDArray[Any]:
    if parts:
        return np.concatenate(parts).astype(dtype, copy=False)
    return np.zeros((0,) if width is None else (0, width), dtype=dtype)


def _edge_chunk(
    ctx: SweepContext, ci: int, start: int, end: int | None, stored: Arrays | None
) -> Arrays:
    """Compute (what is missing of) chunk ``ci``, which starts at sample ``start``.

    ``end`` is None for a new chunk: it then holds ``cache.chunk_batches``
    batches of readable images (the batches ``engine.evaluate`` forms). The
    decoded pixels go to the run's pixel store, for the server pass.
    """
    todo = _missing(ctx, stored)
    stream = stream_at(ctx, start, ctx.baseline_bytes)
    parts = _Parts()
    pixels = []
    batches = 0
    while (batch := next_batch(stream, ctx.batch_size, end)) is not None:
        ctx.tick("edge", len(batch.positions) + len(batch.skipped), len(ctx.samples))
        if not batch.positions:  # unreadable files at the end
            continue
        parts.located += batch.positions
        ctx.stats.decoded_images += len(batch.positions)
        _run_batch(ctx, todo, batch, parts)
        pixels.append(batch.pixels)
        batches += 1
        if end is None and batches == ctx.cache.chunk_batches:
            break
    if end is None:  # after the last image of its last batch, or the end of the data
        end = stream.position
    if pixels:
        ctx.pixels.put(ci, torch.cat(pixels) if len(pixels) > 1 else pixels[0].clone())
    return _chunk_arrays(ctx, todo, parts, start, end, stored)


def _chunk_arrays(
    ctx: SweepContext, todo: _Todo, parts: _Parts, start: int, end: int, stored: Arrays | None
) -> Arrays:
    """The chunk's cache file: what was stored, updated with what was just computed."""
    out: Arrays = dict(stored) if stored is not None else {}
    pos = np.asarray(parts.located, dtype=np.int64)
    if stored is not None and not np.array_equal(stored["pos"], pos):
        raise DataError("the images readable now differ from those in the cache: delete the cache")
    located = set(parts.located)
    out["version"] = np.asarray(CACHE_VERSION)
    out["start"] = np.asarray(start, dtype=np.int64)
    out["end"] = np.asarray(end, dtype=np.int64)
    out["pos"] = pos
    out["skipped"] = np.asarray([p for p in range(start, end) if p not in located], dtype=np.int64)
    n_patch = ctx.num_patches
    if todo.edge:
        out["edge_pred"] = _cat(parts.preds, np.int64)
        for m in gate_measures():
            out[statistic_key(m)] = _cat(parts.values.get(m, []), np.float64)
        for s in ctx.grid.edge_scores():
            out[score_key(s)] = _cat(parts.scores.get(s, []), np.float32, n_patch)
    if todo.server:
        out[SERVER_SCORES] = _cat(parts.server_scores, np.float32, n_patch)
    if todo.sizes:
        for name, _ in FULL_IMAGE_FILES:
            out[f"full_{name}"] = np.asarray(parts.sizes.get(name, []), dtype=np.int64)
    return out


def run_edge_pass(ctx: SweepContext) -> EdgeData:
    """Every chunk's edge outputs, from the cache where complete, computed otherwise."""
    n_samples = len(ctx.samples)
    chunks: list[Arrays] = []
    start = 0
    while start < n_samples:
        name = f"edge-{len(chunks):05d}"
        stored = ctx.cache.load(name)
        if stored is not None and (
            int(stored.get("version", -1)) != CACHE_VERSION or int(stored["start"]) != start
        ):
            stored = None
        if stored is not None and not _missing(ctx, stored).any():
            ctx.stats.edge_chunks_cached += 1
            ctx.tick("edge", int(stored["end"]) - start, n_samples)
            chunk = stored
        else:
            end = None if stored is None else int(stored["end"])
            chunk = _edge_chunk(ctx, len(chunks), start, end, stored)
            ctx.cache.save(name, chunk)
        chunks.append(chunk)
        start = int(chunk["end"])
    ctx.stats.chunks = len(chunks)
    if ctx.stream is not None:  # the workers are not needed until the server pass
        ctx.stream.close()
        ctx.stream = None
    return _merge(ctx, chunks)


def _merge(ctx: SweepContext, chunks: list[Arrays]) -> EdgeData:
    bounds = []
    row = 0
    for c in chunks:
        n = len(c["pos"])
        bounds.append((int(c["start"]), int(c["end"]), row, row + n))
        row += n
    if row == 0:
        raise DataError("no image could be read: every file was skipped as unreadable")

    def cat(key: str) -> npt.NDArray[Any]:
        return np.concatenate([c[key] for c in chunks])

    skipped = [int(x) for c in chunks for x in c["skipped"].tolist()]
    if skipped:
        first = ctx.samples[skipped[0]].file
        logger.warning("%d file(s) skipped as unreadable (first: %s)", len(skipped), first)
    want_server = bool(ctx.grid.encoder_thresholds)
    return EdgeData(
        positions=cat("pos").astype(np.int64),
        chunk_bounds=bounds,
        edge_pred=cat("edge_pred").astype(np.int64),
        values={m: cat(statistic_key(m)).astype(np.float64) for m in gate_measures()},
        scores={s: cat(score_key(s)).astype(np.float32) for s in ctx.grid.edge_scores()},
        server_scores=cat(SERVER_SCORES).astype(np.float32) if want_server else None,
        full_bytes={
            name: cat(f"full_{name}").astype(np.int64)
            for name, _ in (FULL_IMAGE_FILES if ctx.baseline_bytes else ())
        },
        skipped=skipped,
    )
