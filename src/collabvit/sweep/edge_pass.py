"""The sweep's edge pass: each image through the edge model once, chunk by chunk.

Per image it keeps the edge's prediction, the gate statistic of every measure
of :data:`collabvit.gating.MEASURES` that gates (eqs. 12-13 and the margin),
the patch scores the grid needs (eq. 10 and/or the rollouts) and the bytes of
the whole image as one JPEG (quality 90) or PNG file. For Fig. 14 the server
also scores each full image once (its own mean attention). Chunks come from
and go to the :class:`~.cache.Cache`; a chunk that lacks only some arrays
(a new score, a new measure) recomputes what it lacks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import wire
from ..data import Batch, iter_batches
from ..errors import DataError, WireError
from ..gating import MEASURES, get_measure, transmit_mask, uncertainty
from ..models import forward_with_scores
from .cache import CACHE_VERSION, Arrays
from .context import SweepContext
from .grid import EDGE

__all__ = ["EdgeData", "gate_measures", "run_edge_pass", "score_key", "statistic_key"]

logger = logging.getLogger(__name__)

SERVER_SCORES = "server_s_mean"  # the server's own mean attention (Fig. 14)
FULL_IMAGE_FILES = (("jpeg_q90", "jpeg"), ("png", "png"))  # whole-image uploads (JPEG q90)


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
    full_bytes: dict[str, npt.NDArray[np.int64]]  # (n,) jpeg_q90, png
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
        return _Todo(True, want_server, True)
    edge = any(statistic_key(m) not in stored for m in gate_measures()) or any(
        score_key(s) not in stored for s in ctx.grid.edge_scores()
    )
    server = want_server and SERVER_SCORES not in stored
    sizes = any(f"full_{name}" not in stored for name, _ in FULL_IMAGE_FILES)
    return _Todo(edge, server, sizes)


def _run_batch(ctx: SweepContext, todo: _Todo, batch: Batch, parts: _Parts) -> None:
    pixels = batch.pixels.to(ctx.edge.device)
    if todo.edge:
        logits, sc = forward_with_scores(
            ctx.edge, ctx.edge.normalise(pixels), ctx.grid.edge_scores()
        )
        ctx.stats.edge_images += len(batch.samples)
        parts.preds.append(logits.argmax(-1).cpu().numpy().astype(np.int64))
        for m in gate_measures():
            parts.values.setdefault(m, []).append(uncertainty(logits, m))
        for s in ctx.grid.edge_scores():
            parts.scores.setdefault(s, []).append(sc[s].cpu().numpy().astype(np.float32))
    if todo.server:
        spx = ctx.server.normalise(batch.pixels.to(ctx.server.device))
        _, ssc = forward_with_scores(ctx.server, spx, ("mean",))
        ctx.stats.server_encoder_images += len(batch.samples)
        parts.server_scores.append(ssc["mean"].cpu().numpy().astype(np.float32))
    if todo.sizes:
        for i in range(len(batch.samples)):
            hwc = batch.pixels[i].permute(1, 2, 0).numpy()
            for name, fmt in FULL_IMAGE_FILES:
                try:
                    size = wire.full_image_bytes(hwc, fmt, 90)
                except WireError:  # Pillow cannot write it: the upload is the raw pixels
                    size = int(hwc.size)
                parts.sizes.setdefault(name, []).append(size)


def _cat(parts: list[npt.NDArray[Any]], dtype: Any, width: int | None = None) -> npt.NDArray[Any]:
    if parts:
        return np.concatenate(parts).astype(dtype, copy=False)
    return np.zeros((0,) if width is None else (0, width), dtype=dtype)


def _edge_chunk(ctx: SweepContext, start: int, end: int | None, stored: Arrays | None) -> Arrays:
    """Compute (what is missing of) the chunk that starts at sample ``start``.

    ``end`` is None for a new chunk: it then holds ``cache.chunk_batches``
    batches of readable images (the batches ``engine.evaluate`` forms).
    """
    todo = _missing(ctx, stored)
    samples = ctx.samples
    sub = samples[start:end] if end is not None else samples[start:]
    skipped: list[Any] = []
    parts = _Parts()
    ptr = 0
    exhausted = True
    skipped_seen = 0
    for done, batch in enumerate(
        iter_batches(sub, ctx.edge.preprocessing, ctx.batch_size, skipped), 1
    ):
        for s in batch.samples:
            while sub[ptr] is not s:
                ptr += 1
            parts.located.append(start + ptr)
            ptr += 1
        _run_batch(ctx, todo, batch, parts)
        ctx.tick("edge", len(batch.samples) + len(skipped) - skipped_seen, len(samples))
        skipped_seen = len(skipped)
        if end is None and done == ctx.cache.chunk_batches:
            exhausted = False
            break
    if end is None:
        end = len(samples) if exhausted or not parts.located else parts.located[-1] + 1
    ctx.tick("edge", len(skipped) - skipped_seen, len(samples))
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
            chunk = _edge_chunk(ctx, start, end, stored)
            ctx.cache.save(name, chunk)
        chunks.append(chunk)
        start = int(chunk["end"])
    ctx.stats.chunks = len(chunks)
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
        full_bytes={name: cat(f"full_{name}").astype(np.int64) for name, _ in FULL_IMAGE_FILES},
        skipped=skipped,
    )
