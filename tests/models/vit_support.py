"""A small timm ViT with register tokens, for the tests of tests/models/ (not a test module)."""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer

from collabvit.models import LoadedModel, Preprocessing


def register_vit(
    seed: int = 0,
    mean: tuple[float, ...] = (0.5, 0.5, 0.5),
    std: tuple[float, ...] = (0.5, 0.5, 0.5),
) -> LoadedModel:
    """64x64, 8x8 patches, 4 register tokens, position embeddings on patches only, qk-norm.

    Built from ``seed`` inside a forked RNG: the caller's global RNG is untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VisionTransformer(
            img_size=64,
            patch_size=8,
            num_classes=10,
            embed_dim=48,
            depth=3,
            num_heads=3,
            reg_tokens=4,
            no_embed_class=True,
            qk_norm=True,
            global_pool="token",
        ).eval()
    return LoadedModel("small-reg4", model, Preprocessing((3, 64, 64), mean, std))
