"""A new selection rule or gate measure is one table entry: the sweep picks it up unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from collabvit import gating, selection
from collabvit.data import Sample, discover
from collabvit.engine import evaluate
from collabvit.models import LoadedModel, load_model
from collabvit.report import write_outputs
from collabvit.sweep import Series, SweepGrid, iter_points, run_sweep

BATCH = 4


@pytest.fixture(scope="module")
def pair(small_pair: tuple[Path, Path], one_thread: None) -> tuple[LoadedModel, LoadedModel]:
    edge_json, server_json = small_pair
    return load_model(str(edge_json)), load_model(str(server_json))


@pytest.fixture(scope="module")
def samples(photo_dir: Path) -> list[Sample]:
    found, _ = discover(photo_dir, photo_dir / "labels.csv", limit=8)
    return found


def _left_half(scores: object, k: float, options: object = None) -> np.ndarray:
    """The first k patches in raster order, whatever the scores (a dummy rule)."""
    s = selection.as_numpy(scores)
    mask = np.zeros(s.shape, dtype=bool)
    mask[:, : int(k)] = True
    return mask


def _top_probability(logits: object) -> np.ndarray:
    """The edge's top-1 probability (a dummy gate: transmits when it is >= eta)."""
    return np.asarray(gating.probabilities(logits).max(axis=-1))


def test_a_new_rule_is_one_table_entry(
    pair: tuple[LoadedModel, LoadedModel],
    samples: list[Sample],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rule = selection.Rule("first-k", _left_half, "k", count=True, auto="count", label="first k")
    monkeypatch.setitem(selection.RULES, "first-k", rule)
    edge, server = pair
    grid = SweepGrid(series=(Series("first-k", (5, 20), "min-entropy", (0.0, 20.0)),))
    result = run_sweep(edge, server, samples, grid, batch_size=BATCH)
    rows = result.grid_rows()
    assert {r.rule for r in rows} == {"first-k"}
    assert sorted({r.mean_patches_transmitted for r in rows if r.transmit_ratio == 1.0}) == [5, 20]
    for p, _ in iter_points(result):  # its records are evaluate's, through the same table
        ref = evaluate(edge, server, samples, p.operating_point(), batch_size=BATCH)
        assert result.records(p) == ref.records
    auto = run_sweep(edge, server, samples, SweepGrid(series=(Series("first-k", "auto"),)))
    assert auto.grid_rows() and all(r.threshold >= 1 for r in auto.grid_rows())  # type: ignore[operator]
    files = write_outputs(result, tmp_path, figures=True)
    assert (tmp_path / "figures" / "tradeoff.png") in files


def test_a_new_measure_is_one_table_entry(
    pair: tuple[LoadedModel, LoadedModel],
    samples: list[Sample],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    measure = gating.Measure("top-probability", _top_probability, label="top-1 probability")
    monkeypatch.setitem(gating.MEASURES, "top-probability", measure)
    edge, server = pair
    grid = SweepGrid(
        series=(
            Series("all", measure="top-probability", etas=(0.0, 1.1)),
            Series("all", measure="top-probability", etas="auto"),  # matched to min-entropy
        )
    )
    cache = tmp_path / "cache"
    result = run_sweep(edge, server, samples, grid, batch_size=BATCH, cache_dir=cache)
    rows = result.grid_rows()
    assert {r.measure for r in rows} == {"top-probability"}
    ratio = {r.eta: r.transmit_ratio for r in rows}
    assert ratio[0.0] == 1.0 and ratio[1.1] == 0.0  # transmitted when the statistic >= eta
    assert len(ratio) > 2  # "auto" etas were derived for it
    assert "etas[top-probability]" in result.meta["derived"]
    for p, _ in iter_points(result):
        ref = evaluate(edge, server, samples, p.operating_point(), batch_size=BATCH)
        assert result.records(p) == ref.records
    again = run_sweep(edge, server, samples, grid, batch_size=BATCH, cache_dir=cache)
    assert again.stats.edge_images == 0  # its statistic is cached like every gate's
    assert again.rows == result.rows
    files = write_outputs(result, tmp_path / "out", figures=True)
    assert (tmp_path / "out" / "figures" / "measures.png") in files
