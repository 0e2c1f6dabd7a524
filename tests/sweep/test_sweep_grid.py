"""collabvit.sweep grids: presets, the TOML form, rule "all", and the one best-point rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from collabvit.errors import ConfigError
from collabvit.metrics import cheapest_within, pareto_frontier
from collabvit.sweep import (
    ALL,
    PAPER_DELTA_SUMS,
    PAPER_ETAS,
    GridPoint,
    ResultRow,
    SelectionKey,
    Series,
    SweepGrid,
)
from collabvit.sweep.grid import WHOLE_IMAGE
from collabvit.sweep.points import RESULT_FIELDS, best_point


def test_paper_grid_defaults() -> None:
    grid = SweepGrid.paper()
    gated = [s for s in grid.series if s.measure == "min-entropy" and s.rule == "attention-sum"]
    assert gated[0].thresholds == PAPER_DELTA_SUMS
    assert gated[0].etas == PAPER_ETAS
    assert grid.encoder_thresholds == PAPER_DELTA_SUMS
    assert set(grid.edge_scores()) == {"mean", "rollout", "rollout-standard"}
    assert {s.rule for s in grid.series} == {"attention-sum", "top-k", "threshold", "random", ALL}
    assert {s.measure for s in grid.series} == {"min-entropy", "shannon", "margin", "none"}
    small = SweepGrid.small()
    assert small.edge_scores() == ("mean",) and not small.encoder_thresholds


def test_whole_images_are_rule_all() -> None:
    new = Series(ALL, measure="min-entropy", etas=(0.2, 0.6))
    assert (new.rule, new.thresholds, new.etas) == (ALL, (), (0.2, 0.6))
    for old_rule in ("top-k", "random"):  # grids written before rule "all" existed
        old = Series(old_rule, "all", "min-entropy", (0.2, 0.6))
        assert old == new
    parsed = SweepGrid.from_dict(
        {"base": "none", "series": [{"rule": "top-k", "thresholds": "all", "measure": "none"}]}
    )
    assert parsed.series == (Series(ALL),)
    assert SweepGrid.from_dict(SweepGrid.paper().to_dict() | {"base": "none"}) == SweepGrid.paper()
    with pytest.raises(ConfigError, match="takes no thresholds"):
        Series(ALL, (0.5,))
    with pytest.raises(ConfigError, match="not available"):
        Series("threshold", "all")
    point = GridPoint("mean", ALL, None, "min-entropy", 0.4)
    assert point.selection == SelectionKey("edge", "mean", ALL, None)
    assert point.operating_point().rule == ALL
    assert WHOLE_IMAGE.score is None and WHOLE_IMAGE.threshold is None


def test_grid_toml(tmp_path: Path) -> None:
    path = tmp_path / "grid.toml"
    path.write_text(
        """
base = "none"
seed = 7
reference_delta_sums = [0.9, 0.95]

[frontier]
measures = ["shannon"]

[[series]]
rule = "attention-sum"
thresholds = [0.9, 0.95]
measure = "shannon"
etas = [1.0, 2]

[[series]]
rule = "random"
thresholds = "auto"
"""
    )
    grid = SweepGrid.from_toml(path)
    assert grid.seed == 7 and grid.frontier.measures == ("shannon",)
    assert grid.series[0].etas == (1.0, 2.0)
    assert grid.series[1].thresholds == "auto" and grid.series[1].etas == (0.0,)
    assert grid.encoder_thresholds == ()
    assert SweepGrid.from_dict({"seed": 1}).series == SweepGrid.paper().series

    for bad, message in (
        ({"serie": []}, "unknown grid key"),
        ({"series": [{"rule": "attention-sum", "thresholds": "auto"}]}, "not available"),
        ({"series": [{"rule": "top-k", "thresholds": [-1]}]}, ">= 0"),
        ({"series": [{"rule": "attention-sum", "thresholds": [1.5]}]}, "<= 1"),
        ({"series": [{"measure": "entropy"}]}, "unknown measure"),
        ({"series": [{"rule": "best"}]}, "unknown selection rule"),
        ({"series": [{"measure": "shannon", "etas": "some"}]}, "etas"),
        ({"series": [{"rules": "top-k"}]}, "series 1: unknown key"),
        ({"base": "huge"}, "grid base"),
        ({"frontier": {"rules": "x"}}, "frontier"),
    ):
        with pytest.raises(ConfigError, match=message):
            SweepGrid.from_dict(bad)
    (tmp_path / "broken.toml").write_text("series = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        SweepGrid.from_toml(tmp_path / "broken.toml")


def _row(cost: float, acc: float | None, rule: str = "attention-sum", **kw: object) -> ResultRow:
    fields: dict[str, object] = dict.fromkeys(RESULT_FIELDS)
    fields.update(kind="grid", encoder="edge", score="mean", rule=rule, threshold=0.9,
                  measure="min-entropy", eta=0.5, images=10, transmit_ratio=1.0,
                  mean_patches_transmitted=1.0, mean_patches_all=1.0, codec="raw",
                  raised_to_one_patch=0, communication_cost=cost, accuracy=acc)  # fmt: skip
    fields.update(kw)
    return ResultRow(**fields)  # type: ignore[arg-type]


def test_frontier_and_best() -> None:
    rows = [
        _row(0.0, 0.70),
        _row(0.3, 0.80),
        _row(0.4, 0.79),  # dominated
        _row(0.5, 0.805),
        _row(0.9, 0.81),
        _row(0.9, 0.80),  # same cost, worse
        _row(0.2, None),  # unlabelled: ignored
    ]
    front = pareto_frontier(rows)
    assert [(r["communication_cost"], r["accuracy"]) for r in front] == [
        (0.0, 0.70),
        (0.3, 0.80),
        (0.5, 0.805),
        (0.9, 0.81),
    ]
    best = cheapest_within(rows, server_accuracy=0.815, drop_points=1.0)
    assert best is not None and best["communication_cost"] == 0.5 and best["within_target"]
    assert best["accuracy_drop_points"] == pytest.approx(1.0)
    strict = cheapest_within(rows, server_accuracy=0.9, drop_points=1.0)
    assert strict is not None and strict["accuracy"] == 0.81 and not strict["within_target"]
    assert cheapest_within(rows, None, 1.0) is None
    # the sweep's best: the same rule over every edge point, whole images included
    whole = _row(0.35, 0.81, rule=ALL, threshold=None)
    server_chosen = _row(0.1, 0.81, encoder="server")  # Fig. 14 points never are
    chosen = best_point([*rows, whole, server_chosen], 0.815, 1.0)
    assert chosen is not None and chosen.row == whole and chosen.within_target
    body = chosen.to_dict()
    assert body["rule"] == ALL and body["threshold"] is None
    assert body["communication_reduction"] == pytest.approx(0.65)
    assert dict(whole) == whole.to_dict() and list(whole) == list(RESULT_FIELDS)
