"""Write a sweep's outputs: results, frontier, best point, tables, histogram, figures.

:func:`write_outputs` is the presenting half of a sweep
(:func:`collabvit.sweep.run_sweep` computes and writes nothing but its cache).

The figures it draws are listed in ``figures/.collabvit-written.json``; a
rerun into the same folder removes the figures of that list it did not draw
again (another grid, ``--no-figures``), so no figure of an older run is left
beside the new results. Files the list does not name (yours, or a version
before the list) are never touched.
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

__all__ = ["FIGURES_MANIFEST", "write_csv", "write_outputs"]

FIGURES_MANIFEST = ".collabvit-written.json"
"""The list of the figures the last run drew, in the figures folder."""


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
    drawn = render_figures(result, out / "figures") if figures else []
    _replace_figures(out / "figures", drawn)
    return files + drawn


def _replace_figures(folder: Path, drawn: list[Path]) -> None:
    """Remove the figures the previous run listed and this one did not draw; list these."""
    manifest = folder / FIGURES_MANIFEST
    try:
        before = json.loads(manifest.read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        before = []
    names = sorted(p.name for p in drawn)
    for name in set(before) - set(names):
        stale = folder / str(name)
        if "/" not in str(name) and stale.is_file():  # only plain names in this folder
            stale.unlink()
    if names:
        _write_json(manifest, {"files": names})
    else:
        manifest.unlink(missing_ok=True)
