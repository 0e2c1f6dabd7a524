"""The one adapter to timm's VisionTransformer internals.

Everything collabvit needs to know about how a timm ViT is put together lives
here: which models are supported (checked by class), the prefix tokens and
position embeddings, embedding a subset of patches, running the encoder with a
key mask or packed without padding, and reading q and k from a block's qkv
projection. The rest of the package calls these helpers and never reaches into
a timm module itself.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import Attention, Mlp
from timm.models.vision_transformer import Block, VisionTransformer

from ..data import Preprocessing
from ..errors import ModelError

__all__ = [
    "SUPPORTED_ATTENTION",
    "SUPPORTED_BLOCKS",
    "build_vit",
    "check_supported",
    "embed_patches",
    "forward_packed",
    "forward_tokens",
    "imagenet_names",
    "num_classes_in",
    "preprocessing_from_timm",
    "split_qk",
]

SUPPORTED_ATTENTION: tuple[type, ...] = (Attention,)
"""Attention classes whose qkv projection the probe reads (timm's standard one)."""
SUPPORTED_BLOCKS: tuple[type, ...] = (Block,)
"""Block classes that take a key mask (``attn_mask``) in their forward."""


def build_vit(kwargs: dict[str, Any]) -> VisionTransformer:
    """A timm VisionTransformer from constructor kwargs (the shipped models' JSON)."""
    return VisionTransformer(**kwargs)


def _names(classes: tuple[type, ...]) -> str:
    return ", ".join(f"{c.__module__}.{c.__qualname__}" for c in classes)


def check_supported(model: Any, name: str) -> Any:
    """Raise ModelError unless ``model`` is a ViT the probe and the subset forward can run.

    Checked by class, not by attribute: every block must be one of
    :data:`SUPPORTED_BLOCKS` with an attention of exactly one of
    :data:`SUPPORTED_ATTENTION` (a subclass may compute something else).
    """
    if not isinstance(model, VisionTransformer):
        raise ModelError(
            f"{name} is a {type(model).__name__}, not a timm VisionTransformer: use a ViT with a "
            "class token such as deit_tiny_patch16_224 or vit_base_patch16_224"
        )
    if model.cls_token is None or model.global_pool != "token" or model.attn_pool is not None:
        raise ModelError(
            f"{name} does not classify from a class token (global_pool={model.global_pool!r}): "
            "the method needs the class token's attention; pick a model with a CLS token"
        )
    for i, block in enumerate(model.blocks):
        if type(block) not in SUPPORTED_BLOCKS:
            raise ModelError(
                f"{name}: block {i} is a {type(block).__name__}; collabvit supports "
                f"{_names(SUPPORTED_BLOCKS)}"
            )
        attn = getattr(block, "attn", None)
        if type(attn) not in SUPPORTED_ATTENTION:
            raise ModelError(
                f"{name}: block {i} uses {type(attn).__name__} attention; collabvit supports "
                f"{_names(SUPPORTED_ATTENTION)} (build the model without attn_layer=...)"
            )
    kernel = model.patch_embed.proj.kernel_size
    stride = model.patch_embed.proj.stride
    if tuple(kernel) != tuple(stride) or kernel[0] != kernel[1]:
        raise ModelError(f"{name}: patch embedding must be a square stride=kernel convolution")
    if getattr(model, "dynamic_img_size", False):
        raise ModelError(f"{name}: dynamic image size is not supported; use a fixed-size ViT")
    return model


def num_classes_in(state: dict[str, torch.Tensor]) -> int | None:
    """Classes of the head in a timm state dict (None: no 2-D ``head.weight``)."""
    head = state.get("head.weight")
    return int(head.shape[0]) if head is not None and head.ndim == 2 else None


def imagenet_names(num_classes: int) -> list[str] | None:
    """Short ImageNet-1k class names from timm's metadata (None for other heads)."""
    if num_classes != 1000:
        return None
    try:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return [info.index_to_description(i).split(",")[0] for i in range(1000)]
    except Exception:  # metadata missing from an older timm
        return None


def preprocessing_from_timm(model: Any, crop_pct: float) -> Preprocessing:
    """Input size, mean/std and interpolation from a timm model's pretrained config."""
    cfg = model.pretrained_cfg or {}
    size = tuple(cfg.get("input_size", (3, *model.patch_embed.img_size)))
    return Preprocessing(
        input_size=(int(size[0]), int(size[1]), int(size[2])),
        mean=tuple(float(m) for m in cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(float(s) for s in cfg.get("std", (0.229, 0.224, 0.225))),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        crop_pct=crop_pct,
    )


def split_qk(attn: Any, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q and k of a timm ``Attention`` from its qkv projection output, norms applied.

    Args:
        attn: the block's attention module (num_heads, head_dim, q_norm, k_norm).
        qkv: (B, L, 3 * H * Dh) output of ``attn.qkv``.

    Returns:
        q, k: (B, H, L, Dh) each.
    """
    b, length, _ = qkv.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    qkv = qkv.reshape(b, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, L, Dh)
    return attn.q_norm(qkv[0]), attn.k_norm(qkv[1])


def _prefix_tokens(model: Any, batch: int) -> torch.Tensor:
    """The prefix tokens (CLS, distillation or registers) with their position embeddings.

    Returns (B, num_prefix, D).
    """
    tokens = [model.cls_token]
    dist = getattr(model, "dist_token", None)
    if dist is not None:
        tokens.append(dist)
    if model.reg_token is not None:
        tokens.append(model.reg_token)
    prefix = torch.cat(tokens, dim=1)  # (1, P, D)
    if not model.no_embed_class and model.pos_embed is not None:
        prefix = prefix + model.pos_embed[:, : prefix.shape[1]]
    return prefix.expand(batch, -1, -1)


def _patch_pos_embed(model: Any) -> torch.Tensor:
    """Position embeddings of the patches only: (N, D)."""
    pos = model.pos_embed
    if model.no_embed_class:
        return pos[0]
    return pos[0, model.num_prefix_tokens :]


def embed_patches(model: Any, images: torch.Tensor, patch_index: torch.Tensor) -> torch.Tensor:
    """Embed only the indexed patches of each image (the patch embedding of eq. 1).

    Args:
        images: (B, C, H, W) normalised input.
        patch_index: (B, K) long, row-major patch indices to embed.

    Returns:
        (B, K, D) patch tokens with their own position embeddings.
    """
    proj = model.patch_embed.proj
    p = proj.kernel_size[0]
    b, c = images.shape[:2]
    patches = images.unfold(2, p, p).unfold(3, p, p)  # (B, C, gh, gw, p, p)
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(b, -1, c * p * p)  # (B, N, C*p*p)
    idx = patch_index.unsqueeze(-1).expand(-1, -1, patches.shape[-1])
    kept = torch.gather(patches, 1, idx).to(proj.weight.dtype)  # (B, K, C*p*p)
    tokens = F.linear(kept, proj.weight.reshape(proj.out_channels, -1), proj.bias)  # (B, K, D)
    tokens = model.patch_embed.norm(tokens)
    return tokens + _patch_pos_embed(model)[patch_index]


def forward_tokens(
    model: Any,
    images: torch.Tensor,
    patch_index: torch.Tensor,
    valid: torch.Tensor | None,
) -> torch.Tensor:
    """Eq. 1 on a subset: prefix tokens + the indexed patches through encoder and head.

    Args:
        images: (B, C, H, W) normalised input.
        patch_index: (B, K) long patch indices.
        valid: (B, K) bool (False: a padding slot, masked out of every attention) or None.

    Returns:
        (B, num_classes) logits.
    """
    x = torch.cat(
        [_prefix_tokens(model, images.shape[0]), embed_patches(model, images, patch_index)], dim=1
    )  # (B, P + K, D)
    x = model.norm_pre(x)
    if valid is None:
        x = model.blocks(x)
    else:
        prefix_ok = valid.new_ones(valid.shape[0], model.num_prefix_tokens)
        keys = torch.cat([prefix_ok, valid], dim=1)  # (B, P + K)
        mask = torch.zeros(keys.shape, dtype=x.dtype, device=x.device)
        mask.masked_fill_(~keys, float("-inf"))
        mask = mask[:, None, None, :]  # (B, 1, 1, P + K): padded keys get no weight
        for blk in model.blocks:
            x = blk(x, attn_mask=mask)
    x = model.norm(x)
    return model.forward_head(x)


def _runs(counts: list[int]) -> list[tuple[int, int]]:
    """(images, count) of each run of equal values in an ascending list of counts."""
    runs: list[tuple[int, int]] = []
    for c in counts:
        if runs and runs[-1][1] == c:
            runs[-1] = (runs[-1][0] + 1, c)
        else:
            runs.append((1, c))
    return runs


def _packed_tokens(
    model: Any, images: torch.Tensor, keep_mask: torch.Tensor, order: torch.Tensor, total: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image's prefix and kept patch tokens one after the other (eq. 1 embedding).

    Args:
        images: (B, C, H, W); keep_mask: (B, N) bool; order: (B,) images by ascending count;
        total: T, the number of tokens.

    Returns:
        x: (T, D) tokens in the model's dtype, T = sum over images of (npre + count);
        prefix_rows: (B, npre) rows of each image's prefix tokens in ``x`` (order of ``order``).
    """
    proj = model.patch_embed.proj
    weight = proj.weight.reshape(proj.out_channels, -1)  # (D, C*p*p)
    p = proj.kernel_size[0]
    b = images.shape[0]
    patches = images.unfold(2, p, p).unfold(3, p, p)  # (B, C, gh, gw, p, p)
    patches = patches.permute(0, 2, 3, 1, 4, 5).flatten(1, 2).flatten(2)  # (B, N, C*p*p)
    image, patch = keep_mask[order].nonzero(as_tuple=True)  # image-major, patches ascending
    kept = patches[order[image], patch].to(weight.dtype)  # (K, C*p*p): kept patches only
    tokens = model.patch_embed.norm(F.linear(kept, weight, proj.bias))
    tokens = tokens + _patch_pos_embed(model)[patch]  # (K, D)
    npre = model.num_prefix_tokens
    lengths = keep_mask[order].sum(1) + npre  # (B,)
    starts = lengths.cumsum(0) - lengths
    prefix_rows = starts[:, None] + torch.arange(npre, device=starts.device)  # (B, P)
    is_patch = torch.ones(total, dtype=torch.bool, device=tokens.device)
    is_patch[prefix_rows.flatten()] = False
    x = tokens.new_empty(total, tokens.shape[-1])
    x[is_patch] = tokens
    x[prefix_rows.flatten()] = _prefix_tokens(model, b).reshape(b * npre, -1).to(x.dtype)
    return x, prefix_rows


def _packed_block(block: Any, x: torch.Tensor, runs: list[tuple[int, int]]) -> torch.Tensor:
    """One timm ``Block`` on packed tokens: attention within each image, no key mask.

    The same computation as ``Block.forward`` (pre-norm attention and MLP with
    residuals, layer scale, optional qk-norm, scale-norm and gate), with the
    token-wise layers run once over all the images' tokens (T, D) and the
    attention run per run of equal-length images (g, H, L, Dh).
    """
    attn = block.attn
    h = block.norm1(x)
    qkv = attn.qkv(h)  # (T, 3 * H * Dh)
    outs = []
    start = 0
    for images, length in runs:
        rows = qkv[start : start + images * length]
        rows = rows.view(images, length, 3, attn.num_heads, attn.head_dim)
        q, k, v = rows.permute(2, 0, 3, 1, 4).unbind(0)  # (g, H, L, Dh) each
        o = F.scaled_dot_product_attention(attn.q_norm(q), attn.k_norm(k), v)
        outs.append(o.transpose(1, 2).reshape(images * length, -1))  # (g * L, H * Dh)
        start += images * length
    o = attn.norm(torch.cat(outs) if len(outs) > 1 else outs[0])
    gate = getattr(attn, "gate", None)
    if gate is not None:
        o = o * gate(h).sigmoid()
    x = x + block.drop_path1(block.ls1(attn.proj_drop(attn.proj(o))))
    return x + block.drop_path2(block.ls2(_mlp(block.mlp, block.norm2(x))))


def _fused_gelu_mlp(mlp: Any, x: torch.Tensor) -> bool:
    """Whether fc1 and its exact GELU can run as one oneDNN call (bf16/fp16 on a CPU).

    The GELU then runs in the GEMM's epilogue while fc1's output is in cache
    instead of as a separate pass over (T, 4D) in memory; inference only.
    """
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.bfloat16, torch.float16)
        and not torch.is_grad_enabled()
        and type(mlp) is Mlp
        and type(mlp.act) is torch.nn.GELU
        and mlp.act.approximate == "none"
        and isinstance(mlp.norm, torch.nn.Identity)
        and not mlp.training
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


def _mlp(mlp: Any, x: torch.Tensor) -> torch.Tensor:
    """A block's MLP on (T, D) tokens: ``fc2(GELU(fc1(x)))`` (dropout off in eval)."""
    if _fused_gelu_mlp(mlp, x):
        hidden = torch.ops.mkldnn._linear_pointwise(
            x, mlp.fc1.weight, mlp.fc1.bias, "gelu", [], "none"
        )  # (T, hidden): fc1 with the exact (erf) GELU fused
        return mlp.fc2(hidden)
    return mlp(x)


def forward_packed(model: Any, images: torch.Tensor, keep_mask: torch.Tensor) -> torch.Tensor:
    """Eq. 1 on each image's kept tokens, packed: no padding and no key mask.

    The images' tokens are laid end to end in ascending order of patch count;
    LayerNorm, the qkv/proj/MLP multiplies and the residuals run once over all
    of them, the attention once per run of images with the same count (one
    batched kernel call each, no mask). No padded token is ever computed, which
    is what makes a mixed-length batch as fast as an equal-length one.

    Args:
        images: (B, C, H, W) normalised input (any float dtype; cast to the model's).
        keep_mask: (B, N) bool, at least one True per row.

    Returns:
        (B, num_classes) logits in the model's dtype, rows in the input order.
    """
    npre = model.num_prefix_tokens
    counts = keep_mask.sum(1)  # (B,)
    order = counts.argsort(stable=True)
    runs = _runs(counts[order].tolist())  # the one host sync
    total = sum(g * (c + npre) for g, c in runs)
    x, prefix_rows = _packed_tokens(model, images, keep_mask, order, total)
    x = model.norm_pre(x)
    lengths = [(g, c + npre) for g, c in runs]
    for block in model.blocks:
        x = _packed_block(block, x, lengths)
    prefix = model.norm(x[prefix_rows.flatten()].view(len(order), npre, -1))  # (B, P, D)
    logits = model.forward_head(prefix)
    out = torch.empty_like(logits)
    out[order] = logits
    return out
