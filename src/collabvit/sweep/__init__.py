"""Operating-point sweeps: a whole grid of (score, rule, threshold, measure, eta) in one pass.

``collabvit evaluate`` runs the models once per operating point. A sweep runs
them once per *image* and per distinct *selection* instead, and derives every
grid point from those per-image results:

1. **Edge pass** (:mod:`.edge_pass`, chunk by chunk): the edge model
   classifies each image once; its prediction, the gate statistic of every
   measure that gates and the patch scores the grid needs are kept. For
   Fig. 14 the server also scores each full image once.
2. **Resolve** (:mod:`.resolve`) the data-derived grid values (``"auto"``).
3. **Server pass** (:mod:`.server_pass`, chunk by chunk): the server runs
   once per distinct (image, keep mask) some grid point transmits, plus the
   whole image (server-only accuracy); wire sizes are computed per distinct
   mask too.
4. **Points** (:mod:`.points`): each grid point is a gate over the cached
   results, summarised by :func:`collabvit.metrics.summarise`; its records
   equal ``engine.evaluate`` at that point.

:func:`run_sweep` (:mod:`.run`) returns a :class:`SweepResult` and writes
nothing but the model-output cache (:mod:`.cache`);
:func:`collabvit.report.write_outputs` writes results, tables and figures.
The grid is :mod:`.grid` (built in code, or read by :mod:`.grid_file`);
the paper's values are :mod:`.paper`.

The names below are resolved lazily (PEP 562): the grid, paper and row types
load without torch, so :mod:`collabvit.report` can read them model-free.
"""

from __future__ import annotations

import importlib
import typing

__all__ = [
    "ALL",
    "AUTO",
    "PAPER_DELTA_SUMS",
    "PAPER_ETAS",
    "PAPER_TABLE_II",
    "PAPER_TABLE_III",
    "RESULT_FIELDS",
    "BestPoint",
    "FrontierSpec",
    "GridPoint",
    "PointOutcomes",
    "ProgressFn",
    "ResultRow",
    "SelectionKey",
    "Series",
    "SweepGrid",
    "SweepResult",
    "SweepStats",
    "calibration_outcomes",
    "data_identity",
    "iter_points",
    "make_record",
    "model_identity",
    "pareto_frontier",
    "run_sweep",
]

_EXPORTS = {
    "ALL": ".grid",
    "AUTO": ".grid",
    "FrontierSpec": ".grid",
    "GridPoint": ".grid",
    "SelectionKey": ".grid",
    "Series": ".grid",
    "SweepGrid": ".grid",
    "PAPER_DELTA_SUMS": ".paper",
    "PAPER_ETAS": ".paper",
    "PAPER_TABLE_II": ".paper",
    "PAPER_TABLE_III": ".paper",
    "RESULT_FIELDS": ".points",
    "BestPoint": ".points",
    "ResultRow": ".points",
    "PointOutcomes": ".outcomes",
    "calibration_outcomes": ".outcomes",
    "ProgressFn": ".context",
    "SweepStats": ".context",
    "data_identity": ".cache",
    "model_identity": ".cache",
    "SweepResult": ".run",
    "iter_points": ".run",
    "run_sweep": ".run",
    "make_record": "..metrics",  # collabvit.metrics.make_record, the one record builder
    "pareto_frontier": "..metrics",  # collabvit.metrics.pareto_frontier, the one frontier
}

if typing.TYPE_CHECKING:
    from ..metrics import make_record, pareto_frontier
    from .cache import data_identity, model_identity
    from .context import ProgressFn, SweepStats
    from .grid import ALL, AUTO, FrontierSpec, GridPoint, SelectionKey, Series, SweepGrid
    from .outcomes import PointOutcomes, calibration_outcomes
    from .paper import PAPER_DELTA_SUMS, PAPER_ETAS, PAPER_TABLE_II, PAPER_TABLE_III
    from .points import RESULT_FIELDS, BestPoint, ResultRow
    from .run import SweepResult, iter_points, run_sweep


def __getattr__(name: str) -> typing.Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # resolve once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
