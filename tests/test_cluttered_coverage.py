"""Object coverage from the recorded boxes, and the shipped cluttered test images by name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from collabvit.errors import DataError
from collabvit.fmnist import builtin_image, cluttered_test_split, shipped_test_split
from collabvit.metrics import object_coverage


def test_coverage_counts_the_object_pixels_inside_kept_patches() -> None:
    masks = np.zeros((3, 8, 8), dtype=bool)
    masks[0, 0:4, 0:4] = True  # all of patch 0 (4x4 patches: 2x2 grid)
    masks[1, 2:6, 2:6] = True  # a quarter in each of the four patches
    keep = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=bool)
    cover = object_coverage(keep, masks, 4)
    assert cover[0] == 1.0 and cover[1] == 0.5 and np.isnan(cover[2])  # image 2: no object
    assert object_coverage(~keep, masks, 4)[0] == 0.0
    with pytest.raises(ValueError, match="does not match"):
        object_coverage(keep[:, :3], masks, 4)


def test_object_masks_are_the_pasted_garment_pixels() -> None:
    data = cluttered_test_split(0, limit=20)
    split = shipped_test_split()[0]
    masks = data.object_masks(split)
    assert masks.shape == (20, 56, 56)
    for i in range(20):
        assert masks[i].sum() == (split[i] > 0).sum()
        x0, y0, x1, y1 = data.boxes[i]
        assert masks[i][y0:y1, x0:x1].sum() == masks[i].sum()  # inside the recorded box
        assert (data.images[i][masks[i]] >= split[i][split[i] > 0]).all()  # never darkened


def test_builtin_images_by_the_names_the_sweep_gives_them() -> None:
    images, labels = shipped_test_split()
    pixels, label, box = builtin_image("t10k/00042")  # type: ignore[misc]
    assert np.array_equal(pixels, images[42]) and label == labels[42] and box is None
    one = cluttered_test_split(3, limit=8)
    pixels, label, box = builtin_image("cfmnist-3/00007")  # type: ignore[misc]
    assert np.array_equal(pixels, one.images[7]) and label == one.labels[7]
    assert box == tuple(int(v) for v in one.boxes[7])
    assert builtin_image("photo.JPEG") is None and builtin_image("cfmnist-x/00001") is None
    with pytest.raises(DataError, match="has 10,000 images"):
        builtin_image("t10k/10000")


def test_visualize_draws_a_cluttered_test_image_with_its_box(tmp_path: Path) -> None:
    cmd = [
        sys.executable, "-m", "collabvit.cli", "visualize", "cfmnist-0/00007", "t10k/00003",
        "--edge", "fmnist-tiny", "--server", "fmnist-base", "--out", str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    panel = tmp_path / "cfmnist-0-00007.png"
    assert result.stdout.split() == [str(panel), str(tmp_path / "t10k-00003.png")]
    rgb = np.asarray(Image.open(panel).convert("RGB")).astype(int)
    lime = (rgb[..., 1] > 200) & (rgb[..., 0] < 60) & (rgb[..., 2] < 60)
    assert lime.sum() > 200  # the garment's box, drawn on the three panels
    plain = np.asarray(Image.open(tmp_path / "t10k-00003.png").convert("RGB")).astype(int)
    assert ((plain[..., 1] > 200) & (plain[..., 0] < 60) & (plain[..., 2] < 60)).sum() == 0


def test_visualize_names_a_missing_image_in_one_line(tmp_path: Path) -> None:
    cmd = [
        sys.executable, "-m", "collabvit.cli", "visualize", str(tmp_path / "nope.png"),
        "--edge", "fmnist-tiny", "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "nope.png: no such image file" in lines[0] and "cfmnist-SEED/00042" in lines[0]
