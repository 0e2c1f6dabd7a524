"""What one sweep run works with: models, data, grid, settings, cache, counters, progress."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..data import Sample
from ..models import LoadedModel
from .cache import Cache
from .grid import SweepGrid

if TYPE_CHECKING:
    from ..loader import ImageStream
    from .pixels import PixelStore

__all__ = ["ProgressFn", "SweepContext", "SweepStats"]

ProgressFn = Callable[[str, int, int], None]
"""``progress(phase, done_now, total)``: phase is ``"edge"`` or ``"server"``.

The server phase's ``total`` is an upper bound that shrinks to the exact count
as chunks are planned; a progress bar should take the latest value.
"""


@dataclass
class SweepStats:
    """What a sweep cost, in model calls (counted images, not time)."""

    edge_images: int = 0  # images through the edge model
    server_images: int = 0  # (image, selection) pairs through forward_subset
    server_encoder_images: int = 0  # full images through the server for its own scores
    distinct_selections: int = 0  # distinct (image, keep mask) pairs the grid needs
    cached_selections: int = 0  # of those, already in the cache
    encoded_selections: int = 0  # wire.encode calls (png/jpeg; raw sizes are arithmetic)
    decoded_images: int = 0  # images decoded (each at most once per run)
    edge_chunks_cached: int = 0
    chunks: int = 0
    wall_s: float = 0.0


@dataclass
class SweepContext:
    """The inputs of one run and its counters, shared by the edge and server passes."""

    edge: LoadedModel
    server: LoadedModel
    samples: list[Sample]
    grid: SweepGrid
    batch_size: int
    codec: str
    quality: int
    cache: Cache
    pixels: PixelStore
    workers: int = 0  # loader worker processes (0: decode in this process)
    baseline_bytes: bool = False  # whole-crop JPEG q90 / PNG file sizes
    progress: ProgressFn | None = None
    stats: SweepStats = field(default_factory=SweepStats)
    stream: ImageStream | None = None  # the image stream the passes share (see pixels.stream_at)

    @property
    def num_patches(self) -> int:
        return self.edge.num_patches

    def tick(self, phase: str, n: int, total: int) -> None:
        """Report ``n`` more items of ``phase`` done (nothing when n is 0)."""
        if self.progress is not None and n:
            self.progress(phase, n, total)
