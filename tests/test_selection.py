"""Tests of collabvit.selection on hand-computed cases (paper Sec. IV-B, official semantics).

The rules take numpy arrays or torch tensors and return numpy arrays; the
hand-made cases are numpy, and one parametrized test checks that a torch
tensor of the same values gives the same masks.
"""

from __future__ import annotations

import math
import pickle
import subprocess
import sys

import numpy as np
import numpy.typing as npt
import pytest
import torch

from collabvit.errors import ConfigError
from collabvit.selection import (
    RULES,
    Selection,
    SelectOptions,
    all_patches,
    as_numpy,
    attention_sum,
    attention_threshold,
    get_rule,
    random_selection,
    rank_patches,
    select_patches,
    top_k,
)

BoolArray = npt.NDArray[np.bool_]


def _mask(*rows: list[bool]) -> BoolArray:
    return np.array(rows, dtype=bool)


def _kept(sel: Selection) -> list[list[int]]:
    """Kept patch indices per row, ascending."""
    return [np.flatnonzero(row).tolist() for row in sel.keep_mask]


# Scores that sum to 1 and are exact in binary: sorted order is 1, 3, 0, 2.
DYADIC = np.array([[0.125, 0.5, 0.0625, 0.25, 0.0625]])

# A parameter value that makes each rule keep some but not all patches of DYADIC.
PARAMETERS = {"top-k": 2, "threshold": 0.2, "attention-sum": 0.8, "random": 3, "all": 0}
# The same for 49 patches of Dirichlet scores (mean score 1/49).
PARAMETERS_49 = {"top-k": 10, "threshold": 0.03, "attention-sum": 0.6, "random": 10, "all": 0}


def _dirichlet(rows: int, n: int, seed: int) -> npt.NDArray[np.float64]:
    """Renormalised scores with ties: random rows, then one row of equal scores."""
    rng = np.random.default_rng(seed)
    s = rng.dirichlet(np.ones(n), size=rows)
    s[-1] = 1.0 / n
    return s


# ----------------------------------------------------------------------------- result types


def test_results_are_numpy() -> None:
    sel = select_patches(DYADIC, "top-k", 2)
    assert isinstance(sel.keep_mask, np.ndarray)
    assert sel.keep_mask.dtype == np.bool_
    assert isinstance(sel.raised_to_one, np.ndarray)
    assert sel.raised_to_one.dtype == np.bool_
    assert sel.raised_to_one.shape == (1,)
    assert sel.num_patches.dtype == np.int64


def test_as_numpy_reads_arrays_tensors_and_lists() -> None:
    t = torch.tensor([[1.0, 2.0]], requires_grad=True)
    assert isinstance(as_numpy(t), np.ndarray)
    assert as_numpy(t).tolist() == [[1.0, 2.0]]
    assert as_numpy([1, 2]).tolist() == [1, 2]
    a = np.zeros((2, 3))
    assert as_numpy(a) is a


# ----------------------------------------------------------------------------- ranking, top-k


def test_rank_patches_descending_ties_by_lower_index() -> None:
    scores = np.array([[0.1, 0.3, 0.3, 0.2, 0.1]])
    assert rank_patches(scores).tolist() == [[1, 2, 3, 0, 4]]


def test_top_k_keeps_the_k_highest() -> None:
    sel = select_patches(DYADIC, "top-k", 2)
    assert _kept(sel) == [[1, 3]]
    assert sel.num_patches.tolist() == [2]
    assert sel.raised_to_one.tolist() == [False]


def test_top_k_threshold_is_truncated_to_int() -> None:
    assert _kept(select_patches(DYADIC, "top-k", 2.9)) == [[1, 3]]


def test_top_k_ties_broken_by_patch_index() -> None:
    scores = np.array([[0.2, 0.2, 0.2, 0.2, 0.2], [0.1, 0.3, 0.1, 0.3, 0.2]])
    assert np.array_equal(
        top_k(scores, 2),
        _mask([True, True, False, False, False], [False, True, False, True, False]),
    )
    # k=3 on the second row: 1 and 3 (0.3), then 4 (0.2)
    assert _kept(select_patches(scores, "top-k", 3))[1] == [1, 3, 4]
    # a tie at the cut: 0 and 2 both 0.1, the lower index wins
    assert _kept(select_patches(scores, "top-k", 4))[1] == [0, 1, 3, 4]


def test_top_k_zero_is_raised_to_the_top_patch_and_counted() -> None:
    scores = np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]])
    assert not top_k(scores, 0).any()
    sel = select_patches(scores, "top-k", 0)
    assert _kept(sel) == [[1], [0]]
    assert sel.raised_to_one.tolist() == [True, True]
    assert sel.num_patches.tolist() == [1, 1]


def test_top_k_above_n_keeps_everything() -> None:
    sel = select_patches(DYADIC, "top-k", 99)
    assert sel.keep_mask.all()
    assert sel.num_patches.tolist() == [5]
    assert not sel.raised_to_one.any()


# ----------------------------------------------------------------------------- attention threshold


def test_threshold_is_inclusive_at_delta() -> None:
    # 0.25 == delta is kept, 0.125 < delta is not
    sel = select_patches(DYADIC, "threshold", 0.25)
    assert _kept(sel) == [[1, 3]]
    assert attention_threshold(DYADIC, 0.125).tolist() == [[True, True, False, True, False]]


def test_threshold_above_every_score_raises_to_the_top_patch() -> None:
    assert not attention_threshold(DYADIC, 0.75).any()
    sel = select_patches(DYADIC, "threshold", 0.75)
    assert _kept(sel) == [[1]]
    assert sel.raised_to_one.tolist() == [True]


def test_threshold_empty_row_raised_only_where_empty() -> None:
    scores = np.array([[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    sel = select_patches(scores, "threshold", 0.375)
    assert _kept(sel) == [[0, 1], [0]]  # second row: all tied, patch 0 ranks first
    assert sel.raised_to_one.tolist() == [False, True]


# ----------------------------------------------------------------------------- attention-sum


def test_attention_sum_excludes_the_crossing_patch() -> None:
    # ranked 0.5, 0.25, 0.125, 0.0625, 0.0625 -> cumulative 0.5, 0.75, 0.875, 0.9375, 1
    sel = select_patches(DYADIC, "attention-sum", 0.8)
    assert _kept(sel) == [[1, 3]]  # 0.875 crosses 0.8: patch 0 excluded
    kept_mass = float(DYADIC[sel.keep_mask].sum())
    assert kept_mass == 0.75
    assert kept_mass <= 0.8


def test_attention_sum_includes_the_crossing_patch_when_asked() -> None:
    sel = select_patches(DYADIC, "attention-sum", 0.8, include_crossing=True)
    assert _kept(sel) == [[0, 1, 3]]
    assert float(DYADIC[sel.keep_mask].sum()) == 0.875
    # the same through the rule function and its options
    opts = SelectOptions(include_crossing=True)
    assert np.array_equal(attention_sum(DYADIC, 0.8, opts), sel.keep_mask)


def test_attention_sum_exact_boundary_is_kept() -> None:
    # cumulative sum after two patches is exactly 0.75 == delta_sum: both kept, nothing more
    assert _kept(select_patches(DYADIC, "attention-sum", 0.75)) == [[1, 3]]
    # with include_crossing nothing crosses at 0.75: the same two patches
    assert _kept(select_patches(DYADIC, "attention-sum", 0.75, include_crossing=True)) == [[1, 3]]
    assert attention_sum(DYADIC, 0.875).tolist() == [[True, True, False, True, False]]
    assert attention_sum(DYADIC, 1.0).all()


def test_attention_sum_top_patch_alone_above_delta_is_raised_and_counted() -> None:
    assert not attention_sum(DYADIC, 0.4).any()
    sel = select_patches(DYADIC, "attention-sum", 0.4)
    assert _kept(sel) == [[1]]
    assert sel.raised_to_one.tolist() == [True]
    # including the crossing patch, the top patch is kept by the rule itself
    sel = select_patches(DYADIC, "attention-sum", 0.4, include_crossing=True)
    assert _kept(sel) == [[1]]
    assert sel.raised_to_one.tolist() == [False]


def test_attention_sum_ties_broken_by_patch_index() -> None:
    # four equal scores: delta_sum 0.5 keeps exactly two, the lowest indices
    scores = np.full((1, 4), 0.25)
    assert _kept(select_patches(scores, "attention-sum", 0.5)) == [[0, 1]]
    # tie between patches 2 and 4 (0.0625 each) at the cut
    assert _kept(select_patches(DYADIC, "attention-sum", 0.9375)) == [[0, 1, 2, 3]]


def test_attention_sum_rows_are_independent() -> None:
    scores = np.concatenate([DYADIC, np.array([[0.0625, 0.0625, 0.125, 0.25, 0.5]])])
    sel = select_patches(scores, "attention-sum", 0.75)
    assert _kept(sel) == [[1, 3], [3, 4]]
    assert sel.raised_to_one.tolist() == [False, False]


def test_attention_sum_float32_scores_are_summed_in_float64() -> None:
    scores = DYADIC.astype(np.float32)
    assert _kept(select_patches(scores, "attention-sum", 0.75)) == [[1, 3]]
    assert _kept(select_patches(scores, "attention-sum", 0.8, include_crossing=True)) == [[0, 1, 3]]


# ----------------------------------------------------------------------------- random


def test_random_keeps_exactly_k_patches() -> None:
    scores = np.full((3, 196), 1 / 196)
    sel = select_patches(scores, "random", 37, seed=5)
    assert sel.num_patches.tolist() == [37, 37, 37]
    assert not sel.raised_to_one.any()


def test_random_is_reproducible() -> None:
    scores = np.full((4, 64), 1 / 64)
    a = select_patches(scores, "random", 10, seed=3).keep_mask
    b = select_patches(scores, "random", 10, seed=3).keep_mask
    assert np.array_equal(a, b)


def test_random_draw_is_numpy_default_rng_seeded_by_seed_and_image_id() -> None:
    # the documented draw, so every runtime (torch or not) picks the same patches
    n, k, seed, ids = 50, 7, 9, [3, 0, 42]
    mask = select_patches(np.full((3, n), 1 / n), "random", k, seed=seed, image_ids=ids).keep_mask
    for row, image_id in enumerate(ids):
        expected = np.zeros(n, dtype=bool)
        expected[np.random.default_rng((seed, image_id)).permutation(n)[:k]] = True
        assert np.array_equal(mask[row], expected)


def test_random_does_not_depend_on_the_batch() -> None:
    scores = np.full((5, 64), 1 / 64)
    ids = np.array([7, 11, 13, 17, 19])
    batch = select_patches(scores, "random", 12, seed=1, image_ids=ids).keep_mask
    for row, image_id in enumerate(ids.tolist()):
        alone = select_patches(
            scores[row : row + 1], "random", 12, seed=1, image_ids=np.array([image_id])
        ).keep_mask
        assert np.array_equal(alone[0], batch[row])
    # the same image in another position of another batch, ids given as a tensor
    other = select_patches(
        scores[:2], "random", 12, seed=1, image_ids=torch.tensor([19, 7])
    ).keep_mask
    assert np.array_equal(other[0], batch[4])
    assert np.array_equal(other[1], batch[0])


def test_random_differs_across_seeds_and_images() -> None:
    scores = np.full((2, 196), 1 / 196)
    a = select_patches(scores, "random", 20, seed=0).keep_mask
    b = select_patches(scores, "random", 20, seed=1).keep_mask
    assert not np.array_equal(a[0], b[0])
    assert not np.array_equal(a[0], a[1])  # images 0 and 1 draw differently


def test_random_ignores_scores() -> None:
    flat = np.full((1, 64), 1 / 64)
    peaked = np.zeros((1, 64))
    peaked[0, 5] = 1.0
    a = select_patches(flat, "random", 8, seed=2).keep_mask
    b = select_patches(peaked, "random", 8, seed=2).keep_mask
    assert np.array_equal(a, b)


def test_random_zero_and_above_n() -> None:
    scores = np.array([[0.1, 0.2, 0.7]])
    sel = select_patches(scores, "random", 0, seed=0)
    assert _kept(sel) == [[2]]
    assert sel.raised_to_one.tolist() == [True]
    assert select_patches(scores, "random", 10, seed=0).keep_mask.all()


def test_random_selection_default_ids_are_the_batch_positions() -> None:
    scores = np.full((4, 16), 1 / 16)
    mask = random_selection(scores, 5, SelectOptions(seed=4))
    assert mask.shape == (4, 16)
    assert mask.sum(axis=1).tolist() == [5, 5, 5, 5]
    explicit = random_selection(scores, 5, SelectOptions(seed=4, image_ids=np.arange(4)))
    assert np.array_equal(mask, explicit)
    assert np.array_equal(random_selection(scores, 5), random_selection(scores, 5, SelectOptions()))


def test_random_leaves_the_global_rngs_alone() -> None:
    np_state = pickle.dumps(np.random.get_state())
    torch_state = torch.random.get_rng_state()
    select_patches(np.full((3, 32), 1 / 32), "random", 4, seed=8)
    assert pickle.dumps(np.random.get_state()) == np_state
    assert torch.equal(torch_state, torch.random.get_rng_state())


# ----------------------------------------------------------------------------- all


def test_all_keeps_every_patch_whatever_the_parameter() -> None:
    scores = np.array([[1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    for parameter in (0.0, 0.5, 7.0, -1.0, math.nan):
        sel = select_patches(scores, "all", parameter)
        assert sel.keep_mask.all()
        assert sel.keep_mask.shape == scores.shape
        assert sel.num_patches.tolist() == [4, 4]
        assert sel.raised_to_one.tolist() == [False, False]
    assert all_patches(scores).all()
    assert get_rule("all").parameter == ""


# ----------------------------------------------------------------------------- numpy == torch


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rule", sorted(RULES))
def test_numpy_and_torch_inputs_select_the_same_patches(rule: str, dtype: str) -> None:
    scores = _dirichlet(6, 49, seed=11).astype(dtype)
    # row 0 is one-hot (attention-sum keeps nothing), the last row uniform (the
    # threshold keeps nothing): both raised to one patch in both runtimes
    scores[0] = 0.0
    scores[0, 3] = 1.0
    tensor = torch.from_numpy(scores.copy())
    ids = np.array([5, 9, 2, 40, 1, 0])
    value = PARAMETERS_49[rule]
    for include_crossing in (False, True):
        a = select_patches(scores, rule, value, include_crossing, 3, ids)
        b = select_patches(tensor, rule, value, include_crossing, 3, torch.tensor(ids))
        assert isinstance(b.keep_mask, np.ndarray)
        assert np.array_equal(a.keep_mask, b.keep_mask)
        assert np.array_equal(a.raised_to_one, b.raised_to_one)
    opts = SelectOptions(seed=3, image_ids=ids)
    entry = RULES[rule]
    assert np.array_equal(entry.select(scores, value, opts), entry.select(tensor, value, opts))
    assert np.array_equal(rank_patches(scores), rank_patches(tensor))


# ----------------------------------------------------------------------------- parameters, errors


def test_unknown_rule_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="top-k"):
        select_patches(DYADIC, "top_k", 2)
    with pytest.raises(ConfigError, match="attention-sum"):
        get_rule("attention_sum")
    with pytest.raises(ConfigError, match="all"):
        get_rule(["top-k"])  # type: ignore[arg-type]


@pytest.mark.parametrize("rule", ["top-k", "random"])
def test_negative_count_is_a_config_error(rule: str) -> None:
    with pytest.raises(ConfigError):
        select_patches(DYADIC, rule, -1)


@pytest.mark.parametrize("rule", ["top-k", "threshold", "attention-sum", "random"])
@pytest.mark.parametrize("value", [-1.0, -1e-9, math.nan, math.inf, -math.inf])
def test_check_rejects_negative_and_non_finite_parameters(rule: str, value: float) -> None:
    entry = get_rule(rule)
    with pytest.raises(ConfigError, match=entry.parameter):
        entry.check(value)
    with pytest.raises(ConfigError):
        select_patches(DYADIC, rule, value)


@pytest.mark.parametrize("rule", ["threshold", "attention-sum"])
def test_check_rejects_fractions_above_one(rule: str) -> None:
    entry = get_rule(rule)
    assert entry.check(1.0) == 1.0  # the bound itself is allowed
    with pytest.raises(ConfigError, match="<= 1"):
        entry.check(1.0000001)
    with pytest.raises(ConfigError):
        select_patches(DYADIC, rule, 1.5)


def test_check_returns_the_parameter_as_float() -> None:
    assert get_rule("top-k").check(3) == 3.0
    assert isinstance(get_rule("top-k").check(3), float)
    assert get_rule("top-k").check(500) == 500.0  # counts have no upper bound
    assert get_rule("attention-sum").check(0) == 0.0
    assert get_rule("all").check(-5.0) == 0.0  # no parameter: nothing to check
    with pytest.raises(ConfigError):
        get_rule("top-k").check(True)


def test_rules_table_lists_every_rule() -> None:
    assert set(RULES) == {"top-k", "threshold", "attention-sum", "random", "all"}
    for name, entry in RULES.items():
        assert entry.name == name
        assert get_rule(name) is entry
        assert entry.label
        sel = select_patches(DYADIC, name, PARAMETERS[name])
        assert sel.keep_mask.dtype == np.bool_
        assert sel.keep_mask.shape == DYADIC.shape
        assert bool(sel.keep_mask.any())
    assert {n for n, r in RULES.items() if r.count} == {"top-k", "random"}
    assert {n: r.auto for n, r in RULES.items() if r.auto} == {
        "top-k": "count",
        "random": "count",
        "threshold": "quantile",
    }


# ----------------------------------------------------------------------------- torch-free


def test_pure_modules_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import collabvit.selection, collabvit.gating, collabvit.wire\n"
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
