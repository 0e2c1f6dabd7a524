"""The edge half of collaborative inference without torch: ONNX Runtime, numpy and Pillow.

``collabvit export`` (on a workstation, with the research install) writes the
edge ViT as one ONNX file whose graph computes the logits and the eq. 10
patch scores from uint8 pixels, and whose ``metadata_props`` describe it. On
the device (``pip install "collabvit[edge]"``, no torch, timm or torchvision):

- :mod:`.metadata`: :class:`EdgeMetadata`, the keys the file carries;
- :mod:`.model`: :func:`load_edge` (checks the file and its metadata),
  :meth:`OnnxEdge.forward`, :func:`check_server` (against ``/healthz``);
- :mod:`.images`: Pillow preprocessing, the same pixels as :mod:`collabvit.data`;
- :mod:`.decide`: Algorithm 1, steps 2-5, with the pure gate and selection
  rules, the twin of :func:`collabvit.pipeline.decide_on_edge`.

The wire encoder (:func:`collabvit.wire.encode`) is torch-free already.
See docs/edge-device.md.
"""

from __future__ import annotations

from .decide import EdgeDecision, EdgePoint, PointLike, decide
from .images import load_image, pixels_from_array, pixels_from_file, preprocess
from .metadata import FORMAT, EdgeMetadata
from .model import DEFAULT_PROVIDERS, OnnxEdge, check_server, load_edge

__all__ = [
    "DEFAULT_PROVIDERS",
    "FORMAT",
    "EdgeDecision",
    "EdgeMetadata",
    "EdgePoint",
    "OnnxEdge",
    "PointLike",
    "check_server",
    "decide",
    "load_edge",
    "load_image",
    "pixels_from_array",
    "pixels_from_file",
    "preprocess",
]
