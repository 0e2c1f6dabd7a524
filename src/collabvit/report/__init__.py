"""Presenting a sweep: files, Markdown tables, figures, and per-image panels.

- :mod:`.files`: :func:`write_outputs` (results.csv/.json, frontier.csv,
  best.json, tables.md, histogram.csv, figures/);
- :mod:`.tables`: Tables II-III as Markdown and :func:`describe_point`, the one
  name of an operating point;
- :mod:`.figures`, :mod:`.comparisons`, :mod:`.drawing`: the paper's Figs. 7-14;
- :mod:`.panels`: per-image panels (Figs. 3-6), arrays in, PNG out.

Imports no torch and no model: it reads the sweep's row types, the metrics and
the method tables only.
"""

from __future__ import annotations

from .figures import FIGURES, render_figures, render_figures_from
from .files import write_csv, write_outputs
from .panels import PanelText, render_panel
from .tables import describe_point, point_identity, tables_markdown

__all__ = [
    "FIGURES",
    "PanelText",
    "describe_point",
    "point_identity",
    "render_figures",
    "render_figures_from",
    "render_panel",
    "tables_markdown",
    "write_csv",
    "write_outputs",
]
