"""Smoke run of the benchmark harness (``python -m benchmarks``) at minimal sizes.

Checks the report's structure only: every item runs (or says it is not
available), the Markdown table and the JSON are written. No timing is asserted.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `pytest` (not `python -m pytest`) leaves the root off the path
    sys.path.insert(0, str(REPO))

from benchmarks.__main__ import ITEMS, main  # noqa: E402
from benchmarks.common import ServerCase, Sizes, spread_counts, stratified_subset  # noqa: E402

RESULT_KEYS = {"name", "figure", "measured", "goal", "met", "command", "status", "details"}


@pytest.fixture
def _keep_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _smoke_sizes(edge: Path, server: Path) -> Sizes:
    return Sizes(
        server_cases=(ServerCase(str(server), images=4, loop_images=2, repeats=1),),
        warmup_images=1,
        edge_model=str(edge),
        edge_batch=2,
        edge_repeats=1,
        sweep_edge=str(edge),
        sweep_server=str(server),
        sweep_images=3,
        sweep_eval_points=1,
        sweep_batch=4,
        serve_edge=str(edge),
        serve_server=str(server),
        serve_images=4,
        serve_seconds=0.5,
        serve_concurrency=2,
        bytes_edge=str(edge),
        bytes_images=3,
        bytes_batch=2,
        onnx_images=2,
        onnx_venv=False,  # no pip install from PyPI in the smoke run
        label="smoke",
    )


def names_of(report: dict[str, Any]) -> list[str]:
    return [r["name"] for r in report["results"]]


def _fake_run_load(config: Any, point: Any) -> dict[str, Any]:
    """What benchmarks.load.run_load returns, without starting a server process."""
    phase = {"requests": 10, "errors": {}, "requests_per_s": 4.0, "p50_ms": 1.0, "p99_ms": 2.0}
    only = dict(phase, requests_per_s=2.0)
    return {
        "config": {"levels": list(config.levels)},
        "point": {"threshold": point.threshold},
        "payloads": {"images": 3, "num_patches": 64, "mean_patches_sent": 48.0},
        "server": {"model": config.server},
        "levels": [
            {"clients": 2, "collaborative": phase, "server_only": only, "throughput_ratio": 2.0}
        ],
        "wall_s": 0.1,
    }


@pytest.mark.usefixtures("_keep_threads")
def test_harness_writes_the_report(
    tmp_path: Path,
    small_pair: tuple[Path, Path],
    imagenet_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import benchmarks.load

    monkeypatch.setattr(benchmarks.load, "run_load", _fake_run_load)  # no server process
    import benchmarks.bench_ray  # its three server processes (Ray starts in minutes): faked

    phase = {"requests": 10, "errors": {}, "requests_per_s": 4.0, "p50_ms": 1.0}
    fake = {"uvicorn-1": phase, "ray-1": dict(phase, requests_per_s=3.0), "ray-2": phase}
    monkeypatch.setattr(benchmarks.bench_ray, "_measure", lambda *_args: fake)
    out = tmp_path / "benchmarks.md"
    edge, server = small_pair
    argv = ["--out", str(out), "--data", str(imagenet_dir), "--quiet"]
    assert main(argv, _smoke_sizes(edge, server)) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["schema"] == 2
    assert [run["items"] for run in report["runs"]] == [names_of(report)]
    assert {"cpu_model", "logical_cores", "torch", "intra_op_threads"} <= set(report["machine"])
    names = [r["name"] for r in report["results"]]
    assert names == [
        *("subset", "precision", "tokens", "edge", "sweep", "sweep-cpu", "loader"),
        *("serve", "serve-paper"),
        "bytes",
        *("onnx-import", "onnx-rss", "onnx-latency"),
        *("ray", "ray-engine-cost"),
    ]
    for r in report["results"]:
        assert set(r) >= RESULT_KEYS, r["name"]
        assert r["status"] == "measured", (r["name"], r["notes"])
        assert r["command"].startswith("python -m benchmarks")
        assert r["command"].split()[-1] in ITEMS
        if r["name"] != "bytes":
            assert isinstance(r["ratio"], float) and r["ratio"] > 0, r["name"]
            assert isinstance(r["met"], bool), r["name"]
    serve = report["results"][names.index("serve-paper")]
    assert serve["details"]["images_per_s_ratio"] == pytest.approx(2.0 / 0.429, rel=1e-3)
    text = out.read_text()
    assert "| # | Figure | Measured | Goal | Met | Command |" in text
    for r in report["results"]:
        assert f"`{r['command']}`" in text


@pytest.mark.usefixtures("_keep_threads")
def test_only_merges_into_the_existing_report(
    tmp_path: Path, small_pair: tuple[Path, Path], imagenet_dir: Path
) -> None:
    out = tmp_path / "b.md"
    sizes = _smoke_sizes(*small_pair)
    common = ["--out", str(out), "--data", str(imagenet_dir), "--quiet"]
    assert main([*common, "--only", "edge"], sizes) == 0
    assert main([*common, "--only", "bytes"], sizes) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert [r["name"] for r in report["results"]] == ["edge", "bytes"]
    assert [run["items"] for run in report["runs"]] == [["edge"], ["bytes"]]
    assert "Rows come from 2 runs" in out.read_text()
    # edge again: its first run supplies no row any more and leaves the list
    assert main([*common, "--only", "edge"], sizes) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert [run["items"] for run in report["runs"]] == [["bytes"], ["edge"]]


def test_unknown_item_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="unknown benchmark"):
        main(["--only", "nope", "--out", str(tmp_path / "x.md")])


def test_spread_workload() -> None:
    counts = spread_counts(64, 196, seed=0)
    assert len(counts) == 64 and all(1 <= c <= 196 for c in counts)
    assert 135 <= sum(counts) / 64 <= 160
    sub = stratified_subset(counts, 16)
    assert len(set(sub)) == 16
    assert abs(sum(counts[i] for i in sub) / 16 - sum(counts) / 64) < 5


def test_profile_ops_reports_matmul_share() -> None:
    from benchmarks.bench_subset import profile_ops

    a = torch.randn(64, 64)
    prof = profile_ops(lambda: a @ a + 1)
    assert 0.0 <= prof["matmul_share"] <= 1.0
    assert prof["top_ops"] and {"op", "share", "calls"} <= set(prof["top_ops"][0])
