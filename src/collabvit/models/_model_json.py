"""The collabvit model JSON (``collabvit train`` writes it, the fmnist pair ships it), checked.

The keys, each checked before a model is built, so a hand-edited or truncated
file is one :class:`~collabvit.errors.CheckpointError` line naming the file and
the key, never a ``KeyError`` or a model that normalises with a zero std:

- ``vit_kwargs`` (object): timm ``VisionTransformer`` arguments;
- ``input_size`` ([C, H, W], positive integers): must be the built model's;
- ``mean``, ``std`` (C finite numbers; std > 0);
- optional: ``name`` (string), ``interpolation`` (bicubic, bilinear, nearest;
  default bilinear), ``crop_pct`` (in (0, 1], default 1), ``class_names``
  (one string per class of the model).
"""

from __future__ import annotations

import json
import math
import reprlib
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

__all__ = ["INTERPOLATIONS", "check_built", "read_model_json"]

INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
_REQUIRED = ("vit_kwargs", "input_size", "mean", "std")


def _short(value: Any) -> str:
    return reprlib.repr(value)  # a 1,000-entry list stays one short line


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _problem(cfg: Any) -> str | None:
    """What is wrong with a parsed model JSON, in a few words; None: nothing."""
    if not isinstance(cfg, dict):
        return f"holds a JSON {type(cfg).__name__}, not an object"
    absent = [key for key in _REQUIRED if key not in cfg]
    if absent:
        return f"has no {absent[0]!r}"
    if not isinstance(cfg["vit_kwargs"], dict):
        return "'vit_kwargs' must be an object of timm VisionTransformer arguments"
    size = cfg["input_size"]
    if not (isinstance(size, list) and len(size) == 3 and all(_count(v) for v in size)):
        return f"'input_size' must be [C, H, W] of positive integers, not {_short(size)}"
    for key in ("mean", "std"):
        values = cfg[key]
        if not (isinstance(values, list) and len(values) == size[0] and all(map(_number, values))):
            many = f"{size[0]} numbers" if size[0] != 1 else "1 number"
            return f"{key!r} must be {many} (one per channel), not {_short(values)}"
    if not all(s > 0 for s in cfg["std"]):
        return f"'std' must be positive, not {_short(cfg['std'])}"
    crop = cfg.get("crop_pct", 1.0)
    if not (_number(crop) and 0 < crop <= 1):
        return f"'crop_pct' must be a number in (0, 1], not {_short(crop)}"
    interpolation = cfg.get("interpolation", "bilinear")
    if interpolation not in INTERPOLATIONS:
        known = ", ".join(INTERPOLATIONS)
        return f"'interpolation' must be one of {known}, not {_short(interpolation)}"
    if not isinstance(cfg.get("name", ""), str):
        return f"'name' must be a string, not {_short(cfg['name'])}"
    names = cfg.get("class_names")
    if names is not None and not (
        isinstance(names, list) and all(isinstance(n, str) for n in names)
    ):
        return "'class_names' must be a list of strings, one per class"
    return None


def read_model_json(path: Path) -> dict[str, Any]:
    """A model JSON, every key checked (see the module docstring).

    Raises:
        CheckpointError: ``model config PATH: what is wrong`` on one line.
    """
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CheckpointError(f"model config {path}: cannot be read ({exc.strerror})") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise CheckpointError(f"model config {path}: not valid JSON ({exc})") from None
    problem = _problem(cfg)
    if problem is not None:
        raise CheckpointError(f"model config {path}: {problem}")
    return cfg


def check_built(cfg: dict[str, Any], model: Any, path: Path) -> None:
    """The JSON's ``input_size`` and ``class_names`` against the model its vit_kwargs built."""
    c, h, w = cfg["input_size"]
    gh, gw = (int(v) for v in model.patch_embed.img_size)
    channels = int(model.patch_embed.proj.in_channels)
    if (c, h, w) != (channels, gh, gw):
        raise CheckpointError(
            f"model config {path}: 'input_size' {[c, h, w]} does not match its vit_kwargs, "
            f"which build a model of {channels} x {gh} x {gw} images"
        )
    if int(model.num_classes) < 1:
        raise CheckpointError(
            f"model config {path}: its vit_kwargs build a model without a classifier head "
            "(num_classes 0); edge and server models classify"
        )
    names = cfg.get("class_names")
    if names is not None and len(names) != int(model.num_classes):
        raise CheckpointError(
            f"model config {path}: {len(names)} class names for a model of "
            f"{model.num_classes} classes"
        )
