"""The sweep's server pass: each distinct (image, keep mask) through the server once.

Every selection the grid needs is computed with
:func:`collabvit.selection.select_patches`; an image needs a selection only
when some eta of some point using it transmits the image. Identical keep masks
of one image (across rules, scores and thresholds) are merged and the server
runs :func:`collabvit.models.forward_subset` once per distinct (image, mask),
batched by patch count, from the chunk's pixels as the edge pass decoded them
(normalised once per chunk). Wire sizes are computed once per distinct mask
too: the raw codec's by arithmetic (:func:`raw_message_bytes`), PNG and JPEG
by encoding.
Each chunk is planned once; the progress total starts as an upper bound (every
needed (image, selection) pair) and shrinks to the exact count as chunks are
planned.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch

from .. import wire
from ..data import Sample
from ..errors import DataError, WireError
from ..loader import next_batch
from ..models import forward_subset
from ..selection import select_patches
from .cache import Arrays
from .context import SweepContext
from .edge_pass import EdgeData
from .grid import EDGE, WHOLE_IMAGE, GridPoint, SelectionKey, SweepGrid
from .pixels import stream_at

logger = logging.getLogger(__name__)

__all__ = [
    "SAVE_EVERY_S",
    "SelectionData",
    "bytes_key",
    "keep_masks",
    "raw_message_bytes",
    "run_server_pass",
    "selection_needs",
]

SAVE_EVERY_S = 120.0  # flush server results inside a chunk this often (resume points)

Needs = Mapping[SelectionKey, npt.NDArray[np.bool_]]


def bytes_key(codec: str, quality: int) -> str:
    """The cache column of one codec's wire sizes (``bytes_raw``, ``bytes_jpeg_q90``, ...)."""
    return f"bytes_{codec}_q{quality}" if wire.CODECS[codec].takes_quality else f"bytes_{codec}"


@dataclass
class SelectionData:
    """One selection over every image (rows as :class:`~.edge_pass.EdgeData`)."""

    pred: npt.NDArray[np.int64]  # (n,) server prediction, -1 where not needed
    count: npt.NDArray[np.int64]  # (n,) patches kept
    nbytes: npt.NDArray[np.int64]  # (n,) wire bytes
    raised: npt.NDArray[np.bool_]  # (n,) the rule kept nothing, the top patch was kept

    @classmethod
    def empty(cls, n: int) -> SelectionData:
        return cls(
            np.full(n, -1, dtype=np.int64),
            np.zeros(n, dtype=np.int64),
            np.zeros(n, dtype=np.int64),
            np.zeros(n, dtype=bool),
        )


@dataclass
class _ChunkPlan:
    """The distinct (image, mask) pairs of one chunk and which of them are cached."""

    ci: int
    start: int
    end: int
    a: int
    b: int
    stored: Arrays | None = None
    index: dict[tuple[int, bytes], int] = field(default_factory=dict)
    keys: list[tuple[int, bytes]] = field(default_factory=list)  # (position, packed mask)
    local_rows: list[int] = field(default_factory=list)
    masks: list[npt.NDArray[np.bool_]] = field(default_factory=list)
    cached: list[int] = field(default_factory=list)  # row in the stored file, -1 if new
    todo_server: list[int] = field(default_factory=list)
    todo_bytes: list[int] = field(default_factory=list)
    # per selection: (global rows, distinct ids, kept counts, raised flags)
    selections: dict[
        SelectionKey,
        tuple[
            npt.NDArray[np.int64],
            npt.NDArray[np.int64],
            npt.NDArray[np.int64],
            npt.NDArray[np.bool_],
        ],
    ] = field(default_factory=dict)


def selection_needs(
    edge: EdgeData, points: Sequence[GridPoint]
) -> dict[SelectionKey, npt.NDArray[np.bool_]]:
    """Per selection: which images some point of the grid transmits (whole images: all)."""
    n = len(edge.positions)
    gates: dict[tuple[str, str, float], npt.NDArray[np.bool_]] = {}
    needs = {WHOLE_IMAGE: np.ones(n, dtype=bool)}
    for p in points:
        g = (p.encoder, p.measure, p.eta)
        if g not in gates:
            gates[g] = edge.transmitted(p.measure, p.eta, p.encoder)[0]
        key = p.selection
        if key in needs:
            needs[key] |= gates[g]
        else:
            needs[key] = gates[g].copy()
    return needs


def keep_masks(
    edge: EdgeData,
    key: SelectionKey,
    rows: npt.NDArray[np.int64],
    samples: Sequence[Sample],
    grid: SweepGrid,
    num_patches: int,
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Keep masks (len(rows), N) and raised-to-one flags of one selection at global rows."""
    if key.score is None:
        scores = np.zeros((len(rows), num_patches), dtype=np.float32)
    elif key.encoder == EDGE:
        scores = edge.scores[key.score][rows]
    else:
        assert edge.server_scores is not None
        scores = edge.server_scores[rows]
    ids = np.asarray([samples[int(p)].index for p in edge.positions[rows].tolist()], np.int64)
    threshold = 0.0 if key.threshold is None else key.threshold
    sel = select_patches(scores, key.rule, threshold, grid.include_crossing, grid.seed, ids)
    return sel.keep_mask, sel.raised_to_one


def _plan_chunk(ctx: SweepContext, ci: int, edge: EdgeData, needs: Needs) -> _ChunkPlan:
    start, end, a, b = edge.chunk_bounds[ci]
    plan = _ChunkPlan(ci, start, end, a, b)
    stored = ctx.cache.load(f"server-{ci:05d}")
    cached: dict[tuple[int, bytes], int] = {}
    if stored is not None and "keys" in stored:
        plan.stored = stored
        for i, (p, key) in enumerate(zip(stored["pos"].tolist(), stored["keys"], strict=True)):
            cached[(int(p), key.tobytes())] = i
    for sel_key, need in needs.items():
        local = np.nonzero(need[a:b])[0]
        if local.size == 0:
            continue
        rows = (local + a).astype(np.int64)
        masks, raised = keep_masks(edge, sel_key, rows, ctx.samples, ctx.grid, ctx.num_patches)
        packed = np.packbits(masks, axis=1)
        uids = np.empty(local.size, dtype=np.int64)
        for j in range(local.size):
            key = (int(edge.positions[rows[j]]), packed[j].tobytes())
            uid = plan.index.get(key)
            if uid is None:
                uid = len(plan.keys)
                plan.index[key] = uid
                plan.keys.append(key)
                plan.local_rows.append(int(local[j]))
                plan.masks.append(masks[j])
                plan.cached.append(cached.get(key, -1))
            uids[j] = uid
        plan.selections[sel_key] = (rows, uids, masks.sum(axis=1).astype(np.int64), raised)
    bkey = bytes_key(ctx.codec, ctx.quality)
    have_bytes = plan.stored is not None and bkey in plan.stored
    for uid, row in enumerate(plan.cached):
        if row < 0:
            plan.todo_server.append(uid)
            plan.todo_bytes.append(uid)
        elif not have_bytes or int(plan.stored[bkey][row]) < 0:  # type: ignore[index]
            plan.todo_bytes.append(uid)
    return plan


def raw_message_bytes(kept: int, num_patches: int, channels: int, patch_size: int) -> int:
    """``len(wire.encode(...))`` of a raw message with ``kept`` of ``num_patches`` patches.

    Header, the mask at one bit per patch, C * P * P bytes per kept patch, CRC32:
    the raw codec's size is arithmetic, no message needs to be built.
    """
    mask = (num_patches + 7) // 8
    return wire.HEADER_SIZE + mask + kept * channels * patch_size * patch_size + 4


def _chunk_pixels(ctx: SweepContext, edge: EdgeData, plan: _ChunkPlan) -> torch.Tensor:
    """The chunk's uint8 pixels: from the edge pass (decoded once), else decoded now."""
    pixels = ctx.pixels.take(plan.ci)
    positions = edge.positions[plan.a : plan.b].tolist()
    if pixels is None:
        stream = stream_at(ctx, plan.start, False)
        parts, got = [], []
        while (batch := next_batch(stream, ctx.batch_size, plan.end)) is not None:
            parts.append(batch.pixels)
            got += batch.positions
        ctx.stats.decoded_images += len(got)
        c, h, w = ctx.edge.preprocessing.input_size
        pixels = torch.cat(parts) if parts else torch.zeros((0, c, h, w), dtype=torch.uint8)
        if got != positions:
            raise DataError(
                f"images {plan.start}..{plan.end - 1} read differently than during the edge "
                "pass (a file changed or became unreadable): rerun the sweep"
            )
    if pixels.shape[0] != len(positions):
        raise DataError(f"the pixels of chunk {plan.ci} do not match its edge pass: rerun")
    return pixels


def _normalised(ctx: SweepContext, pixels: torch.Tensor) -> torch.Tensor:
    """The server's input of every image of the chunk, normalised once (not per selection)."""
    server = ctx.server
    out = torch.empty(pixels.shape, dtype=torch.float32, device=server.device)
    step = max(1, ctx.batch_size)
    pin = server.device.type == "cuda"
    for i in range(0, pixels.shape[0], step):
        part = pixels[i : i + step]
        part = part.pin_memory() if pin else part
        out[i : i + step] = server.normalise(part.to(server.device, non_blocking=pin))
    return out


def _wire_sizes(
    ctx: SweepContext, plan: _ChunkPlan, nbytes: npt.NDArray[np.int64], pixels: torch.Tensor | None
) -> None:
    """Wire bytes of the chunk's selections that lack them: arithmetic for raw, encoded else."""
    todo = [u for u in plan.todo_bytes if nbytes[u] < 0]
    patch = ctx.edge.patch_size
    if ctx.codec == "raw":
        c = ctx.edge.preprocessing.channels
        for uid in todo:
            nbytes[uid] = raw_message_bytes(int(plan.masks[uid].sum()), ctx.num_patches, c, patch)
        return
    assert pixels is not None
    for uid in todo:
        px = pixels[plan.local_rows[uid]].numpy()
        try:
            message = wire.encode(px, plan.masks[uid], patch, ctx.codec, ctx.quality)
        except WireError:  # Pillow cannot write it (e.g. JPEG of noise): the edge sends raw
            message = wire.encode(px, plan.masks[uid], patch, "raw", 0)
            logger.warning("selection %d: %s failed, counted as raw", uid, ctx.codec)
        nbytes[uid] = len(message)
        ctx.stats.encoded_selections += 1


def _run_chunk(
    ctx: SweepContext, edge: EdgeData, plan: _ChunkPlan, total: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Server predictions and wire sizes for every distinct selection of the chunk."""
    m = len(plan.keys)
    pred = np.full(m, -1, dtype=np.int64)
    nbytes = np.full(m, -1, dtype=np.int64)
    bkey = bytes_key(ctx.codec, ctx.quality)
    stored = plan.stored
    for uid, si in enumerate(plan.cached):
        if si >= 0 and stored is not None:
            pred[uid] = int(stored["pred"][si])
            if bkey in stored:
                nbytes[uid] = int(stored[bkey][si])
    need_pixels = bool(plan.todo_server) or (ctx.codec != "raw" and bool(plan.todo_bytes))
    if not need_pixels:
        ctx.pixels.take(plan.ci)  # not needed: free them
        if plan.todo_bytes:
            _wire_sizes(ctx, plan, nbytes, None)
            _save_chunk(ctx, plan, pred, nbytes, bkey)
        return pred, nbytes
    pixels = _chunk_pixels(ctx, edge, plan)
    normed = _normalised(ctx, pixels) if plan.todo_server else pixels
    order = sorted(plan.todo_server, key=lambda u: (int(plan.masks[u].sum()), u))
    group = max(1, ctx.batch_size)
    server = ctx.server
    last_save = time.monotonic()
    # one input buffer for every group: a fresh (group, C, H, W) tensor per group costs
    # more in page faults than the copy itself
    buffer = torch.empty((min(group, len(order)), *normed.shape[1:]), device=normed.device)
    for g in range(0, len(order), group):
        uids = order[g : g + group]
        rows = torch.tensor([plan.local_rows[u] for u in uids], dtype=torch.long)
        images = buffer[: len(uids)]
        torch.index_select(normed, 0, rows.to(normed.device), out=images)
        keep = torch.from_numpy(np.stack([plan.masks[u] for u in uids]))
        out = forward_subset(server, images, keep.to(server.device), max_batch=group)
        pred[uids] = out.argmax(-1).cpu().numpy()
        ctx.stats.server_images += len(uids)
        ctx.tick("server", len(uids), total)
        if time.monotonic() - last_save > SAVE_EVERY_S:  # resume points inside a chunk
            _wire_sizes(ctx, plan, nbytes, pixels)
            _save_chunk(ctx, plan, pred, nbytes, bkey)
            last_save = time.monotonic()
    _wire_sizes(ctx, plan, nbytes, pixels)
    _save_chunk(ctx, plan, pred, nbytes, bkey)
    return pred, nbytes


def _save_chunk(
    ctx: SweepContext,
    plan: _ChunkPlan,
    pred: npt.NDArray[np.int64],
    nbytes: npt.NDArray[np.int64],
    bkey: str,
) -> None:
    """Write the chunk's cache file: the rows it had plus every selection done so far.

    Rebuilt from the file as loaded when the chunk was planned, so calling
    it again later in the chunk is safe; one atomic replace each time.
    """
    nb = (ctx.num_patches + 7) // 8
    stored = plan.stored
    old = len(stored["pos"]) if stored is not None else 0
    new = [u for u, si in enumerate(plan.cached) if si < 0 and pred[u] >= 0]
    new_keys = [np.frombuffer(plan.keys[u][1], dtype=np.uint8) for u in new]
    pos = np.asarray([plan.keys[u][0] for u in new], dtype=np.int64)
    keys = np.asarray(new_keys, dtype=np.uint8).reshape(len(new), nb)
    preds = pred[new].astype(np.int64)
    out: Arrays = {"pos": pos, "keys": keys, "pred": preds}
    if stored is not None:
        out = {k: np.concatenate([stored[k], v]) for k, v in out.items()}
        for k, v in stored.items():
            if k.startswith("bytes_"):
                out[k] = np.concatenate([v, np.full(len(new), -1, np.int64)])
    if bkey not in out:
        out[bkey] = np.full(len(out["pos"]), -1, dtype=np.int64)
    column = out[bkey]
    slot = {u: old + j for j, u in enumerate(new)}
    for uid, si in enumerate(plan.cached):
        row = si if si >= 0 else slot.get(uid, -1)
        if row >= 0 and nbytes[uid] >= 0:
            column[row] = nbytes[uid]
    ctx.cache.save(f"server-{plan.ci:05d}", out)


def run_server_pass(
    ctx: SweepContext, edge: EdgeData, points: Sequence[GridPoint]
) -> dict[SelectionKey, SelectionData]:
    """Every selection the points need, over every image, planning each chunk once."""
    needs = selection_needs(edge, points)
    n = len(edge.positions)
    out = {key: SelectionData.empty(n) for key in needs}
    # the progress total: an upper bound per chunk until the chunk is planned
    bound = [
        sum(int(need[a:b].sum()) for need in needs.values()) for _, _, a, b in edge.chunk_bounds
    ]
    planned = 0
    for ci in range(len(edge.chunk_bounds)):
        plan = _plan_chunk(ctx, ci, edge, needs)
        planned += len(plan.todo_server)
        ctx.stats.distinct_selections += len(plan.keys)
        ctx.stats.cached_selections += sum(1 for s in plan.cached if s >= 0)
        pred, nbytes = _run_chunk(ctx, edge, plan, planned + sum(bound[ci + 1 :]))
        for key, (rows, uids, counts, raised) in plan.selections.items():
            d = out[key]
            d.pred[rows] = pred[uids]
            d.nbytes[rows] = nbytes[uids]
            d.count[rows] = counts
            d.raised[rows] = raised
    return out
