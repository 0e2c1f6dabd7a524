"""collabvit.sweep.run_sweep: grid points equal engine.evaluate, model calls counted and cached."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from collabvit import sweep as sweep_mod
from collabvit.cli import main
from collabvit.data import Sample, iter_batches
from collabvit.engine import OperatingPoint, evaluate
from collabvit.errors import ConfigError
from collabvit.gating import uncertainty
from collabvit.models import LoadedModel, forward_with_scores, load_model
from collabvit.report import write_outputs
from collabvit.selection import select_patches
from collabvit.sweep import PAPER_DELTA_SUMS, Series, SweepGrid, run_sweep
from collabvit.sweep import server_pass as server_pass_mod

N_IMAGES = 24
BATCH = 8


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread(one_thread: None) -> None:
    """Tiny models on a shared 2-core machine: one intra-op thread avoids oversubscription."""


@pytest.fixture(scope="module")
def pair(small_pair: tuple[Path, Path]) -> tuple[LoadedModel, LoadedModel]:
    edge_json, server_json = small_pair
    return load_model(str(edge_json)), load_model(str(server_json))


@pytest.fixture(scope="module")
def photos(
    photo_linker: Callable[..., list[Sample]], tmp_path_factory: pytest.TempPathFactory
) -> list[Sample]:
    """24 real photos plus one unreadable file in the middle (it shifts batch boundaries)."""
    broken = {10: ("broken.JPEG", b"not a jpeg at all", 3)}
    samples = photo_linker(tmp_path_factory.mktemp("photos"), N_IMAGES, broken)
    assert len(samples) == N_IMAGES + 1
    return samples


def _edge_outputs(
    edge: LoadedModel, samples: list[Sample], scores: tuple[str, ...] = ("mean",)
) -> tuple[dict[str, np.ndarray], dict[str, torch.Tensor], list[Sample]]:
    """Gate statistics and scores of every readable image, batched as evaluate batches."""
    values: dict[str, list[np.ndarray]] = {m: [] for m in ("min-entropy", "shannon", "margin")}
    sc: dict[str, list[torch.Tensor]] = {s: [] for s in scores}
    kept: list[Sample] = []
    for batch in iter_batches(samples, edge.preprocessing, BATCH, []):
        logits, out = forward_with_scores(edge, edge.normalise(batch.pixels), scores)
        for m in values:
            values[m].append(uncertainty(logits, m))
        for s in scores:
            sc[s].append(out[s])
        kept += batch.samples
    return (
        {m: np.concatenate(v) for m, v in values.items()},
        {s: torch.cat(v) for s, v in sc.items()},
        kept,
    )


def _between(values: np.ndarray, q: float) -> float:
    """A threshold strictly between two neighbouring values near quantile q."""
    v = np.unique(values)
    i = min(max(1, round(q * len(v))), len(v) - 1)
    return float((v[i - 1] + v[i]) / 2)


@contextmanager
def _count_calls(model: LoadedModel) -> Iterator[list[int]]:
    """Images through the model, counted by a hook on its final norm (once per image).

    Not on a block: the packed subset forward runs a block's layers over all
    images' tokens at once, (T, D), without calling the block module.
    """
    seen = [0]

    def hook(_m: torch.nn.Module, inputs: tuple[torch.Tensor, ...], _out: object) -> None:
        seen[0] += int(inputs[0].shape[0])

    handle = model.model.norm.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def test_every_grid_point_equals_evaluate(
    pair: tuple[LoadedModel, LoadedModel], photos: list[Sample], tmp_path: Path
) -> None:
    edge, server = pair
    values, _, _ = _edge_outputs(edge, photos)
    eta = {m: _between(v, 0.5) for m, v in values.items()}
    grid = SweepGrid(
        series=(
            Series("attention-sum", (0.9,), "min-entropy", (eta["min-entropy"],)),
            Series("attention-sum", (0.8,), "shannon", (eta["shannon"],), score="rollout"),
            Series("top-k", (20,), "margin", (eta["margin"],), score="rollout-standard"),
            Series("threshold", (1 / 64,), "min-entropy", (eta["min-entropy"],)),
            Series("random", (30,), "none"),
            Series("all", measure="shannon", etas=(eta["shannon"],)),
            Series("top-k", "all", "margin", (eta["margin"],)),  # the form before rule "all"
            Series("top-k", "auto", "none"),
            Series("threshold", "auto", "none"),
        ),
        reference_delta_sums=(0.85, 0.95),
        encoder_thresholds=(0.9,),
        seed=3,
    )
    result = run_sweep(edge, server, photos, grid, batch_size=BATCH, chunk_size=BATCH)
    assert result.meta["skipped_files"] == 1
    edge_points = [p for p in result.points if p.encoder == "edge"]
    rules = {p.rule for p in edge_points}
    measures = {p.measure for p in edge_points}
    assert rules == {"top-k", "threshold", "attention-sum", "random", "all"}
    assert {p.threshold for p in edge_points if p.rule == "all"} == {None}
    assert measures == {"min-entropy", "shannon", "margin", "none"}
    rows = {id(p): r for p, r in sweep_mod.iter_points(result)}
    for p in edge_points:
        point = p.operating_point(grid.include_crossing, grid.seed)
        ref = evaluate(edge, server, photos, point, batch_size=BATCH)
        got = result.records(point)
        assert got == ref.records, p
        row = rows[id(p)]
        for key in (
            "accuracy",
            "edge_accuracy",
            "transmit_ratio",
            "mean_patches_transmitted",
            "communication_cost",
        ):
            assert getattr(row, key) == ref.summary[key], (p, key)
        assert row.server_flops_ratio == pytest.approx(ref.summary["server_flops_ratio"])
        assert row.raised_to_one_patch == ref.summary["raised_to_one_patch"]
        sent = [r for r in ref.records if r.transmitted]
        assert row.mean_patches_all == sum(r.num_patches for r in sent) / len(ref.records)
    # a few points transmit only part of the images, so the gate is exercised
    ratios = {r.transmit_ratio for r in result.grid_rows()}
    assert any(0 < r < 1 for r in ratios)
    # server-only accuracy is the full-image selection
    full = evaluate(edge, server, photos, OperatingPoint("mean", "all", 0, "none", 0.0), BATCH)
    assert result.server_accuracy == full.summary["accuracy"]
    # the Fig. 14 point: the server's own scores choose, every image is sent
    enc = [r for r in result.grid_rows() if r.encoder == "server"]
    assert len(enc) == 1 and enc[0].transmit_ratio == 1.0
    # whole images are rule "all" without a threshold, in the rows too
    whole = [r for r in result.grid_rows() if r.rule == "all"]
    assert len(whole) == 2 and {r.threshold for r in whole} == {None}
    assert {r.mean_patches_transmitted for r in whole} == {float(edge.num_patches)}


def test_model_calls_once_per_image_and_distinct_selection(
    pair: tuple[LoadedModel, LoadedModel],
    photos: list[Sample],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(server_pass_mod, "SAVE_EVERY_S", 0.0)  # flush after every server batch
    edge, server = pair
    values, scores, kept = _edge_outputs(edge, photos)
    me = values["min-entropy"]
    etas = tuple(_between(me, q) for q in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9))
    assert len(set(etas)) == 7
    grid = SweepGrid(
        series=(Series("attention-sum", PAPER_DELTA_SUMS, "min-entropy", etas),),
        reference_etas=etas,
    )
    # the distinct (image, keep mask) pairs, computed here independently
    expected = 0
    n = edge.num_patches
    for j in range(len(kept)):
        masks = {np.ones(n, dtype=bool).tobytes()}  # server-only accuracy
        if me[j] >= min(etas):
            for d in PAPER_DELTA_SUMS:
                keep = select_patches(scores["mean"][j : j + 1], "attention-sum", d).keep_mask
                masks.add(keep[0].tobytes())
        expected += len(masks)
    never_sent = int((me < min(etas)).sum())
    assert never_sent > 0

    cache = tmp_path / "cache"
    with _count_calls(edge) as e_calls, _count_calls(server) as s_calls:
        first = run_sweep(
            edge, server, photos, grid, batch_size=BATCH, cache_dir=cache, chunk_size=2 * BATCH
        )
    assert len(first.points) == 70
    assert e_calls[0] == len(kept) == first.stats.edge_images
    assert s_calls[0] == expected == first.stats.server_images
    assert first.stats.distinct_selections == expected
    assert first.stats.server_encoder_images == 0

    # a new grid over the same models and data: other etas, other measures, whole images
    new = SweepGrid(
        series=(
            Series("attention-sum", PAPER_DELTA_SUMS[::3], "min-entropy", etas[2:]),
            Series("all", measure="shannon", etas="auto"),
            Series("top-k", "all", "margin", (0.0, 0.5)),  # the form before rule "all"
        ),
        reference_etas=etas,
    )
    with _count_calls(edge) as e_calls, _count_calls(server) as s_calls:
        second = run_sweep(edge, server, photos, new, batch_size=BATCH, cache_dir=cache)
    assert (e_calls[0], s_calls[0]) == (0, 0)
    assert second.stats.edge_images == second.stats.server_images == 0
    assert second.stats.cached_selections == second.stats.distinct_selections > 0
    a = {(p, r.accuracy) for p, r in sweep_mod.iter_points(first)}
    b = {(p, r.accuracy) for p, r in sweep_mod.iter_points(second)}
    assert b - a == {x for x in b if x[0].rule == "all"}  # shared points agree

    # resume: a lost edge chunk and a lost server chunk cost exactly their own calls
    (folder,) = [p for p in cache.iterdir() if p.is_dir()]
    edge_chunk = np.load(folder / "edge-00001.npz")
    server_chunk = np.load(folder / "server-00000.npz")
    lost_images, lost_selections = len(edge_chunk["pos"]), len(server_chunk["pos"])
    (folder / "edge-00001.npz").unlink()
    (folder / "server-00000.npz").unlink()
    with _count_calls(edge) as e_calls, _count_calls(server) as s_calls:
        third = run_sweep(edge, server, photos, grid, batch_size=BATCH, cache_dir=cache)
    assert e_calls[0] == lost_images
    assert s_calls[0] == lost_selections
    assert [r.accuracy for r in third.rows] == [r.accuracy for r in first.rows]
    assert third.rows == first.rows
    # run_sweep writes nothing but its cache; write_outputs writes the files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]
    files = write_outputs(third, tmp_path / "out", figures=False)
    assert [p.name for p in files][:5] == [
        "results.csv", "results.json", "frontier.csv", "best.json", "tables.md"
    ]  # fmt: skip


def test_cli_sweep_writes_tables_and_figures(
    small_pair: tuple[Path, Path], imagenet_dir: Path, tmp_path: Path
) -> None:
    edge_json, server_json = small_pair
    out = tmp_path / "sweep"
    grid = tmp_path / "grid.toml"
    # every series of the paper grid, two points per line: every figure and table
    grid.write_text(
        """
reference_delta_sums = [0.9, 0.97]
reference_etas = [0.4, 0.8]
encoder_thresholds = [0.9, 0.97]

[[series]]
thresholds = [0.9, 0.97]
measure = "min-entropy"
etas = [0.4, 0.8]

[[series]]
thresholds = [0.9, 0.97]

[[series]]
thresholds = [0.9, 0.97]
score = "rollout"

[[series]]
thresholds = [0.9, 0.97]
score = "rollout-standard"

[[series]]
rule = "top-k"
thresholds = "auto"

[[series]]
rule = "threshold"
thresholds = "auto"

[[series]]
rule = "random"
thresholds = "auto"

[[series]]
rule = "top-k"
thresholds = "all"
measure = "shannon"
etas = "auto"

[[series]]
rule = "top-k"
thresholds = "all"
measure = "margin"
etas = "auto"

[[series]]
rule = "all"
measure = "min-entropy"
etas = [0.4, 0.8]
"""
    )
    code = main(
        [
            "sweep",
            "--edge", str(edge_json),
            "--server", str(server_json),
            "--data", str(imagenet_dir / "images"),
            "--labels", str(imagenet_dir / "labels.csv"),
            "--limit", "8",
            "--batch-size", "4",
            "--grid", str(grid),
            "--codec", "png",
            "--baseline-bytes",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    for name in ("results.csv", "results.json", "frontier.csv", "best.json", "tables.md"):
        assert (out / name).stat().st_size > 0, name
    for fig in ("tradeoff", "random", "scores", "rules", "measures", "encoder", "histogram"):
        for ext in ("png", "pdf"):
            assert (out / "figures" / f"{fig}.{ext}").stat().st_size > 1000, (fig, ext)
    body = json.loads((out / "results.json").read_text())
    grid_rows = [r for r in body["rows"] if r["kind"] == "grid"]
    baselines = {(r["rule"], r["codec"]) for r in body["rows"] if r["kind"] == "baseline"}
    assert {("full-image-file", "jpeg-q90"), ("full-image-file", "png")} <= baselines
    assert len(grid_rows) >= 20
    assert {r["codec"] for r in grid_rows} == {"png"}
    best = json.loads((out / "best.json").read_text())
    for key in (
        "threshold",
        "eta",
        "accuracy",
        "communication_cost",
        "transmit_ratio",
        "mean_patches_transmitted",
    ):
        assert key in best
    tables = (out / "tables.md").read_text()
    assert "Table II" in tables and "Table III" in tables
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0].split(",") == list(sweep_mod.RESULT_FIELDS)
    assert len(csv_lines) == len(body["rows"]) + 1
    # whole images (the legacy top-k "all" and the rule itself): rule all, no threshold
    whole = [line.split(",") for line in csv_lines[1:] if line.split(",")[3] == "all"]
    assert {(w[0], w[4], w[5]) for w in whole} == {
        ("grid", "", "shannon"), ("grid", "", "margin"), ("grid", "", "min-entropy")
    }  # fmt: skip
    assert not any(line.split(",")[3] == "top-k" for line in csv_lines[1:] if ",all," in line)


def test_bad_arguments(pair: tuple[LoadedModel, LoadedModel], photos: list[Sample]) -> None:
    edge, server = pair
    with pytest.raises(ConfigError, match="codec"):
        run_sweep(edge, server, photos, SweepGrid.small(), codec="gif")
    with pytest.raises(ConfigError, match="target drop"):
        run_sweep(edge, server, photos, SweepGrid.small(), target_drop=-1)
