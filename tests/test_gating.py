"""Tests of collabvit.gating on hand-made probability vectors (paper Sec. V, eqs. 11-13).

Logits are ``log p`` of dyadic probabilities, so every entropy below is an exact
binary number and the eta boundary can be tested for equality.
"""

from __future__ import annotations

import math

import pytest
import torch

from collabvit.errors import ConfigError
from collabvit.gating import (
    MEASURES,
    margin,
    min_entropy,
    shannon_entropy,
    transmit_mask,
    uncertainty,
)


def _logits(*rows: list[float]) -> torch.Tensor:
    """log p for rows of probabilities (zeros become -inf logits)."""
    return torch.tensor(rows, dtype=torch.float64).log()


UNIFORM4 = [0.25, 0.25, 0.25, 0.25]  # min-entropy 2, Shannon 2, margin 0
HALF = [0.5, 0.25, 0.25, 0.0]  # min-entropy 1, Shannon 1.5, margin 0.25
DYADIC = [0.5, 0.25, 0.125, 0.125]  # min-entropy 1, Shannon 1.75, margin 0.25
CERTAIN = [1.0, 0.0, 0.0, 0.0]  # 0, 0, 1
SKEWED = [0.25, 0.25, 0.25, 0.0625, 0.0625, 0.0625, 0.0625]  # Shannon 2.5


def test_min_entropy_eq13_in_bits() -> None:
    values = min_entropy(_logits(UNIFORM4, HALF, DYADIC, CERTAIN))
    assert values.dtype == torch.float64
    assert values.tolist() == [2.0, 1.0, 1.0, 0.0]


def test_shannon_entropy_eq12_in_bits() -> None:
    values = shannon_entropy(_logits(UNIFORM4, HALF, DYADIC, CERTAIN))
    assert values.tolist() == [2.0, 1.5, 1.75, 0.0]  # 0 log 0 = 0
    assert shannon_entropy(_logits(SKEWED)).tolist() == [2.5]


def test_entropies_from_unnormalised_logits() -> None:
    # softmax is shift-invariant: log p + 3 gives the same distribution
    logits = _logits(DYADIC) + 3.0
    assert min_entropy(logits).tolist() == [1.0]
    assert shannon_entropy(logits).item() == pytest.approx(1.75, abs=1e-12)
    # float32 logits are accepted and computed in float64
    assert min_entropy(_logits(UNIFORM4).float()).item() == pytest.approx(2.0, abs=1e-6)


def test_min_entropy_is_at_most_shannon() -> None:
    torch.manual_seed(0)
    logits = torch.randn(32, 10) * 3
    assert bool((min_entropy(logits) <= shannon_entropy(logits) + 1e-12).all())
    assert bool((shannon_entropy(logits) <= math.log2(10) + 1e-12).all())


def test_margin_is_top1_minus_top2() -> None:
    values = margin(_logits(UNIFORM4, HALF, DYADIC, CERTAIN))
    assert values.tolist() == [0.0, 0.25, 0.25, 1.0]
    # the two largest need not be adjacent or first
    assert margin(_logits([0.125, 0.75, 0.0, 0.125])).item() == pytest.approx(0.625, abs=1e-12)


@pytest.mark.parametrize(
    ("measure", "rows", "eta", "expected"),
    [
        # entropy >= eta is transmitted: equality goes to the server
        ("min-entropy", [UNIFORM4, HALF, CERTAIN], 1.0, [True, True, False]),
        ("min-entropy", [UNIFORM4, HALF, CERTAIN], 2.0, [True, False, False]),
        ("min-entropy", [UNIFORM4, HALF, CERTAIN], 0.0, [True, True, True]),
        ("shannon", [UNIFORM4, HALF, DYADIC], 1.75, [True, False, True]),
        ("shannon", [UNIFORM4, HALF, DYADIC], 1.5, [True, True, True]),
        ("shannon", [SKEWED, UNIFORM4], 2.5, [True, False]),
        # margin: kept only when p1 - p2 > eta, so equality is transmitted
        ("margin", [UNIFORM4, HALF, CERTAIN], 0.25, [True, True, False]),
        ("margin", [UNIFORM4, HALF, CERTAIN], 0.0, [True, False, False]),
        ("margin", [UNIFORM4, HALF, CERTAIN], 1.0, [True, True, True]),
    ],
)
def test_transmit_boundary(
    measure: str, rows: list[list[float]], eta: float, expected: list[bool]
) -> None:
    width = max(len(r) for r in rows)
    padded = [r + [0.0] * (width - len(r)) for r in rows]
    values = uncertainty(_logits(*padded), measure)
    assert transmit_mask(values, measure, eta).tolist() == expected


def test_measure_none_transmits_everything() -> None:
    logits = _logits(UNIFORM4, CERTAIN, DYADIC)
    values = uncertainty(logits, "none")
    assert values.tolist() == [0.0, 0.0, 0.0]
    for eta in (-1.0, 0.0, 1e9):
        assert transmit_mask(values, "none", eta).tolist() == [True, True, True]


def test_uncertainty_dispatches_to_each_measure() -> None:
    logits = _logits(UNIFORM4, HALF, DYADIC)
    assert torch.equal(uncertainty(logits, "min-entropy"), min_entropy(logits))
    assert torch.equal(uncertainty(logits, "shannon"), shannon_entropy(logits))
    assert torch.equal(uncertainty(logits, "margin"), margin(logits))
    assert set(MEASURES) == {"min-entropy", "shannon", "margin", "none"}


@pytest.mark.parametrize("measure", ["entropy", "min_entropy", ""])
def test_unknown_measure_is_a_config_error(measure: str) -> None:
    with pytest.raises(ConfigError, match="min-entropy"):
        uncertainty(_logits(UNIFORM4), measure)
    with pytest.raises(ConfigError, match="min-entropy"):
        transmit_mask(torch.zeros(1, dtype=torch.float64), measure, 0.5)
