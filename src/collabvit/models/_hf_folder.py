"""Checkpoint folders: a transformers ``save_pretrained`` folder or a timm hub snapshot.

A transformers ViT/DeiT folder holds config.json (``model_type`` vit or deit)
and model.safetensors or pytorch_model.bin, maybe preprocessor_config.json
with the normalisation it was trained with; a timm folder holds config.json
with an ``architecture`` and weights already in timm's layout.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from . import _hf_layout
from .checkpoints import (
    Checkpoint,
    check_timm_layout,
    convert_layout,
    is_state_dict,
    read_file,
    read_json,
)

__all__ = ["read_folder"]

logger = logging.getLogger(__name__)

_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_SHARDED = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_MODEL_TYPES = {"vit": "ViT", "deit": "DeiT"}
_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value: Any, integer: bool = False) -> bool:
    return _number(value) and (isinstance(value, int) or not integer) and value > 0


def _checked(cfg: dict[str, Any], key: str, file: Path, integer: bool = False) -> Any:
    """``cfg[key]`` if absent or a positive number (an integer), else one CheckpointError line."""
    value = cfg.get(key)
    if value is not None and not _positive(value, integer):
        kind = "integer" if integer else "number"
        raise CheckpointError(
            f"checkpoint folder {file.parent}: {file.name}'s {key!r} must be a positive {kind}, "
            f"not {value!r}"
        )
    return value


def _weights_file(p: Path, what: str) -> Path:
    for name in _WEIGHTS:
        if (p / name).is_file():
            return p / name
    if any((p / name).is_file() for name in _SHARDED):
        raise CheckpointError(
            f"checkpoint folder {p} looks like {what} but its weights are sharded: "
            "save it again in one file (save_pretrained(..., max_shard_size='10GB'))"
        )
    inside = sorted(f.name for f in p.iterdir() if f.is_file() and f.suffix in _FILE_SUFFIXES)
    hint = f"; it holds {inside[0]}: pass that file" if len(inside) == 1 else ""
    raise CheckpointError(
        f"checkpoint folder {p} holds no model.safetensors or pytorch_model.bin "
        f"(a transformers or timm checkpoint folder has config.json and one of them){hint}"
    )


def _normalisation(
    p: Path, channels: int
) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """image_mean and image_std of a preprocessor_config.json beside the weights, if any."""
    file = p / "preprocessor_config.json"
    if not file.is_file():
        return None, None
    cfg = read_json(file, f"checkpoint folder {p}")
    mean, std = cfg.get("image_mean"), cfg.get("image_std")
    if mean is None or std is None:
        return None, None
    for key, values in (("image_mean", mean), ("image_std", std)):
        if not (isinstance(values, list) and len(values) == channels and all(map(_number, values))):
            raise CheckpointError(
                f"checkpoint folder {p}: {file.name}'s {key!r} must be a list of {channels} "
                f"numbers (one per channel), not {values!r}"
            )
    if not all(s > 0 for s in std):
        raise CheckpointError(f"checkpoint folder {p}: {file.name}'s 'image_std' must be positive")
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _transformers_config(config: dict[str, Any], p: Path) -> str:
    """The ViT/DeiT family of a transformers config.json, checked to convert exactly."""
    model_type = str(config.get("model_type"))
    if model_type not in _MODEL_TYPES:
        raise CheckpointError(
            f"checkpoint folder {p} looks like a transformers {model_type!r} checkpoint, but "
            "only ViT and DeiT (model_type vit or deit) convert to timm's ViT"
        )
    fam = _MODEL_TYPES[model_type]
    act = config.get("hidden_act", "gelu")
    if act != "gelu":
        raise CheckpointError(
            f"checkpoint folder {p} looks like a transformers {fam} checkpoint but its "
            f"hidden_act is {act!r}: timm's ViT uses exact GELU ('gelu')"
        )
    return fam


def read_folder(p: Path, ema: bool) -> Checkpoint:
    """A transformers ViT/DeiT folder (converted) or a timm hub folder, in timm's layout."""
    config_file = p / "config.json"
    config = read_json(config_file, f"checkpoint folder {p}") if config_file.is_file() else {}
    timm_folder = "architecture" in config and "model_type" not in config
    fam = None if timm_folder or not config else _transformers_config(config, p)
    what = "a timm hub folder" if timm_folder else f"a transformers {fam or 'ViT/DeiT'} checkpoint"
    if ema:
        raise CheckpointError(
            f"checkpoint folder {p} looks like {what}, which holds one set of weights and "
            "no EMA copy: drop --ema"
        )
    file = _weights_file(p, what)
    raw = read_file(file)
    if not is_state_dict(raw) or not raw:
        raise CheckpointError(f"checkpoint {file} ({what}) holds no tensor state dict")
    state: dict[str, Any] = raw
    if timm_folder:
        check_timm_layout(state, file, what)
        return Checkpoint(file, state, what)
    found = _hf_layout.family(state)
    if found is None:
        raise CheckpointError(
            f"checkpoint {file} looks like {what} (config.json) but its weights are not in "
            "the transformers ViT layout (no embeddings.patch_embeddings.projection.weight)"
        )
    what = f"a transformers {fam or found} checkpoint"
    if not config:
        logger.info("checkpoint folder %s has no config.json: layer-norm eps taken as 1e-12", p)
    heads = _checked(config, "num_attention_heads", config_file, integer=True)
    channels = _checked(config, "num_channels", config_file, integer=True)
    mean, std = _normalisation(p, channels or 3)
    eps = _checked(config, "layer_norm_eps", config_file)
    logger.info("checkpoint %s: %s, converted to timm's layout", file, what)
    return Checkpoint(
        file,
        convert_layout(state, file, what),
        what,
        layer_norm_eps=float(eps if eps is not None else _hf_layout.DEFAULT_LAYER_NORM_EPS),
        num_heads=int(heads) if heads is not None else None,
        mean=mean,
        std=std,
    )
