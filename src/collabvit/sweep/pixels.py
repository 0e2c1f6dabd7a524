"""The decoded pixels of one sweep run: decode each image once, for both passes.

The edge pass decodes every chunk it computes (through :mod:`collabvit.loader`)
and hands the chunk's uint8 pixels to a :class:`PixelStore`; the server pass
takes them back instead of decoding the images a second time. Chunks are kept
in memory up to ``memory_bytes`` (default 2 GiB, about 14,000 images at
224x224), later ones are written as ``.npy`` files to a folder of this run
(beside the cache, or a temporary folder) and read back once. Whatever is left
is deleted when the run ends. A chunk whose edge outputs came from the cache
was never decoded: the server pass decodes it then (:func:`stream_at`).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..loader import BLOCK, ImageStream
from .context import SweepContext

__all__ = ["DEFAULT_MEMORY_BYTES", "PixelStore", "stream_at"]

logger = logging.getLogger(__name__)

DEFAULT_MEMORY_BYTES = 2 * 1024**3


class PixelStore:
    """uint8 pixels per chunk: in memory up to a budget, then spilled to ``.npy`` files."""

    def __init__(self, spill_root: Path | None, memory_bytes: int = DEFAULT_MEMORY_BYTES) -> None:
        self.memory_bytes = memory_bytes
        self.used = 0
        self._spill_root = spill_root
        self._spill_dir: Path | None = None
        self._own_dir = False
        self._memory: dict[int, torch.Tensor] = {}
        self._spilled: dict[int, Path] = {}

    def _dir(self) -> Path:
        if self._spill_dir is None:
            if self._spill_root is None:
                self._spill_dir = Path(tempfile.mkdtemp(prefix="collabvit-pixels-"))
            else:
                self._spill_dir = self._spill_root / f"pixels-{os.getpid()}"
                self._spill_dir.mkdir(parents=True, exist_ok=True)
            self._own_dir = True
        return self._spill_dir

    def put(self, chunk: int, pixels: torch.Tensor) -> None:
        """Keep one chunk's (n, C, H, W) uint8 pixels until :meth:`take`."""
        size = pixels.numel() * pixels.element_size()
        if self.used + size <= self.memory_bytes:
            self._memory[chunk] = pixels
            self.used += size
            return
        path = self._dir() / f"chunk-{chunk:05d}.npy"
        np.save(path, pixels.numpy(), allow_pickle=False)
        self._spilled[chunk] = path

    def take(self, chunk: int) -> torch.Tensor | None:
        """One chunk's pixels (and forget them), or None when they were never stored."""
        pixels = self._memory.pop(chunk, None)
        if pixels is not None:
            self.used -= pixels.numel() * pixels.element_size()
            return pixels
        path = self._spilled.pop(chunk, None)
        if path is None:
            return None
        array = np.load(path, allow_pickle=False)
        path.unlink(missing_ok=True)
        return torch.from_numpy(array)

    def close(self) -> None:
        """Drop what is left, and the spill folder."""
        self._memory.clear()
        self.used = 0
        self._spilled.clear()
        if self._spill_dir is not None and self._own_dir:
            shutil.rmtree(self._spill_dir, ignore_errors=True)
        self._spill_dir = None


def stream_at(ctx: SweepContext, start: int, file_sizes: bool) -> ImageStream:
    """The run's image stream positioned at sample ``start`` (a new one if it is not there).

    Consecutive chunks share one stream, so the loader's workers start once per
    run of decoded chunks, not once per chunk.
    """
    stream = ctx.stream
    if stream is not None and stream.position == start and stream.file_sizes == file_sizes:
        return stream
    if stream is not None:
        stream.close()
    stream = ImageStream(
        ctx.samples,
        ctx.edge.preprocessing,
        block=min(ctx.batch_size, BLOCK),
        workers=ctx.workers,
        start=start,
        pin=ctx.edge.device.type == "cuda",
        file_sizes=file_sizes,
    )
    ctx.stream = stream
    return stream
