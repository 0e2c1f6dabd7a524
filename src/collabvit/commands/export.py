"""Export the edge model to one ONNX file for a device without torch.

The graph takes uint8 pixels (B, C, H, W) after the resize and centre crop
(the wire's pixels; normalisation is inside the graph) and returns the edge's
logits and its eq. 10 mean attention scores. The file's metadata holds the
model name, the SHA-256 of its weights, input size, patch size, mean/std,
crop ratio, interpolation and class names: copy this one file to the device
and run it with `pip install "collabvit[edge]"`. See docs/edge-device.md.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..cli import add_model_options

HELP = "export the edge model (logits + eq. 10 attention scores) to one ONNX file"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser, roles=("edge",))
    parser.add_argument("--out", required=True, metavar="FILE.onnx", help="the ONNX file")
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "fp16"),
        help="fp16: half-precision weights and activations (for GPU/NPU execution providers; "
        "the attention softmax stays fp32)",
    )
    parser.add_argument(
        "--quantize",
        default="none",
        choices=("none", "int8"),
        help="int8: dynamic quantization of the weights (ONNX Runtime), fp32 only",
    )


def build_metadata(edge: Any, weights_sha256: str, precision: str, quantize: str) -> Any:
    """The :class:`~collabvit.onnx_edge.EdgeMetadata` of a loaded edge model."""
    from .. import __version__
    from ..onnx_edge import EdgeMetadata

    prep = edge.preprocessing
    c, h, w = (int(v) for v in prep.input_size)
    interpolation = prep.interpolation
    if interpolation not in ("bicubic", "bilinear", "nearest"):
        interpolation = "bicubic"  # what collabvit.data.preprocess falls back to
    return EdgeMetadata(
        model=edge.name,
        weights_sha256=weights_sha256,
        input_size=(c, h, w),
        patch_size=edge.patch_size,
        num_patches=edge.num_patches,
        num_prefix_tokens=edge.num_prefix_tokens,
        num_classes=edge.num_classes,
        mean=tuple(float(m) for m in prep.mean),
        std=tuple(float(s) for s in prep.std),
        crop_pct=float(prep.crop_pct),
        interpolation=interpolation,
        class_names=list(edge.class_names) if edge.class_names else None,
        version=__version__,
        precision=precision,
        quantize=quantize,
        source=str(edge.source),
    )


def export(edge: Any, out: str | Path, precision: str = "fp32", quantize: str = "none") -> Any:
    """Export ``edge`` to ``out`` with its metadata; returns the :class:`EdgeMetadata`."""
    from ..models.export import export_edge
    from ..sweep.cache import model_identity

    identity = model_identity(edge)
    meta = build_metadata(edge, identity["weights_sha256"], precision, quantize)
    export_edge(edge, out, meta.to_props(), precision, quantize)
    return meta


@contextmanager
def _quiet_exporters(verbose: bool) -> Iterator[None]:
    """Keep the exporters' INFO chatter (hundreds of lines) off the terminal unless -v.

    The ONNX optimizer logs under ``onnxscript``/``onnx_ir``; ONNX Runtime's
    quantizer logs on the root logger, so that is raised to WARNING meanwhile.
    """
    if verbose:
        yield
        return
    loggers = [logging.getLogger(n) for n in ("onnxscript", "onnx_ir", "")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def run(args: argparse.Namespace) -> int:
    from ..cli import load_role
    from ._outputs import check_output_file

    check_output_file(args.out, "--out")
    edge = load_role(args, "edge")
    with _quiet_exporters(bool(getattr(args, "verbose", False))):
        meta = export(edge, args.out, args.precision, args.quantize)
    size = Path(args.out).stat().st_size
    print(
        f"wrote {args.out} ({size / 1e6:.1f} MB): {meta.model} {meta.precision}"
        f"{' int8' if meta.quantize == 'int8' else ''}, input uint8 "
        f"{'x'.join(map(str, meta.input_size))}, {meta.num_patches} patches of "
        f"{meta.patch_size}, {meta.num_classes} classes, weights sha256 "
        f"{meta.weights_sha256[:12]}"
    )
    return 0
