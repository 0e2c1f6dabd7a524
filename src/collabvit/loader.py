"""The input pipeline: a ``torch.utils.data`` loader over :func:`collabvit.data.discover`'s samples.

Each image is decoded, converted, resized and centre-cropped once
(:func:`collabvit.data.load_image`, :func:`collabvit.data.preprocess`), in
``workers`` worker processes (0: in this process). The dataset's items are
*blocks* of consecutive samples, so one block crosses the process boundary as
one uint8 tensor; :class:`ImageStream` hands them back image by image in
dataset order and :func:`next_batch` regroups them into batches of
``batch_size`` readable images, exactly the batches of
:func:`collabvit.data.iter_batches` (unreadable files are skipped and
reported, a batch is never short but at the end). The order and the pixels do
not depend on the number of workers, so neither does anything computed from
them. On CUDA the batches are in pinned memory, ready for
``tensor.to(device, non_blocking=True)``.

Optionally the workers also measure each image's whole-crop file sizes (the
sweep's ``--baseline-bytes``: one JPEG q90 and one PNG file,
:func:`collabvit.wire.full_image_bytes`), so that work leaves the main process too.
"""

from __future__ import annotations

import logging
import math
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from . import wire
from .data import Batch, Preprocessing, Sample, load_image, preprocess
from .errors import DataError, WireError
from .workers import check_shared_memory

__all__ = [
    "BLOCK",
    "FILE_SIZES",
    "Block",
    "ImageStream",
    "LoadedBatch",
    "iter_batches",
    "next_batch",
]

logger = logging.getLogger(__name__)

FILE_SIZES = (("jpeg_q90", "jpeg"), ("png", "png"))  # whole-crop uploads: name, Pillow format
BLOCK = 64  # images per loader item: a whole batch, handed on without being copied again
PREFETCH = 2  # loader items each worker may hold ahead (the DataLoader's prefetch_factor)


def decode(sample: Sample, prep: Preprocessing) -> torch.Tensor | None:
    """One sample as (C, H, W) uint8 model-size pixels, or None when unreadable.

    The steps of :func:`collabvit.data.iter_batches`, for one image.
    """
    if sample.array is not None:
        image: Image.Image | None = Image.fromarray(sample.array).convert(
            "RGB" if prep.channels == 3 else "L"
        )
    else:
        assert sample.path is not None
        image = load_image(sample.path, prep.channels)
    return None if image is None else preprocess(image, prep)


def _file_sizes(pixels: torch.Tensor) -> list[int]:
    """Bytes of the crop as one JPEG (quality 90) and one PNG file; raw bytes if Pillow fails."""
    hwc = pixels.permute(1, 2, 0).numpy()
    sizes = []
    for _, fmt in FILE_SIZES:
        try:
            sizes.append(wire.full_image_bytes(hwc, fmt, 90))
        except WireError:  # Pillow cannot write it: the upload is the raw pixels
            sizes.append(int(hwc.size))
    return sizes


@dataclass
class Block:
    """Samples ``start .. end - 1``: the readable ones' positions, pixels and file sizes."""

    start: int
    end: int
    positions: list[int]
    pixels: torch.Tensor  # (len(positions), C, H, W) uint8
    sizes: list[list[int]] = field(default_factory=list)  # per readable image, FILE_SIZES order
    index: int = -1  # the loader item this block is
    slot: int = -1  # >= 0: the pixels wait in this slot of the stream's _Ring, not in `pixels`

    def pin_memory(self) -> Block:
        """Called by the DataLoader's pin-memory thread (CUDA only)."""
        self.pixels = self.pixels.pin_memory()
        return self


class _Ring:
    """Shared-memory slots the workers decode into, made once before the workers start.

    A block in fresh shared memory costs a page fault per 4 KiB in the worker and
    again in this process: on a 2-core VM that was a sixth of the workers' time.
    The slots are reused instead. This process chooses each item's slot when the
    DataLoader asks :class:`_Order` for the item (:meth:`claim`): a slot that no
    item in flight was given and that no batch, view or array still refers to
    (:func:`_unshared`). So a batch handed out is never written again while
    anything can read it; ``owner`` checks that too. With no slot free the worker
    returns its block in fresh memory, as the DataLoader does by default.

    A block's slot itself becomes its batch (no copy) unless the consumer already
    holds two slots' batches - a consumer that keeps batches (the sweep) then gets
    copies, and the slots stay free for the workers - or the batch is to be pinned.
    """

    def __init__(self, slots: int, block: int, shape: tuple[int, int, int]) -> None:
        self.slots = [
            torch.empty((block, *shape), dtype=torch.uint8).share_memory_() for _ in range(slots)
        ]
        self.owner = torch.full((slots,), -1, dtype=torch.int64).share_memory_()
        self.busy: set[int] = set()  # this process: slots given to items not yet received

    def claim(self) -> int:
        """In this process: a free slot for the next item, now busy; -1 when none is free."""
        for slot, pixels in enumerate(self.slots):
            if slot not in self.busy and _unshared(pixels):
                self.busy.add(slot)
                return slot
        return -1

    def put(self, index: int, slot: int, pixels: list[torch.Tensor]) -> None:
        """In a worker: item ``index``'s pixels into the slot this process gave it."""
        self.owner[slot] = index
        torch.stack(pixels, out=self.slots[slot][: len(pixels)])

    def take(self, block: Block, pin: bool) -> torch.Tensor:
        """In this process: ``block``'s pixels, in its slot or (pinned with ``pin``) a copy."""
        self.busy.discard(block.slot)
        if int(self.owner[block.slot]) != block.index:
            raise DataError(
                f"loader: block {block.index} was overwritten before it was read; "
                "rerun with --workers 0 and report it"
            )
        pixels = self.slots[block.slot][: len(block.positions)]
        held = sum(
            1
            for slot, other in enumerate(self.slots)
            if slot != block.slot and slot not in self.busy and not _unshared(other)
        )
        if pin:
            return torch.empty_like(pixels, pin_memory=True).copy_(pixels)
        return pixels if held < 2 else pixels.clone()


def _references(tensor: torch.Tensor) -> tuple[int, int] | None:
    """Who holds ``tensor``'s memory: (C++ uses of its storage, Python references to the
    storage object); None where this torch does not say."""
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    if use_count is None:
        return None
    storage = tensor.untyped_storage()
    return int(use_count(storage._cdata)), sys.getrefcount(storage)


def _unshared(tensor: torch.Tensor) -> bool:
    """True when only ``tensor`` holds its memory: no view, array or storage of it is alive.

    Compared with a tensor just made, so nothing depends on how torch counts. Where
    torch does not say, False: no slot is ever reused while it might be read.
    """
    counts = _references(tensor)
    return counts is not None and counts == _references(torch.empty(0))


class _Order(Sampler[tuple[int, int]]):
    """The items in order, each with the ring slot this process gives it (-1: none)."""

    def __init__(self, items: int, ring: _Ring | None) -> None:
        self.items = items
        self.ring = ring

    def __len__(self) -> int:
        return self.items

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for b in range(self.items):
            yield b, self.ring.claim() if self.ring is not None else -1


class _Blocks(Dataset[Block]):
    """Item ``b``: samples ``offset + b * block`` onwards, ``block`` of them."""

    def __init__(
        self,
        samples: Sequence[Sample],
        prep: Preprocessing,
        offset: int,
        block: int,
        file_sizes: bool,
        ring: _Ring | None = None,
    ) -> None:
        self.samples = samples
        self.prep = prep
        self.offset = offset
        self.block = block
        self.file_sizes = file_sizes
        self.ring = ring

    def __len__(self) -> int:
        return math.ceil(max(0, len(self.samples) - self.offset) / self.block)

    def __getitem__(self, item: tuple[int, int]) -> Block:
        b, slot = item
        start = self.offset + b * self.block
        end = min(start + self.block, len(self.samples))
        positions, pixels, sizes = [], [], []
        for pos in range(start, end):
            px = decode(self.samples[pos], self.prep)
            if px is None:
                continue
            positions.append(pos)
            pixels.append(px)
            if self.file_sizes:
                sizes.append(_file_sizes(px))
        c, h, w = self.prep.input_size
        empty = torch.zeros((0, c, h, w), dtype=torch.uint8)
        if pixels and slot >= 0 and self.ring is not None and get_worker_info() is not None:
            self.ring.put(b, slot, pixels)
            return Block(start, end, positions, empty, sizes, b, slot)
        return Block(start, end, positions, torch.stack(pixels) if pixels else empty, sizes, b)


def _same(block: Any) -> Any:
    """The collate function of an unbatched loader: a block stays as it is."""
    return block


class ImageStream:
    """The samples from ``start`` on, image by image in dataset order, decoded by the loader.

    :attr:`position` is the next sample position; :meth:`take` returns it as
    ``(position, block, row)`` (row -1: unreadable). ``pin``: batches in
    pinned memory (for CUDA).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        prep: Preprocessing,
        *,
        block: int,
        workers: int = 0,
        start: int = 0,
        pin: bool = False,
        file_sizes: bool = False,
    ) -> None:
        self.position = start
        self.end = len(samples)
        self.shape = prep.input_size  # (C, H, W)
        self.pin = pin
        self.workers = workers
        self.file_sizes = file_sizes
        block = max(1, block)
        # the items in flight, the two batches the consumer may hold, the one being claimed
        self._ring: _Ring | None = None
        if workers:
            slots = PREFETCH * workers + 3
            check_shared_memory(slots * block * math.prod(prep.input_size), workers)
            self._ring = _Ring(slots, block, prep.input_size)
        dataset = _Blocks(samples, prep, start, block, file_sizes, self._ring)
        self._loader = DataLoader(
            dataset,
            batch_size=None,  # an item is already a block
            sampler=_Order(len(dataset), self._ring),  # dataset order, whatever the workers
            num_workers=workers,
            collate_fn=_same,
            pin_memory=pin and not workers,  # from the ring, blocks are copied into pinned memory
            prefetch_factor=PREFETCH if workers else None,
        )
        self._blocks: Iterator[Block] | None = None
        self._pending: deque[tuple[Block, int]] = deque()

    def _fill(self) -> None:
        if self._blocks is None:
            self._blocks = iter(self._loader)
        block = next(self._blocks)
        if block.slot >= 0:
            assert self._ring is not None
            block.pixels = self._ring.take(block, self.pin)
        rows = dict(zip(block.positions, range(len(block.positions)), strict=True))
        self._pending.extend((block, rows.get(pos, -1)) for pos in range(block.start, block.end))

    def take(self) -> tuple[int, Block, int]:
        """The next sample: (position, its block, its row in the block or -1)."""
        if self.position >= self.end:
            raise StopIteration
        if not self._pending:
            self._fill()
        block, row = self._pending.popleft()
        pos = self.position
        self.position += 1
        return pos, block, row

    def close(self) -> None:
        """Stop the workers (also when the stream was not read to its end)."""
        self._blocks = None  # the DataLoader iterator shuts its workers down when released
        self._pending.clear()


@dataclass
class LoadedBatch:
    """Up to ``batch_size`` readable images and the unreadable ones met on the way."""

    positions: list[int]
    pixels: torch.Tensor  # (B, C, H, W) uint8, pinned on CUDA
    skipped: list[int]
    sizes: list[list[int]]  # per image, FILE_SIZES order (empty without file sizes)


def _stack(parts: list[tuple[Block, int]], pin: bool) -> torch.Tensor:
    first = parts[0][0]
    rows = [row for _, row in parts]
    if all(b is first for b, _ in parts) and rows == list(range(len(first.positions))):
        return first.pixels  # a whole block: no copy (pinned by the DataLoader on CUDA)
    views = [b.pixels[row] for b, row in parts]
    out = torch.empty((len(views), *views[0].shape), dtype=torch.uint8, pin_memory=pin)
    return torch.stack(views, out=out)


def next_batch(stream: ImageStream, batch_size: int, end: int | None = None) -> LoadedBatch | None:
    """The next batch of ``batch_size`` readable images before position ``end`` (None: all).

    Shorter only when ``end`` (or the data) is reached; None when nothing is left.
    """
    stop = stream.end if end is None else min(end, stream.end)
    if stream.position >= stop:
        return None
    parts: list[tuple[Block, int]] = []
    positions: list[int] = []
    skipped: list[int] = []
    while len(parts) < batch_size and stream.position < stop:
        pos, block, row = stream.take()
        if row < 0:
            skipped.append(pos)
        else:
            parts.append((block, row))
            positions.append(pos)
    if not parts:
        return LoadedBatch([], torch.zeros((0, *stream.shape), dtype=torch.uint8), skipped, [])
    sizes = [b.sizes[row] for b, row in parts] if parts[0][0].sizes else []
    return LoadedBatch(positions, _stack(parts, stream.pin), skipped, sizes)


def iter_batches(
    samples: Sequence[Sample],
    prep: Preprocessing,
    batch_size: int,
    skipped: list[Sample] | None = None,
    *,
    workers: int = 0,
    pin: bool = False,
) -> Iterator[Batch]:
    """:func:`collabvit.data.iter_batches` through the loader: the same batches, decoded by
    ``workers`` processes (pinned memory with ``pin``). Unreadable files go to ``skipped``."""
    stream = ImageStream(samples, prep, block=min(batch_size, BLOCK), workers=workers, pin=pin)
    try:
        while (got := next_batch(stream, batch_size)) is not None:
            if skipped is not None:
                skipped.extend(samples[p] for p in got.skipped)
            if got.positions:
                yield Batch([samples[p] for p in got.positions], got.pixels)
    finally:
        stream.close()
