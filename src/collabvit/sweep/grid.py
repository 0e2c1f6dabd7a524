"""The grid of a sweep: series of operating points, and the points they resolve to.

A :class:`Series` is ``thresholds x etas`` for one score, rule and measure;
a :class:`SweepGrid` is a tuple of series plus the Fig. 14 encoder comparison.
After the edge pass (:mod:`.resolve`) every series becomes :class:`GridPoint`
values, and each point's patches come from one :class:`SelectionKey`.

Whole images are the selection rule ``all`` (every patch, no threshold): a
series ``Series("all", measure="min-entropy", etas=...)`` is the gate alone.
Grids written before that rule existed (``rule = "top-k"`` or ``"random"``
with ``thresholds = "all"``) still parse and mean rule ``all``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..attention import SCORES, get_score
from ..errors import ConfigError
from ..gating import MEASURES, get_measure
from ..selection import RULES, get_rule
from . import grid_file
from .paper import PAPER_DELTA_SUMS, PAPER_ETAS

if TYPE_CHECKING:
    from ..pipeline import OperatingPoint

__all__ = [
    "ALL",
    "AUTO",
    "EDGE",
    "SERVER",
    "WHOLE_IMAGE",
    "FrontierSpec",
    "GridPoint",
    "SelectionKey",
    "Series",
    "SweepGrid",
]

AUTO = "auto"
"""Thresholds or etas derived from the data after the edge pass."""
ALL = "all"
"""The whole-image selection rule (and the legacy thresholds value meaning it)."""
EDGE = "edge"
SERVER = "server"
"""Whose mean attention picks the patches: the edge's (the method) or the server's (Fig. 14)."""


@dataclass(frozen=True)
class Series:
    """One family of grid points: ``thresholds x etas`` for one score, rule and measure.

    ``thresholds`` is a list of the rule's parameter (k for ``top-k`` and
    ``random``, delta for ``threshold``, delta_sum for ``attention-sum``;
    default Table II), empty for a rule without one (``all``), or ``"auto"``
    for a rule with :attr:`~collabvit.selection.Rule.auto`: values matching the
    mean patch counts of attention-sum at the grid's reference delta_sums on
    this data (``count``: k = rounded mean count; ``quantile``: the score that
    keeps the same share of all patches). ``"all"`` with a count rule (the
    form before rule ``all`` existed) means rule ``all``.

    ``etas`` is a list, or ``"auto"``: for min-entropy the grid's reference
    etas, for any other gate the values giving the same transmit ratios as
    min-entropy at the reference etas. A measure that does not gate (``none``)
    has the one eta 0, unused.
    """

    rule: str = "attention-sum"
    thresholds: tuple[float, ...] | str | None = None
    measure: str = "none"
    etas: tuple[float, ...] | str = (0.0,)
    score: str = "mean"

    def __post_init__(self) -> None:
        get_score(self.score)
        get_rule(self.rule)
        get_measure(self.measure)
        if self.thresholds == ALL and get_rule(self.rule).count and ALL in RULES:
            object.__setattr__(self, "rule", ALL)  # every patch of a count rule: whole images
        object.__setattr__(self, "thresholds", _thresholds(self.rule, self.thresholds))
        if not get_measure(self.measure).gates:
            object.__setattr__(self, "etas", (0.0,))
        elif isinstance(self.etas, str):
            if self.etas != AUTO:
                raise ConfigError(f"etas must be a list of numbers or 'auto', got {self.etas!r}")
        else:
            etas = grid_file.floats(f"{self.measure} etas", self.etas, None)
            object.__setattr__(self, "etas", etas)

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "rule": self.rule,
            "thresholds": _listed(self.thresholds),
            "measure": self.measure,
            "etas": _listed(self.etas),
        }


def _listed(values: tuple[float, ...] | str | None) -> list[float] | str:
    return values if isinstance(values, str) else list(values or ())


def _thresholds(name: str, values: tuple[float, ...] | str | None) -> tuple[float, ...] | str:
    """A series' thresholds checked against its rule (see :class:`Series`)."""
    rule = get_rule(name)
    if not rule.parameter:
        if values not in (None, ALL, ()):
            raise ConfigError(f"rule {name} ({rule.label}) takes no thresholds, got {values!r}")
        return ()
    if values is None:
        return PAPER_DELTA_SUMS
    if isinstance(values, str):
        if values != AUTO or rule.auto is None:
            auto = ", ".join(r.name for r in RULES.values() if r.auto)
            counts = ", ".join(r.name for r in RULES.values() if r.count)
            raise ConfigError(
                f"thresholds {values!r} is not available for rule {name}: 'auto' works for "
                f"{auto}; 'all' (with {counts}) means rule {ALL}"
            )
        return values
    checked = grid_file.floats(f"{name} thresholds", values)
    for v in checked:
        rule.check(v)
    return checked


@dataclass(frozen=True)
class FrontierSpec:
    """The family the trade-off figure draws as its lines (the paper's Figs. 8/9).

    The frontier itself and ``best`` are taken over every edge grid point
    (:mod:`collabvit.metrics`); this only says which series are drawn in colour.
    """

    score: str = "mean"
    rule: str = "attention-sum"
    measures: tuple[str, ...] = ("min-entropy", "none")

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise ConfigError(f"frontier score {self.score!r}: use one of {', '.join(SCORES)}")
        if self.rule not in RULES:
            raise ConfigError(f"frontier rule {self.rule!r}: use one of {', '.join(RULES)}")
        measures = (self.measures,) if isinstance(self.measures, str) else tuple(self.measures)
        for m in measures:
            if m not in MEASURES:
                raise ConfigError(f"frontier measure {m!r}: use one of {', '.join(MEASURES)}")
        object.__setattr__(self, "measures", measures)

    def matches(self, row: Mapping[str, Any]) -> bool:
        """Whether a results row belongs to the family."""
        return (
            row.get("kind") == "grid"
            and row.get("encoder") == EDGE
            and row.get("score") == self.score
            and row.get("rule") == self.rule
            and row.get("measure") in self.measures
        )

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "rule": self.rule, "measures": list(self.measures)}


@dataclass(frozen=True)
class SweepGrid:
    """A sweep grid: series of points plus the Fig. 14 encoder comparison.

    ``encoder_thresholds``: attention-sum delta_sums at which the server's own
    mean attention (on the full image) selects the patches, no gating (Fig. 14);
    empty to skip the extra server pass. ``include_crossing`` and ``seed``
    apply to every point (see :class:`collabvit.pipeline.OperatingPoint`).
    """

    series: tuple[Series, ...]
    encoder_thresholds: tuple[float, ...] = ()
    reference_delta_sums: tuple[float, ...] = PAPER_DELTA_SUMS
    reference_etas: tuple[float, ...] = PAPER_ETAS
    include_crossing: bool = False
    seed: int = 0
    frontier: FrontierSpec = field(default_factory=FrontierSpec)

    def __post_init__(self) -> None:
        object.__setattr__(self, "series", tuple(self.series))
        if not self.series and not self.encoder_thresholds:
            raise ConfigError("the grid has no series and no encoder thresholds: nothing to do")
        enc = tuple(self.encoder_thresholds)
        floats = grid_file.floats
        enc = floats("encoder_thresholds", enc) if enc else ()
        object.__setattr__(self, "encoder_thresholds", enc)
        deltas = floats("reference_delta_sums", tuple(self.reference_delta_sums))
        object.__setattr__(self, "reference_delta_sums", deltas)
        etas = floats("reference_etas", tuple(self.reference_etas), None)
        object.__setattr__(self, "reference_etas", etas)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")

    @classmethod
    def paper(cls) -> SweepGrid:
        """The paper's grids (Figs. 7-14, Tables II-III); about 71 selections per image."""
        d = PAPER_DELTA_SUMS
        return cls(
            series=(
                Series("attention-sum", d, "min-entropy", PAPER_ETAS),  # Fig. 8/9, Table III
                Series("attention-sum", d, "none"),  # no gating, Table II, Figs. 11/12/14
                Series("attention-sum", d, "none", score="rollout"),  # Fig. 11
                Series("attention-sum", d, "none", score="rollout-standard"),  # Fig. 11
                Series("top-k", AUTO, "none"),  # Figs. 10, 12
                Series("threshold", AUTO, "none"),  # Fig. 12
                Series("random", AUTO, "none"),  # Fig. 10 (MOT-style)
                Series(ALL, measure="none"),  # server only
                Series(ALL, measure="min-entropy", etas=AUTO),  # Fig. 13
                Series(ALL, measure="shannon", etas=AUTO),  # Fig. 13
                Series(ALL, measure="margin", etas=AUTO),  # Fig. 13
            ),
            encoder_thresholds=d,  # Fig. 14
        )

    @classmethod
    def small(cls) -> SweepGrid:
        """A fast demo grid (at most 13 selections per image): Figs. 7, 8, 10, 12, 13."""
        d = (0.9, 0.95, 0.97, 0.99)
        etas = (0.2, 0.6, 1.0)
        return cls(
            series=(
                Series("attention-sum", d, "min-entropy", etas),
                Series("attention-sum", d, "none"),
                Series("top-k", AUTO, "none"),
                Series("random", AUTO, "none"),
                Series(ALL, measure="none"),
                Series(ALL, measure="min-entropy", etas=AUTO),
                Series(ALL, measure="shannon", etas=AUTO),
            ),
            reference_delta_sums=d,
            reference_etas=etas,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SweepGrid:
        """A grid from the TOML schema of ``docs/sweep.md`` (already parsed)."""
        kwargs = grid_file.top_level_kwargs(data)
        base_name = data.get("base", "paper")
        presets = {"paper": cls.paper, "small": cls.small}
        if base_name == "none":
            if "series" not in data and "encoder_thresholds" not in data:
                raise ConfigError("base = 'none' needs [[series]] or encoder_thresholds")
            base: dict[str, Any] = {"series": (), "encoder_thresholds": ()}
        elif base_name in presets:
            b = presets[base_name]()
            base = {
                "series": b.series,
                "encoder_thresholds": b.encoder_thresholds,
                "reference_delta_sums": b.reference_delta_sums,
                "reference_etas": b.reference_etas,
            }
        else:
            raise ConfigError(f"grid base {base_name!r}: use paper, small or none")
        if "series" in data:
            items = data["series"]
            if not isinstance(items, list):
                raise ConfigError("series must be an array of tables ([[series]])")
            base["series"] = tuple(
                Series(**grid_file.series_kwargs(item, i)) for i, item in enumerate(items)
            )
        if "frontier" in data:
            base["frontier"] = FrontierSpec(**grid_file.frontier_kwargs(data["frontier"]))
        return cls(**(base | kwargs))

    @classmethod
    def from_toml(cls, path: str | Path) -> SweepGrid:
        """Read a grid file (schema in ``docs/sweep.md``)."""
        return cls.from_dict(grid_file.read_toml(path))

    @classmethod
    def named(cls, spec: str) -> SweepGrid:
        """``paper``, ``small`` or the path of a TOML grid file."""
        if spec == "paper":
            return cls.paper()
        if spec == "small":
            return cls.small()
        return cls.from_toml(spec)

    def to_dict(self) -> dict[str, Any]:
        return {
            "series": [s.to_dict() for s in self.series],
            "encoder_thresholds": list(self.encoder_thresholds),
            "reference_delta_sums": list(self.reference_delta_sums),
            "reference_etas": list(self.reference_etas),
            "include_crossing": self.include_crossing,
            "seed": self.seed,
            "frontier": self.frontier.to_dict(),
        }

    def edge_scores(self) -> tuple[str, ...]:
        """The edge patch scores this grid needs, in :data:`~collabvit.attention.SCORES` order."""
        wanted = {s.score for s in self.series}
        return tuple(s for s in SCORES if s in wanted)


@dataclass(frozen=True)
class SelectionKey:
    """One selection: whose scores (encoder and score), which rule, which parameter.

    Every image of a sweep gets one keep mask per key; a key without a score
    (``score=None``) needs none (:data:`WHOLE_IMAGE`, for server-only accuracy).
    """

    encoder: str
    score: str | None
    rule: str
    threshold: float | None  # None: the rule takes no parameter


WHOLE_IMAGE = SelectionKey(EDGE, None, ALL, None)
"""Every patch of every image: the server alone on the full image."""


@dataclass(frozen=True)
class GridPoint:
    """One resolved point. ``encoder`` says whose mean attention picks the patches."""

    score: str
    rule: str
    threshold: float | None  # None: the rule takes no parameter (``all``)
    measure: str
    eta: float
    encoder: str = EDGE

    @property
    def selection(self) -> SelectionKey:
        """The keep masks this point sends."""
        return SelectionKey(self.encoder, self.score, self.rule, self.threshold)

    def operating_point(self, include_crossing: bool = False, seed: int = 0) -> OperatingPoint:
        """The same point for :func:`collabvit.engine.evaluate`."""
        from ..pipeline import OperatingPoint  # torch: only when a point is evaluated

        if self.encoder != EDGE:
            raise ConfigError("server-encoder points have no collaborative operating point")
        threshold = 0.0 if self.threshold is None else self.threshold
        return OperatingPoint(
            self.score, self.rule, threshold, self.measure, self.eta, include_crossing, seed
        )
