"""Cluttered translated Fashion-MNIST: seeded, boxes where the garment went, right splits."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from collabvit.errors import DataError
from collabvit.fmnist import (
    Clutter,
    cluttered_test_split,
    named_samples,
    render_cluttered,
    shipped_test_split,
)


@pytest.fixture(scope="module")
def split() -> tuple[np.ndarray, np.ndarray]:
    images, labels = shipped_test_split()
    return images[:400], labels[:400]


def test_same_seed_same_images_and_an_image_does_not_depend_on_its_batch(split) -> None:  # type: ignore[no-untyped-def]
    images, labels = split
    a = render_cluttered(images, labels, np.arange(50), seed=3)
    b = render_cluttered(images, labels, np.arange(50), seed=3)
    other = render_cluttered(images, labels, np.arange(50), seed=4)
    alone = render_cluttered(images, labels, [17], seed=3)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.boxes, b.boxes)
    assert np.array_equal(alone.images[0], a.images[17])
    assert np.array_equal(alone.fragment_boxes[0], a.fragment_boxes[17])
    assert not np.array_equal(a.images, other.images)
    assert a.images.shape == (50, 56, 56) and a.images.dtype == np.uint8
    assert np.array_equal(a.labels, labels[:50]) and np.array_equal(a.sources, np.arange(50))


def test_without_distractors_the_box_is_the_pasted_garment(split) -> None:  # type: ignore[no-untyped-def]
    images, labels = split
    out = render_cluttered(images, labels, np.arange(200), seed=0, clutter=Clutter(distractors=0))
    for j in range(200):
        (y, x), canvas = out.offsets[j], out.images[j]
        assert np.array_equal(canvas[y : y + 28, x : x + 28], images[j])
        ys, xs = np.nonzero(canvas)
        assert tuple(out.boxes[j]) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert canvas.sum() == images[j].sum()  # nothing else on the canvas
        assert np.array_equal(out.object_mask(j, images), canvas > 0)
    # the position is uniform over the canvas: both ends of 0..28 are reached
    assert out.offsets.min() == 0 and out.offsets.max() == 28


def test_distractors_never_darken_or_cover_the_object(split) -> None:  # type: ignore[no-untyped-def]
    images, labels = split
    clutter = Clutter()
    out = render_cluttered(images, labels, np.arange(300), seed=1, clutter=clutter)
    f = clutter.fragment
    placed = out.fragment_boxes[..., 0] >= 0
    assert placed.mean() > 0.95  # almost every fragment finds a place
    changed = 0
    for j in range(300):
        (y, x), canvas = out.offsets[j], out.images[j]
        pasted = canvas[y : y + 28, x : x + 28]
        assert (pasted >= images[j]).all()  # max-compositing: no object pixel darkened
        x0, y0, x1, y1 = out.boxes[j]
        covered = np.zeros(canvas.shape, dtype=bool)
        for fx0, fy0, fx1, fy1 in out.fragment_boxes[j][placed[j]]:
            assert (fx1 - fx0, fy1 - fy0) == (f, f)
            w = max(0, min(fx1, x1) - max(fx0, x0))
            h = max(0, min(fy1, y1) - max(fy0, y0))
            assert w * h <= clutter.max_overlap * f * f
            covered[fy0:fy1, fx0:fx1] = True
        mask = out.object_mask(j, images)
        assert (mask & ~covered).sum() >= 0.5 * mask.sum()  # most of it is clear of fragments
        # outside the fragments the canvas is exactly the garment
        clear = ~covered
        garment = np.zeros(canvas.shape, dtype=np.uint8)
        garment[y : y + 28, x : x + 28] = images[j]
        assert np.array_equal(canvas[clear], garment[clear])
        changed += int((canvas != garment).any())
    assert changed > 290  # the clutter is really there


def test_cluttered_test_split_is_the_shipped_t10k_and_named_samples_give_it() -> None:
    test_x, test_y = shipped_test_split()
    data = cluttered_test_split(seed=0, limit=64)
    again = render_cluttered(test_x, test_y, np.arange(64), seed=0)
    assert np.array_equal(data.images, again.images)
    assert np.array_equal(data.labels, test_y[:64])
    samples = named_samples("cfmnist", limit=64)
    assert samples is not None and len(samples) == 64
    assert all(np.array_equal(s.array, data.images[s.index]) for s in samples)
    assert samples[3].file == "cfmnist-0/00003" and samples[3].label == int(test_y[3])
    seeded = named_samples("cfmnist:7", limit=4)
    assert seeded is not None and not np.array_equal(seeded[0].array, samples[0].array)
    plain = named_samples("fmnist", limit=4)
    assert plain is not None and np.array_equal(plain[0].array, test_x[0])


def test_named_samples_refuse_bad_seeds_and_leave_folders_alone(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    for bad in ("cfmnist:x", "cfmnist:-1", "fmnist:3"):
        with pytest.raises(DataError, match="cfmnist:SEED"):
            named_samples(bad)
    assert named_samples(str(tmp_path)) is None
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfmnist").mkdir()
    assert named_samples("cfmnist") is None  # a folder of that name is data, not the set
    with pytest.raises(DataError, match="canvas"):
        Clutter(canvas=20)


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def test_training_renders_the_train_split_and_scores_the_test_split(tmp_path: Path) -> None:
    """Train canvases come from train-images, the scored set from t10k-images (seed 0)."""
    from collabvit.training import TRAIN_CONFIGS, _data

    images, labels = shipped_test_split()
    train_x, test_x = images[:256], images[256:320]
    for stem, array in {
        "train-images-idx3-ubyte": train_x,
        "train-labels-idx1-ubyte": labels[:256],
        "t10k-images-idx3-ubyte": test_x,
        "t10k-labels-idx1-ubyte": labels[256:320],
    }.items():
        _write_idx(tmp_path / f"{stem}.gz", array)
    cfg = TRAIN_CONFIGS["cfmnist-tiny"]
    tx, ty, ex, ey, render = _data(cfg, tmp_path, False, None)
    assert np.array_equal(tx, train_x) and np.array_equal(ty, labels[:256])
    assert np.array_equal(ey, labels[256:320])
    expected_test = render_cluttered(test_x, labels[256:320], np.arange(64), seed=0)
    assert np.array_equal(ex, expected_test.images)
    canvases = render(torch.arange(10), 0).numpy()
    truth = render_cluttered(train_x, labels[:256], np.arange(10), seed=1_000_000)
    assert np.array_equal(canvases, truth.images)
    assert not np.array_equal(render(torch.arange(10), 1).numpy(), canvases)  # fresh clutter
    for j in range(10):
        y, x = truth.offsets[j]
        assert (canvases[j, y : y + 28, x : x + 28] >= train_x[j]).all()


def test_cfmnist_recipes_and_a_short_run_make_a_56px_model(tmp_path: Path) -> None:
    from collabvit.models import load_model
    from collabvit.training import TRAIN_CONFIGS, train

    tiny, base = TRAIN_CONFIGS["cfmnist-tiny"], TRAIN_CONFIGS["cfmnist-base"]
    assert (tiny.img_size // tiny.patch_size) ** 2 == 49 == (base.img_size // base.patch_size) ** 2
    assert base.patch_drop > 0 and base.select_with == "cfmnist-tiny"
    images, labels = shipped_test_split()
    for stem, array in {
        "train-images-idx3-ubyte": images[:128],
        "train-labels-idx1-ubyte": labels[:128],
        "t10k-images-idx3-ubyte": images[128:192],
        "t10k-labels-idx1-ubyte": labels[128:192],
    }.items():
        _write_idx(tmp_path / f"{stem}.gz", array)
    torch.set_num_threads(1)
    config = train(tiny, tmp_path / "out", data_dir=tmp_path, epochs=1)
    assert config["input_size"] == [1, 56, 56] and config["mean"] == [0.145]
    assert config["num_parameters"] <= 200_000
    assert config["training"]["recipe"]["data"] == "cfmnist"
    model = load_model(str(tmp_path / "out" / "cfmnist-tiny.json"))
    assert model.num_patches == 49 and model.preprocessing.input_size == (1, 56, 56)
    written = json.loads((tmp_path / "out" / "cfmnist-tiny.json").read_text())
    assert written["name"] == "cfmnist-tiny"
    # --data cfmnist: the cluttered test set as a data source of evaluate (and sweep)
    import collabvit.cli

    summary = tmp_path / "summary.json"
    path = str(tmp_path / "out" / "cfmnist-tiny.json")
    argv = ["evaluate", "--edge", path, "--server", path, "--data", "cfmnist:3", "--limit", "16"]
    assert collabvit.cli.main([*argv, "--json", str(summary)]) == 0
    assert json.loads(summary.read_text())["images"] == 16
