"""What an exported edge model carries about itself: the ``metadata_props`` of its ONNX file.

Every key starts with ``collabvit.``; lists are JSON. The file then needs no
other file on the device: its input geometry, patch grid, preprocessing (mean
and std are applied inside the graph, but the resize and crop are the
device's), class names and the SHA-256 of the weights it was exported from
(the digest of :func:`collabvit.sweep.cache.model_identity`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ModelError

__all__ = ["FORMAT", "PREFIX", "EdgeMetadata"]

FORMAT = "collabvit-edge-onnx/1"
"""The layout of the graph and of these keys; the runtime refuses any other."""
PREFIX = "collabvit."

_INTERPOLATIONS = ("bicubic", "bilinear", "nearest")


@dataclass(frozen=True)
class EdgeMetadata:
    """The exported edge model's description, as stored in its ONNX file.

    Attributes:
        model: the edge model's name (``deit_tiny_patch16_224``, ``fmnist-tiny``).
        weights_sha256: SHA-256 of the torch weights it was exported from.
        input_size: (C, H, W) of the ``pixels`` input.
        patch_size: side P of the square patches.
        num_patches: N, the length of a ``scores`` row.
        num_prefix_tokens: class (and distillation, register) tokens of the ViT.
        num_classes: the length of a ``logits`` row.
        mean, std: per-channel normalisation, applied inside the graph.
        crop_pct: resize the shorter side to ``int(H / crop_pct)``, centre-crop H x W.
        interpolation: the resize's filter (``bicubic``, ``bilinear``, ``nearest``).
        class_names: one name per class, or None.
        version: the collabvit version that exported it.
        precision: ``fp32`` or ``fp16`` (the weights and activations of the ViT).
        quantize: ``none`` or ``int8`` (dynamic quantization of the weights).
        score: the patch score of the ``scores`` output (``mean``: eq. 10).
        source: where the weights came from (a path, ``random:SEED``, the hub).
    """

    model: str
    weights_sha256: str
    input_size: tuple[int, int, int]
    patch_size: int
    num_patches: int
    num_prefix_tokens: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float
    interpolation: str
    class_names: list[str] | None
    version: str
    precision: str = "fp32"
    quantize: str = "none"
    score: str = "mean"
    source: str = ""

    @property
    def channels(self) -> int:
        return self.input_size[0]

    @property
    def resize_to(self) -> int:
        """The shorter side after the resize (as :attr:`collabvit.data.Preprocessing.resize_to`)."""
        return int(self.input_size[1] / self.crop_pct)

    @property
    def grid_size(self) -> tuple[int, int]:
        _, h, w = self.input_size
        return h // self.patch_size, w // self.patch_size

    def class_name(self, index: int) -> str:
        if self.class_names and 0 <= index < len(self.class_names):
            return self.class_names[index]
        return str(index)

    def to_props(self) -> dict[str, str]:
        """``metadata_props`` of the ONNX file: ``collabvit.KEY -> text``."""
        values: dict[str, Any] = {
            "format": FORMAT,
            "model": self.model,
            "weights_sha256": self.weights_sha256,
            "input_size": json.dumps(list(self.input_size)),
            "patch_size": str(self.patch_size),
            "num_patches": str(self.num_patches),
            "num_prefix_tokens": str(self.num_prefix_tokens),
            "num_classes": str(self.num_classes),
            "mean": json.dumps(list(self.mean)),
            "std": json.dumps(list(self.std)),
            "crop_pct": repr(float(self.crop_pct)),
            "interpolation": self.interpolation,
            "class_names": json.dumps(self.class_names),
            "version": self.version,
            "precision": self.precision,
            "quantize": self.quantize,
            "score": self.score,
            "source": self.source,
        }
        return {PREFIX + k: str(v) for k, v in values.items()}

    @classmethod
    def from_props(cls, props: Mapping[str, str], where: str) -> EdgeMetadata:
        """Read :meth:`to_props`'s keys back; ModelError naming ``where`` when they are not ours."""
        ours = {k.removeprefix(PREFIX): v for k, v in props.items() if k.startswith(PREFIX)}
        if "format" not in ours:
            raise ModelError(
                f"{where} is an ONNX model without collabvit metadata: export the edge model "
                f"with `collabvit export --edge NAME --out {where}`"
            )
        if ours["format"] != FORMAT:
            raise ModelError(
                f"{where} was exported in format {ours['format']!r}; this collabvit reads "
                f"{FORMAT!r}: export it again with this version"
            )
        try:
            return _parse(ours)
        except (KeyError, ValueError, TypeError) as exc:
            detail = f"missing key {PREFIX}{exc.args[0]}" if isinstance(exc, KeyError) else exc
            raise ModelError(
                f"{where} has broken collabvit metadata ({detail}): export it again"
            ) from None


def _json_list(text: str, kind: type) -> list[Any]:
    value = json.loads(text)
    if not isinstance(value, list) or not all(isinstance(v, kind) for v in value):
        raise ValueError(f"{text[:40]!r} is not a list of {kind.__name__}")
    return value


def _parse(ours: Mapping[str, str]) -> EdgeMetadata:
    input_size = _json_list(ours["input_size"], int)
    mean = _json_list(ours["mean"], (int, float))  # type: ignore[arg-type]
    std = _json_list(ours["std"], (int, float))  # type: ignore[arg-type]
    names = json.loads(ours["class_names"])
    if names is not None and not (
        isinstance(names, list) and all(isinstance(n, str) for n in names)
    ):
        raise ValueError("class_names is not a list of strings")
    meta = EdgeMetadata(
        model=ours["model"],
        weights_sha256=ours["weights_sha256"],
        input_size=(int(input_size[0]), int(input_size[1]), int(input_size[2])),
        patch_size=int(ours["patch_size"]),
        num_patches=int(ours["num_patches"]),
        num_prefix_tokens=int(ours["num_prefix_tokens"]),
        num_classes=int(ours["num_classes"]),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        crop_pct=float(ours["crop_pct"]),
        interpolation=ours["interpolation"],
        class_names=names,
        version=ours["version"],
        precision=ours.get("precision", "fp32"),
        quantize=ours.get("quantize", "none"),
        score=ours.get("score", "mean"),
        source=ours.get("source", ""),
    )
    _check(meta, len(input_size))
    return meta


def _check(meta: EdgeMetadata, dims: int) -> None:
    c, h, w = meta.input_size
    gh, gw = meta.grid_size
    if dims != 3 or c not in (1, 3) or h <= 0 or w <= 0:
        raise ValueError(f"input_size {list(meta.input_size)} is not (1 or 3, H, W)")
    if meta.patch_size <= 0 or h % meta.patch_size or w % meta.patch_size:
        raise ValueError(f"patch_size {meta.patch_size} does not tile {h}x{w}")
    if meta.num_patches != gh * gw:
        raise ValueError(f"num_patches {meta.num_patches} != the {gh}x{gw} grid")
    if len(meta.mean) != c or len(meta.std) != c:
        raise ValueError(f"mean/std need {c} values")
    if not 0.0 < meta.crop_pct <= 4.0:
        raise ValueError(f"crop_pct {meta.crop_pct} out of range")
    if meta.interpolation not in _INTERPOLATIONS:
        raise ValueError(f"interpolation {meta.interpolation!r} is not one of {_INTERPOLATIONS}")
    if meta.class_names is not None and len(meta.class_names) != meta.num_classes:
        raise ValueError(f"{len(meta.class_names)} class names for {meta.num_classes} classes")
    if meta.score != "mean":
        raise ValueError(f"score {meta.score!r}: the exported graph computes 'mean' only")
