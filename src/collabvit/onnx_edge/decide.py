"""Algorithm 1, steps 2-5, on the ONNX edge: the twin of :func:`collabvit.pipeline.decide_on_edge`.

The graph gives the logits and the eq. 10 scores; the gate (eqs. 11-13,
:mod:`collabvit.gating`) and the selection rule (Sec. IV-B,
:mod:`collabvit.selection`) are the same pure numpy functions the torch edge
calls, with the same arguments (``image_ids`` seed the ``random`` rule), so
both edges decide alike up to the float rounding of the two runtimes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from ..errors import ConfigError
from ..gating import get_measure, transmit_mask, uncertainty
from ..selection import Selection, get_rule, select_patches
from .model import OnnxEdge

__all__ = ["EdgeDecision", "EdgePoint", "PointLike", "decide"]


class PointLike(Protocol):
    """An operating point: :class:`EdgePoint` or :class:`collabvit.pipeline.OperatingPoint`."""

    @property
    def score(self) -> str: ...
    @property
    def rule(self) -> str: ...
    @property
    def threshold(self) -> float: ...
    @property
    def measure(self) -> str: ...
    @property
    def eta(self) -> float: ...
    @property
    def include_crossing(self) -> bool: ...
    @property
    def seed(self) -> int: ...


@dataclass(frozen=True)
class EdgePoint:
    """:class:`collabvit.pipeline.OperatingPoint` without torch: the same fields and checks."""

    score: str = "mean"  # the exported graph computes eq. 10 only
    rule: str = "attention-sum"  # a name in selection.RULES
    threshold: float = 0.97  # the rule's parameter: k, delta or delta_sum
    measure: str = "min-entropy"  # a name in gating.MEASURES
    eta: float = 0.8
    include_crossing: bool = False  # attention-sum: keep the patch that crosses delta_sum
    seed: int = 0  # random rule

    def __post_init__(self) -> None:
        if self.score != "mean":
            raise ConfigError(
                f"score {self.score!r}: the ONNX edge computes the mean attention score (eq. 10) "
                "only; use --score mean"
            )
        get_rule(self.rule).check(self.threshold)
        get_measure(self.measure)
        if not math.isfinite(self.eta):
            raise ConfigError(f"eta must be a finite number, got {self.eta}")


@dataclass
class EdgeDecision:
    """The edge's half of Algorithm 1 for one batch (the fields of the torch pipeline's)."""

    edge_pred: npt.NDArray[np.int64]  # (B,)
    uncertainty: npt.NDArray[np.float64]  # (B,) the gate's statistic
    transmitted: npt.NDArray[np.bool_]  # (B,)
    rows: list[int]  # positions of the transmitted images in the batch
    selection: Selection | None  # keep masks of ``rows`` (None when nothing is sent)


def decide(
    edge: OnnxEdge,
    pixels: npt.NDArray[np.uint8],
    image_ids: Sequence[int] | npt.NDArray[np.int64],
    point: PointLike,
) -> EdgeDecision:
    """Algorithm 1, steps 2-5, for one batch of uint8 pixels (B, C, H, W).

    Step 2: the graph's logits and eq. 10 scores; step 3: the gate's statistic
    (eqs. 12-13); step 4: eq. 11 decides; step 5: the rule selects.
    ``image_ids`` (B,) are the images' dataset indices (the torch edge's
    ``sample.index``).
    """
    if point.score != edge.metadata.score:
        raise ConfigError(f"score {point.score!r}: {edge.name} was exported with 'mean' only")
    logits, scores = edge.forward(pixels)
    values = uncertainty(logits, point.measure)
    sent = transmit_mask(values, point.measure, point.eta)
    rows = np.flatnonzero(sent).tolist()
    selection = None
    if rows:
        ids = np.asarray(image_ids, dtype=np.int64)
        selection = select_patches(
            scores[rows], point.rule, point.threshold, point.include_crossing, point.seed, ids[rows]
        )
    edge_pred = logits.argmax(-1).astype(np.int64)
    return EdgeDecision(edge_pred, values, sent, rows, selection)
