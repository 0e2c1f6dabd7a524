"""Reading arrays without importing torch: the one helper the pure modules share."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["as_numpy"]


def as_numpy(x: Any) -> npt.NDArray[Any]:
    """A numpy view of an array or a (CPU or GPU) torch tensor, without importing torch."""
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)
