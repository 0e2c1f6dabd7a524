"""Patch importance from the edge model's class-token attention (paper Sec. IV-A).

*Mean attention score* (eq. 10): in the last block, the class token's query
against all keys, softmax over every key (prefix tokens included), averaged
over heads; the prefix columns are dropped and the patch scores renormalised
to sum to 1.

We read it without switching timm's fused attention off: a forward hook on the
last block's ``attn.qkv`` keeps the projected q and k, and the one CLS row is
recomputed from them (O(N) work next to the O(N^2) fused kernel).

*Attention rollout* (Abnar & Zuidema, 2020) in two named variants:

- ``rollout`` (the authors'): per layer ``A + I`` per head, the product
  ``A_L ... A_1`` taken per head, heads averaged after the product.
- ``rollout-standard``: heads averaged first, ``0.5 A + 0.5 I`` (rows still sum
  to 1), then the product.

Both end with the same CLS-row slice and renormalisation.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .errors import ConfigError
from .models import LoadedModel

__all__ = [
    "SCORES",
    "attention_from_qkv",
    "forward_with_scores",
    "renormalise",
    "rollout_scores",
]

SCORES = ("mean", "rollout", "rollout-standard")


def renormalise(scores: torch.Tensor) -> torch.Tensor:
    """Scale each row to sum to 1; rows that sum to 0 (or NaN) become 0. (B, N) -> (B, N)."""
    out = scores / scores.sum(-1, keepdim=True)
    return torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def attention_from_qkv(attn: Any, qkv: torch.Tensor, cls_only: bool) -> torch.Tensor:
    """Attention probabilities recomputed from a timm ``Attention``'s qkv output.

    Args:
        attn: the block's attention module (gives num_heads, head_dim, scale, q/k norms).
        qkv: (B, L, 3 * H * Dh) output of ``attn.qkv``.
        cls_only: compute only the class token's row.

    Returns:
        (B, H, 1, L) when ``cls_only`` else (B, H, L, L).
    """
    b, length, _ = qkv.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    qkv = qkv.reshape(b, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, L, Dh)
    q, k = qkv[0], qkv[1]
    if cls_only:
        q = q[:, :, :1]  # (B, H, 1, Dh)
    q, k = attn.q_norm(q), attn.k_norm(k)
    logits = (q * attn.scale) @ k.transpose(-2, -1)  # (B, H, Lq, L)
    return logits.float().softmax(dim=-1)


@contextmanager
def _qkv_hooks(model: Any, blocks: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
    captured: dict[int, torch.Tensor] = {}
    handles = []
    for i in blocks:

        def hook(_m: nn.Module, _inp: object, out: torch.Tensor, i: int = i) -> None:
            captured[i] = out.detach()

        handles.append(model.blocks[i].attn.qkv.register_forward_hook(hook))
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


def rollout_scores(
    attentions: Sequence[torch.Tensor], num_prefix: int, variant: str = "rollout"
) -> torch.Tensor:
    """Attention rollout of a list of per-layer attentions, first layer first.

    Args:
        attentions: L tensors of shape (B, H, T, T).
        num_prefix: prefix tokens (class, distillation, registers) to drop.
        variant: ``rollout`` (per-head product, the authors') or
            ``rollout-standard`` (head mean first, Abnar & Zuidema).

    Returns:
        (B, N) patch scores summing to 1.
    """
    if variant == "rollout":
        result: torch.Tensor | None = None
        for a in attentions:  # a: (B, H, T, T)
            eye = torch.eye(a.shape[-1], device=a.device, dtype=a.dtype)
            a = a + eye
            result = a if result is None else a @ result  # (B, H, T, T)
        assert result is not None
        joint = result.mean(dim=1)  # (B, T, T)
    elif variant == "rollout-standard":
        product: torch.Tensor | None = None
        for a in attentions:
            mean = a.mean(dim=1)  # (B, T, T)
            eye = torch.eye(mean.shape[-1], device=a.device, dtype=a.dtype)
            mean = 0.5 * mean + 0.5 * eye
            product = mean if product is None else mean @ product
        assert product is not None
        joint = product
    else:
        raise ConfigError(f"unknown rollout variant {variant!r}: use rollout or rollout-standard")
    return renormalise(joint[:, 0, num_prefix:])


@torch.no_grad()
def forward_with_scores(
    loaded: LoadedModel, images: torch.Tensor, scores: Sequence[str] = ("mean",)
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Edge forward that also returns the requested patch-importance scores.

    The model keeps its fused attention; only the last block's CLS row is
    recomputed for ``mean``, and full attention maps only when a rollout is
    asked for.

    Args:
        loaded: the edge model.
        images: (B, C, H, W) normalised input.
        scores: any of ``mean``, ``rollout``, ``rollout-standard``.

    Returns:
        logits (B, num_classes) and ``{score: (B, N)}``.
    """
    for s in scores:
        if s not in SCORES:
            raise ConfigError(f"unknown score {s!r}: use one of {', '.join(SCORES)}")
    model: Any = loaded.model
    depth = len(model.blocks)
    want_rollout = any(s.startswith("rollout") for s in scores)
    blocks = list(range(depth)) if want_rollout else [depth - 1]
    with _qkv_hooks(model, blocks) as captured:
        logits = model(images)
    npre = loaded.num_prefix_tokens
    out: dict[str, torch.Tensor] = {}
    last_attn = model.blocks[-1].attn
    if "mean" in scores:
        cls_row = attention_from_qkv(last_attn, captured[depth - 1], cls_only=True)  # (B,H,1,L)
        out["mean"] = renormalise(cls_row[:, :, 0].mean(dim=1)[:, npre:])
    if want_rollout:
        full = [
            attention_from_qkv(model.blocks[i].attn, captured[i], cls_only=False)
            for i in range(depth)
        ]
        for variant in ("rollout", "rollout-standard"):
            if variant in scores:
                out[variant] = rollout_scores(full, npre, variant)
    return logits.float(), out
