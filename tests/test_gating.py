"""Tests of collabvit.gating on hand-made probability vectors (paper Sec. V, eqs. 11-13).

Logits are ``log p`` of dyadic probabilities, so every entropy below is an exact
binary number and the eta boundary can be tested for equality. The measures
take numpy arrays or torch tensors and return numpy float64 arrays.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
import torch

from collabvit.errors import ConfigError
from collabvit.gating import (
    MEASURES,
    eta_for_ratio,
    get_measure,
    margin,
    min_entropy,
    probabilities,
    shannon_entropy,
    transmit_mask,
    uncertainty,
)


def _logits(*rows: list[float]) -> npt.NDArray[np.float64]:
    """log p for rows of probabilities (zeros become -inf logits)."""
    with np.errstate(divide="ignore"):
        return np.log(np.array(rows, dtype=np.float64))


UNIFORM4 = [0.25, 0.25, 0.25, 0.25]  # min-entropy 2, Shannon 2, margin 0
HALF = [0.5, 0.25, 0.25, 0.0]  # min-entropy 1, Shannon 1.5, margin 0.25
DYADIC = [0.5, 0.25, 0.125, 0.125]  # min-entropy 1, Shannon 1.75, margin 0.25
CERTAIN = [1.0, 0.0, 0.0, 0.0]  # 0, 0, 1
SKEWED = [0.25, 0.25, 0.25, 0.0625, 0.0625, 0.0625, 0.0625]  # Shannon 2.5

GATES = [name for name, m in MEASURES.items() if m.gates]


# ----------------------------------------------------------------------------- the measures


def test_probabilities_are_the_softmax_in_float64() -> None:
    p = probabilities(_logits(UNIFORM4, HALF, DYADIC, CERTAIN))
    assert p.dtype == np.float64
    np.testing.assert_allclose(p, [UNIFORM4, HALF, DYADIC, CERTAIN], rtol=0, atol=1e-15)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=0, atol=1e-15)
    # shift-invariant, and large logits do not overflow
    np.testing.assert_allclose(probabilities(_logits(DYADIC) + 3.0), [DYADIC], rtol=0, atol=1e-15)
    assert probabilities(np.array([[1000.0, 0.0]])).tolist() == [[1.0, 0.0]]
    assert probabilities(np.array([[0.0, 0.0]], dtype=np.float32)).dtype == np.float64


def test_min_entropy_eq13_in_bits() -> None:
    values = min_entropy(_logits(UNIFORM4, HALF, DYADIC, CERTAIN))
    assert isinstance(values, np.ndarray)
    assert values.dtype == np.float64
    assert values.tolist() == [2.0, 1.0, 1.0, 0.0]


def test_shannon_entropy_eq12_in_bits() -> None:
    values = shannon_entropy(_logits(UNIFORM4, HALF, DYADIC, CERTAIN))
    assert values.dtype == np.float64
    assert values.tolist() == [2.0, 1.5, 1.75, 0.0]  # 0 log 0 = 0
    assert shannon_entropy(_logits(SKEWED)).tolist() == [2.5]


def test_entropies_from_unnormalised_logits() -> None:
    # softmax is shift-invariant: log p + 3 gives the same distribution
    logits = _logits(DYADIC) + 3.0
    assert min_entropy(logits).tolist() == [1.0]
    assert shannon_entropy(logits).item() == pytest.approx(1.75, abs=1e-12)
    # float32 logits are accepted and computed in float64
    values = min_entropy(_logits(UNIFORM4).astype(np.float32))
    assert values.dtype == np.float64
    assert values.item() == pytest.approx(2.0, abs=1e-6)


def test_min_entropy_is_at_most_shannon() -> None:
    logits = np.random.default_rng(0).standard_normal((32, 10)) * 3
    assert bool((min_entropy(logits) <= shannon_entropy(logits) + 1e-12).all())
    assert bool((shannon_entropy(logits) <= math.log2(10) + 1e-12).all())


def test_margin_is_top1_minus_top2() -> None:
    values = margin(_logits(UNIFORM4, HALF, DYADIC, CERTAIN))
    assert values.dtype == np.float64
    assert values.tolist() == [0.0, 0.25, 0.25, 1.0]
    # the two largest need not be adjacent or first
    assert margin(_logits([0.125, 0.75, 0.0, 0.125])).item() == pytest.approx(0.625, abs=1e-12)


# ----------------------------------------------------------------------------- eq. 11 boundaries


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
    mask = transmit_mask(values, measure, eta)
    assert mask.dtype == np.bool_
    assert mask.tolist() == expected
    # the same from torch logits and torch values
    from_torch = uncertainty(torch.from_numpy(_logits(*padded)), measure)
    assert transmit_mask(torch.from_numpy(from_torch), measure, eta).tolist() == expected


def test_measure_none_transmits_everything() -> None:
    logits = _logits(UNIFORM4, CERTAIN, DYADIC)
    values = uncertainty(logits, "none")
    assert values.dtype == np.float64
    assert values.tolist() == [0.0, 0.0, 0.0]
    for eta in (-1.0, 0.0, 1e9):
        assert transmit_mask(values, "none", eta).tolist() == [True, True, True]


# ----------------------------------------------------------------------------- numpy == torch


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("measure", sorted(MEASURES))
def test_numpy_and_torch_inputs_give_the_same_values(measure: str, dtype: str) -> None:
    logits = (np.random.default_rng(3).standard_normal((16, 10)) * 4).astype(dtype)
    logits[0] = 0.0  # a uniform row: maximal entropy, zero margin
    tensor = torch.from_numpy(logits.copy())
    a = uncertainty(logits, measure)
    b = uncertainty(tensor, measure)
    assert isinstance(b, np.ndarray)
    assert b.dtype == np.float64
    assert np.array_equal(a, b)
    statistic = MEASURES[measure].statistic
    assert np.array_equal(statistic(logits), statistic(tensor))
    eta = float(np.median(a))
    assert np.array_equal(
        transmit_mask(a, measure, eta), transmit_mask(torch.from_numpy(b), measure, eta)
    )
    assert eta_for_ratio(a, measure, 0.5) == eta_for_ratio(torch.from_numpy(b), measure, 0.5)
    assert np.array_equal(probabilities(logits), probabilities(tensor))


# ----------------------------------------------------------------------------- eta_for_ratio


@pytest.mark.parametrize("measure", ["min-entropy", "shannon"])
def test_eta_for_ratio_on_entropies(measure: str) -> None:
    values = np.array([2.0, 1.0, 1.5, 0.0])  # sent when value >= eta
    assert eta_for_ratio(values, measure, 0.25) == 2.0
    assert eta_for_ratio(values, measure, 0.5) == 1.5
    assert eta_for_ratio(values, measure, 0.75) == 1.0
    assert eta_for_ratio(values, measure, 1.0) == 0.0
    assert eta_for_ratio(values, measure, 0.0) == 3.0  # above the largest: nothing sent
    assert eta_for_ratio(values, measure, 0.3) == 2.0  # round(0.3 * 4) = 1 image
    assert transmit_mask(values, measure, 1.5).tolist() == [True, False, True, False]
    assert not transmit_mask(values, measure, 3.0).any()


def test_eta_for_ratio_on_margin() -> None:
    values = np.array([0.5, 0.0, 1.0, 0.25])  # sent when value <= eta
    assert eta_for_ratio(values, "margin", 0.25) == 0.0
    assert eta_for_ratio(values, "margin", 0.5) == 0.25
    assert eta_for_ratio(values, "margin", 0.75) == 0.5
    assert eta_for_ratio(values, "margin", 1.0) == 1.0
    assert eta_for_ratio(values, "margin", 0.0) == -1.0  # below every margin: nothing sent
    assert transmit_mask(values, "margin", 0.25).tolist() == [False, True, False, True]
    assert not transmit_mask(values, "margin", -1.0).any()


def test_eta_for_ratio_ties_at_eta_are_all_sent() -> None:
    # "about" ratio: equal values on the boundary go to the server together
    entropies = np.array([1.0, 1.0, 0.5, 0.0])
    eta = eta_for_ratio(entropies, "shannon", 0.25)
    assert eta == 1.0
    assert transmit_mask(entropies, "shannon", eta).tolist() == [True, True, False, False]
    margins = np.array([0.0, 0.5, 0.0, 1.0])
    eta = eta_for_ratio(margins, "margin", 0.25)
    assert eta == 0.0
    assert transmit_mask(margins, "margin", eta).tolist() == [True, False, True, False]


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.25, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("measure", GATES)
def test_eta_for_ratio_sends_that_share_of_distinct_values(measure: str, ratio: float) -> None:
    logits = np.random.default_rng(7).standard_normal((40, 10)) * 3
    values = uncertainty(logits, measure)
    assert len(np.unique(values)) == len(values)
    eta = eta_for_ratio(values, measure, ratio)
    assert int(transmit_mask(values, measure, eta).sum()) == round(ratio * len(values))


# ----------------------------------------------------------------------------- the table, errors


def test_uncertainty_dispatches_to_each_measure() -> None:
    logits = _logits(UNIFORM4, HALF, DYADIC)
    assert np.array_equal(uncertainty(logits, "min-entropy"), min_entropy(logits))
    assert np.array_equal(uncertainty(logits, "shannon"), shannon_entropy(logits))
    assert np.array_equal(uncertainty(logits, "margin"), margin(logits))
    assert set(MEASURES) == {"min-entropy", "shannon", "margin", "none"}


def test_measures_table_says_which_side_transmits() -> None:
    for name, m in MEASURES.items():
        assert m.name == name
        assert get_measure(name) is m
        assert m.label
    assert {n for n, m in MEASURES.items() if not m.high_transmits} == {"margin"}
    assert {n for n, m in MEASURES.items() if not m.gates} == {"none"}


@pytest.mark.parametrize("measure", ["entropy", "min_entropy", ""])
def test_unknown_measure_is_a_config_error(measure: str) -> None:
    with pytest.raises(ConfigError, match="min-entropy"):
        uncertainty(_logits(UNIFORM4), measure)
    with pytest.raises(ConfigError, match="min-entropy"):
        transmit_mask(np.zeros(1, dtype=np.float64), measure, 0.5)
    with pytest.raises(ConfigError, match="margin"):
        get_measure(measure)
    with pytest.raises(ConfigError, match="shannon"):
        eta_for_ratio(np.zeros(2), measure, 0.5)


def test_unhashable_measure_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="none"):
        get_measure(["shannon"])  # type: ignore[arg-type]
