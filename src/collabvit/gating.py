"""Entropy-aware image transmission (paper Sec. V), as pure tensor functions.

From the edge's softmax ``p`` over classes:

- min-entropy (eq. 13): ``-log2 max_y p(y)``;
- Shannon entropy (eq. 12): ``-sum_y p(y) log2 p(y)``;
- margin: ``p1 - p2`` (the two largest probabilities).

An image is transmitted when its entropy is ``>= eta`` (eq. 11) and kept on the
edge otherwise; with margin it is kept when ``p1 - p2 > eta`` and transmitted
otherwise; with ``none`` every image is transmitted. Computed in float64 so
the eta boundary is exact for hand-made cases.
"""

from __future__ import annotations

import torch

from .errors import ConfigError

__all__ = [
    "MEASURES",
    "margin",
    "min_entropy",
    "shannon_entropy",
    "transmit_mask",
    "uncertainty",
]

MEASURES = ("min-entropy", "shannon", "margin", "none")


def _probs(logits: torch.Tensor) -> torch.Tensor:
    return logits.double().softmax(dim=-1)


def min_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Eq. 13, in bits. (B, C) logits -> (B,)."""
    return -torch.log2(_probs(logits).amax(dim=-1))


def shannon_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Eq. 12, in bits (0 log 0 = 0). (B, C) logits -> (B,)."""
    p = _probs(logits)
    # NOTE: log2 directly, not ln / ln 2, so dyadic hand-made cases are exact at eta
    return -torch.where(p > 0, p * torch.log2(p), torch.zeros_like(p)).sum(dim=-1)


def margin(logits: torch.Tensor) -> torch.Tensor:
    """Top-1 minus top-2 probability. (B, C) logits -> (B,)."""
    top2 = _probs(logits).topk(2, dim=-1).values
    return top2[:, 0] - top2[:, 1]


def uncertainty(logits: torch.Tensor, measure: str) -> torch.Tensor:
    """The gate's statistic for ``measure`` (for ``none``: zeros). (B, C) -> (B,) float64."""
    if measure == "min-entropy":
        return min_entropy(logits)
    if measure == "shannon":
        return shannon_entropy(logits)
    if measure == "margin":
        return margin(logits)
    if measure == "none":
        return torch.zeros(logits.shape[0], dtype=torch.float64, device=logits.device)
    raise ConfigError(f"unknown measure {measure!r}: use one of {', '.join(MEASURES)}")


def transmit_mask(values: torch.Tensor, measure: str, eta: float) -> torch.Tensor:
    """Which images go to the server, from :func:`uncertainty` values. (B,) -> (B,) bool."""
    if measure in ("min-entropy", "shannon"):
        return values >= eta
    if measure == "margin":
        return ~(values > eta)
    if measure == "none":
        return torch.ones_like(values, dtype=torch.bool)
    raise ConfigError(f"unknown measure {measure!r}: use one of {', '.join(MEASURES)}")
