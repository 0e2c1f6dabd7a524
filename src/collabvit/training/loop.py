"""The training loop of ``collabvit train``: model set-up, one epoch, resume, evaluation."""

from __future__ import annotations

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

from ..models import forward_with_scores
from ..selection import select_patches
from .config import DATA_STATS, FMNIST_MEAN, FMNIST_STD, TrainConfig

__all__ = [
    "Run",
    "TrainState",
    "build",
    "evaluate_classifier",
    "resume",
    "save_checkpoint",
    "train_epoch",
]

logger = logging.getLogger(__name__)


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    history: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    # inside epoch ``epoch``: steps done, their summed loss and images (0: at its start)
    step: int = 0
    running: float = 0.0
    seen: int = 0
    epoch_s: float = 0.0  # seconds already spent in that epoch

    def finish_epoch(self, record: dict[str, Any], seconds: float) -> None:
        """Epoch ``record["epoch"]`` is done: record it and start the next at step 0."""
        self.epoch, self.step, self.running, self.seen, self.epoch_s = (
            record["epoch"],
            0,
            0.0,
            0,
            0.0,
        )
        self.wall_s += seconds
        self.history.append(record)


def _normalise(
    batch_u8: torch.Tensor,
    mean: tuple[float, ...] = FMNIST_MEAN,
    std: tuple[float, ...] = FMNIST_STD,
) -> torch.Tensor:
    x = batch_u8.float().div_(255.0).unsqueeze(1)  # (B, 1, H, W)
    return (x - mean[0]) / std[0]


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
    mean: tuple[float, ...] = FMNIST_MEAN,
    std: tuple[float, ...] = FMNIST_STD,
) -> float:
    """Top-1 accuracy (in %) of ``model`` on uint8 grey images (N, H, W), e.g. Fashion-MNIST."""
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(images[start : start + batch_size])
        x = _normalise(batch, mean, std).to(device)
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


def build(cfg: TrainConfig, device: str) -> Any:
    """The ViT of ``cfg`` on ``device``, set up for training (patch dropout, CPU kernel)."""
    from ..models import build_vit

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


def resume(
    ckpt_path: Path, model: Any, opt: Any, device: str, name: str
) -> tuple[TrainState, torch.Tensor | None]:
    """Model, optimizer and RNG state from the last checkpoint, if there is one.

    Returns the state and, for a checkpoint written inside an epoch, that
    epoch's generator state (the epoch resumes at ``state.step``).
    """
    if not ckpt_path.exists():
        return TrainState(), None
    ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    state = TrainState(**ckpt["state"])
    if "torch_rng" in ckpt:  # patch dropout draws from the (forked) global generator
        torch.set_rng_state(ckpt["torch_rng"])
    within = f", step {state.step} of the next" if state.step else ""
    logger.info("resuming %s from epoch %d%s (%s)", name, state.epoch, within, ckpt_path)
    return state, ckpt.get("epoch_gen")


def save_checkpoint(
    path: Path, model: Any, opt: Any, state: TrainState, epoch_gen: torch.Tensor | None = None
) -> None:
    """Everything :func:`resume` needs, written atomically (a kill never leaves half a file)."""
    body = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "state": asdict(state),
        "torch_rng": torch.get_rng_state(),
    }
    if epoch_gen is not None:
        body["epoch_gen"] = epoch_gen
    tmp = path.with_name(path.name + ".tmp")
    torch.save(body, tmp)
    tmp.replace(path)


@dataclass
class Run:
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
    # (indices, epoch) -> (B, H, W) uint8 canvases; None: the images themselves
    render: Callable[[torch.Tensor, int], torch.Tensor] | None = None
    # save(step, running, seen, generator state): a checkpoint inside the epoch, written
    # at most every ``checkpoint_s`` seconds (long epochs on a shared CPU survive a kill)
    save: Callable[[int, float, int, torch.Tensor], None] | None = None
    checkpoint_s: float = 600.0


def train_epoch(
    run: Run, epoch: int, at: TrainState | None = None, gen_state: torch.Tensor | None = None
) -> float:
    """One epoch of AdamW with cosine schedule; returns the mean training loss.

    With ``at.step`` > 0 and the epoch generator's ``gen_state`` (a checkpoint
    written inside the epoch) it carries on from that step, as if never stopped.
    """
    from ..models import forward_kept

    cfg, model, opt = run.cfg, run.model, run.opt
    model.train()
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
    order = torch.randperm(len(run.images), generator=gen)
    start, running, seen = 0, 0.0, 0
    if at is not None and at.step and gen_state is not None:
        gen.set_state(gen_state)
        start, running, seen = at.step, at.running, at.seen
    last_save = time.perf_counter()
    for i in range(start, run.steps_per_epoch):
        idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
        pixels = run.images[idx] if run.render is None else run.render(idx, epoch)
        x = _normalise(_augment(pixels, cfg, gen), *DATA_STATS[cfg.data]).to(run.device)
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
        due = time.perf_counter() - last_save >= run.checkpoint_s
        if run.save is not None and due and i + 1 < run.steps_per_epoch:
            run.save(i + 1, running, seen, gen.get_state())
            last_save = time.perf_counter()
        if run.progress is not None:
            run.progress(i + 1, run.steps_per_epoch, {"epoch": epoch + 1, "loss": running / seen})
    return running / seen
