"""Export the edge ViT to one ONNX graph that also computes its eq. 10 attention row.

Input ``pixels``: uint8 (B, C, H, W), the resized and centre-cropped pixels
the edge puts on the wire. The graph normalises them itself (``x / 255``,
then the model's mean and std), so a device needs no normalisation code and
its input is exactly the wire's. Outputs: ``logits`` (B, classes) float32 and
``scores`` (B, N) float32, the mean attention score of eq. 10, computed from
the last block's q and k with the functions the torch probe uses
(:func:`._vit.split_qk`, :func:`collabvit.attention.cls_attention`,
:func:`collabvit.attention.mean_attention_score`). The batch axis is dynamic.

The last block's ``attn.qkv`` projection is wrapped by a module that hands
its output to the wrapper's forward (no hook, no copy of timm's block code);
timm's own forward, fused attention included, does the rest. ``fp16`` runs
the ViT in half precision (the score softmax stays float32, as in the probe);
``int8`` quantizes the weights of the matrix products dynamically with ONNX
Runtime (``MatMulConstBOnly``: activation-activation products such as
``q k^T`` stay float). The file's ``metadata_props`` hold an
:class:`collabvit.onnx_edge.EdgeMetadata` built by the caller.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..attention import cls_attention, mean_attention_score
from ..errors import ConfigError, ModelError
from . import _vit
from .loading import LoadedModel

__all__ = ["OPSET", "PRECISIONS", "QUANTIZATIONS", "EdgeGraph", "export_edge"]

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16")
QUANTIZATIONS = ("none", "int8")
OPSET = 18
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


class _QKVTap(nn.Module):
    """``attn.qkv`` of the last block, keeping its output for the wrapper's forward."""

    def __init__(self, qkv: nn.Module, taken: list[torch.Tensor]) -> None:
        super().__init__()
        self.qkv = qkv
        self.taken = taken  # a plain list, not a tensor attribute: export traces it through

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.qkv(x)  # (B, L, 3 * H * Dh)
        self.taken.append(out)
        return out


class EdgeGraph(nn.Module):
    """uint8 pixels (B, C, H, W) -> (logits (B, classes), eq. 10 scores (B, N)), both float32.

    Wraps a copy of the edge's timm model (the caller's model is not changed).
    """

    def __init__(self, edge: LoadedModel, precision: str = "fp32") -> None:
        super().__init__()
        if precision not in _DTYPES:
            raise ConfigError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
        self.dtype = _DTYPES[precision]
        self.model: Any = copy.deepcopy(edge.model).to("cpu", self.dtype).eval()
        self._taken: list[torch.Tensor] = []
        attn = self.model.blocks[-1].attn
        attn.qkv = _QKVTap(attn.qkv, self._taken)
        self.num_prefix = edge.num_prefix_tokens
        prep = edge.preprocessing
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(prep.mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(prep.std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (pixels.float() / 255.0 - self.mean) / self.std  # as LoadedModel.normalise
        self._taken.clear()
        logits = self.model(x.to(self.dtype))  # (B, classes)
        attn = self.model.blocks[-1].attn
        q, k = _vit.split_qk(attn, self._taken.pop())  # (B, H, L, Dh) each
        row = cls_attention(q[:, :, :1], k, attn.scale)  # eqs. 5-6: (B, H, 1, L) float32
        return logits.float(), mean_attention_score([row], self.num_prefix)  # eq. 10: (B, N)


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise ModelError(
            "collabvit export needs onnx, onnxscript and onnxruntime: "
            "pip install 'collabvit[research]'"
        ) from None
    return onnx


def _trace(graph: EdgeGraph, example: torch.Tensor, path: Path) -> None:
    """torch.export -> ONNX (opset :data:`OPSET`), one file, dynamic batch."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        torch.onnx.export(
            graph,
            (example,),
            str(path),
            input_names=["pixels"],
            output_names=["logits", "scores"],
            dynamo=True,
            dynamic_shapes=({0: batch},),
            opset_version=OPSET,
            external_data=False,
            verbose=False,
        )
    except ImportError as exc:  # onnxscript missing
        raise ModelError(
            f"collabvit export needs {exc.name or 'onnxscript'}: pip install 'collabvit[research]'"
        ) from None


def _quantize_int8(src: Path, dst: Path) -> None:
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise ModelError(
            "--quantize int8 needs onnxruntime: pip install 'collabvit[research]'"
        ) from None
    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=QuantType.QInt8,
        extra_options={"MatMulConstBOnly": True},
    )


def _finish(src: Path, out: Path, metadata: Mapping[str, str], doc: str) -> None:
    """Write ``metadata_props``, check the model, and move it into place."""
    onnx = _onnx()
    model = onnx.load(str(src))
    del model.metadata_props[:]
    for key, value in sorted(metadata.items()):
        model.metadata_props.add(key=key, value=value)
    model.producer_name = "collabvit"
    model.doc_string = doc
    onnx.checker.check_model(model)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, out)


def export_edge(
    edge: LoadedModel,
    out: str | Path,
    metadata: Mapping[str, str],
    precision: str = "fp32",
    quantize: str = "none",
) -> Path:
    """Write the edge model as one ONNX file (see the module docstring).

    Args:
        edge: the edge model (any device; exported from a CPU copy).
        out: the ``.onnx`` path; written atomically.
        metadata: ``metadata_props`` (``EdgeMetadata.to_props()``).
        precision: ``fp32`` or ``fp16``.
        quantize: ``none`` or ``int8`` (fp32 only).

    Returns:
        ``out`` as a Path.
    """
    if quantize not in QUANTIZATIONS:
        raise ConfigError(f"quantize {quantize!r}: use one of {', '.join(QUANTIZATIONS)}")
    if quantize == "int8" and precision != "fp32":
        raise ConfigError("--quantize int8 quantizes an fp32 graph: use --precision fp32")
    _onnx()
    graph = EdgeGraph(edge, precision).eval()
    c, h, w = edge.preprocessing.input_size
    example = torch.zeros(2, c, h, w, dtype=torch.uint8)  # batch 2: not specialised to 1
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    traced = target.with_name(f"{target.name}.{os.getpid()}.traced.onnx")
    quantized = target.with_name(f"{target.name}.{os.getpid()}.int8.onnx")
    try:
        with torch.no_grad():
            _trace(graph, example, traced)
        src = traced
        if quantize == "int8":
            _quantize_int8(traced, quantized)
            src = quantized
        doc = f"collabvit edge {edge.name}: uint8 pixels -> logits, eq. 10 scores"
        _finish(src, target, metadata, doc)
    finally:
        traced.unlink(missing_ok=True)
        quantized.unlink(missing_ok=True)
    logger.info("exported %s (%s, %s) to %s", edge.name, precision, quantize, target)
    return target
