"""collabvit: attention-aware collaborative inference between an edge ViT and a server ViT.

Implements Im et al., "Attention-aware Semantic Communications for Collaborative
Inference": the edge classifies with a small ViT; when its min-entropy is high
it sends only the patches its class token attends to most, and the server's
large ViT classifies from those patches alone.

The method is a handful of pure functions (:mod:`collabvit.attention`,
:mod:`collabvit.selection`, :mod:`collabvit.gating`, :mod:`collabvit.cost`,
:mod:`collabvit.wire`); models live in :mod:`collabvit.models`;
:mod:`collabvit.pipeline` is Algorithm 1 and :mod:`collabvit.engine` runs a
dataset at one operating point.

The names below are resolved lazily (PEP 562): ``import collabvit.wire`` loads
neither torch nor timm.
"""

import importlib as _importlib
import typing as _typing

__version__ = "0.1.0"

_EXPORTS = {
    "CheckpointError": "errors",
    "CollabViTError": "errors",
    "ConfigError": "errors",
    "DataError": "errors",
    "ModelError": "errors",
    "PayloadTooLarge": "errors",
    "ServerBusy": "errors",
    "ServerError": "errors",
    "WireError": "errors",
    "EvaluationResult": "engine",
    "evaluate": "engine",
    "OperatingPoint": "pipeline",
    "LoadedModel": "models",
    "forward_subset": "models",
    "forward_with_scores": "models",
    "load_model": "models",
    "min_entropy": "gating",
    "shannon_entropy": "gating",
    "transmit_mask": "gating",
    "uncertainty": "gating",
    "Selection": "selection",
    "select_patches": "selection",
}

__all__ = [
    "CheckpointError",
    "CollabViTError",
    "ConfigError",
    "DataError",
    "EvaluationResult",
    "LoadedModel",
    "ModelError",
    "OperatingPoint",
    "PayloadTooLarge",
    "Selection",
    "ServerBusy",
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

if _typing.TYPE_CHECKING:
    from .engine import EvaluationResult, evaluate
    from .errors import (
        CheckpointError,
        CollabViTError,
        ConfigError,
        DataError,
        ModelError,
        PayloadTooLarge,
        ServerBusy,
        ServerError,
        WireError,
    )
    from .gating import min_entropy, shannon_entropy, transmit_mask, uncertainty
    from .models import LoadedModel, forward_subset, forward_with_scores, load_model
    from .pipeline import OperatingPoint
    from .selection import Selection, select_patches


def __getattr__(name: str) -> _typing.Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'collabvit' has no attribute {name!r}")
    value = getattr(_importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # resolve once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
