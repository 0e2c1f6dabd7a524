"""Train a small ViT classifier on Fashion-MNIST (``collabvit train``).

The shipped edge/server pair (``fmnist-tiny``, ``fmnist-base``) was made with
this module; docs/model-card.md gives the commands. Training is deterministic
for a seed, writes a resumable checkpoint after every epoch, and ends with a
``NAME.safetensors`` + ``NAME.json`` pair that :func:`collabvit.models.load_model`
reads by path.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import Attention, PatchDropout

from . import fmnist
from .errors import ConfigError
from .models import forward_with_scores
from .selection import select_patches

__all__ = ["TRAIN_CONFIGS", "TrainConfig", "evaluate_classifier", "train"]

logger = logging.getLogger(__name__)

# Fashion-MNIST statistics of the training split (pixels scaled to [0, 1]).
FMNIST_MEAN = (0.2860,)
FMNIST_STD = (0.3530,)


@dataclass(frozen=True)
class TrainConfig:
    """One named training recipe. Architecture fields are timm VisionTransformer kwargs."""

    name: str
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    img_size: int = 28
    patch_size: int = 4  # 28 / 4 -> a 7 x 7 grid of 49 patches
    in_chans: int = 1
    num_classes: int = 10
    epochs: int = 12
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    pad_crop: int = 2  # random translation of up to this many pixels
    hflip: bool = True
    # Patch dropout: each step drops a fraction of the patch tokens drawn uniformly
    # from [0, patch_drop], so the model learns to answer from a subset of patches
    # (what the server receives in collaborative inference). 0 disables it.
    patch_drop: float = 0.0
    # Attention-selected subsets: on a share of the steps the model sees only the
    # patches that edge model ``select_with`` (a shipped name or model JSON) would
    # send under the attention-sum rule, delta_sum drawn uniformly from
    # ``select_delta`` - the inputs a server meets in collaborative inference.
    select_with: str | None = None
    select_delta: tuple[float, float] = (0.9, 1.0)
    select_share: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.img_size % self.patch_size:
            raise ConfigError(
                f"img_size {self.img_size} is not a multiple of patch {self.patch_size}"
            )
        lo, hi = self.select_delta
        if not 0.0 < lo <= hi <= 1.0 or not 0.0 <= self.select_share <= 1.0:
            raise ConfigError(
                f"select_delta {self.select_delta} must satisfy 0 < lo <= hi <= 1 and "
                f"select_share {self.select_share} must be in [0, 1]"
            )
        if not 0.0 <= self.patch_drop < 1.0:
            raise ConfigError(f"patch_drop {self.patch_drop} must be in [0, 1)")
        if self.embed_dim % self.num_heads:
            raise ConfigError(
                f"embed_dim {self.embed_dim} is not divisible by {self.num_heads} heads"
            )

    def vit_kwargs(self) -> dict[str, Any]:
        return {
            "img_size": self.img_size,
            "patch_size": self.patch_size,
            "in_chans": self.in_chans,
            "num_classes": self.num_classes,
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "global_pool": "token",
            "class_token": True,
        }


TRAIN_CONFIGS: dict[str, TrainConfig] = {
    # The edge: 0.117M parameters (DeiT-Tiny's role).
    "fmnist-tiny": TrainConfig("fmnist-tiny", embed_dim=48, depth=4, num_heads=3, epochs=8),
    # The server: 0.68M parameters, 5.8x the edge (DeiT-Base's role). Flips only: on a
    # CPU budget the translation augmentation slowed fitting more than it helped. Random
    # patch dropout, and on half the steps the very subsets fmnist-tiny's attention
    # selects, teach it to classify what it is sent in collaborative inference.
    "fmnist-base": TrainConfig(
        "fmnist-base",
        embed_dim=96,
        depth=6,
        num_heads=3,
        epochs=30,
        pad_crop=0,
        patch_drop=0.4,
        select_with="fmnist-tiny",
    ),
}


@dataclass
class TrainState:
    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0


def _normalise(batch_u8: torch.Tensor) -> torch.Tensor:
    x = batch_u8.float().div_(255.0).unsqueeze(1)  # (B, 1, 28, 28)
    return (x - FMNIST_MEAN[0]) / FMNIST_STD[0]


def _augment(batch_u8: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Random translation (pad + crop) and horizontal flip, per image, seeded."""
    b, h, w = batch_u8.shape
    if cfg.pad_crop:
        p = cfg.pad_crop
        padded = F.pad(batch_u8, (p, p, p, p))
        dx = torch.randint(0, 2 * p + 1, (b,), generator=gen)
        dy = torch.randint(0, 2 * p + 1, (b,), generator=gen)
        rows = dy[:, None] + torch.arange(h)[None, :]  # (B, H)
        cols = dx[:, None] + torch.arange(w)[None, :]  # (B, W)
        batch_u8 = padded[torch.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]
    if cfg.hflip:
        flip = torch.rand(b, generator=gen) < 0.5
        batch_u8 = torch.where(flip[:, None, None], batch_u8.flip(-1), batch_u8)
    return batch_u8


@torch.no_grad()
def evaluate_classifier(
    model: torch.nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int = 500,
    device: str = "cpu",
) -> float:
    """Top-1 accuracy (in %) of ``model`` on uint8 Fashion-MNIST images (N, 28, 28)."""
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        x = _normalise(torch.from_numpy(images[start : start + batch_size])).to(device)
        pred = model(x).argmax(-1).cpu().numpy()
        correct += int((pred == labels[start : start + batch_size]).sum())
    return 100.0 * correct / len(images)


@torch.no_grad()
def _edge_selection(selector: Any, x: torch.Tensor, delta_sum: float) -> torch.Tensor:
    """The attention-sum keep mask the edge model would send for batch ``x``."""
    _, scores = forward_with_scores(selector, x, ("mean",))
    sel = select_patches(scores["mean"], "attention-sum", delta_sum)
    return torch.from_numpy(sel.keep_mask).to(x.device)


def _lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * base * (1.0 + math.cos(math.pi * progress))


def _build(cfg: TrainConfig, device: str) -> Any:
    """The ViT of ``cfg`` on ``device``, set up for training (patch dropout, CPU kernel)."""
    from .models import build_vit

    model = build_vit(cfg.vit_kwargs()).to(device)
    if cfg.patch_drop:
        # Training-only module (no parameters): the shipped config stays a plain ViT.
        model.patch_drop = PatchDropout(0.0, num_prefix_tokens=model.num_prefix_tokens)
    if torch.device(device).type == "cpu":
        # Same maths; for ~50-token sequences the explicit softmax(QK^T)V is ~10 %
        # faster to train on CPU than the fused kernel.
        for module in model.modules():
            if isinstance(module, Attention):
                module.fused_attn = False  # type: ignore[misc]
    return model


def _resume(ckpt_path: Path, model: Any, opt: Any, device: str, name: str) -> TrainState:
    """Model, optimizer and RNG state from the last epoch's checkpoint, if there is one."""
    if not ckpt_path.exists():
        return TrainState()
    ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    state = TrainState(**ckpt["state"])
    if "torch_rng" in ckpt:  # patch dropout draws from the (forked) global generator
        torch.set_rng_state(ckpt["torch_rng"])
    logger.info("resuming %s from epoch %d (%s)", name, state.epoch, ckpt_path)
    return state


@dataclass
class _Run:
    """What one training run works with, epoch after epoch."""

    cfg: TrainConfig
    model: Any
    opt: Any
    images: torch.Tensor  # (n, 28, 28) uint8
    labels: torch.Tensor  # (n,) int64
    device: str
    steps_per_epoch: int
    total_steps: int
    warmup: int
    selector: Any = None
    progress: Callable[[int, int, dict[str, float]], None] | None = None


def _train_epoch(run: _Run, epoch: int) -> float:
    """One epoch of AdamW with cosine schedule; returns the mean training loss."""
    from .models import forward_kept

    cfg, model, opt = run.cfg, run.model, run.opt
    model.train()
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
    order = torch.randperm(len(run.images), generator=gen)
    running, seen = 0.0, 0
    for i in range(run.steps_per_epoch):
        idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
        x = _normalise(_augment(run.images[idx], cfg, gen)).to(run.device)
        y = run.labels[idx].to(run.device)
        step = epoch * run.steps_per_epoch + i
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, run.total_steps, run.warmup, cfg.lr)
        if cfg.patch_drop:
            model.patch_drop.prob = cfg.patch_drop * float(torch.rand(1, generator=gen))
        keep = None
        if run.selector is not None:
            share, where = torch.rand(2, generator=gen).tolist()
            if share < cfg.select_share:
                lo, hi = cfg.select_delta
                keep = _edge_selection(run.selector, x, lo + (hi - lo) * where)
        logits = model(x) if keep is None else forward_kept(model, x, keep)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running += loss.item() * len(idx)
        seen += len(idx)
        if run.progress is not None:
            run.progress(i + 1, run.steps_per_epoch, {"epoch": epoch + 1, "loss": running / seen})
    return running / seen


def _shipped_config(
    cfg: TrainConfig, model: Any, state: TrainState, epochs: int, limit: int | None, device: str
) -> dict[str, Any]:
    return {
        "name": cfg.name,
        "architecture": "vision_transformer",
        "vit_kwargs": cfg.vit_kwargs(),
        "input_size": [cfg.in_chans, cfg.img_size, cfg.img_size],
        "mean": list(FMNIST_MEAN),
        "std": list(FMNIST_STD),
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

    from .models import load_model

    epochs = cfg.epochs if epochs is None else epochs
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / f"{cfg.name}.ckpt.pt"
    train_x, train_y = fmnist.load_split("train", data_dir, download=download)
    test_x, test_y = fmnist.load_split("test", data_dir, download=download)
    if limit is not None:
        train_x, train_y = train_x[:limit], train_y[:limit]

    torch.manual_seed(cfg.seed)  # inside train()'s fork_rng: the caller's RNG is untouched
    model = _build(cfg, device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_x) / cfg.batch_size)
    state = _resume(ckpt_path, model, opt, device, cfg.name)
    run = _Run(
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
    )
    if cfg.select_with is not None:
        run.selector = load_model(cfg.select_with, device=device)
        run.selector.model.eval()
    for epoch in range(state.epoch, epochs):
        t0 = time.perf_counter()
        loss = _train_epoch(run, epoch)
        acc = evaluate_classifier(model, test_x, test_y, device=device)
        epoch_s = time.perf_counter() - t0
        state.epoch = epoch + 1
        state.wall_s += epoch_s
        state.history.append(
            {
                "epoch": epoch + 1,
                "loss": loss,
                "test_accuracy": acc,
                "planned_epochs": epochs,
                "patch_drop": cfg.patch_drop,
                "select_with": cfg.select_with,
                "wall_s": round(epoch_s, 1),
            }
        )
        logger.info("%s epoch %d/%d loss %.4f test %.2f%%", cfg.name, epoch + 1, epochs, loss, acc)
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "state": asdict(state),
                "torch_rng": torch.get_rng_state(),
            },
            ckpt_path,
        )
    config = _shipped_config(cfg, model, state, epochs, limit, device)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(out / f"{cfg.name}.safetensors"), metadata={"format": "pt"})
    (out / f"{cfg.name}.json").write_text(json.dumps(config, indent=2) + "\n")
    return config
