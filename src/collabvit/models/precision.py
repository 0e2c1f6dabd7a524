"""Numeric precision of the models: ``--precision fp32|bf16|fp16|auto``.

:func:`apply_precision` casts a loaded model's weights once (no per-call casts
as autocast makes them), so the forwards run their matrix multiplies in the
chosen type: bf16 on a CPU with AMX/AVX512-BF16 or a recent GPU, fp16 on a
GPU. What the method decides on stays in float32 whatever the precision: the
edge's logits (the gate statistic, eqs. 12-13) and its class-token attention
row (eqs. 5-6, 10) are computed or returned in float32, and the LayerNorm and
attention-softmax kernels of torch accumulate in float32 for bf16/fp16 inputs.

``fp32`` on a CUDA device also lets its matrix multiplies use TF32, but only
inside collabvit's own forwards (:func:`matmul_scope`): the process-wide
switches of torch are set on entry and put back on exit, so other code in the
process keeps its own settings.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ..errors import ConfigError

__all__ = [
    "PRECISIONS",
    "PRECISION_CHOICES",
    "apply_precision",
    "check_precision",
    "dtype_of",
    "matmul_scope",
    "model_dtype",
    "parse_precision",
    "precision_of",
]

logger = logging.getLogger(__name__)

PRECISIONS: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
"""Precision names and the weight dtype each runs in."""
PRECISION_CHOICES = ("fp32", "bf16", "fp16", "auto")
"""What ``--precision`` accepts (auto: bf16 where the device runs it fast, else fp32)."""

_ALIASES = {
    "float32": "fp32",
    "float": "fp32",
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
}


def parse_precision(name: str) -> str:
    """The canonical name (``fp32``, ``bf16``, ``fp16`` or ``auto``) of a precision.

    Raises:
        ConfigError: not a precision.
    """
    text = str(name).strip().lower()
    text = _ALIASES.get(text, text)
    if text not in PRECISION_CHOICES:
        raise ConfigError(f"precision {name!r} is not one of {', '.join(PRECISION_CHOICES)}")
    return text


def _mkldnn_supports(kind: str) -> bool:
    check = getattr(torch.ops.mkldnn, f"_is_mkldnn_{kind}_supported", None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:  # an old or CPU-only build without the query
        return False


def _cuda_bf16(device: torch.device) -> bool:
    with torch.cuda.device(device):
        return bool(torch.cuda.is_bf16_supported())


def check_precision(name: str, device: str | torch.device) -> str:
    """Resolve ``auto`` and check that ``device`` can run the precision.

    Args:
        name: a precision name (see :func:`parse_precision`).
        device: where the model runs (already resolved, e.g. by ``resolve_device``).

    Returns:
        ``fp32``, ``bf16`` or ``fp16``.

    Raises:
        ConfigError: fp16 or bf16 on a device that cannot run it (one line).
    """
    precision = parse_precision(name)
    dev = torch.device(device)
    if dev.type == "cuda":
        if precision == "auto":
            return "bf16" if _cuda_bf16(dev) else "fp32"
        if precision == "bf16" and not _cuda_bf16(dev):
            raise ConfigError(f"precision bf16 is not supported on {dev}: use fp16 or fp32")
        return precision
    if dev.type != "cpu":
        if precision in ("fp32", "auto"):
            return "fp32"
        raise ConfigError(f"precision {precision} is only supported on cpu and cuda, not {dev}")
    if precision == "auto":
        return "bf16" if _mkldnn_supports("bf16") else "fp32"
    if precision == "fp16" and not _mkldnn_supports("fp16"):
        raise ConfigError(
            "precision fp16 is not supported on this CPU (no AVX512-FP16/AMX-FP16): "
            "use bf16 or fp32"
        )
    if precision == "bf16" and not _mkldnn_supports("bf16"):
        logger.warning("this CPU has no native bf16 (AVX512-BF16/AMX): bf16 may be slow")
    return precision


def dtype_of(name: str) -> torch.dtype:
    """The weight dtype of a resolved precision (``auto`` must be resolved first)."""
    precision = parse_precision(name)
    if precision == "auto":
        raise ConfigError("precision auto must be resolved for a device first")
    return PRECISIONS[precision]


def model_dtype(model: Any) -> torch.dtype:
    """The dtype the model computes in: that of its patch embedding weights."""
    dtype: torch.dtype = model.patch_embed.proj.weight.dtype
    return dtype


def precision_of(loaded: Any) -> str:
    """The precision a :class:`~collabvit.models.LoadedModel` runs in (from its weights)."""
    dtype = model_dtype(loaded.model)
    for name, dt in PRECISIONS.items():
        if dt == dtype:
            return name
    return str(dtype).removeprefix("torch.")


def apply_precision(loaded: Any, precision: str = "fp32", tf32: bool = True) -> Any:
    """Cast a loaded model's weights to ``precision`` once, in place.

    Every parameter and buffer is cast (LayerNorm included: torch's kernels
    accumulate in float32 for bf16/fp16 inputs). The forwards of
    :mod:`collabvit.models` cast their inputs to the model's dtype and return
    float32 logits and scores.

    Args:
        loaded: a :class:`~collabvit.models.LoadedModel` (already on its device).
        precision: fp32, bf16, fp16 or auto (checked against the model's device).
        tf32: with fp32 on CUDA, let the forwards' matrix multiplies use TF32.

    Returns:
        ``loaded``, with ``extra["precision"]`` (and ``extra["tf32"]``) recorded.

    Raises:
        ConfigError: an unknown precision, or one the device cannot run.
    """
    resolved = check_precision(precision, loaded.device)
    loaded.model.to(dtype=PRECISIONS[resolved])
    loaded.extra["precision"] = resolved
    loaded.extra["tf32"] = bool(tf32 and resolved == "fp32" and loaded.device.type == "cuda")
    level = logging.DEBUG if resolved == "fp32" else logging.INFO  # the default stays quiet
    logger.log(
        level, "%s runs in %s%s", loaded.name, resolved, " (TF32)" if loaded.extra["tf32"] else ""
    )
    return loaded


_TF32_LOCK = threading.Lock()
_TF32_DEPTH = 0
_TF32_SAVED: Any = None


def _tf32_state() -> Any:
    """torch's TF32 switches for CUDA matmuls and convolutions (new API where it exists)."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        conv = getattr(torch.backends.cudnn, "conv")  # noqa: B009 (untyped in torch's stubs)
        return ("new", matmul.fp32_precision, conv.fp32_precision)
    return ("old", matmul.allow_tf32, torch.backends.cudnn.allow_tf32)


def _set_tf32(state: Any) -> None:
    api, matmul, conv = state
    if api == "new":
        torch.backends.cuda.matmul.fp32_precision = matmul
        getattr(torch.backends.cudnn, "conv").fp32_precision = conv  # noqa: B009
    else:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = conv


def _tf32_on(saved: Any) -> Any:
    return (saved[0], "tf32", "tf32") if saved[0] == "new" else ("old", True, True)


@contextmanager
def matmul_scope(loaded: Any) -> Iterator[None]:
    """TF32 matrix multiplies for a forward of ``loaded`` when it asked for them.

    A no-op unless :func:`apply_precision` recorded ``tf32`` (fp32 on CUDA).
    torch's TF32 switches are process-wide, so they are set by the outermost
    scope and restored when the last of the concurrent scopes exits.
    """
    global _TF32_DEPTH, _TF32_SAVED
    if not loaded.extra.get("tf32"):
        yield
        return
    with _TF32_LOCK:
        if _TF32_DEPTH == 0:
            _TF32_SAVED = _tf32_state()
            _set_tf32(_tf32_on(_TF32_SAVED))
        _TF32_DEPTH += 1
    try:
        yield
    finally:
        with _TF32_LOCK:
            _TF32_DEPTH -= 1
            if _TF32_DEPTH == 0:
                _set_tf32(_TF32_SAVED)
