"""Shared fixtures: the real ImageNet photos in shared/, and small real ViT pairs.

The small pair is two timm VisionTransformers (random weights, fixed seeds)
written as collabvit model JSON + safetensors, so tests exercise the same
loading path as the shipped models while staying fast on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from collabvit.models import build_vit

REPO = Path(__file__).resolve().parents[1]


def _shared_dir() -> Path:
    """shared/ beside the checkout (as CI lays it), or COLLABVIT_SHARED."""
    env = os.environ.get("COLLABVIT_SHARED")
    if env:
        return Path(env)
    for parent in REPO.parents:
        if (parent / "shared" / "data" / "imagenet-val-1300").is_dir():
            return parent / "shared"
    return REPO.parent / "shared"


IMAGENET_DIR = _shared_dir() / "data" / "imagenet-val-1300"


@pytest.fixture(scope="session")
def imagenet_dir() -> Path:
    """The 1,300 real ImageNet validation photos (images/ + labels.csv)."""
    if not (IMAGENET_DIR / "labels.csv").is_file():
        pytest.fail(f"shared ImageNet photos not found at {IMAGENET_DIR}; set COLLABVIT_SHARED")
    return IMAGENET_DIR


def write_model_json(folder: Path, name: str, seed: int, **vit: object) -> Path:
    """Write a random-weight ViT as NAME.json + NAME.safetensors; return the JSON path."""
    kwargs = {
        "img_size": 64,
        "patch_size": 8,
        "in_chans": 3,
        "num_classes": 1000,
        "embed_dim": 32,
        "depth": 2,
        "num_heads": 2,
        "mlp_ratio": 2.0,
        "global_pool": "token",
        "class_token": True,
    }
    kwargs.update(vit)
    torch.manual_seed(seed)
    model = build_vit(kwargs)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(folder / f"{name}.safetensors"),
    )
    config = {
        "name": name,
        "vit_kwargs": kwargs,
        "input_size": [kwargs["in_chans"], kwargs["img_size"], kwargs["img_size"]],
        "mean": [0.485, 0.456, 0.406][: int(kwargs["in_chans"])],  # type: ignore[call-overload]
        "std": [0.229, 0.224, 0.225][: int(kwargs["in_chans"])],  # type: ignore[call-overload]
        "interpolation": "bicubic",
        "crop_pct": 0.875,
    }
    path = folder / f"{name}.json"
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="session")
def model_json_writer() -> Callable[..., Path]:
    """:func:`write_model_json`, for test modules in subfolders (no ``from conftest import``)."""
    return write_model_json


@pytest.fixture(scope="session")
def small_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(edge JSON, server JSON): 64x64 input, 8x8 patches (64 patches), 1000 classes."""
    folder = tmp_path_factory.mktemp("models")
    edge = write_model_json(folder, "small-edge", seed=1, embed_dim=32, depth=2, num_heads=2)
    server = write_model_json(folder, "small-server", seed=2, embed_dim=64, depth=3, num_heads=4)
    return edge, server


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread: on a busy 2-core machine more threads only wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def link_photos(
    imagenet_dir: Path,
    folder: Path,
    count: int,
    unreadable: Mapping[int, tuple[str, bytes, int]] = {},
) -> list[Any]:
    """``count`` real photos linked into ``folder`` with its labels.csv, as discovered samples.

    ``unreadable[i] = (name, content, label)`` writes a file that is no image right
    after the i-th photo (``i == count``: at the end), so it sits between them.
    """
    from collabvit.data import discover

    lines = (imagenet_dir / "labels.csv").read_text().splitlines()[1 : count + 1]
    rows = ["file,label"]

    def broken(i: int) -> None:
        if i in unreadable:
            name, content, label = unreadable[i]
            (folder / name).write_bytes(content)
            rows.append(f"{name},{label}")

    for i, line in enumerate(lines):
        name, label = line.split(",")[:2]
        (folder / name).symlink_to(imagenet_dir / "images" / name)
        rows.append(f"{name},{label}")
        broken(i)
    broken(count)
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    samples, _ = discover(folder, folder / "labels.csv")
    return samples


@pytest.fixture(scope="session")
def photo_linker(imagenet_dir: Path) -> Callable[..., list[Any]]:
    """:func:`link_photos` on the shared photos: ``photo_linker(folder, count, unreadable)``."""
    return lambda *args, **kw: link_photos(imagenet_dir, *args, **kw)


@pytest.fixture(scope="module")
def photo_dir(imagenet_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with 12 real photos and their labels.csv."""
    folder = tmp_path_factory.mktemp("photos")
    rows = (imagenet_dir / "labels.csv").read_text().splitlines()[1:13]
    lines = ["file,label"]
    for row in rows:
        name, label = row.split(",")[:2]
        shutil.copy(imagenet_dir / "images" / name, folder / name)
        lines.append(f"{name},{label}")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return folder
