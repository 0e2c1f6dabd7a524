"""Tests of collabvit.attention: the pure eq. 5-6 / eq. 10 / rollout math, by hand."""

from __future__ import annotations

import sys

import pytest
import torch

from collabvit.attention import (
    SCORES,
    cls_attention,
    get_score,
    local_mean_score,
    mean_attention_score,
    renormalise,
    rollout_scores,
)
from collabvit.errors import ConfigError


def test_cls_attention_is_softmax_of_scaled_dot_products() -> None:
    q = torch.tensor([[[[1.0, 0.0]]]])  # (B=1, H=1, 1, Dh=2)
    k = torch.tensor([[[[2.0, 0.0], [0.0, 2.0], [0.0, 0.0]]]])  # (1, 1, L=3, 2)
    got = cls_attention(q, k, 0.5)
    logits = torch.tensor([1.0, 0.0, 0.0])
    torch.testing.assert_close(got[0, 0, 0], logits.softmax(-1))
    assert got.dtype == torch.float32


def test_mean_attention_score_eq10_drops_prefix_and_renormalises() -> None:
    # two heads, tokens [CLS, p1, p2, p3]
    row = torch.tensor([[[[0.4, 0.3, 0.2, 0.1]], [[0.2, 0.1, 0.5, 0.2]]]])  # (1, 2, 1, 4)
    got = mean_attention_score([row], 1)
    # head mean [0.3, 0.2, 0.35, 0.15] -> patches 0.2, 0.35, 0.15 over 0.7
    torch.testing.assert_close(got, torch.tensor([[2 / 7, 3.5 / 7, 1.5 / 7]]))


def test_scores_table_entries_name_themselves_and_lookup_lists_names() -> None:
    assert set(SCORES) == {"mean", "mean-local", "rollout", "rollout-standard"}
    for name, entry in SCORES.items():
        assert entry.name == name and entry.label
    assert not SCORES["mean"].every_block and SCORES["rollout"].every_block
    assert not SCORES["mean-local"].every_block
    with pytest.raises(ConfigError, match="mean, mean-local, rollout, rollout-standard"):
        get_score("max")


def test_attention_module_does_not_import_torch_at_load() -> None:
    import subprocess

    code = "import collabvit.attention, sys; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_renormalise_by_hand() -> None:
    out = renormalise(torch.tensor([[1.0, 3.0, 0.0, 4.0], [0.0, 0.0, 0.0, 0.0]]))
    assert out.tolist() == [[0.125, 0.375, 0.0, 0.5], [0.0, 0.0, 0.0, 0.0]]  # NaN -> 0


def test_rollout_by_hand() -> None:
    # tokens [CLS, p1, p2]; patch rows attend to themselves
    a = torch.tensor([[0.5, 0.25, 0.25], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # head a
    b = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # head b
    one_head = a[None, None]  # (1, 1, 3, 3)
    # A + I: CLS row [1.5, 0.25, 0.25] -> patches 0.5, 0.5
    assert rollout_scores([one_head], 1, "rollout").tolist() == [[0.5, 0.5]]
    two_heads = torch.stack([a, b])[None]  # (1, 2, 3, 3)
    # one layer: both variants are linear in the head mean, CLS row ~ [., 0.625, 0.125]
    for variant in ("rollout", "rollout-standard"):
        torch.testing.assert_close(
            rollout_scores([two_heads], 1, variant), torch.tensor([[5 / 6, 1 / 6]])
        )
    # two layers, authors: per-head (A + I)^2 CLS rows
    #   head a [2.25, 0.875, 0.875], head b [1, 3, 0] -> mean [1.625, 1.9375, 0.4375]
    #   -> patches 1.9375 / 2.375 = 31/38, 0.4375 / 2.375 = 7/38
    torch.testing.assert_close(
        rollout_scores([two_heads, two_heads], 1, "rollout"), torch.tensor([[31 / 38, 7 / 38]])
    )
    # two layers, standard: M = 0.5 mean(A) + 0.5 I, CLS row [0.625, 0.3125, 0.0625];
    #   M^2 CLS row [0.390625, 0.5078125, 0.1015625] -> patches 5/6, 1/6
    torch.testing.assert_close(
        rollout_scores([two_heads, two_heads], 1, "rollout-standard"),
        torch.tensor([[5 / 6, 1 / 6]]),
    )
    with pytest.raises(ConfigError):
        rollout_scores([one_head], 1, "rollout-mean")


def _one_row(patch_scores: list[float]) -> torch.Tensor:
    """A (1, 1, 1, 1 + N) CLS row: prefix weight 0, the given patch weights."""
    return torch.tensor([0.0, *patch_scores]).reshape(1, 1, 1, -1)


def test_local_mean_score_prefers_a_contiguous_block_to_a_lone_patch() -> None:
    # 3x3 grid: a 2x2 block at the top left (0, 1, 3, 4) and a lone patch (8) of the
    # same eq. 10 weight each; the lone patch has no attended neighbour
    row = _one_row([0.2, 0.2, 0.0, 0.2, 0.2, 0.0, 0.0, 0.0, 0.2])
    assert torch.allclose(mean_attention_score([row], 1)[0, [0, 8]], torch.tensor(0.2))
    (got,) = local_mean_score([row], 1)
    assert torch.isclose(got.sum(), torch.tensor(1.0))
    # by hand: block patch 0's window (0, 1, 3, 4) averages 0.2; patch 4's window (all 9)
    # 1.0 / 9; the lone patch 8's window (4, 5, 7, 8) 0.4 / 4
    # patches 1 and 3: six on-grid neighbours holding 0.8; patch 8: 4 holding 0.4
    side = 0.2 * 0.8 / 6
    raw = torch.tensor([0.2 * 0.2, side, 0.0, side, 0.2 / 9, 0.0, 0.0, 0.0, 0.2 * 0.1])
    raw = raw.sqrt()
    torch.testing.assert_close(got, raw / raw.sum())
    assert got[0] > got[8] and got[1] > got[8] and got[4] > got[8]
    assert got[2] == 0 and got[6] == 0  # unattended patches stay at zero


def test_local_mean_score_needs_a_square_grid() -> None:
    with pytest.raises(ConfigError, match="square patch grid, got 6 patches"):
        local_mean_score([_one_row([1.0] * 6)], 1)
