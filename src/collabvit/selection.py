"""Attention-aware patch selection rules (paper Sec. IV-B), as pure tensor functions.

All rules take renormalised scores ``s`` of shape (B, N) (each row sums to 1,
patches indexed row-major) and return a boolean ``keep_mask`` (B, N).

- ``top-k``: the ``k = int(threshold)`` highest scores.
- ``threshold`` (attention threshold): every patch with ``s >= delta``.
- ``attention-sum``: sort descending, keep patches while the cumulative sum
  stays ``<= delta_sum``. The patch whose addition crosses ``delta_sum`` is
  excluded (the authors' semantics; kept mass <= delta_sum) unless
  ``include_crossing`` is set.
- ``random``: ``int(threshold)`` patches uniformly at random without
  replacement, the MOT-style baseline; seeded per image, so reproducible and
  independent of batching.

Ties are broken by patch index (the lower index is ranked first). A rule that
would keep no patch keeps the single highest-scoring one instead; the
returned :class:`Selection` says which rows were raised to one patch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import ConfigError

__all__ = [
    "RULES",
    "Selection",
    "attention_sum",
    "attention_threshold",
    "random_selection",
    "rank_patches",
    "select_patches",
    "top_k",
]

RULES = ("top-k", "threshold", "attention-sum", "random")


@dataclass(frozen=True)
class Selection:
    """The kept patches of a batch of images."""

    keep_mask: torch.Tensor  # (B, N) bool
    raised_to_one: torch.Tensor  # (B,) bool: the rule kept nothing, the top patch was kept

    @property
    def num_patches(self) -> torch.Tensor:
        """Kept patches per image, (B,)."""
        return self.keep_mask.sum(dim=1)


def rank_patches(scores: torch.Tensor) -> torch.Tensor:
    """Patch indices by descending score, ties by ascending index. (B, N) -> (B, N)."""
    return torch.sort(scores, dim=1, descending=True, stable=True).indices


def _mask_from_ranks(order: torch.Tensor, keep_sorted: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros_like(keep_sorted)
    return mask.scatter(1, order, keep_sorted)


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The k highest-scoring patches of each row. (B, N) -> (B, N) bool."""
    b, n = scores.shape
    k = max(0, min(int(k), n))
    order = rank_patches(scores)
    keep_sorted = torch.arange(n, device=scores.device).expand(b, n) < k
    return _mask_from_ranks(order, keep_sorted)


def attention_threshold(scores: torch.Tensor, delta: float) -> torch.Tensor:
    """Patches whose score is at least ``delta`` (inclusive). (B, N) -> (B, N) bool."""
    return scores >= delta


def attention_sum(
    scores: torch.Tensor, delta_sum: float, include_crossing: bool = False
) -> torch.Tensor:
    """Highest-scoring patches until their cumulative score reaches ``delta_sum``.

    Args:
        scores: (B, N) renormalised scores.
        delta_sum: the attention-sum threshold.
        include_crossing: also keep the patch whose addition crosses
            ``delta_sum`` (the authors exclude it).

    Returns:
        (B, N) bool keep mask.
    """
    order = rank_patches(scores)
    ranked = torch.gather(scores, 1, order)  # (B, N) descending
    cumulative = ranked.double().cumsum(dim=1)
    if include_crossing:
        before = cumulative - ranked.double()  # mass kept before each patch
        keep_sorted = before < delta_sum
    else:
        keep_sorted = cumulative <= delta_sum
    return _mask_from_ranks(order, keep_sorted)


def random_selection(
    num_patches: int, counts: torch.Tensor, seed: int, image_ids: torch.Tensor
) -> torch.Tensor:
    """``counts[i]`` patches of image i chosen uniformly without replacement.

    Each image draws from its own generator seeded by ``(seed, image_ids[i])``,
    so a choice never depends on the batch an image falls in.

    Returns:
        (B, N) bool keep mask.
    """
    b = counts.shape[0]
    mask = torch.zeros(b, num_patches, dtype=torch.bool)
    for row in range(b):
        gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(image_ids[row]))
        perm = torch.randperm(num_patches, generator=gen)
        mask[row, perm[: int(counts[row])]] = True
    return mask.to(counts.device)


def _raise_empty(mask: torch.Tensor, scores: torch.Tensor) -> Selection:
    empty = ~mask.any(dim=1)
    if bool(empty.any()):
        top = rank_patches(scores)[:, 0]  # (B,)
        mask = mask.clone()
        mask[empty, top[empty]] = True
    return Selection(mask, empty)


def select_patches(
    scores: torch.Tensor,
    rule: str,
    threshold: float,
    include_crossing: bool = False,
    seed: int = 0,
    image_ids: torch.Tensor | None = None,
) -> Selection:
    """Apply one selection rule to a batch of scores; never returns an empty row.

    Args:
        scores: (B, N) renormalised patch scores.
        rule: one of :data:`RULES`.
        threshold: k for ``top-k`` and ``random``, delta for ``threshold``,
            delta_sum for ``attention-sum``.
        include_crossing: see :func:`attention_sum`.
        seed, image_ids: seed and per-image ids (default 0..B-1) for ``random``.
    """
    b, n = scores.shape
    if rule == "top-k":
        mask = top_k(scores, _count(threshold, rule))
    elif rule == "threshold":
        mask = attention_threshold(scores, float(threshold))
    elif rule == "attention-sum":
        mask = attention_sum(scores, float(threshold), include_crossing)
    elif rule == "random":
        k = _count(threshold, rule)
        ids = torch.arange(b) if image_ids is None else image_ids
        mask = random_selection(n, torch.full((b,), min(k, n)), seed, ids).to(scores.device)
    else:
        raise ConfigError(f"unknown selection rule {rule!r}: use one of {', '.join(RULES)}")
    return _raise_empty(mask, scores)


def _count(threshold: float, rule: str) -> int:
    if threshold < 0:
        raise ConfigError(f"{rule} needs a patch count >= 0, got {threshold}")
    return int(threshold)
