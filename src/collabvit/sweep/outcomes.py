"""Per-image outcomes of a sweep's points, from its cached arrays (no model call).

:meth:`SweepResult.outcomes <collabvit.sweep.SweepResult.outcomes>` gives one
point's per-image arrays; :func:`calibration_outcomes` stacks every edge grid
point into the :class:`collabvit.calibration.Outcomes` that ``collabvit
calibrate`` tests, with the testing order of each series fixed by the grid
alone (not by the data): its etas from the one that transmits most to the one
that transmits least.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ..calibration import Outcomes
from ..errors import DataError
from ..gating import get_measure
from .grid import EDGE, WHOLE_IMAGE, GridPoint

if TYPE_CHECKING:
    from ..data import Sample
    from .edge_pass import EdgeData
    from .grid import SelectionKey
    from .run import SweepResult
    from .server_pass import SelectionData

__all__ = ["PointOutcomes", "calibration_outcomes", "point_outcomes", "testing_chains"]


@dataclass(frozen=True)
class PointOutcomes:
    """One grid point over every readable image of a sweep (rows in dataset order)."""

    labels: npt.NDArray[np.int64]  # (n,) -1 where unknown
    edge_pred: npt.NDArray[np.int64]  # (n,)
    server_pred: npt.NDArray[np.int64]  # (n,) the server alone on the whole image
    final_pred: npt.NDArray[np.int64]  # (n,) the collaborative system's answer
    transmitted: npt.NDArray[np.bool_]  # (n,) the gate's decision (eq. 11)
    patches_sent: npt.NDArray[np.int64]  # (n,) patches sent (0 when kept on the edge)
    num_patches: int  # N


def point_outcomes(
    point: GridPoint,
    samples: Sequence[Sample],
    edge: EdgeData,
    selections: dict[SelectionKey, SelectionData],
    num_patches: int,
) -> PointOutcomes:
    """The per-image arrays of one resolved grid point (what its records say)."""
    sent, _ = edge.transmitted(point.measure, point.eta, point.encoder)
    data = selections[point.selection]
    labels = np.asarray([samples[int(p)].label for p in edge.positions], dtype=np.int64)
    return PointOutcomes(
        labels=labels,
        edge_pred=edge.edge_pred,
        server_pred=selections[WHOLE_IMAGE].pred,
        final_pred=np.where(sent, data.pred, edge.edge_pred),
        transmitted=sent,
        patches_sent=np.where(sent, data.count, 0).astype(np.int64),
        num_patches=num_patches,
    )


def testing_chains(points: Sequence[GridPoint]) -> tuple[tuple[int, ...], ...]:
    """One chain per (encoder, score, rule, threshold, measure), etas ordered from the one
    that transmits most: the a-priori testing order of
    :func:`collabvit.calibration.reject_chains` (the grid decides it, not the data)."""
    groups: dict[tuple[object, ...], list[int]] = {}
    for j, p in enumerate(points):
        groups.setdefault((p.encoder, p.score, p.rule, p.threshold, p.measure), []).append(j)
    chains = []
    for (_, _, _, _, measure), members in groups.items():
        m = get_measure(str(measure))
        # high_transmits: the lower eta sends a superset of images; margin the reverse
        sign = 1.0 if m.high_transmits else -1.0
        chains.append(tuple(sorted(members, key=lambda j: sign * points[j].eta)))
    return tuple(chains)


def calibration_outcomes(result: SweepResult) -> tuple[list[GridPoint], Outcomes]:
    """Every edge grid point of a sweep over its labelled images, for calibration.

    Returns:
        the points (server-encoder points of Fig. 14 are left out: they need the
        server's attention on the whole image first) and their outcomes.
    """
    points = [p for p in result.points if p.encoder == EDGE]
    if not points:
        raise DataError("the sweep has no edge grid point to calibrate")
    per_point = [result.outcomes(p) for p in points]
    first = per_point[0]
    labelled = first.labels >= 0
    if not labelled.any():
        raise DataError("no labelled image: calibration needs labels (--labels CSV)")
    y = first.labels[labelled]
    outcomes = Outcomes(
        server_correct=first.server_pred[labelled] == y,
        correct=np.stack([o.final_pred[labelled] == y for o in per_point]),
        patches=np.stack([o.patches_sent[labelled] for o in per_point]),
        num_patches=first.num_patches,
        chains=testing_chains(points),
    )
    return points, outcomes
