"""The edge forward that also reads the class token's attention (paper Sec. IV-A).

The model keeps timm's fused attention: a forward hook on a block's
``attn.qkv`` keeps the projected tokens, and :mod:`collabvit.attention`
recomputes from q and k only what a score needs — the one CLS row of the last
block for the mean attention score (O(N) next to the O(N^2) fused kernel), the
full maps of every block only when a rollout is asked for.

In bf16 or fp16 (:mod:`.precision`) the forward runs in the model's dtype, but
q and k are cast to float32 before the scores are computed, and the logits are
returned in float32: the selection and the gate always see float32.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..attention import cls_attention, get_score
from . import _vit, precision
from .loading import LoadedModel

__all__ = ["forward_with_scores"]


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


def _attention(model: Any, block: int, qkv: torch.Tensor, cls_only: bool) -> torch.Tensor:
    attn = model.blocks[block].attn
    q, k = _vit.split_qk(attn, qkv)  # (B, H, L, Dh) each, in the model's dtype
    q = q[:, :, :1] if cls_only else q
    return cls_attention(q.float(), k.float(), attn.scale)  # eqs. 5-6 in float32


@torch.no_grad()
def forward_with_scores(
    loaded: LoadedModel, images: torch.Tensor, scores: Sequence[str] = ("mean",)
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Edge forward that also returns the requested patch-importance scores.

    Args:
        loaded: the edge model (in any precision, see :mod:`.precision`).
        images: (B, C, H, W) normalised input, cast to the model's dtype.
        scores: names from :data:`collabvit.attention.SCORES`.

    Returns:
        float32 logits (B, num_classes) and float32 ``{score: (B, N)}``, rows summing to 1.
    """
    wanted = [get_score(s) for s in scores]
    model: Any = loaded.model
    depth = len(model.blocks)
    every_block = any(s.every_block for s in wanted)
    blocks = list(range(depth)) if every_block else [depth - 1]
    with _qkv_hooks(model, blocks) as captured, precision.matmul_scope(loaded):
        logits = model(images.to(precision.model_dtype(model)))
    npre = loaded.num_prefix_tokens
    out: dict[str, torch.Tensor] = {}
    cls_row = None
    full = None
    for s in wanted:
        if s.every_block:
            if full is None:
                full = [_attention(model, i, captured[i], cls_only=False) for i in range(depth)]
            out[s.name] = s.compute(full, npre)
        else:
            if cls_row is None:
                cls_row = _attention(model, depth - 1, captured[depth - 1], cls_only=True)
            out[s.name] = s.compute([cls_row], npre)
    return logits.float(), out
