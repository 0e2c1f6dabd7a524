"""Resolve a grid into points on this data: ``"auto"`` thresholds and etas become numbers.

- A rule with :attr:`~collabvit.selection.Rule.auto` ``"count"`` (top-k,
  random) gets k = the rounded mean patch count of the reference rule
  (attention-sum) at each reference delta_sum; ``"quantile"`` (threshold) gets
  the score value that keeps the same share of all patches.
- A gate measure gets the reference etas when it is the reference measure
  (min-entropy), else the etas at which it transmits the same share of images
  as the reference measure does at each reference eta
  (:func:`collabvit.gating.eta_for_ratio`).
- A rule without a parameter (``all``) has no threshold; a measure that does
  not gate (``none``) has the one eta 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError
from ..gating import eta_for_ratio, get_measure, transmit_mask
from ..selection import Rule, get_rule, select_patches
from .edge_pass import EdgeData
from .grid import AUTO, SERVER, GridPoint, Series, SweepGrid
from .paper import REFERENCE_MEASURE, REFERENCE_RULE

__all__ = ["resolve_points"]


class _Resolver:
    """The reference numbers of one grid on one edge pass, computed when first needed."""

    def __init__(self, grid: SweepGrid, edge: EdgeData) -> None:
        self.grid = grid
        self.edge = edge
        self.derived: dict[str, Any] = {}
        self._counts: dict[str, list[float]] = {}
        self._ratios: list[float] | None = None

    def mean_counts(self, score: str) -> list[float]:
        """Mean patches the reference rule keeps per reference delta_sum (no gating)."""
        if score not in self._counts:
            t = self.edge.scores[score]
            deltas = self.grid.reference_delta_sums
            self._counts[score] = [
                float(
                    select_patches(t, REFERENCE_RULE, d, self.grid.include_crossing)
                    .num_patches.astype(np.float64)
                    .mean()
                )
                for d in deltas
            ]
            key = f"{REFERENCE_RULE.replace('-', '_')}_mean_patches[{score}]"
            self.derived[key] = dict(zip(deltas, self._counts[score], strict=True))
        return self._counts[score]

    def reference_ratios(self) -> list[float]:
        """The reference measure's transmit ratio at each reference eta."""
        if self._ratios is None:
            v = self.edge.values[REFERENCE_MEASURE]
            etas = self.grid.reference_etas
            self._ratios = [
                float(transmit_mask(v, REFERENCE_MEASURE, e).astype(np.float64).mean())
                for e in etas
            ]
            key = f"{REFERENCE_MEASURE.replace('-', '_')}_transmit_ratio"
            self.derived[key] = dict(zip(etas, self._ratios, strict=True))
        return self._ratios

    def thresholds(self, s: Series) -> list[float | None]:
        rule = get_rule(s.rule)
        if not rule.parameter:
            return [None]
        if s.thresholds != AUTO:
            assert not isinstance(s.thresholds, str) and s.thresholds is not None
            return list(s.thresholds)
        values = sorted(set(self._auto_thresholds(rule, s.score)))
        self.derived[f"{s.rule}[{s.score}]"] = values
        return list(values)

    def _auto_thresholds(self, rule: Rule, score: str) -> list[float]:
        counts = self.mean_counts(score)
        if rule.auto == "count":
            return [float(max(round(c), 1)) for c in counts]
        if rule.auto == "quantile":
            n = len(self.edge.positions)
            flat = np.sort(self.edge.scores[score].reshape(-1))[::-1]
            return [float(flat[min(max(round(c * n), 1), flat.size) - 1]) for c in counts]
        raise ConfigError(f"rule {rule.name}: unknown auto kind {rule.auto!r}")

    def etas(self, s: Series) -> list[float]:
        if not get_measure(s.measure).gates:
            return [0.0]
        if s.etas != AUTO:
            assert not isinstance(s.etas, str)
            return list(s.etas)
        if s.measure == REFERENCE_MEASURE:
            return list(self.grid.reference_etas)
        values = self.edge.values[s.measure]
        etas = sorted({eta_for_ratio(values, s.measure, r) for r in self.reference_ratios()})
        self.derived[f"etas[{s.measure}]"] = etas
        return etas


def resolve_points(grid: SweepGrid, edge: EdgeData) -> tuple[list[GridPoint], dict[str, Any]]:
    """Every point of the grid in grid order (duplicates dropped), and the derived values."""
    resolver = _Resolver(grid, edge)
    points: list[GridPoint] = []
    seen: set[GridPoint] = set()

    def add(p: GridPoint) -> None:
        if p not in seen:
            seen.add(p)
            points.append(p)

    for s in grid.series:
        thresholds = resolver.thresholds(s)
        etas = resolver.etas(s)
        for t in thresholds:
            for e in etas:
                add(GridPoint(s.score, s.rule, t, s.measure, e))
    for t in grid.encoder_thresholds:  # Fig. 14: the server's own mean attention picks
        add(GridPoint("mean", REFERENCE_RULE, t, "none", 0.0, SERVER))
    return points, resolver.derived
