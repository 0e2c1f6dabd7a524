"""Tests of collabvit.models.probe: the fused-attention probe against explicit attention maps.

The reference switches ``fused_attn`` off on a deep copy, captures every block's
(B, H, L, L) attention probabilities at ``attn.attn_drop`` and computes the
mean score (eq. 10) and both rollouts from them by their definitions
(shared/reference/official-semantics.md), in float64.
"""

from __future__ import annotations

import copy
from functools import reduce
from typing import Any

import pytest
import torch
from vit_support import register_vit

from collabvit.attention import SCORES
from collabvit.errors import ConfigError
from collabvit.models import LoadedModel, forward_with_scores, load_model

ALL_SCORES = ("mean", "mean-local", "rollout", "rollout-standard")


pytestmark = pytest.mark.usefixtures("one_thread")


def _build(family: str) -> LoadedModel:
    return register_vit() if family == "register" else load_model(family, random_init=0)


def _explicit_attentions(loaded: LoadedModel, x: torch.Tensor) -> tuple[torch.Tensor, list]:
    """Logits and every block's (B, H, L, L) attention from an unfused deep copy."""
    model: Any = copy.deepcopy(loaded.model)
    maps: list[torch.Tensor] = []
    handles = []
    for block in model.blocks:
        block.attn.fused_attn = False
        handles.append(
            block.attn.attn_drop.register_forward_hook(lambda _m, _i, out: maps.append(out))
        )
    with torch.no_grad():
        logits = model(x)
    for h in handles:
        h.remove()
    return logits, [a.double() for a in maps]


def _cls_patch_row(joint: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """CLS row of (B, L, L), prefix columns dropped, renormalised to sum 1."""
    row = joint[:, 0, num_prefix:]
    return row / row.sum(-1, keepdim=True)


def _reference_scores(maps: list[torch.Tensor], num_prefix: int) -> dict[str, torch.Tensor]:
    length = maps[0].shape[-1]
    eye = torch.eye(length, dtype=torch.float64)
    mean = _cls_patch_row(maps[-1].mean(dim=1), num_prefix)
    # authors: A + I per head, product A_L ... A_1 per head, heads averaged afterwards
    per_head = reduce(lambda acc, a: (a + eye) @ acc, maps[1:], maps[0] + eye)
    rollout = _cls_patch_row(per_head.mean(dim=1), num_prefix)
    # Abnar & Zuidema: heads averaged first, 0.5 A + 0.5 I, product
    mixed = [0.5 * a.mean(dim=1) + 0.5 * eye for a in maps]
    standard = _cls_patch_row(reduce(lambda acc, a: a @ acc, mixed[1:], mixed[0]), num_prefix)
    # ours: sqrt(s_i * mean of s over the on-grid 3x3 window), renormalised, by loops
    side = round(mean.shape[-1] ** 0.5)
    grid = mean.reshape(-1, side, side)
    local = torch.zeros_like(grid)
    for i in range(side):
        for j in range(side):
            window = grid[:, max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2]
            local[:, i, j] = window.mean(dim=(1, 2))
    weighted = (grid * local).sqrt().reshape(mean.shape)
    weighted = weighted / weighted.sum(-1, keepdim=True)
    return {"mean": mean, "mean-local": weighted, "rollout": rollout, "rollout-standard": standard}


@pytest.mark.parametrize(
    "family", ["deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "register"]
)
def test_fused_probe_equals_explicit_attention(family: str) -> None:
    loaded = _build(family)
    assert all(block.attn.fused_attn for block in loaded.model.blocks), "timm built it unfused"
    _, h, w = loaded.preprocessing.input_size
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(1))

    logits, scores = forward_with_scores(loaded, x, ALL_SCORES)

    # the probe leaves the fast kernel on and does not change the forward
    assert all(block.attn.fused_attn for block in loaded.model.blocks)
    with torch.no_grad():
        plain = loaded.model(x)
    torch.testing.assert_close(logits, plain, rtol=0, atol=1e-6)

    explicit_logits, maps = _explicit_attentions(loaded, x)
    assert len(maps) == loaded.depth
    length = loaded.num_prefix_tokens + loaded.num_patches
    assert maps[0].shape == (2, loaded.model.blocks[0].attn.num_heads, length, length)
    torch.testing.assert_close(logits, explicit_logits, rtol=1e-4, atol=1e-5)

    reference = _reference_scores(maps, loaded.num_prefix_tokens)
    for name in ALL_SCORES:
        got = scores[name]
        assert got.shape == (2, loaded.num_patches), name
        torch.testing.assert_close(got.double(), reference[name], rtol=0, atol=1e-5, msg=name)
        ones = torch.ones(2, dtype=torch.float64)
        torch.testing.assert_close(got.sum(-1).double(), ones, rtol=0, atol=1e-6)
        assert bool((got >= 0).all())


def test_only_the_requested_scores_are_returned() -> None:
    loaded = register_vit()
    x = torch.randn(1, 3, 64, 64)
    _, scores = forward_with_scores(loaded, x)
    assert set(scores) == {"mean"}
    _, scores = forward_with_scores(loaded, x, ("rollout-standard",))
    assert set(scores) == {"rollout-standard"}


def test_probe_removes_its_hooks() -> None:
    loaded = register_vit()
    forward_with_scores(loaded, torch.randn(1, 3, 64, 64), ALL_SCORES)
    for block in loaded.model.blocks:
        assert not block.attn.qkv._forward_hooks


def test_unknown_score_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="mean"):
        forward_with_scores(register_vit(), torch.randn(1, 3, 64, 64), ("max",))
    assert set(SCORES) == set(ALL_SCORES)
