"""The grid file format (``--grid FILE.toml``, schema in ``docs/sweep.md``), as plain data.

This module checks a parsed file's keys and values and turns it into keyword
arguments; :meth:`collabvit.sweep.SweepGrid.from_dict` builds the grid from
them. Every error names the key that is wrong.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = [
    "FRONTIER_KEYS",
    "SERIES_KEYS",
    "TOP_KEYS",
    "floats",
    "frontier_kwargs",
    "read_toml",
    "series_kwargs",
    "top_level_kwargs",
]

TOP_KEYS = frozenset(
    {
        "base",
        "series",
        "encoder_thresholds",
        "reference_delta_sums",
        "reference_etas",
        "include_crossing",
        "seed",
        "frontier",
    }
)
SERIES_KEYS = frozenset({"score", "rule", "thresholds", "measure", "etas"})
FRONTIER_KEYS = frozenset({"score", "rule", "measures"})


def floats(name: str, values: Any, low: float | None = 0.0) -> tuple[float, ...]:
    """A non-empty tuple of finite floats (each ``>= low`` unless low is None)."""
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = (values,)
    if not isinstance(values, (list, tuple)) or not values:
        raise ConfigError(f"{name} must be a non-empty list of numbers, got {values!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"{name}: {v!r} is not a finite number")
        if low is not None and v < low:
            raise ConfigError(f"{name}: {v!r} must be >= {low}")
        out.append(float(v))
    return tuple(out)


def _check_keys(what: str, keys: Any, allowed: frozenset[str]) -> None:
    unknown = set(keys) - allowed
    if unknown:
        raise ConfigError(f"{what} {', '.join(sorted(unknown))}: use {', '.join(sorted(allowed))}")


def series_kwargs(item: Any, i: int) -> dict[str, Any]:
    """Keyword arguments of :class:`~collabvit.sweep.Series` from one ``[[series]]`` table."""
    if not isinstance(item, Mapping):
        raise ConfigError(f"series {i + 1} is not a table")
    _check_keys(f"series {i + 1}: unknown key(s)", item, SERIES_KEYS)
    kwargs = dict(item)
    thresholds = kwargs.get("thresholds")
    if thresholds == []:  # a rule without a parameter (written so by SweepGrid.to_dict)
        kwargs["thresholds"] = ()
    elif thresholds is not None and not isinstance(thresholds, str):
        kwargs["thresholds"] = floats(f"series {i + 1} thresholds", thresholds)
    etas = kwargs.get("etas")
    if etas is not None and not isinstance(etas, str):
        kwargs["etas"] = floats("etas", etas, None)
    return kwargs


def frontier_kwargs(f: Any) -> dict[str, Any]:
    """Keyword arguments of :class:`~collabvit.sweep.FrontierSpec` from ``[frontier]``."""
    if not isinstance(f, Mapping) or set(f) - FRONTIER_KEYS:
        raise ConfigError(f"[frontier] takes only {', '.join(sorted(FRONTIER_KEYS))}")
    kwargs = dict(f)
    if "measures" in kwargs:
        kwargs["measures"] = tuple(kwargs["measures"])
    return kwargs


def top_level_kwargs(data: Mapping[str, Any]) -> dict[str, Any]:
    """The grid-wide keys of a file (series and frontier are separate), checked."""
    _check_keys("unknown grid key(s)", data, TOP_KEYS)
    out: dict[str, Any] = {}
    for key in ("encoder_thresholds", "reference_delta_sums", "reference_etas"):
        if key in data:
            value = data[key]
            out[key] = () if value == [] else value
    if "include_crossing" in data:
        if not isinstance(data["include_crossing"], bool):
            raise ConfigError("include_crossing must be true or false")
        out["include_crossing"] = data["include_crossing"]
    if "seed" in data:
        out["seed"] = data["seed"]
    return out


def read_toml(path: str | Path) -> dict[str, Any]:
    """A grid file, parsed (ConfigError when unreadable or not TOML)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    p = Path(path)
    try:
        data: dict[str, Any] = tomllib.loads(p.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read grid file {p}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"grid file {p} is not valid TOML: {exc}") from None
    return data
