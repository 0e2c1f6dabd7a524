"""The sweep through collabvit.loader (issue 11): same results for any --workers, each image
decoded once, whole-image file sizes only with --baseline-bytes."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from collabvit import loader
from collabvit.cli import main
from collabvit.data import discover
from collabvit.models import load_model
from collabvit.sweep import SweepGrid, run_sweep

pytestmark = pytest.mark.usefixtures("one_thread")

LIMIT = "24"


def _sweep(small_pair: tuple[Path, Path], imagenet_dir: Path, out: Path, *extra: str) -> None:
    edge, server = small_pair
    code = main(
        [
            "sweep",
            "--edge", str(edge),
            "--server", str(server),
            "--data", str(imagenet_dir / "images"),
            "--labels", str(imagenet_dir / "labels.csv"),
            "--limit", LIMIT,
            "--batch-size", "5",
            "--chunk-size", "10",
            "--grid", "small",
            "--no-figures",
            "--out", str(out),
            *extra,
        ]
    )  # fmt: skip
    assert code == 0


def test_results_do_not_depend_on_the_workers(
    small_pair: tuple[Path, Path], imagenet_dir: Path, tmp_path: Path
) -> None:
    _sweep(small_pair, imagenet_dir, tmp_path / "w0", "--workers", "0")
    _sweep(small_pair, imagenet_dir, tmp_path / "w2", "--workers", "2", "--baseline-bytes")
    for name in ("frontier.csv", "best.json"):
        assert (tmp_path / "w0" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes()
    rows0 = (tmp_path / "w0" / "results.csv").read_bytes().splitlines()
    rows2 = (tmp_path / "w2" / "results.csv").read_bytes().splitlines()
    # --baseline-bytes adds the two full-image-file rows, and changes nothing else
    assert [r for r in rows2 if b"full-image-file" not in r] == rows0
    assert sum(b"full-image-file" in r for r in rows2) == 2
    assert not any(b"full-image-file" in r for r in rows0)
    meta = json.loads((tmp_path / "w2" / "results.json").read_text())["meta"]
    assert (meta["loader_workers"], meta["baseline_bytes"]) == (2, True)
    assert meta["stats"]["decoded_images"] == int(LIMIT)
    # byte-identical with the same options
    _sweep(small_pair, imagenet_dir, tmp_path / "w2b", "--workers", "2")
    same = (tmp_path / "w2b" / "results.csv").read_bytes()
    assert same == (tmp_path / "w0" / "results.csv").read_bytes()


def test_each_image_is_decoded_once(
    small_pair: tuple[Path, Path], imagenet_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: Counter[str] = Counter()
    real = loader.load_image

    def counting(path: Path, channels: int) -> Any:
        seen[path.name] += 1
        return real(path, channels)

    monkeypatch.setattr(loader, "load_image", counting)
    samples, _ = discover(imagenet_dir / "images", imagenet_dir / "labels.csv", limit=12)
    edge, server = (load_model(str(p)) for p in small_pair)
    result = run_sweep(edge, server, samples, SweepGrid.small(), batch_size=4, chunk_size=4)
    assert len(seen) == 12 and set(seen.values()) == {1}  # the server pass reused the pixels
    assert result.stats.decoded_images == 12


def test_bad_workers_is_one_line(
    small_pair: tuple[Path, Path],
    imagenet_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    edge, server = small_pair
    code = main(
        ["sweep", "--edge", str(edge), "--server", str(server), "--data", str(imagenet_dir),
         "--out", str(tmp_path / "x"), "--workers", "-2"]
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--workers" in err[0]
