"""collabvit.pipeline: Algorithm 1's edge steps (2-5) and server steps (6-9) on real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from collabvit.data import discover, iter_batches
from collabvit.errors import ConfigError
from collabvit.gating import transmit_mask, uncertainty
from collabvit.models import forward_subset, forward_with_scores, load_model
from collabvit.pipeline import OperatingPoint, check_pair, classify_on_server, decide_on_edge
from collabvit.selection import select_patches

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def batch(small_pair: tuple[Path, Path], photo_dir: Path):  # type: ignore[no-untyped-def]
    edge = load_model(str(small_pair[0]))
    server = load_model(str(small_pair[1]))
    samples, _ = discover(photo_dir, photo_dir / "labels.csv")
    (first,) = list(iter_batches(samples, edge.preprocessing, len(samples)))
    return edge, server, first


@pytest.mark.parametrize(
    "point",
    [
        OperatingPoint(rule="attention-sum", threshold=0.9, measure="min-entropy", eta=0.0),
        OperatingPoint(rule="top-k", threshold=5, measure="none"),
        OperatingPoint(rule="all", measure="shannon", eta=9.9),
        OperatingPoint(rule="random", threshold=7, measure="margin", eta=1.0, seed=3),
    ],
)
def test_decide_on_edge_is_the_composition_of_the_pure_steps(batch, point: OperatingPoint) -> None:  # type: ignore[no-untyped-def]
    edge, _server, b = batch
    decided = decide_on_edge(edge, b.pixels, b.samples, point)
    logits, scores = forward_with_scores(edge, edge.normalise(b.pixels), (point.score,))
    values = uncertainty(logits, point.measure)
    sent = transmit_mask(values, point.measure, point.eta)
    assert np.array_equal(decided.transmitted, sent)
    assert np.array_equal(decided.uncertainty, values)
    assert decided.edge_pred.tolist() == logits.argmax(-1).tolist()
    assert decided.rows == np.flatnonzero(sent).tolist()
    if decided.rows:
        ids = np.asarray([s.index for s in b.samples])[decided.rows]
        want = select_patches(
            scores[point.score][decided.rows], point.rule, point.threshold, False, point.seed, ids
        )
        assert decided.selection is not None
        assert np.array_equal(decided.selection.keep_mask, want.keep_mask)
    else:
        assert decided.selection is None


def test_classify_on_server_runs_on_the_kept_patches(batch) -> None:  # type: ignore[no-untyped-def]
    edge, server, b = batch
    check_pair(edge, server)
    keep = np.zeros((len(b.samples), server.num_patches), dtype=bool)
    keep[:, :10] = True
    got = classify_on_server(server, b.pixels, keep)
    want = forward_subset(server, server.normalise(b.pixels), torch.from_numpy(keep))
    torch.testing.assert_close(got, want)
    assert got.shape == (len(b.samples), server.num_classes)


def test_the_all_rule_needs_no_threshold_and_bad_points_are_config_errors() -> None:
    assert OperatingPoint(rule="all", threshold=123.0).rule == "all"
    for bad in ({"rule": "attention-sum", "threshold": 1.5}, {"eta": float("nan")}):
        with pytest.raises(ConfigError):
            OperatingPoint(**bad)  # type: ignore[arg-type]
