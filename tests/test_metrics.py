"""Tests of collabvit.metrics on hand-made arrays (paper Sec. VI-A metrics)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from collabvit.cost import vit_flops
from collabvit.metrics import (
    ImageRecord,
    Summary,
    accuracy,
    cheapest_within,
    pareto_frontier,
    summarise,
    summarise_records,
)

N = 16  # patches per image
# Five images: 0 and 4 kept on the edge, 1-3 sent with 4, 2 and 16 patches; image 2 unlabelled.
LABELS = np.array([3, 1, -1, 2, 0])
EDGE = np.array([3, 0, 5, 1, 0])  # correct on 0 and 4 of the labelled 0, 1, 3, 4
FINAL = np.array([3, 1, 5, 1, 0])  # the server fixes image 1: correct on 0, 1, 4
SENT = np.array([False, True, True, True, False])
PATCHES = np.array([0, 4, 2, 16, 9])  # 9 on a kept image is never read
NBYTES = np.array([999, 100, 60, 400, 999])  # bytes of kept images are never read
RAISED = np.array([True, True, False, False, False])  # only image 1 counts (image 0 kept)
FLOPS = np.arange(N + 1, dtype=np.float64) ** 2  # flops_table[k] = k^2


def _summary(**overrides: Any) -> Summary:
    args: dict[str, Any] = {
        "labels": LABELS,
        "edge_pred": EDGE,
        "final_pred": FINAL,
        "transmitted": SENT,
        "num_patches": PATCHES,
        "patches_per_image": N,
        "flops_table": FLOPS,
        "nbytes": NBYTES,
        "raised": RAISED,
    }
    args.update(overrides)
    return summarise(**args)


# ----------------------------------------------------------------------------- accuracy


def test_accuracy_counts_only_labelled_images() -> None:
    assert accuracy([1, 2, 3], [1, -1, 0]) == 0.5
    assert accuracy(np.array([4, 4]), np.array([4, 4])) == 1.0
    assert accuracy([1, 2], [-1, -1]) is None
    assert accuracy([], []) is None


# ----------------------------------------------------------------------------- summarise


def test_summarise_by_hand() -> None:
    s = _summary()
    assert s.images == 5
    assert s.accuracy == 0.75  # 3 of the 4 labelled images
    assert s.edge_accuracy == 0.5  # 2 of the 4
    assert s.transmit_ratio == 0.6  # 3 of 5
    assert s.mean_patches_transmitted == 22 / 3  # (4 + 2 + 16) / 3
    assert s.mean_patches_all == 22 / 5
    assert s.communication_cost == 22 / (5 * N)
    assert s.server_flops_ratio == (16 + 4 + 256) / (5 * 256)  # sum k^2 over 5 whole images
    assert s.bytes_per_image == 560 / 5
    assert s.bytes_per_transmitted_image == 560 / 3
    assert s.raised_to_one_patch == 1


def test_summarise_flops_ratio_from_an_eq9_table() -> None:
    table = np.asarray(vit_flops(np.arange(N + 1), 192), dtype=np.float64)
    s = _summary(flops_table=table)
    full = 144 * N * 192**2 + 24 * N**2 * 192
    expected = sum(144 * k * 192**2 + 24 * k**2 * 192 for k in (4, 2, 16)) / (5 * full)
    assert s.server_flops_ratio == pytest.approx(expected, rel=1e-12)
    every = _summary(flops_table=table, transmitted=np.ones(5, bool), num_patches=np.full(5, N))
    assert every.server_flops_ratio == 1.0
    assert every.communication_cost == 1.0
    assert every.transmit_ratio == 1.0


def test_summarise_optional_parts_are_none_or_zero() -> None:
    s = _summary(flops_table=None, nbytes=None, raised=None)
    assert s.server_flops_ratio is None
    assert s.bytes_per_image is None
    assert s.bytes_per_transmitted_image is None
    assert s.raised_to_one_patch == 0
    assert s.accuracy == 0.75  # the rest is unchanged


def test_summarise_nothing_sent_and_nothing_labelled() -> None:
    s = _summary(transmitted=np.zeros(5, bool), labels=np.full(5, -1))
    assert s.accuracy is None
    assert s.edge_accuracy is None
    assert s.transmit_ratio == 0.0
    assert s.mean_patches_transmitted == 0.0
    assert s.mean_patches_all == 0.0
    assert s.communication_cost == 0.0
    assert s.server_flops_ratio == 0.0
    assert s.bytes_per_image == 0.0
    assert s.bytes_per_transmitted_image == 0.0
    assert s.raised_to_one_patch == 0


def test_summarise_no_images() -> None:
    empty = np.zeros(0, dtype=np.int64)
    s = summarise(empty, empty, empty, np.zeros(0, bool), empty, N, FLOPS, empty, None)
    assert s.images == 0
    assert s.accuracy is None
    assert s.transmit_ratio == 0.0
    assert s.communication_cost == 0.0
    assert s.server_flops_ratio is None
    assert s.bytes_per_image == 0.0


def test_summary_to_dict() -> None:
    d = _summary().to_dict()
    assert d["images"] == 5
    assert d["communication_cost"] == 22 / 80
    assert set(d) == {
        "images",
        "accuracy",
        "edge_accuracy",
        "transmit_ratio",
        "mean_patches_transmitted",
        "mean_patches_all",
        "communication_cost",
        "server_flops_ratio",
        "bytes_per_image",
        "bytes_per_transmitted_image",
        "raised_to_one_patch",
    }


# ----------------------------------------------------------------------------- records


def _records(with_bytes: bool) -> list[ImageRecord]:
    return [
        ImageRecord(
            index=i,
            file=f"img{i}.jpg",
            label=int(LABELS[i]),
            edge_pred=int(EDGE[i]),
            uncertainty=0.5,
            transmitted=bool(SENT[i]),
            num_patches=int(PATCHES[i]),
            server_pred=int(FINAL[i]) if SENT[i] else None,
            final_pred=int(FINAL[i]),
            bytes_sent=(int(NBYTES[i]) if SENT[i] else 0) if with_bytes else None,
        )
        for i in range(5)
    ]


def test_summarise_records_equals_summarise() -> None:
    assert summarise_records(_records(True), N, FLOPS) == _summary(raised=None)
    assert summarise_records(_records(False), N, FLOPS) == _summary(raised=None, nbytes=None)
    assert summarise_records(_records(False), N) == _summary(
        raised=None, nbytes=None, flops_table=None
    )


def test_summarise_records_reads_missing_bytes_as_zero() -> None:
    records = _records(True)
    records[2].bytes_sent = None  # one transmitted image without a measured size
    s = summarise_records(records, N)
    assert s.bytes_per_image == 500 / 5
    assert s.bytes_per_transmitted_image == 500 / 3


# ----------------------------------------------------------------------------- pareto frontier


def _row(name: str, cost: float, acc: float | None) -> dict[str, Any]:
    return {"name": name, "communication_cost": cost, "accuracy": acc}


def test_pareto_frontier_cheapest_first() -> None:
    rows = [
        _row("e", 0.4, 0.8),
        _row("d", 0.3, 0.65),  # beaten by b: cheaper and more accurate
        _row("c", 0.2, 0.6),  # as cheap as b, less accurate
        _row("b", 0.2, 0.7),
        _row("a", 0.1, 0.5),
        _row("a2", 0.1, 0.5),  # equal to a: not strictly better
        _row("f", 0.05, None),  # no accuracy: ignored
        {"name": "g", "communication_cost": 0.0},  # no accuracy key: ignored
        _row("h", 0.9, 0.8),  # as accurate as e, dearer
    ]
    frontier = pareto_frontier(rows)
    assert [r["name"] for r in frontier] == ["a", "b", "e"]
    frontier[0]["name"] = "changed"  # copies, not the caller's rows
    assert rows[4]["name"] == "a"


def test_pareto_frontier_empty() -> None:
    assert pareto_frontier([]) == []
    assert pareto_frontier([_row("x", 0.1, None)]) == []


# ----------------------------------------------------------------------------- cheapest within


ROWS = [
    _row("a", 0.5, 0.80),
    _row("b", 0.2, 0.79),  # 1 point below 0.80
    _row("c", 0.2, 0.795),  # as cheap as b, more accurate
    _row("d", 0.1, 0.70),  # 10 points below
    _row("e", 0.05, None),
]


def test_cheapest_within_picks_the_cheapest_close_row_ties_to_the_more_accurate() -> None:
    best = cheapest_within(ROWS, 0.80, 1.0)
    assert best is not None
    assert best["name"] == "c"
    assert best["within_target"] is True
    assert best["target_drop_points"] == 1.0
    assert best["accuracy_drop_points"] == pytest.approx(0.5)
    assert best["communication_reduction"] == pytest.approx(0.8)
    assert "within_target" not in ROWS[2]  # the caller's row is not changed


def test_cheapest_within_boundary_is_inclusive() -> None:
    # 100 * (0.80 - 0.79) is 1.0000000000000009 in floats: still within 1 point
    best = cheapest_within([ROWS[0], ROWS[1]], 0.80, 1.0)
    assert best is not None
    assert best["name"] == "b"
    assert best["within_target"] is True
    # a wider drop reaches the cheapest row
    wide = cheapest_within(ROWS, 0.80, 10.0)
    assert wide is not None
    assert wide["name"] == "d"


def test_cheapest_within_full_ties_go_to_the_earlier_row() -> None:
    rows = [_row("first", 0.3, 0.9), _row("second", 0.3, 0.9)]
    best = cheapest_within(rows, 0.9, 0.5)
    assert best is not None
    assert best["name"] == "first"


def test_cheapest_within_falls_back_to_the_most_accurate() -> None:
    best = cheapest_within(ROWS, 0.90, 0.1)
    assert best is not None
    assert best["name"] == "a"
    assert best["within_target"] is False
    assert best["accuracy_drop_points"] == pytest.approx(10.0)
    assert best["communication_reduction"] == 0.5
    # equally accurate rows: the cheaper one
    rows = [_row("dear", 0.5, 0.8), _row("cheap", 0.3, 0.8)]
    fallback = cheapest_within(rows, 0.95, 1.0)
    assert fallback is not None
    assert fallback["name"] == "cheap"
    assert fallback["within_target"] is False


def test_cheapest_within_without_rows_is_none() -> None:
    assert cheapest_within([], 0.8, 1.0) is None
    assert cheapest_within([_row("x", 0.1, None)], 0.8, 1.0) is None
    assert cheapest_within(ROWS, None, 1.0) is None
