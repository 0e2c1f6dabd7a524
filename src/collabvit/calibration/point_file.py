"""``calibrated.json``: the operating point ``collabvit calibrate`` chose, read back.

``collabvit evaluate --point`` and ``collabvit edge --point`` read it with
:func:`read_point`; JSON only, so the edge reads it without torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["FORMAT", "POINT_FIELDS", "read_point"]

FORMAT = "collabvit-calibrated/1"
"""The ``format`` field of ``calibrated.json``."""

POINT_FIELDS: dict[str, tuple[type, ...]] = {
    "score": (str,),
    "rule": (str,),
    "threshold": (int, float),
    "measure": (str,),
    "eta": (int, float),
    "include_crossing": (bool,),
    "seed": (int,),
}
"""The operating-point fields of ``calibrated.json`` (those of ``pipeline.OperatingPoint``)."""


def read_point(path: str | Path) -> dict[str, Any]:
    """The operating point of a ``calibrated.json`` (``collabvit calibrate``), checked.

    Returns:
        the keyword arguments of :class:`collabvit.pipeline.OperatingPoint`.

    Raises:
        ConfigError: unreadable file, no certified point in it, or a malformed point.
    """
    try:
        body = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"--point {path}: not a readable calibrated.json ({exc})") from None
    if not isinstance(body, dict) or "point" not in body:
        raise ConfigError(f"--point {path}: no 'point' in it (write one with collabvit calibrate)")
    point = body["point"]
    if point is None:
        closest = (body.get("closest") or {}).get("description", "none")
        raise ConfigError(
            f"--point {path}: calibration certified no operating point (closest: {closest}); "
            "calibrate on more images or allow a larger --max-drop"
        )
    if not isinstance(point, dict) or set(point) != set(POINT_FIELDS):
        raise ConfigError(f"--point {path}: 'point' must have exactly {', '.join(POINT_FIELDS)}")
    for key, kinds in POINT_FIELDS.items():
        value = point[key]
        if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
            raise ConfigError(f"--point {path}: {key} = {value!r} has the wrong type")
    return {k: float(v) if k in ("threshold", "eta") else v for k, v in point.items()}
