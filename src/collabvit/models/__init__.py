"""Edge and server models: the only package that knows timm.

- :mod:`.loading`: build and load a ViT (hub, checkpoint, seeded random, shipped pair).
- :mod:`.checkpoints`: read timm/DeiT, train (``--ema``) and transformers checkpoints.
- :mod:`.hub`: timm names and ``hf-hub:`` ids from the hub, offline from the local cache.
- :mod:`.devices`: ``--device auto|cpu|cuda|cuda:N``, checked before any model is built.
- :mod:`.probe`: the edge forward that also reads the class token's attention (eq. 10).
- :mod:`.subset`: the server forward on the kept patches only (eq. 1, eq. 9 cost).
- :mod:`._vit`: the one adapter to timm's ViT internals (support check by class).
"""

from __future__ import annotations

from ..cost import vit_flops
from ..data import AUTHORS_CROP_PCT, Preprocessing
from ._vit import build_vit, check_supported
from .checkpoints import Checkpoint, read_checkpoint
from .devices import resolve_device
from .loading import SHIPPED_MODELS, LoadedModel, load_model, read_state_dict, with_crop_pct
from .probe import forward_with_scores
from .subset import forward_kept, forward_subset, plan_buckets

__all__ = [
    "AUTHORS_CROP_PCT",
    "SHIPPED_MODELS",
    "Checkpoint",
    "LoadedModel",
    "Preprocessing",
    "build_vit",
    "check_supported",
    "forward_kept",
    "forward_subset",
    "forward_with_scores",
    "load_model",
    "plan_buckets",
    "read_checkpoint",
    "read_state_dict",
    "resolve_device",
    "vit_flops",
    "with_crop_pct",
]
