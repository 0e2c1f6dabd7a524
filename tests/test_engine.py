"""Tests of collabvit.engine.evaluate and ``collabvit evaluate`` on real photos.

The small random ViT pair (64x64 input, 8x8 patches: 64 patches per image) runs
on 16 real ImageNet photos; every record and summary value is checked against
its definition (paper Sec. VI-A, eq. 9).
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from collabvit.data import discover
from collabvit.engine import EvaluationResult, OperatingPoint, evaluate
from collabvit.errors import ConfigError
from collabvit.models import LoadedModel, load_model

NUM_IMAGES = 16
NUM_PATCHES = 64
CSV_COLUMNS = [
    "index",
    "file",
    "label",
    "edge_pred",
    "uncertainty",
    "transmitted",
    "num_patches",
    "server_pred",
    "final_pred",
]
JSON_KEYS = {
    "images",
    "edge_accuracy",
    "accuracy",
    "transmit_ratio",
    "mean_patches_transmitted",
    "communication_cost",
    "server_flops_ratio",
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pair(small_pair: tuple[Path, Path]) -> tuple[LoadedModel, LoadedModel]:
    return load_model(str(small_pair[0])), load_model(str(small_pair[1]))


@pytest.fixture(scope="module")
def samples(imagenet_dir: Path) -> list:
    found, _ = discover(imagenet_dir / "images", imagenet_dir / "labels.csv", limit=NUM_IMAGES)
    return found


@pytest.fixture(scope="module")
def median_eta(pair: tuple[LoadedModel, LoadedModel], samples: list) -> float:
    """An eta that splits the 16 photos: half kept on the edge, half transmitted."""
    point = OperatingPoint(measure="min-entropy", eta=0.0)  # everything transmitted
    result = evaluate(*pair, samples, point, batch_size=8)
    return statistics.median(r.uncertainty for r in result.records)


def _flops(server: LoadedModel, patches: int) -> float:
    """Eq. 9 generalised to the server's depth and MLP ratio, prefix tokens included."""
    n = patches + server.num_prefix_tokens
    d = server.embed_dim
    return server.depth * ((4 + 2 * server.mlp_ratio) * n * d**2 + 2 * n**2 * d)


def _check_definitions(result: EvaluationResult, server: LoadedModel) -> None:
    records, s = result.records, result.summary
    assert [r.index for r in records] == list(range(NUM_IMAGES))
    for r in records:
        if r.transmitted:
            assert r.server_pred is not None
            assert r.final_pred == r.server_pred
            assert 1 <= r.num_patches <= NUM_PATCHES
        else:
            assert r.server_pred is None
            assert r.final_pred == r.edge_pred
            assert r.num_patches == 0
    sent = [r for r in records if r.transmitted]
    total = sum(r.num_patches for r in records)
    assert s["images"] == NUM_IMAGES
    assert s["transmit_ratio"] == len(sent) / NUM_IMAGES
    assert s["communication_cost"] == pytest.approx(total / (NUM_IMAGES * NUM_PATCHES))
    assert s["mean_patches_transmitted"] == pytest.approx(total / len(sent) if sent else 0.0)
    assert s["edge_accuracy"] == pytest.approx(
        sum(r.edge_pred == r.label for r in records) / NUM_IMAGES
    )
    assert s["accuracy"] == pytest.approx(
        sum(r.final_pred == r.label for r in records) / NUM_IMAGES
    )
    full = _flops(server, NUM_PATCHES)
    assert s["server_flops_ratio"] == pytest.approx(
        sum(_flops(server, r.num_patches) for r in sent) / (NUM_IMAGES * full)
    )
    assert s["num_patches_per_image"] == NUM_PATCHES
    assert s["skipped_files"] == 0


def test_records_obey_the_definitions(
    pair: tuple[LoadedModel, LoadedModel], samples: list, median_eta: float
) -> None:
    point = OperatingPoint(
        rule="attention-sum", threshold=0.5, measure="min-entropy", eta=median_eta
    )
    result = evaluate(*pair, samples, point, batch_size=5)
    _check_definitions(result, pair[1])
    sent = [r.transmitted for r in result.records]
    assert any(sent) and not all(sent)  # the median eta splits the photos
    for r in result.records:
        assert r.transmitted == (r.uncertainty >= median_eta)  # eq. 11, inclusive
    # attention-sum 0.5 keeps fewer than all patches: the cost drops below the transmit ratio
    assert result.summary["communication_cost"] < result.summary["transmit_ratio"]
    assert result.summary["server_flops_ratio"] < result.summary["transmit_ratio"]


def test_measure_none_transmits_every_image(
    pair: tuple[LoadedModel, LoadedModel], samples: list
) -> None:
    point = OperatingPoint(rule="top-k", threshold=NUM_PATCHES, measure="none")
    result = evaluate(*pair, samples, point, batch_size=16)
    _check_definitions(result, pair[1])
    assert all(r.transmitted for r in result.records)
    assert all(r.num_patches == NUM_PATCHES for r in result.records)
    assert result.summary["transmit_ratio"] == 1.0
    assert result.summary["communication_cost"] == 1.0
    assert result.summary["server_flops_ratio"] == pytest.approx(1.0)


def test_top_k_sends_exactly_k(pair: tuple[LoadedModel, LoadedModel], samples: list) -> None:
    point = OperatingPoint(rule="top-k", threshold=10, measure="none", score="rollout")
    result = evaluate(*pair, samples, point, batch_size=16)
    _check_definitions(result, pair[1])
    assert {r.num_patches for r in result.records} == {10}
    assert result.summary["communication_cost"] == 10 / 64
    assert result.summary["raised_to_one_patch"] == 0


def test_random_rule_does_not_depend_on_the_batch_size(
    pair: tuple[LoadedModel, LoadedModel], samples: list
) -> None:
    point = OperatingPoint(rule="random", threshold=12, measure="none", seed=3)
    a = evaluate(*pair, samples, point, batch_size=3)
    b = evaluate(*pair, samples, point, batch_size=16)
    assert [r.server_pred for r in a.records] == [r.server_pred for r in b.records]
    assert {r.num_patches for r in a.records} == {12}


def test_empty_selections_are_raised_and_counted(
    pair: tuple[LoadedModel, LoadedModel], samples: list
) -> None:
    # delta at the top of its range, above every score: each image keeps only its top patch
    point = OperatingPoint(rule="threshold", threshold=1.0, measure="none")
    result = evaluate(*pair, samples, point, batch_size=16)
    _check_definitions(result, pair[1])
    assert {r.num_patches for r in result.records} == {1}
    assert result.summary["raised_to_one_patch"] == NUM_IMAGES


@pytest.mark.parametrize(
    "bad",
    [
        {"rule": "topk"},
        {"measure": "entropy"},
        {"score": "max"},
        {"threshold": -1.0},
        {"threshold": float("nan")},
        {"eta": float("inf")},
    ],
)
def test_bad_operating_point_is_a_config_error(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        OperatingPoint(**bad)


# ----------------------------------------------------------------------------- the CLI


def test_cli_writes_the_records_and_summary_contract(
    small_pair: tuple[Path, Path],
    imagenet_dir: Path,
    pair: tuple[LoadedModel, LoadedModel],
    samples: list,
    median_eta: float,
    tmp_path: Path,
) -> None:
    records_csv, summary_json = tmp_path / "records.csv", tmp_path / "summary.json"
    command = [
        sys.executable, "-m", "collabvit.cli", "evaluate",
        "--edge", str(small_pair[0]), "--server", str(small_pair[1]),
        "--data", str(imagenet_dir / "images"), "--labels", str(imagenet_dir / "labels.csv"),
        "--limit", str(NUM_IMAGES), "--batch-size", "8",
        "--rule", "attention-sum", "--threshold", "0.5",
        "--measure", "min-entropy", "--eta", repr(median_eta),
        "--records", str(records_csv), "--json", str(summary_json),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr

    with open(records_csv, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows = [dict(zip(header, row, strict=True)) for row in reader]
    assert header == CSV_COLUMNS
    assert len(rows) == NUM_IMAGES
    for row in rows:
        assert row["transmitted"] in ("0", "1")
        if row["transmitted"] == "1":
            assert row["server_pred"] != ""
            assert row["final_pred"] == row["server_pred"]
            assert int(row["num_patches"]) >= 1
        else:
            assert row["server_pred"] == ""
            assert row["final_pred"] == row["edge_pred"]
            assert row["num_patches"] == "0"
    assert {row["transmitted"] for row in rows} == {"0", "1"}

    summary = json.loads(summary_json.read_text())
    assert set(summary) >= JSON_KEYS
    assert summary["images"] == NUM_IMAGES
    assert summary["skipped_files"] == 0
    total = sum(int(row["num_patches"]) for row in rows)
    assert summary["communication_cost"] == pytest.approx(total / (NUM_IMAGES * NUM_PATCHES))
    assert summary["transmit_ratio"] == sum(row["transmitted"] == "1" for row in rows) / 16

    # the CLI and the library agree record for record
    point = OperatingPoint(rule="attention-sum", threshold=0.5, eta=median_eta)
    library = evaluate(*pair, samples, point, batch_size=8)
    for row, r in zip(rows, library.records, strict=True):
        assert (row["file"], int(row["edge_pred"]), row["transmitted"] == "1") == (
            r.file,
            r.edge_pred,
            r.transmitted,
        )
        assert int(row["final_pred"]) == r.final_pred
        assert int(row["num_patches"]) == r.num_patches
