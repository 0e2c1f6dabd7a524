"""Where the models run: the one resolution of ``--device auto|cpu|cuda|cuda:N``.

Every command that takes models resolves its ``--device`` here before any
model is built, so a device that is not there is one line, not a traceback
from deep inside a forward.
"""

from __future__ import annotations

import re

import torch

from ..errors import ConfigError

__all__ = ["DEVICE_CHOICES", "resolve_device"]

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
"""What ``--device`` accepts (auto: cuda when a GPU is there, else cpu)."""

_CUDA = re.compile(r"cuda(?::(\d+))?")


def _no_cuda_reason() -> str:
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is built without CUDA"
    return "no CUDA GPU is visible (check the driver and CUDA_VISIBLE_DEVICES)"


def resolve_device(spec: str | torch.device) -> torch.device:
    """The torch device of a ``--device`` value, checked to exist on this machine.

    Args:
        spec: ``auto`` (cuda:0 when CUDA is available, else cpu), ``cpu``,
            ``cuda`` or ``cuda:N``; a ``torch.device`` is checked the same way.

    Raises:
        ConfigError: the name is not a device, or the GPU it names is not there
            (``cuda`` without a GPU, ``cuda:3`` on a machine with one).
    """
    text = str(spec).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    match = _CUDA.fullmatch(text)
    if match is None:
        raise ConfigError(f"device {str(spec)!r} is not a device: use {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"device {text!r} is not available: {_no_cuda_reason()}; use --device cpu or auto"
        )
    if match.group(1) is None:
        return torch.device("cuda")
    index, count = int(match.group(1)), torch.cuda.device_count()
    if index >= count:
        have = "cuda:0" if count == 1 else f"cuda:0 .. cuda:{count - 1}"
        raise ConfigError(
            f"device {text!r} is not available: this machine has {count} CUDA "
            f"GPU{'s' if count != 1 else ''} ({have})"
        )
    return torch.device("cuda", index)
