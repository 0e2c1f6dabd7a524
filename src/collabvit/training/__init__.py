"""Train a small ViT classifier on Fashion-MNIST (``collabvit train``).

The shipped edge/server pair (``fmnist-tiny``, ``fmnist-base``) was made with
this module; docs/model-card.md gives the commands. Recipes with
``data="cfmnist"`` train on cluttered translated Fashion-MNIST
(:func:`collabvit.fmnist.render_cluttered`), fresh canvases every epoch, and
test on the seed-0 cluttered test set. Training is deterministic for a seed,
writes a resumable checkpoint after every epoch, and ends with a
``NAME.safetensors`` + ``NAME.json`` pair that :func:`collabvit.models.load_model`
reads by path.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import fmnist
from .config import DATA_STATS, TRAIN_CONFIGS, TrainConfig
from .loop import (
    Run,
    TrainState,
    build,
    evaluate_classifier,
    resume,
    save_checkpoint,
    train_epoch,
)

__all__ = ["TRAIN_CONFIGS", "TrainConfig", "evaluate_classifier", "train"]

logger = logging.getLogger(__name__)

# a checkpoint inside an epoch at most this often (an epoch on a shared CPU can take hours)
CHECKPOINT_S = 600.0
CLUTTER_TEST_SEED = 0  # the cluttered test set every epoch is scored on (``--data cfmnist``)


def _train_seed(cfg: TrainConfig, epoch: int) -> int:
    """The clutter seed of ``epoch``'s training canvases: new clutter every epoch."""
    return (cfg.seed + 1) * 1_000_000 + epoch


def _data(
    cfg: TrainConfig, data_dir: str | Path | None, download: bool, limit: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, Any]:
    """Train images and labels, test images and labels, and the per-epoch renderer (or None)."""
    train_x, train_y = fmnist.load_split("train", data_dir, download=download)
    test_x, test_y = fmnist.load_split("test", data_dir, download=download)
    if limit is not None:
        train_x, train_y = train_x[:limit], train_y[:limit]
    if cfg.data != "cfmnist":
        return train_x, train_y, test_x, test_y, None
    clutter = fmnist.Clutter(canvas=cfg.img_size)
    test = fmnist.render_cluttered(
        test_x, test_y, np.arange(len(test_x)), CLUTTER_TEST_SEED, clutter
    )
    tight = fmnist._tight_boxes(train_x)

    def render(idx: torch.Tensor, epoch: int) -> torch.Tensor:
        seed = _train_seed(cfg, epoch)
        canvases = fmnist.render_cluttered(train_x, train_y, idx.numpy(), seed, clutter, tight)
        return torch.from_numpy(canvases.images)

    return train_x, train_y, test.images, test.labels, render


def _shipped_config(
    cfg: TrainConfig, model: Any, state: TrainState, epochs: int, limit: int | None, device: str
) -> dict[str, Any]:
    return {
        "name": cfg.name,
        "architecture": "vision_transformer",
        "vit_kwargs": cfg.vit_kwargs(),
        "input_size": [cfg.in_chans, cfg.img_size, cfg.img_size],
        "mean": list(DATA_STATS[cfg.data][0]),
        "std": list(DATA_STATS[cfg.data][1]),
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "class_names": list(fmnist.CLASS_NAMES),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "training": {
            "recipe": asdict(cfg) | {"epochs": epochs, "limit": limit},
            "device": device,
            "wall_s": round(state.wall_s, 1),
            "history": state.history,
            "test_accuracy": state.history[-1]["test_accuracy"] if state.history else None,
        },
    }


def train(
    cfg: TrainConfig,
    out_dir: str | Path,
    data_dir: str | Path | None = None,
    download: bool = False,
    device: str = "cpu",
    epochs: int | None = None,
    limit: int | None = None,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` and write ``out_dir/NAME.safetensors`` and ``out_dir/NAME.json``.

    Resumes from ``out_dir/NAME.ckpt.pt`` when it exists (the checkpoint written
    after every epoch). ``limit`` trains on the first N training images (for
    smoke tests). ``progress(step, steps_per_epoch, stats)`` is called after
    every optimisation step. The run draws from a forked torch RNG: the
    caller's global RNG state is the same afterwards.

    Returns the JSON config written next to the weights.
    """
    devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        return _train(cfg, Path(out_dir), data_dir, download, device, epochs, limit, progress)


def _train(
    cfg: TrainConfig,
    out: Path,
    data_dir: str | Path | None,
    download: bool,
    device: str,
    epochs: int | None,
    limit: int | None,
    progress: Callable[[int, int, dict[str, float]], None] | None,
) -> dict[str, Any]:
    from safetensors.torch import save_file

    from ..models import load_model

    epochs = cfg.epochs if epochs is None else epochs
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / f"{cfg.name}.ckpt.pt"
    train_x, train_y, test_x, test_y, render = _data(cfg, data_dir, download, limit)

    torch.manual_seed(cfg.seed)  # inside train()'s fork_rng: the caller's RNG is untouched
    model = build(cfg, device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_x) / cfg.batch_size)
    state, epoch_gen = resume(ckpt_path, model, opt, device, cfg.name)
    run = Run(
        cfg,
        model,
        opt,
        images=torch.tensor(train_x),  # a writable copy of the (read-only) idx array
        labels=torch.from_numpy(train_y.astype(np.int64)),
        device=device,
        steps_per_epoch=steps_per_epoch,
        total_steps=steps_per_epoch * epochs,
        warmup=int(cfg.warmup_epochs * steps_per_epoch),
        progress=progress,
        render=render,
        checkpoint_s=CHECKPOINT_S,
    )
    if cfg.select_with is not None:
        local = out / f"{cfg.select_with}.json"  # the edge trained into the same --out
        run.selector = load_model(str(local) if local.is_file() else cfg.select_with, device=device)
        run.selector.model.eval()
    for epoch in range(state.epoch, epochs):
        t0 = time.perf_counter() - state.epoch_s  # a resumed epoch keeps its earlier seconds

        def save(step: int, running: float, seen: int, gen: torch.Tensor, t0: float = t0) -> None:
            state.step, state.running, state.seen = step, running, seen
            state.epoch_s = time.perf_counter() - t0
            save_checkpoint(ckpt_path, model, opt, state, gen)
            logger.info("%s epoch %d: checkpoint at step %d", cfg.name, state.epoch + 1, step)

        run.save = save
        loss = train_epoch(run, epoch, state, epoch_gen if state.step else None)
        mean, std = DATA_STATS[cfg.data]
        acc = evaluate_classifier(model, test_x, test_y, device=device, mean=mean, std=std)
        epoch_s = time.perf_counter() - t0
        state.finish_epoch(
            {
                "epoch": epoch + 1,
                "loss": loss,
                "test_accuracy": acc,
                "planned_epochs": epochs,
                "patch_drop": cfg.patch_drop,
                "select_with": cfg.select_with,
                "select_delta": list(cfg.select_delta) if cfg.select_with else None,
                "select_share": cfg.select_share if cfg.select_with else None,
                "wall_s": round(epoch_s, 1),
            },
            epoch_s,
        )
        logger.info("%s epoch %d/%d loss %.4f test %.2f%%", cfg.name, epoch + 1, epochs, loss, acc)
        save_checkpoint(ckpt_path, model, opt, state)
    config = _shipped_config(cfg, model, state, epochs, limit, device)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(out / f"{cfg.name}.safetensors"), metadata={"format": "pt"})
    (out / f"{cfg.name}.json").write_text(json.dumps(config, indent=2) + "\n")
    return config
