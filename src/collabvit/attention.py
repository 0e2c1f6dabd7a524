"""Patch importance from the edge model's class-token attention (paper Sec. IV-A), pure.

Functions of attention tensors only; reading q and k out of a model is
:mod:`collabvit.models.probe`'s job.

- :func:`cls_attention` (eqs. 5-6): ``softmax(q k^T / sqrt(d))`` over every key
  (prefix tokens included), in float32 whatever the input precision.
- :func:`mean_attention_score` (eq. 10): the last block's class-token row,
  averaged over heads; the prefix columns are dropped and the patch scores
  renormalised to sum to 1.
- :func:`rollout_scores`: attention rollout (Abnar & Zuidema, 2020) in two named
  variants: ``rollout`` (the authors': per layer ``A + I`` per head, the product
  ``A_L ... A_1`` per head, heads averaged after the product) and
  ``rollout-standard`` (heads averaged first, ``0.5 A + 0.5 I``, then the
  product). Both end with the same CLS-row slice and renormalisation.
- :func:`local_mean_score` (``mean-local``, ours, not the paper's): eq. 10's
  score of each patch times the mean of its 3x3 neighbourhood, square-rooted
  and renormalised. A patch the class token attends to keeps its weight when
  its neighbours are attended too (an object is contiguous) and loses it when
  it stands alone (a fragment of clutter); docs/cluttered-fmnist.md measures it.

:data:`SCORES` is the table of patch scores: the CLI, the sweep and the figures
take their choices from it. Adding a score is one function and one entry.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

__all__ = [
    "SCORES",
    "Score",
    "cls_attention",
    "get_score",
    "local_mean_score",
    "mean_attention_score",
    "renormalise",
    "rollout_scores",
]

Tensor = Any  # a torch.Tensor; this module never imports torch at load time


def renormalise(scores: Tensor) -> Tensor:
    """Scale each row to sum to 1; rows that sum to 0 (or NaN) become 0. (B, N) -> (B, N)."""
    out = scores / scores.sum(-1, keepdim=True)
    return out.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


def cls_attention(q: Tensor, k: Tensor, scale: float) -> Tensor:
    """Eqs. 5-6: attention probabilities ``softmax(q k^T * scale)`` over all keys.

    Args:
        q: (B, H, Lq, Dh) queries (Lq = 1 for the class token's row only).
        k: (B, H, L, Dh) keys.
        scale: ``1 / sqrt(Dh)``.

    Returns:
        (B, H, Lq, L) float32, rows summing to 1.
    """
    logits = (q * scale) @ k.transpose(-2, -1)  # (B, H, Lq, L)
    return logits.float().softmax(dim=-1)


def mean_attention_score(cls_rows: Sequence[Tensor], num_prefix: int) -> Tensor:
    """Eq. 10: the last block's class-token attention, mean over heads, patches renormalised.

    Args:
        cls_rows: one tensor (B, H, 1, L), the last block's CLS row (from :func:`cls_attention`).
        num_prefix: prefix tokens (class, distillation, registers) to drop.

    Returns:
        (B, N) patch scores summing to 1.
    """
    (row,) = cls_rows
    return renormalise(row[:, :, 0].mean(dim=1)[:, num_prefix:])


def local_mean_score(cls_rows: Sequence[Tensor], num_prefix: int) -> Tensor:
    """Eq. 10's score weighted by its neighbourhood: ``sqrt(s_i * mean_{3x3}(s)_i)``, renormalised.

    The neighbourhood mean is over the patches of the 3x3 window that lie on the
    (square) grid, so edge and corner patches are not penalised for the border.

    Args:
        cls_rows: one tensor (B, H, 1, L), the last block's CLS row.
        num_prefix: prefix tokens to drop.

    Returns:
        (B, N) patch scores summing to 1.

    Raises:
        ConfigError: the N patches do not form a square grid.
    """
    scores = mean_attention_score(cls_rows, num_prefix)  # eq. 10, (B, N)
    n = scores.shape[-1]
    side = math.isqrt(n)
    if side * side != n:
        raise ConfigError(f"score mean-local needs a square patch grid, got {n} patches")
    grid = scores.reshape(-1, side, side)
    padded = grid.new_zeros((grid.shape[0], side + 2, side + 2))
    padded[:, 1:-1, 1:-1] = grid
    on_grid = grid.new_zeros((1, side + 2, side + 2))
    on_grid[:, 1:-1, 1:-1] = 1.0

    def window_sum(t: Tensor) -> Tensor:  # (b, side + 2, side + 2) -> (b, side, side)
        return t.unfold(1, 3, 1).unfold(2, 3, 1).sum(dim=(-2, -1))

    local = window_sum(padded) / window_sum(on_grid)
    return renormalise((grid * local).sqrt().reshape(scores.shape))


def _eye_like(a: Tensor) -> Tensor:
    """The (T, T) identity in ``a``'s dtype and device, for ``a`` of shape (..., T, T)."""
    eye = a.new_zeros((a.shape[-1], a.shape[-1]))
    return eye.fill_diagonal_(1.0)


def rollout_scores(
    attentions: Sequence[Tensor], num_prefix: int, variant: str = "rollout"
) -> Tensor:
    """Attention rollout of a list of per-layer attentions, first layer first.

    Args:
        attentions: L tensors of shape (B, H, T, T).
        num_prefix: prefix tokens (class, distillation, registers) to drop.
        variant: ``rollout`` (per-head product, the authors') or
            ``rollout-standard`` (head mean first, Abnar & Zuidema).

    Returns:
        (B, N) patch scores summing to 1.
    """
    if variant == "rollout":
        result: Tensor | None = None
        for a in attentions:  # a: (B, H, T, T)
            a = a + _eye_like(a)
            result = a if result is None else a @ result  # (B, H, T, T)
        assert result is not None
        joint = result.mean(dim=1)  # (B, T, T)
    elif variant == "rollout-standard":
        product: Tensor | None = None
        for a in attentions:
            mean = a.mean(dim=1)  # (B, T, T)
            mean = 0.5 * mean + 0.5 * _eye_like(mean)
            product = mean if product is None else mean @ product
        assert product is not None
        joint = product
    else:
        raise ConfigError(f"unknown rollout variant {variant!r}: use rollout or rollout-standard")
    return renormalise(joint[:, 0, num_prefix:])


@dataclass(frozen=True)
class Score:
    """One patch-importance score.

    Attributes:
        name: the CLI and file name (``--score NAME``).
        compute: ``compute(attentions, num_prefix) -> (B, N)``; ``attentions`` is
            ``[CLS row (B, H, 1, L) of the last block]`` or, when ``every_block``,
            the full maps (B, H, L, L) of every block, first block first.
        every_block: needs every block's full attention (costly) instead of one row.
        label: how figures name it.
    """

    name: str
    compute: Callable[[Sequence[Tensor], int], Tensor]
    every_block: bool
    label: str


SCORES: dict[str, Score] = {
    "mean": Score("mean", mean_attention_score, False, "mean attention (last layer)"),
    "mean-local": Score(
        "mean-local", local_mean_score, False, "mean attention x its 3x3 neighbourhood"
    ),
    "rollout": Score(
        "rollout",
        lambda a, npre: rollout_scores(a, npre, "rollout"),
        True,
        "attention rollout (per-head product)",
    ),
    "rollout-standard": Score(
        "rollout-standard",
        lambda a, npre: rollout_scores(a, npre, "rollout-standard"),
        True,
        "attention rollout (standard, heads averaged first)",
    ),
}
"""The patch scores, by name."""


def get_score(name: str) -> Score:
    """The :data:`SCORES` entry called ``name``; ConfigError listing the names otherwise."""
    try:
        return SCORES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown score {name!r}: use one of {', '.join(SCORES)}") from None
