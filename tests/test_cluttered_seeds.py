"""The cluttered pair's headline is a property of the pair, not of one draw of clutter.

The demo's figures come from the seed-0 canvases of the 10,000 shipped test
garments. Rendered again with seed 1 (every garment elsewhere, among other
fragments), edge-only, server-only and collaborative accuracy at the demo's
chosen point (recorded in the shipped model card) must each move by less than
1.5 points; seed 0 must reproduce the recorded figures.
"""

from __future__ import annotations

import pytest

from collabvit.fmnist import named_samples
from collabvit.models import load_model
from collabvit.sweep import Series, SweepGrid, run_sweep

MAX_MOVE_POINTS = 1.5


def _headline(seed: int, point: dict[str, object]) -> tuple[float, float, float]:
    edge, server = load_model("cfmnist-tiny"), load_model("cfmnist-base")
    rule, measure, eta = str(point["rule"]), str(point["measure"]), float(point["eta"])  # type: ignore[arg-type]
    thresholds = () if point["threshold"] is None else (float(point["threshold"]),)  # type: ignore[arg-type]
    grid = SweepGrid(
        series=(Series(rule, thresholds, measure, (eta,), score=str(point["score"])),),
        reference_etas=(eta,),
    )
    samples = named_samples(f"cfmnist:{seed}")
    assert samples is not None and len(samples) == 10_000
    result = run_sweep(edge, server, samples, grid, batch_size=500)
    (row,) = result.grid_rows()
    assert result.edge_accuracy is not None and result.server_accuracy is not None
    assert row.accuracy is not None
    return 100 * result.edge_accuracy, 100 * result.server_accuracy, 100 * row.accuracy


def test_headline_accuracies_move_less_than_a_point_and_a_half_with_the_clutter_seed(
    one_thread: None,
) -> None:
    demo = load_model("cfmnist-base").extra["documented"]["demo"]
    seed0 = _headline(0, demo)
    recorded = (demo["edge_accuracy"], demo["server_accuracy"], demo["accuracy"])
    assert seed0 == pytest.approx(tuple(100 * a for a in recorded), abs=1e-6)
    seed1 = _headline(1, demo)
    moves = [abs(a - b) for a, b in zip(seed0, seed1, strict=True)]
    assert max(moves) < MAX_MOVE_POINTS, (seed0, seed1)
