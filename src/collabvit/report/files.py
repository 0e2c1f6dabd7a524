"""Write a sweep's outputs: results, frontier, best point, tables, histogram, figures.

:func:`write_outputs` is the presenting half of a sweep
(:func:`collabvit.sweep.run_sweep` computes and writes nothing but its cache).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..sweep.points import RESULT_FIELDS
from .figures import render_figures
from .tables import tables_markdown

if TYPE_CHECKING:
    from ..sweep.run import SweepResult

__all__ = ["write_csv", "write_outputs"]


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return str(v)


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Rows as ``results.csv`` (columns :data:`~collabvit.sweep.RESULT_FIELDS`, floats exact)."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(RESULT_FIELDS)
        for r in rows:
            writer.writerow([_fmt(r.get(f)) for f in RESULT_FIELDS])


def _write_json(path: Path, body: Any) -> None:
    """JSON written to a temporary file and renamed (a file is complete or absent)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(body, indent=2) + "\n")
    os.replace(tmp, path)


def _write_histogram(h: Mapping[str, Any], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(("bin_low", "bin_high", "fraction_of_patches"))
        for lo, hi, frac in zip(h["edges"][:-1], h["edges"][1:], h["fractions"], strict=True):
            w.writerow((repr(lo), repr(hi), repr(frac)))


def write_outputs(result: SweepResult, out_dir: str | Path, figures: bool = True) -> list[Path]:
    """results.csv/.json, frontier.csv, best.json, tables.md, histogram.csv, figures/.

    Returns:
        the files written, in that order.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / n for n in ("results.csv", "results.json", "frontier.csv", "best.json")]
    write_csv(result.rows, files[0])
    _write_json(files[1], {"meta": result.meta, "rows": [r.to_dict() for r in result.rows]})
    write_csv(result.frontier, files[2])
    _write_json(files[3], result.best.to_dict() if result.best is not None else None)
    files.append(out / "tables.md")
    files[-1].write_text(tables_markdown(result))
    if result.histogram is not None:
        files.append(out / "histogram.csv")
        _write_histogram(result.histogram, files[-1])
    if figures:
        files += render_figures(result, out / "figures")
    return files
