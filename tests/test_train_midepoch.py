"""`collabvit train` checkpoints inside an epoch and resumes there as if never stopped."""

from __future__ import annotations

import gzip
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import collabvit.training
from collabvit.fmnist import shipped_test_split
from collabvit.training import TRAIN_CONFIGS, train


class _Stop(Exception):
    pass


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def _small_data(folder: Path) -> Path:
    images, labels = shipped_test_split()
    folder.mkdir()
    for stem, array in {
        "train-images-idx3-ubyte": images[:128],
        "train-labels-idx1-ubyte": labels[:128],
        "t10k-images-idx3-ubyte": images[128:160],
        "t10k-labels-idx1-ubyte": labels[128:160],
    }.items():
        _write_idx(folder / f"{stem}.gz", array)
    return folder


def test_a_run_killed_mid_epoch_resumes_to_the_same_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _small_data(tmp_path / "data")
    # cluttered canvases, patch dropout and flips: every random draw must be resumed
    cfg = replace(TRAIN_CONFIGS["cfmnist-tiny"], batch_size=32, patch_drop=0.3, hflip=True)
    monkeypatch.setattr(collabvit.training, "CHECKPOINT_S", 0.0)  # a checkpoint every step
    torch.set_num_threads(1)
    whole = train(cfg, tmp_path / "whole", data_dir=data, epochs=2)

    def stop_in_epoch_2(step: int, total: int, stats: dict[str, float]) -> None:
        if stats["epoch"] == 2 and step == 2:
            raise _Stop

    with pytest.raises(_Stop):
        train(cfg, tmp_path / "cut", data_dir=data, epochs=2, progress=stop_in_epoch_2)
    ckpt = torch.load(tmp_path / "cut" / "cfmnist-tiny.ckpt.pt", weights_only=False)
    assert (ckpt["state"]["epoch"], ckpt["state"]["step"]) == (1, 2) and "epoch_gen" in ckpt
    resumed = train(cfg, tmp_path / "cut", data_dir=data, epochs=2)
    a = load_file(str(tmp_path / "whole" / "cfmnist-tiny.safetensors"))
    b = load_file(str(tmp_path / "cut" / "cfmnist-tiny.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = [h["loss"] for h in whole["training"]["history"]]
    assert [h["loss"] for h in resumed["training"]["history"]] == pytest.approx(losses, abs=1e-6)


def test_the_server_recipe_selects_with_the_edge_trained_into_the_same_folder(
    tmp_path: Path,
) -> None:
    """cfmnist-base's select_with=cfmnist-tiny is found in --out before it is shipped."""
    data = _small_data(tmp_path / "data")
    torch.set_num_threads(1)
    out = tmp_path / "out"
    train(replace(TRAIN_CONFIGS["cfmnist-tiny"], batch_size=64), out, data_dir=data, epochs=1)
    base = replace(TRAIN_CONFIGS["cfmnist-base"], batch_size=64, select_share=1.0)
    config = train(base, out, data_dir=data, epochs=1)
    assert config["num_parameters"] >= 5 * 119_000 and config["input_size"] == [1, 56, 56]
    assert config["training"]["history"][0]["select_with"] == "cfmnist-tiny"
