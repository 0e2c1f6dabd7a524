"""collabvit: attention-aware collaborative inference between an edge ViT and a server ViT.

Implements Im et al., "Attention-aware Semantic Communications for Collaborative
Inference": the edge classifies with a small ViT; when its min-entropy is high
it sends only the patches its class token attends to most, and the server's
large ViT classifies from those patches alone.

The method is a handful of pure functions (:mod:`collabvit.selection`,
:mod:`collabvit.gating`, :mod:`collabvit.wire`); models live in
:mod:`collabvit.models` and :mod:`collabvit.attention`; :mod:`collabvit.engine`
runs a dataset at one operating point.
"""

from .attention import forward_with_scores
from .engine import EvaluationResult, OperatingPoint, evaluate
from .errors import (
    CheckpointError,
    CollabViTError,
    ConfigError,
    DataError,
    ModelError,
    ServerError,
    WireError,
)
from .gating import min_entropy, shannon_entropy, transmit_mask, uncertainty
from .models import LoadedModel, forward_subset, load_model
from .selection import Selection, select_patches

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "CollabViTError",
    "ConfigError",
    "DataError",
    "EvaluationResult",
    "LoadedModel",
    "ModelError",
    "OperatingPoint",
    "Selection",
    "ServerError",
    "WireError",
    "__version__",
    "evaluate",
    "forward_subset",
    "forward_with_scores",
    "load_model",
    "min_entropy",
    "select_patches",
    "shannon_entropy",
    "transmit_mask",
    "uncertainty",
]
