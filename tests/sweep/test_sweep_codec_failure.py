"""Issue 16 item 10: a picture Pillow cannot write as JPEG does not abort evaluate or sweep.

At 224x224, random RGB noise makes Pillow's optimised JPEG writer fail
("broken data stream"); the image is then counted as raw bytes, as the edge
sends it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from collabvit import wire
from collabvit.data import discover
from collabvit.engine import evaluate
from collabvit.models import load_model
from collabvit.pipeline import OperatingPoint
from collabvit.sweep import Series, SweepGrid, run_sweep

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def noise(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("noise")
    pixels = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "noise.png")
    (folder / "labels.csv").write_text("file,label\nnoise.png,3\n")
    return folder


def test_noise_really_breaks_the_jpeg_writer() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (3, 224, 224), dtype=np.uint8)
    with pytest.raises(wire.WireError):
        wire.encode(pixels, np.ones(196, dtype=bool), 16, "jpeg", 90)


def test_evaluate_and_sweep_count_it_as_raw(noise: Path) -> None:
    edge = load_model("deit_tiny_patch16_224", random_init=0)
    samples, _ = discover(noise, noise / "labels.csv")
    raw = 19 + 25 + 196 * 16 * 16 * 3 + 4  # header, mask, every patch, CRC
    point = OperatingPoint(rule="all", measure="none")
    result = evaluate(edge, edge, samples, point, codec="jpeg", quality=90)
    assert result.records[0].bytes_sent == raw
    assert result.summary["bytes"]["full_image_jpeg_q90_per_image"] == 224 * 224 * 3
    grid = SweepGrid(series=(Series("all", measure="none"),))
    swept = run_sweep(edge, edge, samples, grid, codec="jpeg", quality=90)
    row = next(r for r in swept.rows if r["kind"] == "grid")
    assert row["bytes_per_image"] == raw
