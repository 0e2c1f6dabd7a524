"""Algorithm 1 of the paper, one batch at a time: the same steps for every caller.

``collabvit evaluate``, the sweep, the edge client and visualize all decide
with these functions, so they decide identically:

- :func:`decide_on_edge` (steps 2-5): the edge ViT classifies and scores its
  patches, the gate (eqs. 11-13) decides which images to transmit, the
  selection rule (Sec. IV-B) picks their patches.
- :func:`classify_on_server` (steps 6-9): the server ViT classifies each
  transmitted image from its kept patches only (eq. 1 on the kept tokens).

Step 9's outcome for one image is :func:`collabvit.metrics.make_record`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from .attention import get_score
from .data import Sample
from .errors import ConfigError
from .gating import get_measure, transmit_mask, uncertainty
from .models import LoadedModel, forward_subset, forward_with_scores
from .selection import Selection, as_numpy, get_rule, select_patches

__all__ = [
    "EdgeDecision",
    "OperatingPoint",
    "check_method",
    "check_pair",
    "classify_on_server",
    "decide_on_edge",
]


def check_method(score: str, rule: str, measure: str) -> None:
    """Raise ConfigError unless score, rule and measure are entries of their tables."""
    get_score(score)
    get_rule(rule)
    get_measure(measure)


@dataclass(frozen=True)
class OperatingPoint:
    """One setting of the method: patch score, selection rule and its parameter, gate."""

    score: str = "mean"  # a name in attention.SCORES
    rule: str = "attention-sum"  # a name in selection.RULES
    threshold: float = 0.97  # the rule's parameter: k, delta or delta_sum (unused by "all")
    measure: str = "min-entropy"  # a name in gating.MEASURES
    eta: float = 0.8
    include_crossing: bool = False  # attention-sum: keep the patch that crosses delta_sum
    seed: int = 0  # random rule

    def __post_init__(self) -> None:
        check_method(self.score, self.rule, self.measure)
        get_rule(self.rule).check(self.threshold)
        if not math.isfinite(self.eta):
            raise ConfigError(f"eta must be a finite number, got {self.eta}")


def check_pair(edge: LoadedModel, server: LoadedModel) -> None:
    """Edge and server must share input size and patch grid (the wire carries edge pixels)."""
    if edge.preprocessing.input_size != server.preprocessing.input_size:
        raise ConfigError(
            f"edge {edge.name} takes {edge.preprocessing.input_size} images but server "
            f"{server.name} takes {server.preprocessing.input_size}: pick a pair with one input "
            "size"
        )
    if edge.patch_size != server.patch_size:
        raise ConfigError(
            f"edge patch {edge.patch_size} != server patch {server.patch_size}: the selected "
            "patches must be the server's patches"
        )
    if edge.num_classes != server.num_classes:
        raise ConfigError(
            f"edge has {edge.num_classes} classes but server has {server.num_classes}"
        )


@dataclass
class EdgeDecision:
    """The edge's half of Algorithm 1 for one batch: predict, gate, select."""

    edge_pred: npt.NDArray[np.int64]  # (B,)
    uncertainty: npt.NDArray[np.float64]  # (B,) the gate's statistic
    transmitted: npt.NDArray[np.bool_]  # (B,)
    rows: list[int]  # positions of the transmitted images in the batch
    selection: Selection | None  # keep masks of ``rows`` (None when nothing is sent)


@torch.no_grad()
def decide_on_edge(
    edge: LoadedModel, pixels: torch.Tensor, samples: Sequence[Sample], point: OperatingPoint
) -> EdgeDecision:
    """Algorithm 1, steps 2-5, for one batch of uint8 pixels (B, C, H, W) on the edge's device.

    Step 2: the edge's logits and patch scores (eq. 10); step 3: the gate's
    statistic (eqs. 12-13); step 4: eq. 11 decides; step 5: the rule selects.
    """
    logits, scores = forward_with_scores(edge, edge.normalise(pixels), (point.score,))
    values = uncertainty(logits, point.measure)
    sent = transmit_mask(values, point.measure, point.eta)
    rows = np.flatnonzero(sent).tolist()
    selection = None
    if rows:
        ids = np.asarray([s.index for s in samples], dtype=np.int64)
        selection = select_patches(
            scores[point.score][rows],
            point.rule,
            point.threshold,
            point.include_crossing,
            point.seed,
            ids[rows],
        )
    edge_pred = logits.argmax(-1).cpu().numpy().astype(np.int64)
    return EdgeDecision(edge_pred, values, sent, rows, selection)


@torch.no_grad()
def classify_on_server(server: LoadedModel, pixels: torch.Tensor, keep_mask: Any) -> torch.Tensor:
    """Algorithm 1, steps 6-9: server logits (B, classes) from the kept patches only.

    Args:
        server: the server model.
        pixels: (B, C, H, W) uint8 pixels as the edge cropped them.
        keep_mask: (B, N) bool (numpy array or tensor), at least one True per row.
    """
    mask = torch.as_tensor(as_numpy(keep_mask).astype(bool), device=server.device)
    return forward_subset(server, server.normalise(pixels.to(server.device)), mask)
