"""Learn-then-Test over a grid of operating points, and the budget pick.

:func:`calibrate` computes a p-value per point (:mod:`.bounds`), rejects with
a family-wise-error procedure (:func:`reject_chains` or
:func:`reject_bonferroni`) and returns the cheapest certified point;
:func:`most_accurate_within` the most accurate point within a cost budget.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..errors import ConfigError
from ..metrics import wilson_interval
from .bounds import P_VALUES, chance_pvalue, check_risk, clopper_pearson_lower

__all__ = [
    "PROCEDURES",
    "Budget",
    "Calibration",
    "Outcomes",
    "calibrate",
    "most_accurate_within",
    "reject_bonferroni",
    "reject_chains",
]

Bools = npt.NDArray[np.bool_]
Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]


def reject_chains(
    p_values: Sequence[float], chains: Sequence[Sequence[int]], alpha: float
) -> Bools:
    """Fixed-sequence testing inside each chain, Holm-style alpha recycling across chains.

    Each chain is an order fixed *before* seeing the data (here: one
    (score, rule, threshold, measure) series with its etas from the one that
    transmits most to the one that transmits least, the most expensive first).
    With J the points not yet rejected, every chain with a point in J gets
    ``alpha / #chains`` at its first point in J; points at or under their level
    are rejected and the round repeats. The weights only grow as J shrinks
    (consonant), so this is the shortcut of a closed test: the graphical
    procedure of Bretz et al. (2009) with fixed sequences inside and Holm
    between chains. It controls the family-wise error at ``alpha`` in the
    strong sense for any dependence between the p-values.

    Args:
        p_values: (m,) one per point.
        chains: point indices, each chain in testing order; together a partition of 0..m-1.

    Returns:
        (m,) bool: the rejected (certified) points.
    """
    check_risk(alpha)
    m = len(p_values)
    seen = sorted(i for c in chains for i in c)
    if seen != list(range(m)):
        raise ConfigError("the chains must hold every point exactly once")
    rejected = np.zeros(m, dtype=bool)
    pos = [0] * len(chains)
    while True:
        active = [c for c in range(len(chains)) if pos[c] < len(chains[c])]
        if not active:
            break
        level = alpha / len(active)
        progressed = False
        for c in active:
            while pos[c] < len(chains[c]) and p_values[chains[c][pos[c]]] <= level:
                rejected[chains[c][pos[c]]] = True
                pos[c] += 1
                progressed = True
        if not progressed:
            break
    return rejected


def reject_bonferroni(p_values: Sequence[float], alpha: float) -> Bools:
    """Bonferroni: reject every point with ``p <= alpha / m``; no order needed."""
    check_risk(alpha)
    p = np.asarray(p_values, dtype=np.float64)
    return np.asarray(p <= alpha / max(1, p.size))


PROCEDURES = ("chains", "bonferroni")
"""The family-wise-error procedures of :func:`calibrate` (``--procedure``)."""


@dataclass(frozen=True)
class Outcomes:
    """Per-image outcomes of m candidate points over n labelled images (no model needed).

    Built from a sweep's cache by :func:`collabvit.sweep.outcomes.calibration_outcomes`.
    """

    server_correct: Bools  # (n,) the server alone, whole image, is right
    correct: Bools  # (m, n) point j's final prediction is right
    patches: Ints  # (m, n) patches sent per image (0 when kept on the edge)
    num_patches: int  # N, patches of a whole image
    chains: tuple[tuple[int, ...], ...]  # a-priori testing orders (see reject_chains)

    @property
    def images(self) -> int:
        return int(self.server_correct.size)

    def losses(self) -> Bools:
        """(m, n) the loss ``1[server right and point wrong]``."""
        return self.server_correct[None, :] & ~self.correct

    def subset(self, rows: npt.ArrayLike) -> Outcomes:
        """The same points over some of the images (rows: indices or a bool mask)."""
        r = np.asarray(rows)
        return Outcomes(
            self.server_correct[r], self.correct[:, r], self.patches[:, r], self.num_patches,
            self.chains,
        )  # fmt: skip

    def costs(self) -> Floats:
        """(m,) communication cost: patches sent over all patches of all images (Sec. VI-A)."""
        n = max(1, self.images)
        return np.asarray(self.patches.sum(axis=1) / (n * self.num_patches), dtype=np.float64)

    def drops(self) -> Floats:
        """(m,) accuracy drop against server-only, in points (%)."""
        n = max(1, self.images)
        server = float(self.server_correct.sum())
        return np.asarray(100.0 * (server - self.correct.sum(axis=1)) / n, dtype=np.float64)


@dataclass(frozen=True)
class Calibration:
    """What :func:`calibrate` found: per point (m,) arrays and the chosen point."""

    max_drop: float  # D, accuracy points
    alpha: float
    images: int
    losses: Ints  # (m,) calibration images the server gets right and the point wrong
    costs: Floats  # (m,) communication cost on the calibration images
    p_values: Floats  # (m,)
    certified: Bools  # (m,)
    chosen: int | None  # the cheapest certified point
    closest: int | None  # when none is certified: the point nearest to it (smallest p)
    refused: str | None = None  # why nothing may be certified whatever the p-values


def calibrate(
    outcomes: Outcomes,
    max_drop: float,
    alpha: float,
    p_value: str = "binomial",
    procedure: str = "chains",
    chance: float | None = None,
) -> Calibration:
    """Learn-then-Test: the cheapest point certified to lose at most ``max_drop`` points.

    With probability >= 1 - alpha over the draw of the calibration images,
    every certified point has ``E[L] <= D`` (D = max_drop / 100), hence an
    expected accuracy drop against server-only of at most D.

    Args:
        outcomes: the candidate points over the calibration images.
        max_drop: D in accuracy points (%), >= 0.
        alpha: the risk of the guarantee, in (0, 1).
        p_value: a name in :data:`P_VALUES`.
        procedure: ``chains`` (:func:`reject_chains`) or ``bonferroni``.
        chance: the accuracy of guessing (1 / classes). When given, nothing is
            certified unless the server alone is above it at level ``alpha``
            (:func:`~collabvit.calibration.bounds.chance_pvalue`): a drop
            against a server that answers at random guarantees nothing (random
            or untrained weights). Refusing more never breaks the guarantee.
    """
    if not math.isfinite(max_drop) or max_drop < 0:
        raise ConfigError(f"--max-drop must be a number of accuracy points >= 0, got {max_drop}")
    check_risk(alpha)
    if p_value not in P_VALUES:
        raise ConfigError(f"unknown p-value {p_value!r}: use one of {', '.join(P_VALUES)}")
    n = outcomes.images
    losses = outcomes.losses().sum(axis=1).astype(np.int64)
    fn = P_VALUES[p_value]
    p = np.asarray([fn(int(k), n, max_drop / 100.0) for k in losses], dtype=np.float64)
    if procedure == "chains":
        certified = reject_chains(p.tolist(), outcomes.chains, alpha)
    elif procedure == "bonferroni":
        certified = reject_bonferroni(p.tolist(), alpha)
    else:
        raise ConfigError(f"unknown procedure {procedure!r}: use one of {', '.join(PROCEDURES)}")
    refused = None
    if chance is not None:
        server = int(outcomes.server_correct.sum())
        if chance_pvalue(server, n, chance) > alpha:
            certified = np.zeros_like(certified)
            refused = (
                f"the server alone is not above chance ({server} of {n} right; guessing gets "
                f"{100 * chance:.2g}%): a drop against it guarantees nothing (random or "
                "untrained weights?)"
            )
    costs = outcomes.costs()
    correct = outcomes.correct.sum(axis=1)
    chosen = closest = None
    order = np.lexsort((-correct, costs))  # cheapest first, then the more accurate
    hits = [int(j) for j in order if certified[j]]
    if hits:
        chosen = hits[0]
    elif len(p):
        closest = int(np.lexsort((costs, p))[0])  # smallest p-value, then the cheaper
    return Calibration(max_drop, alpha, n, losses, costs, p, certified, chosen, closest, refused)


@dataclass(frozen=True)
class Budget:
    """The most accurate point within a cost budget, with a lower bound on its accuracy."""

    max_cost: float
    alpha: float
    candidates: int  # points within the budget
    chosen: int | None  # None: no point is within the budget
    accuracy: float | None
    accuracy_lower: float | None  # one-sided (1 - alpha), Bonferroni over the candidates
    interval: tuple[float, float] | None  # two-sided 95 % Wilson, for display


def most_accurate_within(outcomes: Outcomes, max_cost: float, alpha: float) -> Budget:
    """The most accurate point whose communication cost is at most ``max_cost``.

    Its accuracy's lower bound is Clopper-Pearson at ``alpha / c`` (c: the
    points within budget), so it holds for the *picked* point too (the
    maximum of c estimates is biased upwards; the union bound covers all c).
    Costs are measured on the same images (a property of the edge only).
    """
    if not math.isfinite(max_cost) or max_cost < 0:
        raise ConfigError(f"--max-cost must be a communication cost >= 0, got {max_cost}")
    check_risk(alpha)
    costs = outcomes.costs()
    correct = outcomes.correct.sum(axis=1)
    inside = np.flatnonzero(costs <= max_cost + 1e-12)
    if inside.size == 0:
        return Budget(max_cost, alpha, 0, None, None, None, None)
    best = int(inside[np.lexsort((costs[inside], -correct[inside]))[0]])
    n, k = outcomes.images, int(correct[best])
    lower = clopper_pearson_lower(k, n, alpha / inside.size)
    return Budget(
        max_cost, alpha, int(inside.size), best, k / n if n else None, lower,
        wilson_interval(k, n) if n else None,
    )  # fmt: skip
