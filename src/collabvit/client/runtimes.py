"""The edge model behind :class:`~collabvit.client.EdgeClient`: torch or ONNX Runtime.

Both runtimes turn samples into batches of decided images (Algorithm 1,
steps 2-5) with the same pure gate and selection rules, so the client above
them is one piece of code:

- :class:`TorchEdge`: a :class:`collabvit.models.LoadedModel`, batches from
  :func:`collabvit.data.iter_batches`, decided by
  :func:`collabvit.pipeline.decide_on_edge` (the research install; torch is
  imported when the first batch is decided, not when this module loads).
- :class:`OnnxRuntimeEdge`: an exported model (:class:`collabvit.onnx_edge.OnnxEdge`),
  Pillow preprocessing and :func:`collabvit.onnx_edge.decide` (the device: no torch).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from ..onnx_edge import OnnxEdge, PointLike, decide, pixels_from_array, pixels_from_file

if TYPE_CHECKING:
    from ..data import Sample

__all__ = ["DecidedBatch", "EdgeRuntime", "OnnxRuntimeEdge", "TorchEdge", "edge_runtime"]


@dataclass
class DecidedBatch:
    """One batch of images decided on the edge."""

    samples: list[Sample]
    pixels: npt.NDArray[np.uint8]  # (B, C, H, W) what the wire carries
    edge_pred: npt.NDArray[np.int64]  # (B,)
    uncertainty: npt.NDArray[np.float64]  # (B,) the gate's statistic
    masks: dict[int, npt.NDArray[np.bool_]]  # position in the batch -> (N,) keep mask, if sent


class EdgeRuntime(Protocol):
    """What the client needs of an edge model."""

    @property
    def channels(self) -> int: ...

    def batches(
        self, samples: Sequence[Sample], batch_size: int, skipped: list[Sample] | None
    ) -> Iterator[DecidedBatch]:
        """Decided batches in sample order; unreadable samples are appended to ``skipped``."""
        ...


def _masks(rows: list[int], selection: Any) -> dict[int, npt.NDArray[np.bool_]]:
    if selection is None:
        return {}
    return dict(zip(rows, selection.keep_mask, strict=True))


class TorchEdge:
    """A torch edge model at an operating point (``pipeline.OperatingPoint``)."""

    def __init__(self, edge: Any, point: Any) -> None:
        self.edge = edge
        self.point = point

    @property
    def channels(self) -> int:
        return int(self.edge.preprocessing.channels)

    def batches(
        self, samples: Sequence[Sample], batch_size: int, skipped: list[Sample] | None
    ) -> Iterator[DecidedBatch]:
        from ..data import iter_batches
        from ..pipeline import decide_on_edge

        edge = self.edge
        for batch in iter_batches(samples, edge.preprocessing, batch_size, skipped):
            pixels = batch.pixels.to(edge.device)  # (B, C, H, W) uint8
            decided = decide_on_edge(edge, pixels, batch.samples, self.point)
            yield DecidedBatch(
                batch.samples,
                batch.pixels.numpy(),
                decided.edge_pred,
                decided.uncertainty,
                _masks(decided.rows, decided.selection),
            )


class OnnxRuntimeEdge:
    """An exported edge model at an operating point (``EdgePoint`` or ``OperatingPoint``)."""

    def __init__(self, edge: OnnxEdge, point: PointLike) -> None:
        self.edge = edge
        self.point = point

    @property
    def channels(self) -> int:
        return self.edge.metadata.channels

    def _pixels(self, sample: Sample) -> npt.NDArray[np.uint8] | None:
        if sample.array is not None:
            return pixels_from_array(sample.array, self.edge.metadata)
        assert sample.path is not None
        return pixels_from_file(sample.path, self.edge.metadata)

    def _decide(self, pending: list[tuple[Sample, npt.NDArray[np.uint8]]]) -> DecidedBatch:
        batch = [s for s, _ in pending]
        pixels = np.stack([p for _, p in pending])  # (B, C, H, W)
        decided = decide(self.edge, pixels, [s.index for s in batch], self.point)
        masks = _masks(decided.rows, decided.selection)
        return DecidedBatch(batch, pixels, decided.edge_pred, decided.uncertainty, masks)

    def batches(
        self, samples: Sequence[Sample], batch_size: int, skipped: list[Sample] | None
    ) -> Iterator[DecidedBatch]:
        pending: list[tuple[Sample, npt.NDArray[np.uint8]]] = []
        for sample in samples:
            pixels = self._pixels(sample)
            if pixels is None:
                if skipped is not None:
                    skipped.append(sample)
                continue
            pending.append((sample, pixels))
            if len(pending) == batch_size:
                yield self._decide(pending)
                pending = []
        if pending:
            yield self._decide(pending)


def edge_runtime(edge: Any, point: Any) -> EdgeRuntime:
    """The runtime of an edge model: ONNX for an :class:`OnnxEdge`, torch for a LoadedModel."""
    if isinstance(edge, OnnxEdge):
        return OnnxRuntimeEdge(edge, point)
    return TorchEdge(edge, point)
