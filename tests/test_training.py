"""`collabvit train`: one short epoch on a small subset, resumable, loadable output."""

from __future__ import annotations

import gzip
import json
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from collabvit.errors import ConfigError
from collabvit.fmnist import read_idx, shipped_test_split
from collabvit.models import load_model
from collabvit.training import TRAIN_CONFIGS, TrainConfig, train


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def _small_fmnist(folder: Path) -> Path:
    images, labels = shipped_test_split()
    folder.mkdir()
    _write_idx(folder / "train-images-idx3-ubyte.gz", images[:384])
    _write_idx(folder / "train-labels-idx1-ubyte.gz", labels[:384])
    _write_idx(folder / "t10k-images-idx3-ubyte.gz", images[384:512])
    _write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels[384:512])
    return folder


def _train(data: Path, out: Path, epochs: int) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable,
        "-m",
        "collabvit.cli",
        "train",
        "fmnist-tiny",
        "--data-dir",
        str(data),
        "--out",
        str(out),
        "--epochs",
        str(epochs),
        "--device",
        "cpu",
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_idx_round_trip(tmp_path: Path) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "x.gz", array)
    assert np.array_equal(read_idx(tmp_path / "x.gz"), array)


def test_train_one_epoch_then_resume(tmp_path: Path) -> None:
    data = _small_fmnist(tmp_path / "fmnist")
    out = tmp_path / "out"
    first = _train(data, out, epochs=1)
    assert first.returncode == 0, first.stderr
    config = json.loads((out / "fmnist-tiny.json").read_text())
    assert len(config["training"]["history"]) == 1
    assert config["class_names"][0] == "T-shirt/top"
    assert (out / "fmnist-tiny.ckpt.pt").is_file()

    # the written pair loads by path and classifies 28x28 grey images
    model = load_model(str(out / "fmnist-tiny.json"))
    assert model.preprocessing.input_size == (1, 28, 28)
    assert model.num_patches == 49
    logits = model.model(torch.zeros(2, 1, 28, 28))
    assert logits.shape == (2, 10)

    second = _train(data, out, epochs=2)  # resumes from the epoch-1 checkpoint
    assert second.returncode == 0, second.stderr
    assert "resuming fmnist-tiny from epoch 1" in second.stderr
    history = json.loads((out / "fmnist-tiny.json").read_text())["training"]["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[0] == config["training"]["history"][0]


def test_train_missing_data_is_one_clear_line(tmp_path: Path) -> None:
    result = _train(tmp_path / "nowhere", tmp_path / "out", epochs=1)
    assert result.returncode == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines == [lines[-1]] and "Fashion-MNIST train files not found" in lines[-1]
    assert "Traceback" not in result.stderr


class _Interrupt(Exception):
    pass


def test_patch_dropout_training_resumes_bit_for_bit(tmp_path: Path) -> None:
    """An interrupted run with patch dropout, resumed, ends with the same weights."""
    data = _small_fmnist(tmp_path / "fmnist")
    cfg = replace(TRAIN_CONFIGS["fmnist-tiny"], patch_drop=0.5)
    straight = train(cfg, tmp_path / "a", data, epochs=2)

    def stop_in_second_epoch(step: int, total: int, stats: dict[str, float]) -> None:
        if stats["epoch"] == 2:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train(cfg, tmp_path / "b", data, epochs=2, progress=stop_in_second_epoch)
    resumed = train(cfg, tmp_path / "b", data, epochs=2)

    assert [h["patch_drop"] for h in resumed["training"]["history"]] == [0.5, 0.5]
    a = load_model(str(tmp_path / "a" / "fmnist-tiny.json")).model.state_dict()
    b = load_model(str(tmp_path / "b" / "fmnist-tiny.json")).model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert straight["training"]["history"][1]["loss"] == resumed["training"]["history"][1]["loss"]


def test_patch_drop_out_of_range_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="patch_drop"):
        TrainConfig("x", embed_dim=48, depth=1, num_heads=3, patch_drop=1.0)


def test_server_trains_on_the_edge_attention_subsets(tmp_path: Path) -> None:
    """select_with: every step on the shipped edge's attention-sum subsets, recorded."""
    data = _small_fmnist(tmp_path / "fmnist")
    cfg = replace(
        TRAIN_CONFIGS["fmnist-tiny"],
        select_with="fmnist-tiny",
        select_share=1.0,
        select_delta=(0.8, 0.95),
    )
    plain = train(replace(cfg, select_with=None), tmp_path / "plain", data, epochs=1)
    selected = train(cfg, tmp_path / "selected", data, epochs=1)
    epoch = selected["training"]["history"][0]
    assert (epoch["select_with"], epoch["select_delta"], epoch["select_share"]) == (
        "fmnist-tiny",
        [0.8, 0.95],
        1.0,
    )
    assert plain["training"]["history"][0]["select_delta"] is None
    # the same seed and data: only the inputs the model saw differ
    assert selected["training"]["history"][0]["loss"] != plain["training"]["history"][0]["loss"]


def test_select_delta_out_of_range_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="select_delta"):
        TrainConfig("x", embed_dim=48, depth=1, num_heads=3, select_delta=(0.0, 1.0))


def test_train_leaves_the_callers_rng_state_unchanged(tmp_path: Path) -> None:
    data = _small_fmnist(tmp_path / "fmnist")
    torch.manual_seed(99)
    before = torch.random.get_rng_state()
    cfg = replace(TRAIN_CONFIGS["fmnist-tiny"], patch_drop=0.3)  # patch dropout draws globally
    train(cfg, tmp_path / "out", data_dir=data, epochs=1, limit=128)
    assert torch.equal(torch.random.get_rng_state(), before)
