"""Attention-aware patch selection rules (paper Sec. IV-B), as pure array functions.

Every rule takes renormalised scores ``s`` of shape (B, N) (each row sums to 1,
patches indexed row-major) and returns a boolean ``keep_mask`` (B, N). Inputs
may be numpy arrays or torch tensors (read on the host); results are numpy, so
the same code runs in the research pipeline and in the torch-free edge runtime.

- ``top-k``: the ``k`` highest scores.
- ``threshold`` (attention threshold): every patch with ``s >= delta``.
- ``attention-sum``: sort descending, keep patches while the cumulative sum
  stays ``<= delta_sum``. The patch whose addition crosses ``delta_sum`` is
  excluded (the authors' semantics; kept mass <= delta_sum) unless
  ``include_crossing`` is set.
- ``random``: ``k`` patches uniformly at random without replacement, the
  MOT-style baseline; seeded per image, so reproducible and independent of
  batching and of the runtime.
- ``all``: every patch (no selection: the whole image, the gate alone).

Ties are broken by patch index (the lower index is ranked first). A rule that
would keep no patch keeps the single highest-scoring one instead; the
returned :class:`Selection` says which rows were raised to one patch.

:data:`RULES` is the table of rules: the CLI, the sweep and the figures take
their choices from it. Adding a rule is one function and one entry.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from ._arrays import as_numpy
from .errors import ConfigError

__all__ = [
    "RULES",
    "Rule",
    "SelectOptions",
    "Selection",
    "all_patches",
    "as_numpy",
    "attention_sum",
    "attention_threshold",
    "get_rule",
    "random_selection",
    "rank_patches",
    "select_patches",
    "top_k",
]

BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Selection:
    """The kept patches of a batch of images."""

    keep_mask: BoolArray  # (B, N)
    raised_to_one: BoolArray  # (B,): the rule kept nothing, the top patch was kept

    @property
    def num_patches(self) -> npt.NDArray[np.int64]:
        """Kept patches per image, (B,)."""
        counts: npt.NDArray[np.int64] = self.keep_mask.sum(axis=1).astype(np.int64)
        return counts


@dataclass(frozen=True)
class SelectOptions:
    """Settings shared by every rule of one operating point."""

    include_crossing: bool = False  # attention-sum: keep the patch that crosses delta_sum
    seed: int = 0  # random: the run's seed
    image_ids: npt.NDArray[np.int64] | None = None  # random: per-image ids (default 0..B-1)


def rank_patches(scores: Any) -> npt.NDArray[np.intp]:
    """Patch indices by descending score, ties by ascending index. (B, N) -> (B, N)."""
    s = as_numpy(scores)
    return np.argsort(-s, axis=1, kind="stable")


def _mask_from_ranks(order: npt.NDArray[np.intp], keep_sorted: BoolArray) -> BoolArray:
    mask = np.zeros(keep_sorted.shape, dtype=bool)
    np.put_along_axis(mask, order, keep_sorted, axis=1)
    return mask


def top_k(scores: Any, k: float, options: SelectOptions | None = None) -> BoolArray:
    """The k highest-scoring patches of each row. (B, N) -> (B, N) bool."""
    s = as_numpy(scores)
    b, n = s.shape
    count = max(0, min(int(k), n))
    keep_sorted = np.broadcast_to(np.arange(n) < count, (b, n))
    return _mask_from_ranks(rank_patches(s), keep_sorted)


def attention_threshold(
    scores: Any, delta: float, options: SelectOptions | None = None
) -> BoolArray:
    """Patches whose score is at least ``delta`` (inclusive). (B, N) -> (B, N) bool."""
    return np.asarray(as_numpy(scores) >= delta)


def attention_sum(scores: Any, delta_sum: float, options: SelectOptions | None = None) -> BoolArray:
    """Highest-scoring patches until their cumulative score reaches ``delta_sum``.

    Args:
        scores: (B, N) renormalised scores.
        delta_sum: the attention-sum threshold.
        options: ``include_crossing`` also keeps the patch whose addition
            crosses ``delta_sum`` (the authors exclude it).

    Returns:
        (B, N) bool keep mask.
    """
    s = as_numpy(scores)
    order = rank_patches(s)
    ranked = np.take_along_axis(s, order, axis=1).astype(np.float64)  # (B, N) descending
    cumulative = np.cumsum(ranked, axis=1)
    if options is not None and options.include_crossing:
        keep_sorted = (cumulative - ranked) < delta_sum  # mass kept before each patch
    else:
        keep_sorted = cumulative <= delta_sum
    return _mask_from_ranks(order, keep_sorted)


def random_selection(scores: Any, k: float, options: SelectOptions | None = None) -> BoolArray:
    """``k`` patches of each image chosen uniformly without replacement.

    Image i draws from its own generator seeded by ``(seed, image_ids[i])``, so
    a choice never depends on the batch an image falls in.
    """
    s = as_numpy(scores)
    b, n = s.shape
    opts = options or SelectOptions()
    ids = np.arange(b) if opts.image_ids is None else as_numpy(opts.image_ids)
    count = max(0, min(int(k), n))
    mask = np.zeros((b, n), dtype=bool)
    for row in range(b):
        rng = np.random.default_rng((int(opts.seed), int(ids[row])))
        mask[row, rng.permutation(n)[:count]] = True
    return mask


def all_patches(
    scores: Any, _unused: float = 0.0, options: SelectOptions | None = None
) -> BoolArray:
    """Every patch: the whole image goes to the server. (B, N) -> (B, N) bool."""
    return np.ones(as_numpy(scores).shape, dtype=bool)


@dataclass(frozen=True)
class Rule:
    """One selection rule.

    Attributes:
        name: the CLI and file name (``--rule NAME``).
        select: ``select(scores (B, N), parameter, options) -> keep_mask (B, N)``.
        parameter: what the threshold means (``k``, ``delta``, ``delta_sum``;
            empty for a rule without one).
        count: the parameter is a patch count (an integer >= 0).
        upper: the parameter's largest sensible value (None: no bound).
        auto: how a sweep's ``"auto"`` thresholds match attention-sum's cost:
            ``"count"`` (k = its mean patch count), ``"quantile"`` (the score
            that keeps the same share of patches) or None (not available).
        label: how figures name it.
        zero_keeps_none: a parameter of 0 keeps no patch (attention-sum; count
            rules always): a value chosen by a user must be above 0.
    """

    name: str
    select: Callable[[Any, float, SelectOptions | None], BoolArray]
    parameter: str
    count: bool = False
    upper: float | None = None
    auto: str | None = None
    label: str = ""
    zero_keeps_none: bool = False

    def check(self, value: float) -> float:
        """The parameter as a float, or ConfigError saying what is wrong with it."""
        if not self.parameter:
            return 0.0
        if isinstance(value, bool) or not math.isfinite(float(value)) or value < 0:
            raise ConfigError(f"{self.name}: {self.parameter} must be a number >= 0, got {value}")
        if self.upper is not None and value > self.upper:
            raise ConfigError(
                f"{self.name}: {self.parameter} must be <= {self.upper:g}, got {value}"
            )
        return float(value)

    def check_chosen(self, value: float) -> float:
        """:meth:`check`, stricter for a value a user picks (``--k``, ``--delta-sum``).

        A count must be a whole number >= 1, and a parameter of 0 that keeps no
        patch is refused (a sweep's derived values may still be 0).
        """
        value = self.check(value)
        if self.count and (value < 1 or value != int(value)):
            raise ConfigError(
                f"{self.name}: {self.parameter} must be a whole number >= 1, got {value:g}"
            )
        if self.zero_keeps_none and value == 0:
            raise ConfigError(f"{self.name}: {self.parameter} must be > 0 (0 keeps no patch)")
        return value


RULES: dict[str, Rule] = {
    "top-k": Rule("top-k", top_k, "k", count=True, auto="count", label="top-k"),
    "threshold": Rule(
        "threshold",
        attention_threshold,
        "delta",
        upper=1.0,
        auto="quantile",
        label="attention threshold",
    ),
    "attention-sum": Rule(
        "attention-sum",
        attention_sum,
        "delta_sum",
        upper=1.0,
        label="attention-sum",
        zero_keeps_none=True,
    ),
    "random": Rule("random", random_selection, "k", count=True, auto="count", label="random"),
    "all": Rule("all", all_patches, "", label="all patches"),
}
"""The selection rules, by name."""


def get_rule(name: str) -> Rule:
    """The :data:`RULES` entry called ``name``; ConfigError listing the names otherwise."""
    try:
        return RULES[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown selection rule {name!r}: use one of {', '.join(RULES)}"
        ) from None


def _raise_empty(mask: BoolArray, scores: Any) -> Selection:
    empty = cast(BoolArray, ~mask.any(axis=1))  # (B,)
    if bool(empty.any()):
        top = rank_patches(scores)[:, 0]  # (B,)
        mask = mask.copy()
        mask[empty, top[empty]] = True
    return Selection(mask, empty)


def select_patches(
    scores: Any,
    rule: str,
    threshold: float = 0.0,
    include_crossing: bool = False,
    seed: int = 0,
    image_ids: Any = None,
) -> Selection:
    """Apply one selection rule to a batch of scores; never returns an empty row.

    Args:
        scores: (B, N) renormalised patch scores (numpy array or torch tensor).
        rule: a name from :data:`RULES`.
        threshold: the rule's parameter: k for ``top-k`` and ``random``, delta
            for ``threshold``, delta_sum for ``attention-sum`` (unused by ``all``).
        include_crossing: see :func:`attention_sum`.
        seed, image_ids: seed and per-image ids (default 0..B-1) for ``random``.
    """
    entry = get_rule(rule)
    value = entry.check(threshold)
    s = as_numpy(scores)
    ids = None if image_ids is None else as_numpy(image_ids).astype(np.int64)
    mask = entry.select(s, value, SelectOptions(include_crossing, seed, ids))
    return _raise_empty(np.asarray(mask, dtype=bool), s)
