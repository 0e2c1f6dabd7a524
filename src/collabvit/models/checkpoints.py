"""Read checkpoints of the supported formats into timm's layout, and fit them to a model.

The formats, each recognised by what the file holds, not by its name:

- a timm/DeiT state dict (``.pth``/``.pt``/``.bin`` or ``.safetensors``),
  optionally under a ``model`` or ``state_dict`` key and with the ``module.``
  prefix of DistributedDataParallel;
- a timm or DeiT *train* checkpoint: weights next to optimizer state and args,
  with the EMA weights under ``state_dict_ema`` (timm) or ``model_ema`` (DeiT),
  chosen with ``ema=True`` (``--ema``);
- a timm hub folder (config.json with ``architecture`` + model.safetensors);
- a Hugging Face ``transformers`` ViT/DeiT checkpoint: a ``save_pretrained``
  folder (config.json + model.safetensors or pytorch_model.bin) or the state
  dict alone, converted on load (:mod:`._hf_layout`).

Every failure is one :class:`~collabvit.errors.CheckpointError` line that says
which of these the file looked like and what was wrong with it.
"""

from __future__ import annotations

import argparse
import json
import logging
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from . import _hf_layout, _vit

__all__ = ["Checkpoint", "fit_checkpoint", "read_checkpoint", "read_state_dict"]

logger = logging.getLogger(__name__)

_PLAIN_KEYS = ("state_dict", "model")
_EMA_KEYS = ("state_dict_ema", "model_ema")
_FORMATS = (
    "a timm/DeiT state dict, a timm train checkpoint (state_dict/model, +_ema), "
    "a transformers ViT/DeiT checkpoint"
)


@dataclass(frozen=True)
class Checkpoint:
    """Weights in timm's layout, with what the file says about the model around them."""

    path: Path
    state: dict[str, torch.Tensor]
    kind: str  # what the file looked like: "a timm train checkpoint ('model_ema')"
    layer_norm_eps: float | None = None  # None: the model's own
    num_heads: int | None = None  # from a transformers config.json
    mean: tuple[float, ...] | None = None  # from a preprocessor_config.json
    std: tuple[float, ...] | None = None

    @property
    def num_classes(self) -> int | None:
        return _vit.num_classes_in(self.state)

    @property
    def label(self) -> str:
        return f"checkpoint {self.path} ({self.kind})"


def _allow_training_args() -> AbstractContextManager[Any]:
    """Let ``weights_only`` loading accept the ``argparse.Namespace`` that DeiT and timm
    training scripts store under ``args`` in their checkpoints."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    return safe_globals([argparse.Namespace]) if safe_globals is not None else nullcontext()


def read_file(p: Path) -> Any:
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(p))
        with _allow_training_args():
            return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt archives raise many different types
        raise CheckpointError(
            f"checkpoint {p} cannot be read ({type(exc).__name__}): the file is corrupt or "
            "not a PyTorch/safetensors checkpoint of tensors (save model.state_dict())"
        ) from None


def is_state_dict(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(v, torch.Tensor) for v in value.values())


def _choose(raw: dict[str, Any], p: Path, ema: bool) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict to use from a file's top level, and what the file looked like."""
    if raw and is_state_dict(raw):
        if ema:
            raise CheckpointError(
                f"checkpoint {p} is a plain state dict (one set of weights, no EMA copy): "
                "drop --ema"
            )
        return raw, "a state dict"
    wrappers = [k for k in (*_PLAIN_KEYS, *_EMA_KEYS) if isinstance(raw.get(k), dict)]
    if not wrappers:
        keys = ", ".join(list(map(str, raw))[:5]) or "none"
        raise CheckpointError(
            f"checkpoint {p} holds no tensor state dict (top-level keys: {keys}); expected "
            + _FORMATS
        )
    plain = [k for k in _PLAIN_KEYS if k in wrappers]
    emas = [k for k in _EMA_KEYS if k in wrappers]
    if ema and not emas:
        raise CheckpointError(
            f"checkpoint {p} is a timm train checkpoint without EMA weights "
            f"(it has {', '.join(repr(k) for k in wrappers)}): drop --ema"
        )
    key = emas[0] if ema or not plain else plain[0]
    if not ema and emas and plain:
        logger.info(
            "checkpoint %s: using its plain weights %r (the EMA weights %r: --ema)", p, key, emas[0]
        )
    elif key in _EMA_KEYS:
        logger.info("checkpoint %s: using its EMA weights %r", p, key)
    state = raw[key]
    if not state or not is_state_dict(state):
        raise CheckpointError(
            f"checkpoint {p} is a timm train checkpoint but its {key!r} holds no tensor state "
            "dict (save model.state_dict())"
        )
    return state, f"a timm train checkpoint ({key!r})"


def convert_layout(state: dict[str, torch.Tensor], p: Path, kind: str) -> dict[str, torch.Tensor]:
    try:
        return _hf_layout.convert(state)
    except _hf_layout.LayoutError as exc:
        raise CheckpointError(f"checkpoint {p} looks like {kind} but {exc}") from None


def check_timm_layout(state: dict[str, torch.Tensor], p: Path, kind: str) -> None:
    if "patch_embed.proj.weight" in state or "cls_token" in state:
        return
    keys = ", ".join(sorted({k.split(".")[0] for k in state})[:6])
    raise CheckpointError(
        f"checkpoint {p} ({kind}) is not a ViT in any supported layout (its keys start with "
        f"{keys}); expected " + _FORMATS
    )


def read_checkpoint(path: str | Path, ema: bool = False) -> Checkpoint:
    """Read a checkpoint file or folder of any supported format into timm's layout.

    Args:
        path: a ``.pth``/``.pt``/``.bin``/``.safetensors`` file, or a folder
            (transformers ``save_pretrained`` or a timm hub snapshot).
        ema: take the EMA weights of a timm/DeiT train checkpoint; without it
            the plain weights are preferred (the log says which were used).

    Raises:
        CheckpointError: one line naming the format the file looked like and the fault.
    """
    p = Path(path)
    if p.is_dir():
        from ._hf_folder import read_folder

        return read_folder(p, ema)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist: check the path")
    raw = read_file(p)
    if not isinstance(raw, dict):
        raise CheckpointError(
            f"checkpoint {p} holds no tensor state dict (a {type(raw).__name__}); expected "
            + _FORMATS
        )
    state, kind = _choose(raw, p, ema)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    fam = _hf_layout.family(state)
    if fam is not None:
        logger.info("checkpoint %s: a transformers %s state dict, converted to timm's", p, fam)
        hf_kind = f"a transformers {fam} state dict"
        return Checkpoint(
            p, convert_layout(state, p, hf_kind), hf_kind, _hf_layout.DEFAULT_LAYER_NORM_EPS
        )
    kind = "a timm/DeiT state dict" if kind == "a state dict" else kind
    check_timm_layout(state, p, kind)
    return Checkpoint(p, state, kind)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint of any supported format, in timm's layout."""
    return read_checkpoint(path).state


def _hint(own: dict[str, Any], state: dict[str, torch.Tensor]) -> str:
    if "dist_token" in state and "dist_token" not in own:
        return "it has a distillation token: pass a distilled model (deit_*_distilled_*)"
    if "dist_token" in own and "dist_token" not in state:
        return "it has no distillation token: pass a model without one (not *_distilled_*)"
    return "pass the model name the checkpoint was trained with"


def _mismatch(own: dict[str, Any], state: dict[str, torch.Tensor], name: str) -> list[str]:
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    detail = []
    if missing:
        detail.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        detail.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if wrong:
        k = wrong[0]
        detail.append(
            f"{len(wrong)} of another shape (e.g. {k}: {tuple(state[k].shape)} in the file, "
            f"{tuple(own[k].shape)} in {name})"
        )
    return detail


def fit_checkpoint(model: Any, ckpt: Checkpoint, name: str) -> None:
    """Load ``ckpt`` into ``model`` (a timm ViT), checked key by key and shape by shape.

    A transformers checkpoint also sets the model's layer-norm eps to its own
    (1e-12 by default) so the converted model computes what the original did.

    Raises:
        CheckpointError: the weights do not fit ``name`` (what differs, what to pass).
    """
    own = model.state_dict()
    detail = _mismatch(own, ckpt.state, name)
    heads = int(model.blocks[0].attn.num_heads) if len(model.blocks) else None
    if not detail and ckpt.num_heads is not None and ckpt.num_heads != heads:
        detail.append(f"its config has {ckpt.num_heads} attention heads, {name} has {heads}")
    if detail:
        hint = _hint(own, ckpt.state)
        raise CheckpointError(f"{ckpt.label} does not fit {name}: {', '.join(detail)}; {hint}")
    model.load_state_dict(ckpt.state)
    if ckpt.layer_norm_eps is not None:
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.eps = ckpt.layer_norm_eps


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from ``path``; CheckpointError naming ``what`` when unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{what}: {path.name} is unreadable ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{what}: {path.name} is not a JSON object")
    return data
