"""The exported edge model in ONNX Runtime: load, check, run.

:func:`load_edge` refuses, in one :class:`~collabvit.errors.ModelError` line
each and before any image is read: a missing file, a file that is not ONNX, an
ONNX model without collabvit's metadata, and a graph whose inputs and outputs
do not match that metadata. :func:`check_server` compares the model with a
server's ``/healthz`` answer (the geometry the server decodes).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import ConfigError, ModelError
from .metadata import EdgeMetadata

__all__ = ["DEFAULT_PROVIDERS", "OnnxEdge", "Provider", "check_server", "load_edge"]

logger = logging.getLogger(__name__)

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)

Float32 = npt.NDArray[np.float32]
Provider = str | tuple[str, dict[str, Any]]
"""An execution provider's name, or ``(name, provider options)`` as ONNX Runtime takes them."""


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ModelError(
            "the ONNX edge runtime needs onnxruntime: pip install 'collabvit[edge]'"
        ) from None
    return onnxruntime


def _options(ort: Any, threads: int | None) -> Any:
    options = ort.SessionOptions()
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: ORT's warnings would go to stderr
    return options


def _providers(ort: Any, providers: Sequence[Provider] | None) -> list[Provider]:
    wanted = list(providers or DEFAULT_PROVIDERS)
    available = ort.get_available_providers()
    missing = [n for n in (p if isinstance(p, str) else p[0] for p in wanted) if n not in available]
    if missing:
        raise ConfigError(
            f"execution provider(s) {', '.join(missing)} not in this onnxruntime build "
            f"(it has {', '.join(available)}): install the onnxruntime package built for them"
        )
    return wanted


def _session(path: Path, providers: Sequence[Provider] | None, threads: int | None) -> Any:
    if not path.is_file():
        raise ModelError(f"edge model {path} does not exist: export one with `collabvit export`")
    ort = _ort()
    options = _options(ort, threads)
    chosen = _providers(ort, providers)
    try:
        return ort.InferenceSession(str(path), options, providers=chosen)
    except Exception as exc:  # ORT raises its own types (InvalidProtobuf, Fail, ...)
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        reason = text.rsplit("failed:", 1)[-1].strip()[:200]  # ORT: "Load model from P failed:X"
        raise ModelError(
            f"{path} is not an ONNX model ONNX Runtime can load ({reason}): export the edge "
            "model with `collabvit export --edge NAME --out FILE.onnx`"
        ) from None


def _check_graph(session: Any, meta: EdgeMetadata, where: str) -> None:
    """The graph's inputs and outputs must be the ones its metadata describes."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    c, h, w = meta.input_size
    pixels = inputs.get("pixels")
    problems = []
    if pixels is None or len(inputs) != 1:
        problems.append(f"inputs {sorted(inputs)} are not exactly ['pixels']")
    elif pixels.type != "tensor(uint8)" or list(pixels.shape[1:]) != [c, h, w]:
        problems.append(f"pixels is {pixels.type} {pixels.shape}, not uint8 (B, {c}, {h}, {w})")
    for name, size in (("logits", meta.num_classes), ("scores", meta.num_patches)):
        out = outputs.get(name)
        if out is None:
            problems.append(f"no {name} output")
        elif len(out.shape) != 2 or out.shape[1] != size:
            problems.append(f"{name} is {out.shape}, not (B, {size})")
    if problems:
        raise ModelError(f"{where} does not match its collabvit metadata: {'; '.join(problems)}")


class OnnxEdge:
    """An exported edge ViT in an ONNX Runtime session, with its :class:`EdgeMetadata`.

    Args:
        path: the ``.onnx`` file written by ``collabvit export``.
        providers: ONNX Runtime execution providers in order of preference
            (default: the CPU); e.g. ``("TensorrtExecutionProvider",
            "CUDAExecutionProvider", "CPUExecutionProvider")`` on a Jetson; an
            entry may be ``(name, {option: value})``.
        threads: intra-op threads (default: ONNX Runtime's choice).
    """

    def __init__(
        self,
        path: str | Path,
        providers: Sequence[Provider] | None = None,
        threads: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.session = _session(self.path, providers, threads)
        props = self.session.get_modelmeta().custom_metadata_map
        self.metadata = EdgeMetadata.from_props(props, str(self.path))
        _check_graph(self.session, self.metadata, str(self.path))

    @property
    def name(self) -> str:
        return self.metadata.model

    @property
    def patch_size(self) -> int:
        return self.metadata.patch_size

    @property
    def num_classes(self) -> int:
        return self.metadata.num_classes

    @property
    def num_patches(self) -> int:
        return self.metadata.num_patches

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def class_name(self, index: int) -> str:
        return self.metadata.class_name(index)

    def forward(self, pixels: npt.NDArray[np.uint8]) -> tuple[Float32, Float32]:
        """Edge logits (B, classes) and eq. 10 patch scores (B, N) of uint8 pixels (B, C, H, W)."""
        batch = np.ascontiguousarray(pixels, dtype=np.uint8)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != self.metadata.input_size:
            raise ConfigError(
                f"pixels of shape {tuple(batch.shape)}: {self.name} takes uint8 "
                f"(B, {', '.join(map(str, self.metadata.input_size))})"
            )
        logits, scores = self.session.run(["logits", "scores"], {"pixels": batch})
        return np.asarray(logits, np.float32), np.asarray(scores, np.float32)


def load_edge(
    path: str | Path, providers: Sequence[Provider] | None = None, threads: int | None = None
) -> OnnxEdge:
    """Load and check an exported edge model (see :class:`OnnxEdge`)."""
    edge = OnnxEdge(path, providers, threads)
    logger.info("edge %s from %s on %s", edge.name, edge.path, ", ".join(edge.providers))
    return edge


def check_server(edge: OnnxEdge, health: Mapping[str, Any]) -> None:
    """ConfigError in one line unless the server (``/healthz`` JSON) takes this edge's patches."""
    meta = edge.metadata
    c, h, w = meta.input_size
    ours = {"channels": c, "height": h, "width": w, "patch_size": meta.patch_size}
    geometry = health.get("geometry") or {}
    theirs = {k: geometry.get(k) for k in ours}
    if theirs != ours:
        raise ConfigError(
            f"server {health.get('model', '?')} takes {theirs} but edge {meta.model} sends "
            f"{ours}: export an edge model with the server's input size and patch size"
        )
    classes = health.get("num_classes")
    if classes is not None and classes != meta.num_classes:
        raise ConfigError(
            f"server {health.get('model', '?')} has {classes} classes but edge {meta.model} "
            f"has {meta.num_classes}: the pair must share one label space"
        )
