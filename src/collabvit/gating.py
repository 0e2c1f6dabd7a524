"""Entropy-aware image transmission (paper Sec. V), as pure array functions.

From the edge's softmax ``p`` over classes (its posterior ``p_theta(y|x)``):

- min-entropy (eq. 13): ``-log2 max_y p(y)``;
- Shannon entropy (eq. 12): ``-sum_y p(y) log2 p(y)``;
- margin: ``p1 - p2`` (the two largest probabilities).

An image is transmitted when its entropy is ``>= eta`` (eq. 11: ``g(x) >= eta``)
and kept on the edge otherwise; with margin it is kept when ``p1 - p2 > eta`` and transmitted
otherwise; with ``none`` every image is transmitted. Which side of eta
transmits is a property of the measure (:attr:`Measure.high_transmits`).
Computed in float64 whatever the logits' precision, so the eta boundary is
exact for hand-made cases. Inputs may be numpy arrays or torch tensors (read
on the host); results are numpy.

:data:`MEASURES` is the table of gate measures: the CLI, the sweep and the
figures take their choices from it. Adding a measure is one function and one
entry.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ._arrays import as_numpy
from .errors import ConfigError

__all__ = [
    "MEASURES",
    "Measure",
    "eta_for_ratio",
    "get_measure",
    "margin",
    "min_entropy",
    "probabilities",
    "shannon_entropy",
    "transmit_mask",
    "uncertainty",
]

Float64 = npt.NDArray[np.float64]


def probabilities(logits: Any) -> Float64:
    """The edge's posterior ``p_theta(y|x)``: softmax over classes in float64. (B, C) -> (B, C)."""
    z = as_numpy(logits).astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=-1, keepdims=True))


def min_entropy(logits: Any) -> Float64:
    """Eq. 13, in bits. (B, C) logits -> (B,)."""
    return np.asarray(-np.log2(probabilities(logits).max(axis=-1)))


def shannon_entropy(logits: Any) -> Float64:
    """Eq. 12, in bits (0 log 0 = 0). (B, C) logits -> (B,)."""
    p = probabilities(logits)
    # NOTE: log2 directly, not ln / ln 2, so dyadic hand-made cases are exact at eta
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log2(p), 0.0)
    return np.asarray(-terms.sum(axis=-1))


def margin(logits: Any) -> Float64:
    """Top-1 minus top-2 probability. (B, C) logits -> (B,)."""
    p = np.sort(probabilities(logits), axis=-1)
    return np.asarray(p[:, -1] - p[:, -2])


def _no_statistic(logits: Any) -> Float64:
    return np.zeros(as_numpy(logits).shape[0], dtype=np.float64)


@dataclass(frozen=True)
class Measure:
    """One gate measure.

    Attributes:
        name: the CLI and file name (``--measure NAME``).
        statistic: ``statistic(logits (B, C)) -> (B,)`` float64.
        high_transmits: an image is sent when its statistic is ``>= eta``
            (entropies); False: when it is ``<= eta`` (margin: sent unless the
            edge is clearly ahead).
        gates: False for ``none``: every image is sent and eta is unused.
        label: how figures name it.
        eta_low, eta_high: the range of the statistic, so of a sensible eta
            (None: unbounded); :meth:`check_eta` holds a chosen eta to it.
    """

    name: str
    statistic: Callable[[Any], Float64]
    high_transmits: bool = True
    gates: bool = True
    label: str = ""
    eta_low: float | None = None
    eta_high: float | None = None

    def check_eta(self, eta: float) -> float:
        """``eta`` as a float, or ConfigError when it is outside the statistic's range."""
        if isinstance(eta, bool) or not math.isfinite(float(eta)):
            raise ConfigError(f"{self.name}: eta must be a finite number, got {eta}")
        if self.eta_low is not None and eta < self.eta_low:
            raise ConfigError(f"{self.name}: eta must be >= {self.eta_low:g}, got {eta:g}")
        if self.eta_high is not None and eta > self.eta_high:
            raise ConfigError(f"{self.name}: eta must be <= {self.eta_high:g}, got {eta:g}")
        return float(eta)


MEASURES: dict[str, Measure] = {
    "min-entropy": Measure("min-entropy", min_entropy, label="min-entropy (eq. 13)", eta_low=0.0),
    "shannon": Measure("shannon", shannon_entropy, label="Shannon entropy (eq. 12)", eta_low=0.0),
    "margin": Measure(
        "margin",
        margin,
        high_transmits=False,
        label="probability margin",
        eta_low=0.0,
        eta_high=1.0,
    ),
    "none": Measure("none", _no_statistic, gates=False, label="no gate"),
}
"""The gate measures, by name."""


def get_measure(name: str) -> Measure:
    """The :data:`MEASURES` entry called ``name``; ConfigError listing the names otherwise."""
    try:
        return MEASURES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown measure {name!r}: use one of {', '.join(MEASURES)}") from None


def uncertainty(logits: Any, measure: str) -> Float64:
    """The gate's statistic for ``measure`` (for ``none``: zeros). (B, C) -> (B,) float64."""
    return np.asarray(get_measure(measure).statistic(logits), dtype=np.float64)


def transmit_mask(values: Any, measure: str, eta: float) -> npt.NDArray[np.bool_]:
    """Eq. 11: which images go to the server (``g(x) >= eta``), from :func:`uncertainty` values.

    (B,) -> (B,) bool.
    """
    m = get_measure(measure)
    v = as_numpy(values)
    if not m.gates:
        return np.ones(v.shape, dtype=bool)
    return np.asarray(v >= eta) if m.high_transmits else np.asarray(~(v > eta))


def eta_for_ratio(values: Any, measure: str, ratio: float) -> float:
    """The eta at which about ``ratio`` of the images are transmitted under ``measure``."""
    v = as_numpy(values)
    n = len(v)
    m = round(ratio * n)
    if not get_measure(measure).high_transmits:  # transmitted when value <= eta
        asc = np.sort(v)
        return -1.0 if m == 0 else float(asc[m - 1])
    desc = np.sort(v)[::-1]  # transmitted when value >= eta
    return float(desc[0]) + 1.0 if m == 0 else float(desc[m - 1])
