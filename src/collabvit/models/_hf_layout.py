"""Hugging Face ``transformers`` ViT/DeiT state dicts -> timm's VisionTransformer layout.

``ViTForImageClassification`` and ``DeiTForImageClassificationWithTeacher``
compute exactly what timm's ``vit_*`` / ``deit_*`` and ``deit_*_distilled``
models compute (pre-norm blocks, exact GELU, class token first, DeiT's
distillation token second); only the parameter names differ and timm fuses
q, k and v into one projection. Both naming schemes are read: the one
``save_pretrained`` writes and the hub holds (``encoder.layer.N.attention.
attention.query``) and the in-memory one of transformers >= 5
(``layers.N.attention.q_proj``), so a bare ``model.state_dict()`` converts too.

transformers' layer norms default to ``eps=1e-12`` where timm's ViT uses
1e-6; :data:`DEFAULT_LAYER_NORM_EPS` is what a checkpoint without its
config.json is taken to use.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

__all__ = ["DEFAULT_LAYER_NORM_EPS", "LayoutError", "convert", "family"]

DEFAULT_LAYER_NORM_EPS = 1e-12
"""``layer_norm_eps`` of transformers' ViTConfig and DeiTConfig."""

_PREFIXES = ("vit.", "deit.", "")
_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.distillation_token": "dist_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_HEADS = {"classifier": "head", "cls_classifier": "head", "distillation_classifier": "head_dist"}
_DROPPED = ("embeddings.mask_token", "pooler.dense.weight", "pooler.dense.bias")
"""Parameters with no timm counterpart that inference never uses."""

_LAYER = re.compile(r"(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias)")
_BLOCK = {
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1",
    "mlp.fc1": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "mlp.fc2": "mlp.fc2",
}
_QKV = {
    "attention.attention.query": 0,
    "attention.attention.key": 1,
    "attention.attention.value": 2,
    "attention.q_proj": 0,
    "attention.k_proj": 1,
    "attention.v_proj": 2,
}


class LayoutError(ValueError):
    """The state dict is in the transformers layout but cannot be converted (the reason)."""


def family(state: Mapping[str, object]) -> str | None:
    """``"ViT"`` or ``"DeiT"`` when ``state`` is a transformers ViT/DeiT state dict, else None."""
    for prefix in _PREFIXES:
        if f"{prefix}embeddings.patch_embeddings.projection.weight" in state:
            if prefix == "deit." or f"{prefix}embeddings.distillation_token" in state:
                return "DeiT"
            return "ViT"
    return None


def _strip_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Backbone keys without ``vit.``/``deit.``; head keys as they are."""
    for prefix in _PREFIXES[:2]:
        if any(k.startswith(prefix) for k in state):
            return {k.removeprefix(prefix): v for k, v in state.items()}
    return dict(state)


def _fuse_qkv(
    parts: dict[tuple[int, str], list[torch.Tensor | None]],
) -> dict[str, torch.Tensor]:
    """blocks.N.attn.qkv.{weight,bias}: q, k and v stacked along the output dim (3D, D)."""
    fused = {}
    for (layer, kind), qkv in sorted(parts.items()):
        if any(t is None for t in qkv):
            missing = [n for n, t in zip("qkv", qkv, strict=True) if t is None]
            raise LayoutError(f"layer {layer} has no {'/'.join(missing)} attention {kind}")
        fused[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat([t for t in qkv if t is not None])
    return fused


def convert(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers ViT/DeiT image-classification state dict in timm's layout.

    Args:
        state: ``ViTForImageClassification`` or ``DeiTForImageClassificationWithTeacher``
            weights (``vit.*``/``deit.*`` + classifier keys), either naming scheme.

    Returns:
        the same tensors under timm's names; q, k, v fused into ``attn.qkv``
        (weight (3D, D), bias (3D,)).

    Raises:
        LayoutError: a key that maps to nothing, a layer without q, k or v, no
            classifier (a bare ``ViTModel``), or DeiT's single-classifier variant.
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], list[torch.Tensor | None]] = {}
    for key, tensor in _strip_prefix(state).items():
        head, _, leaf = key.rpartition(".")
        if key in _TOP:
            out[_TOP[key]] = tensor
        elif head in _HEADS and leaf in ("weight", "bias"):
            out[f"{_HEADS[head]}.{leaf}"] = tensor
        elif key in _DROPPED:
            continue
        elif (match := _LAYER.fullmatch(key)) is not None:
            layer, module, kind = int(match.group(1)), match.group(2), match.group(3)
            if module in _QKV:
                qkv.setdefault((layer, kind), [None, None, None])[_QKV[module]] = tensor
            elif module in _BLOCK:
                out[f"blocks.{layer}.{_BLOCK[module]}.{kind}"] = tensor
            else:
                raise LayoutError(f"it holds {key!r}, which has no timm counterpart")
        else:
            raise LayoutError(f"it holds {key!r}, which has no timm counterpart")
    out.update(_fuse_qkv(qkv))
    if "head.weight" not in out:
        raise LayoutError(
            "it has no classifier (a bare ViTModel/DeiTModel): save the "
            "...ForImageClassification model"
        )
    if "dist_token" in out and "head_dist.weight" not in out:
        raise LayoutError(
            "it is a DeiTForImageClassification (a distillation token but one classifier on "
            "the class token), which timm has no model for: use "
            "DeiTForImageClassificationWithTeacher weights (cls_ and distillation_classifier)"
        )
    return out
