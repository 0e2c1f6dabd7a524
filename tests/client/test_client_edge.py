"""EdgeClient's orchestration against the real server app, in-process (ASGI transport).

Its decisions are evaluate's image for image; unreadable files get a line;
the whole-image JPEG baseline is a measurement that runs only when asked for.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path
from typing import Any

import pytest
from client_support import BASE, free_port, run_in_process

from collabvit.client import ClientConfig, EdgeClient, summarise, write_jsonl
from collabvit.commands import edge as edge_command
from collabvit.data import Sample, discover
from collabvit.engine import OperatingPoint, evaluate
from collabvit.errors import ConfigError
from collabvit.models import LoadedModel, load_model
from collabvit.server import ServerConfig, create_app


@pytest.fixture(scope="module")
def pair(small_pair: tuple[Path, Path]) -> tuple[LoadedModel, LoadedModel]:
    return load_model(str(small_pair[0])), load_model(str(small_pair[1]))


@pytest.fixture(scope="module")
def samples(photo_dir: Path) -> list[Sample]:
    return discover(photo_dir, photo_dir / "labels.csv")[0]


def test_edge_client_matches_evaluate_image_for_image(
    pair: tuple[LoadedModel, LoadedModel], samples: list[Sample], tmp_path: Path
) -> None:
    edge, server = pair
    everything = evaluate(edge, server, samples, OperatingPoint(measure="min-entropy", eta=0.0))
    eta = statistics.median(r.uncertainty for r in everything.records)
    app = create_app(server, ServerConfig(max_wait_ms=20))
    cases = [  # (point, codec): png is lossless, so it gets the same answers
        (OperatingPoint(measure="none"), "raw"),
        (OperatingPoint(measure="min-entropy", eta=eta), "raw"),
        (OperatingPoint(measure="min-entropy", eta=eta, rule="top-k", threshold=20), "png"),
    ]
    for i, (point, codec) in enumerate(cases):
        evaluation = evaluate(edge, server, samples, point)
        expected = evaluation.records
        config = ClientConfig(BASE, codec=codec, concurrency=3, full_jpeg_baseline=i == 0)
        results = run_in_process(app, edge, point, config, samples)
        assert [r.file for r in results] == [r.file for r in expected]
        for got, want in zip(results, expected, strict=True):
            assert got.prediction == want.final_pred, (point, codec, got.file)
            assert got.edge_prediction == want.edge_pred
            assert got.source == ("server" if want.transmitted else "edge")
            assert got.patches_sent == want.num_patches
            assert got.uncertainty == pytest.approx(want.uncertainty, abs=1e-9)
            assert got.label == want.label
            assert (got.bytes_sent > 0) == want.transmitted
            assert (got.rtt_ms is not None) == want.transmitted
            assert (got.full_jpeg_bytes or 0) > 0 or i > 0
            assert (got.full_jpeg_bytes is None) == (i > 0)  # the baseline is opt-in
        # the client's numbers are metrics.summarise's, as evaluate's are
        with_cost = summarise(results, edge.num_patches)
        for key in ("accuracy", "edge_accuracy", "transmit_ratio", "communication_cost"):
            assert with_cost[key] == evaluation.summary[key], key
    assert 0 < sum(r.transmitted for r in expected) < len(expected)

    out = tmp_path / "edge.jsonl"
    write_jsonl(results, out)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == len(samples)
    assert set(lines[0]) >= {
        "file",
        "label",
        "prediction",
        "class_name",
        "source",
        "uncertainty",
        "patches_sent",
        "bytes_sent",
        "rtt_ms",
    }
    summary = summarise(results)
    sent = sum(r.transmitted for r in expected)
    assert summary["transmit_ratio"] == sent / len(samples)
    assert summary["sources"] == {
        "edge": len(samples) - sent,
        "server": sent,
        "edge-fallback": 0,
        "unreadable": 0,
    }
    assert summary["accuracy"] == sum(r.final_pred == r.label for r in expected) / len(expected)
    assert summary["mean_bytes_per_image"] == sum(r.bytes_sent for r in results) / len(samples)
    assert summary["communication_cost"] is None  # N not given


def test_the_whole_image_baseline_is_opt_in(
    pair: tuple[LoadedModel, LoadedModel], samples: list[Sample]
) -> None:
    edge, _ = pair
    assert ClientConfig(BASE).full_jpeg_baseline is False
    point = OperatingPoint(measure="none")
    plain = next(EdgeClient(edge, point, ClientConfig(BASE)).decide(samples[:2]))
    assert [d.full_jpeg_bytes for d in plain] == [None, None]
    config = ClientConfig(BASE, full_jpeg_baseline=True)
    measured = next(EdgeClient(edge, point, config).decide(samples[:2]))
    assert all((d.full_jpeg_bytes or 0) > 0 for d in measured)
    assert [d.payload for d in measured] == [d.payload for d in plain]

    parser = argparse.ArgumentParser()
    edge_command.add_arguments(parser)
    required = ["--edge", "e.json", "--server-url", BASE, "--out", "o.jsonl", "photos/"]
    assert parser.parse_args(required).baseline_bytes is False
    assert parser.parse_args([*required, "--baseline-bytes"]).baseline_bytes is True


def test_unreadable_files_get_a_line_and_nothing_is_dropped(
    pair: tuple[LoadedModel, LoadedModel], photo_dir: Path, tmp_path: Path
) -> None:
    edge, _ = pair
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in sorted(p.name for p in photo_dir.glob("*.JPEG"))[:2]:
        shutil.copy(photo_dir / name, folder / name)
    (folder / "broken.jpg").write_bytes(b"not a picture")
    found, _ = discover(folder)
    config = ClientConfig(f"http://127.0.0.1:{free_port()}")  # never called: eta keeps all
    results = EdgeClient(edge, OperatingPoint(eta=1e9), config).run(found)
    assert [r.file for r in results] == [s.file for s in found]
    by_file = {r.file: r for r in results}
    assert by_file["broken.jpg"].source == "unreadable"
    assert by_file["broken.jpg"].prediction is None
    assert sum(r.source == "edge" for r in results) == 2


@pytest.mark.parametrize(
    "changes",
    [
        {"server_url": "127.0.0.1:8000"},
        {"codec": "webp"},
        {"quality": 0},
        {"concurrency": 0},
        {"retries": -1},
        {"timeout_s": 0.0},
        {"backoff_s": float("nan")},
    ],
)
def test_client_config_rejects_bad_values(changes: dict[str, Any]) -> None:
    values: dict[str, Any] = {"server_url": BASE, **changes}
    with pytest.raises(ConfigError):
        ClientConfig(**values)
