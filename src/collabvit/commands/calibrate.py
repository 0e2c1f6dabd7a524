"""Choose an operating point on calibration images, with a finite-sample guarantee.

Runs (or reuses, from --cache) the sweep of a grid over the calibration
images, then Learn-then-Test (Angelopoulos et al. 2021): the cheapest grid
point whose accuracy drop against the server alone is at most --max-drop D
points with probability >= 1 - --risk ALPHA over the draw of the calibration
images. The loss controlled is the rate of images the server gets right and
the collaborative system gets wrong, which bounds the drop from above. With
--max-cost C: the most accurate point of communication cost <= C, with a
lower confidence bound on its accuracy. Writes OUT/calibrated.json, which
`collabvit evaluate --point` and `collabvit edge --point` take. See
docs/calibrate.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..calibration import FORMAT, P_VALUES, PROCEDURES, check_risk
from ..cli import add_data_options, add_model_options, add_precision_option
from ..errors import ConfigError, DataError

if TYPE_CHECKING:
    from ..calibration import Budget, Calibration, Outcomes
    from ..sweep.grid import GridPoint, SweepGrid

HELP = "choose the cheapest operating point with a guaranteed accuracy drop (Learn-then-Test)"

logger = logging.getLogger(__name__)

_UNLABELLED = (
    "the images of {data} have no labels: calibration compares predictions with labels "
    "(give an ImageFolder or --labels CSV)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    add_precision_option(parser)
    add_data_options(parser)
    group = parser.add_argument_group("calibration")
    group.add_argument(
        "--max-drop",
        type=float,
        metavar="D",
        help="accuracy points below the server alone the chosen point may lose",
    )
    group.add_argument(
        "--risk",
        type=float,
        default=0.1,
        metavar="ALPHA",
        help="probability that the guarantee fails (over the draw of the calibration images)",
    )
    group.add_argument(
        "--max-cost",
        type=float,
        metavar="C",
        help="also: the most accurate point of communication cost <= C, with a lower "
        "confidence bound on its accuracy",
    )
    group.add_argument(
        "--grid",
        default="demo",
        metavar="paper|demo|FILE",
        help="the candidate points: the demo grid (Fig. 8's attention-sum x min-entropy and "
        "whole images), the paper's grids, or a TOML grid file (docs/sweep.md)",
    )
    group.add_argument(
        "--p-value", choices=tuple(P_VALUES), default="binomial", help="p-value of each point"
    )
    group.add_argument(
        "--procedure",
        choices=PROCEDURES,
        default="chains",
        help="family-wise error control: fixed sequence per series (most expensive first) "
        "with Holm between series, or Bonferroni",
    )
    group.add_argument(
        "--out", default="collabvit-calibrate", metavar="DIR", help="calibrated.json goes here"
    )
    group.add_argument(
        "--cache",
        metavar="DIR",
        help="model-output cache (default OUT/cache); a sweep's cache (its OUT/cache) is "
        "reused when models, images and --batch-size match",
    )


def check_arguments(args: argparse.Namespace) -> SweepGrid:
    """Everything that can be wrong before a model is loaded: one ConfigError line each."""
    if args.max_drop is None and args.max_cost is None:
        raise ConfigError("give --max-drop D (accuracy points) and/or --max-cost C")
    if args.max_drop is not None and (not math.isfinite(args.max_drop) or args.max_drop < 0):
        raise ConfigError(
            f"--max-drop must be a number of accuracy points >= 0, got {args.max_drop}"
        )
    if args.max_cost is not None and (not math.isfinite(args.max_cost) or args.max_cost < 0):
        raise ConfigError(f"--max-cost must be a communication cost >= 0, got {args.max_cost}")
    check_risk(args.risk)
    root = Path(args.data)
    if args.labels is None and root.is_dir() and not any(p.is_dir() for p in root.iterdir()):
        raise DataError(_UNLABELLED.format(data=args.data))
    grid = _grid(args.grid)
    count = edge_point_count(grid)
    if count < 2:
        raise ConfigError(
            f"the grid {args.grid} has {count} edge point(s): calibration chooses among at "
            "least two (add etas or thresholds)"
        )
    return grid


def _grid(spec: str) -> SweepGrid:
    from ..sweep.grid import SweepGrid
    from .demo import demo_grid

    return demo_grid() if spec == "demo" else SweepGrid.named(spec)


def edge_point_count(grid: SweepGrid) -> int:
    """The edge grid points the grid will have once resolved ("auto" counts as the
    reference values it resolves to)."""
    from ..sweep.grid import AUTO

    total = 0
    for s in grid.series:
        thresholds = (
            len(grid.reference_delta_sums) if s.thresholds == AUTO else len(s.thresholds or ())
        )
        etas = len(grid.reference_etas) if s.etas == AUTO else len(s.etas)
        total += max(1, thresholds) * etas
    return total


def run(args: argparse.Namespace) -> int:
    from ..cli import load_pair, load_samples
    from ..sweep import calibration_outcomes, data_identity, model_identity, run_sweep
    from ._outputs import check_outputs
    from ._runinfo import run_info
    from .sweep import sweep_progress

    check_outputs(dirs={"--out": args.out, "--cache": args.cache})
    grid = check_arguments(args)
    edge, server = load_pair(args)
    samples = load_samples(args, server.num_classes)
    if not any(s.label >= 0 for s in samples):
        raise DataError(_UNLABELLED.format(data=args.data))
    if _has_auto(grid):
        logger.warning(
            "grid values 'auto' are derived from these images: the guarantee assumes a grid "
            "fixed in advance (give numbers in a grid file)"
        )
    out = Path(args.out)
    with ExitStack() as stack:
        result = run_sweep(
            edge,
            server,
            samples,
            grid,
            batch_size=args.batch_size,
            cache_dir=args.cache or out / "cache",
            target_drop=args.max_drop if args.max_drop is not None else 1.0,
            progress=sweep_progress(stack),
            workers=args.workers,
        )
    points, outcomes = calibration_outcomes(result)
    body = calibrate_body(args, points, outcomes, grid, chance=1.0 / server.num_classes)
    body["calibration"]["edge_accuracy"] = result.edge_accuracy
    body["data"] = data_identity(samples)
    body["models"] = {"edge": model_identity(edge), "server": model_identity(server)}
    body["sweep"] = {"fingerprint": result.meta["fingerprint"], "cache": result.meta["cache"]}
    body["run"] = run_info(args, {"edge": edge, "server": server})
    out.mkdir(parents=True, exist_ok=True)
    path = out / "calibrated.json"
    path.write_text(json.dumps(body, indent=2) + "\n")
    for line in summary_lines(body):
        print(line)
    print(f"wrote {path}")
    return 0


def _has_auto(grid: SweepGrid) -> bool:
    from ..sweep.grid import AUTO

    return any(AUTO in (s.thresholds, s.etas) for s in grid.series)


def calibrate_body(
    args: argparse.Namespace,
    points: list[GridPoint],
    outcomes: Outcomes,
    grid: SweepGrid,
    chance: float | None = None,
) -> dict[str, Any]:
    """``calibrated.json`` without the data and model identities.

    ``chance`` (1 / the server's classes): nothing is certified unless the
    server alone is above it (see :func:`collabvit.calibration.calibrate`).
    """
    from ..calibration import calibrate, most_accurate_within
    from ..metrics import wilson_interval

    n = outcomes.images
    cal = budget = None
    if args.max_drop is not None:
        cal = calibrate(
            outcomes, args.max_drop, args.risk, args.p_value, args.procedure, chance=chance
        )
    if args.max_cost is not None:
        budget = most_accurate_within(outcomes, args.max_cost, args.risk)
    chosen = cal.chosen if cal is not None else (budget.chosen if budget is not None else None)
    table = _PointTable(points, outcomes, cal)
    server = int(outcomes.server_correct.sum())
    low, high = wilson_interval(server, n)
    body: dict[str, Any] = {
        "format": FORMAT,
        "point": _operating_point(points[chosen], grid) if chosen is not None else None,
        "description": _describe(points[chosen]) if chosen is not None else None,
        "certified": bool(cal is not None and cal.chosen is not None),
        "refused": cal.refused if cal is not None else None,
        "guarantee": _guarantee(args, cal, n),
        "chosen": table.report(chosen),
        "closest": table.report(cal.closest if cal is not None else None),
        "budget": _budget(points, budget),
        "calibration": {
            "images": n,
            "server_accuracy": server / n,
            "server_accuracy_low": low,
            "server_accuracy_high": high,
            "grid": grid.to_dict(),
        },
        "points": [table.report(j) for j in range(len(points))],
    }
    return body


def _operating_point(point: GridPoint, grid: SweepGrid) -> dict[str, Any]:
    return asdict(point.operating_point(grid.include_crossing, grid.seed))


def _describe(point: GridPoint) -> str:
    from ..report.tables import describe_point

    return describe_point(asdict(point))


def _guarantee(args: argparse.Namespace, cal: Calibration | None, n: int) -> dict[str, Any]:
    from ..calibration import min_images_to_certify

    if cal is None:
        return {"max_drop_points": None}
    return {
        "max_drop_points": cal.max_drop,
        "risk": cal.alpha,
        "loss": "1[server alone right and collaborative system wrong] per image; its mean "
        "bounds the accuracy drop against server-only from above",
        "p_value": args.p_value,
        "procedure": args.procedure,
        "statement": f"with probability >= {1 - cal.alpha:g} over the draw of the {n} "
        f"calibration images, every certified point has an expected accuracy drop against "
        f"server-only of at most {_points(cal.max_drop)} on new images from the same "
        "distribution",
        "min_images": min_images_to_certify(cal.max_drop / 100.0, cal.alpha),
    }


class _PointTable:
    """The calibration figures of every point, computed once."""

    def __init__(self, points: list[GridPoint], outcomes: Outcomes, cal: Calibration | None):
        self.points, self.cal, self.n = points, cal, outcomes.images
        self.costs = outcomes.costs()
        self.drops = outcomes.drops()
        self.correct = outcomes.correct.sum(axis=1)
        self.losses = outcomes.losses().sum(axis=1)
        self.sent = (outcomes.patches > 0).mean(axis=1)

    def report(self, j: int | None) -> dict[str, Any] | None:
        """Point j's figures on the calibration images (None when j is None)."""
        from ..calibration import clopper_pearson_upper
        from ..metrics import wilson_interval

        if j is None:
            return None
        n, p = self.n, self.points[j]
        correct, losses = int(self.correct[j]), int(self.losses[j])
        low, high = wilson_interval(correct, n)
        row: dict[str, Any] = {
            "score": p.score,
            "rule": p.rule,
            "threshold": p.threshold,
            "measure": p.measure,
            "eta": p.eta,
            "description": _describe(p),
            "communication_cost": float(self.costs[j]),
            "transmit_ratio": float(self.sent[j]),
            "accuracy": correct / n,
            "accuracy_low": low,
            "accuracy_high": high,
            "drop_points": float(self.drops[j]),
            "loss_rate": losses / n,
        }
        if self.cal is not None:
            row["loss_upper_bound"] = clopper_pearson_upper(losses, n, self.cal.alpha)
            row["p_value"] = float(self.cal.p_values[j])
            row["certified"] = bool(self.cal.certified[j])
        return row


def _budget(points: list[GridPoint], budget: Budget | None) -> dict[str, Any] | None:
    if budget is None:
        return None
    j = budget.chosen
    return {
        "max_cost": budget.max_cost,
        "candidates": budget.candidates,
        "description": _describe(points[j]) if j is not None else None,
        "accuracy": budget.accuracy,
        "accuracy_lower_bound": budget.accuracy_lower,
        "confidence": 1 - budget.alpha,
        "accuracy_interval_95": list(budget.interval) if budget.interval else None,
    }


def summary_lines(body: dict[str, Any]) -> list[str]:
    """What ``collabvit calibrate`` prints: the chosen point, or why there is none."""
    cal = body["calibration"]
    lines = [
        f"calibration: {cal['images']} labelled images, server only "
        f"{_pct(cal['server_accuracy'])} (95% CI {_pct(cal['server_accuracy_low'])}-"
        f"{_pct(cal['server_accuracy_high'])})"
    ]
    edge = cal.get("edge_accuracy")
    if edge is not None and cal["server_accuracy_low"] <= edge:
        lines.append(
            f"note: the server alone is not clearly more accurate than the edge alone "
            f"({_pct(edge)}): a drop against it says little (untrained weights?)"
        )
    g = body["guarantee"]
    if g["max_drop_points"] is not None:
        lines += _drop_lines(body, g)
    b = body["budget"]
    if b is not None:
        if b["description"] is None:
            lines.append(f"budget: no point has communication cost <= {b['max_cost']:g}")
        else:
            lines.append(
                f"budget cost <= {b['max_cost']:g}: {b['description']} -> {_pct(b['accuracy'])}, "
                f"at least {_pct(b['accuracy_lower_bound'])} with probability "
                f">= {b['confidence']:g} ({b['candidates']} grid point(s) within budget)"
            )
    return lines


def _drop_lines(body: dict[str, Any], g: dict[str, Any]) -> list[str]:
    d, risk = g["max_drop_points"], g["risk"]
    c = body["chosen"]
    if body["certified"]:
        return [
            f"certified: {c['description']}",
            f"  drop <= {_points(d)} against server-only with probability >= {1 - risk:g}; "
            f"on these images {_pct(c['accuracy'])}, drop {c['drop_points']:.2f} points, "
            f"loss rate {_pct(c['loss_rate'])}, communication cost {c['communication_cost']:.4f}",
        ]
    lines = [f"NO POINT IS CERTIFIED to lose at most {_points(d)} at risk {risk:g}"]
    if body.get("refused"):
        lines.append(f"  {body['refused']}")
    near = body["closest"]
    if near is not None:
        lines.append(
            f"  closest: {near['description']} (p = {near['p_value']:.3g}, loss rate "
            f"{_pct(near['loss_rate'])}, upper bound {_pct(near['loss_upper_bound'])}, "
            f"communication cost {near['communication_cost']:.4f})"
        )
    need = g.get("min_images")
    n = body["calibration"]["images"]
    if need is None:
        lines.append("  a drop of 0 points can never be certified from a finite sample")
    elif n < need:
        lines.append(
            f"  {n} images are too few: even a point that never loses needs at least {need}"
        )
    return lines


def _points(d: float) -> str:
    return f"{d:g} point" if d == 1 else f"{d:g} points"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"
