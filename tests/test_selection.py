"""Tests of collabvit.selection on hand-computed cases (paper Sec. IV-B, official semantics)."""

from __future__ import annotations

import pytest
import torch

from collabvit.errors import ConfigError
from collabvit.selection import (
    RULES,
    Selection,
    attention_sum,
    attention_threshold,
    random_selection,
    rank_patches,
    select_patches,
    top_k,
)


def _mask(*rows: list[int]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool)


def _kept(sel: Selection) -> list[list[int]]:
    """Kept patch indices per row, ascending."""
    return [row.nonzero().flatten().tolist() for row in sel.keep_mask]


# Scores that sum to 1 and are exact in binary: sorted order is 1, 3, 0, 2.
DYADIC = torch.tensor([[0.125, 0.5, 0.0625, 0.25, 0.0625]])


# ----------------------------------------------------------------------------- ranking, top-k


def test_rank_patches_descending_ties_by_lower_index() -> None:
    scores = torch.tensor([[0.1, 0.3, 0.3, 0.2, 0.1]])
    assert rank_patches(scores).tolist() == [[1, 2, 3, 0, 4]]


def test_top_k_keeps_the_k_highest() -> None:
    sel = select_patches(DYADIC, "top-k", 2)
    assert _kept(sel) == [[1, 3]]
    assert sel.num_patches.tolist() == [2]
    assert sel.raised_to_one.tolist() == [False]


def test_top_k_threshold_is_truncated_to_int() -> None:
    assert _kept(select_patches(DYADIC, "top-k", 2.9)) == [[1, 3]]


def test_top_k_ties_broken_by_patch_index() -> None:
    scores = torch.tensor([[0.2, 0.2, 0.2, 0.2, 0.2], [0.1, 0.3, 0.1, 0.3, 0.2]])
    assert (
        top_k(scores, 2).tolist()
        == _mask([True, True, False, False, False], [False, True, False, True, False]).tolist()
    )
    # k=3 on the second row: 1 and 3 (0.3), then 4 (0.2)
    assert _kept(select_patches(scores, "top-k", 3))[1] == [1, 3, 4]
    # a tie at the cut: 0 and 2 both 0.1, the lower index wins
    assert _kept(select_patches(scores, "top-k", 4))[1] == [0, 1, 3, 4]


def test_top_k_zero_is_raised_to_the_top_patch_and_counted() -> None:
    scores = torch.tensor([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]])
    assert not top_k(scores, 0).any()
    sel = select_patches(scores, "top-k", 0)
    assert _kept(sel) == [[1], [0]]
    assert sel.raised_to_one.tolist() == [True, True]


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
    scores = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
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


def test_attention_sum_ties_broken_by_patch_index() -> None:
    # four equal scores: delta_sum 0.5 keeps exactly two, the lowest indices
    scores = torch.full((1, 4), 0.25)
    assert _kept(select_patches(scores, "attention-sum", 0.5)) == [[0, 1]]
    # tie between patches 2 and 4 (0.0625 each) at the cut
    assert _kept(select_patches(DYADIC, "attention-sum", 0.9375)) == [[0, 1, 2, 3]]


def test_attention_sum_rows_are_independent() -> None:
    scores = torch.cat([DYADIC, torch.tensor([[0.0625, 0.0625, 0.125, 0.25, 0.5]])])
    sel = select_patches(scores, "attention-sum", 0.75)
    assert _kept(sel) == [[1, 3], [3, 4]]
    assert sel.raised_to_one.tolist() == [False, False]


# ----------------------------------------------------------------------------- random


def test_random_keeps_exactly_k_patches() -> None:
    scores = torch.full((3, 196), 1 / 196)
    sel = select_patches(scores, "random", 37, seed=5)
    assert sel.num_patches.tolist() == [37, 37, 37]
    assert not sel.raised_to_one.any()


def test_random_is_reproducible() -> None:
    scores = torch.full((4, 64), 1 / 64)
    a = select_patches(scores, "random", 10, seed=3).keep_mask
    b = select_patches(scores, "random", 10, seed=3).keep_mask
    assert torch.equal(a, b)


def test_random_does_not_depend_on_the_batch() -> None:
    scores = torch.full((5, 64), 1 / 64)
    ids = torch.tensor([7, 11, 13, 17, 19])
    batch = select_patches(scores, "random", 12, seed=1, image_ids=ids).keep_mask
    for row, image_id in enumerate(ids.tolist()):
        alone = select_patches(
            scores[row : row + 1], "random", 12, seed=1, image_ids=torch.tensor([image_id])
        ).keep_mask
        assert torch.equal(alone[0], batch[row])
    # the same image in another position of another batch
    other = select_patches(
        scores[:2], "random", 12, seed=1, image_ids=torch.tensor([19, 7])
    ).keep_mask
    assert torch.equal(other[0], batch[4])
    assert torch.equal(other[1], batch[0])


def test_random_differs_across_seeds_and_images() -> None:
    scores = torch.full((2, 196), 1 / 196)
    a = select_patches(scores, "random", 20, seed=0).keep_mask
    b = select_patches(scores, "random", 20, seed=1).keep_mask
    assert not torch.equal(a[0], b[0])
    assert not torch.equal(a[0], a[1])  # images 0 and 1 draw differently


def test_random_ignores_scores() -> None:
    flat = torch.full((1, 64), 1 / 64)
    peaked = torch.zeros(1, 64)
    peaked[0, 5] = 1.0
    a = select_patches(flat, "random", 8, seed=2).keep_mask
    b = select_patches(peaked, "random", 8, seed=2).keep_mask
    assert torch.equal(a, b)


def test_random_zero_and_above_n() -> None:
    scores = torch.tensor([[0.1, 0.2, 0.7]])
    sel = select_patches(scores, "random", 0, seed=0)
    assert _kept(sel) == [[2]]
    assert sel.raised_to_one.tolist() == [True]
    assert select_patches(scores, "random", 10, seed=0).keep_mask.all()


def test_random_selection_counts_per_image() -> None:
    mask = random_selection(16, torch.tensor([0, 1, 16, 5]), seed=4, image_ids=torch.arange(4))
    assert mask.shape == (4, 16)
    assert mask.sum(1).tolist() == [0, 1, 16, 5]


# ----------------------------------------------------------------------------- errors


def test_unknown_rule_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="top-k"):
        select_patches(DYADIC, "top_k", 2)


@pytest.mark.parametrize("rule", ["top-k", "random"])
def test_negative_count_is_a_config_error(rule: str) -> None:
    with pytest.raises(ConfigError):
        select_patches(DYADIC, rule, -1)


def test_rules_constant_lists_every_rule() -> None:
    assert set(RULES) == {"top-k", "threshold", "attention-sum", "random"}
    for rule in RULES:
        sel = select_patches(DYADIC, rule, 0.5 if rule in ("threshold", "attention-sum") else 2)
        assert sel.keep_mask.dtype == torch.bool
        assert sel.keep_mask.shape == DYADIC.shape
        assert bool(sel.keep_mask.any())
