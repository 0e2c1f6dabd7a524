"""The operating-point options of evaluate, edge and visualize, and their checks.

Each selection rule's parameter is its own option, named after the rule
table's :attr:`~collabvit.selection.Rule.parameter` (``--k`` for top-k and
random, ``--delta`` for threshold, ``--delta-sum`` for attention-sum);
``--threshold`` is an alias of whichever the chosen rule takes. The ranges
are the tables' own (:meth:`Rule.check_chosen <collabvit.selection.Rule.check_chosen>`,
:meth:`Measure.check_eta <collabvit.gating.Measure.check_eta>`): this module
only says which option a bad value came from. A parameter the chosen rule
does not use, or ``--eta`` with a measure that does not gate, is an error,
not silently ignored. Torch-free (the ONNX edge parses these too).
"""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ConfigError

__all__ = ["add_point_options", "point_fields", "point_from_args"]

DEFAULT_RULE = "attention-sum"
DEFAULT_DELTA_SUM = 0.97  # the paper's operating point (Table II)
DEFAULT_ETA = 0.8

# what each rule parameter is, for the help and the "needs" message (metavar, meaning)
_MEANINGS = {
    "k": ("N", "patches kept per image"),
    "delta": ("D", "the score a patch needs to be kept"),
    "delta_sum": ("S", "the share of the attention the kept patches add up to"),
}
# options that only one rule reads
_RULE_ONLY = {"--include-crossing": "attention-sum", "--seed": "random"}


def _option(parameter: str) -> str:
    return "--" + parameter.replace("_", "-")


def _dest(parameter: str) -> str:
    return f"rule_{parameter}"


class _PointFlag(argparse.Action):
    """Stores an operating-point option and notes that it was given (see ``--point``)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, True if self.nargs == 0 else values)
        given = set(getattr(namespace, "point_flags_given", ()))
        given.add(option_string or self.dest)
        namespace.point_flags_given = sorted(given)


def add_point_options(parser: argparse.ArgumentParser) -> None:
    """--point FILE, or --score --rule (--k | --delta | --delta-sum | --threshold) --measure --eta.

    The choices and parameters come from the method's tables
    (:data:`collabvit.attention.SCORES`, :data:`collabvit.selection.RULES`,
    :data:`collabvit.gating.MEASURES`), so an entry added there is a choice
    here. ``--point calibrated.json`` (written by ``collabvit calibrate``)
    fixes the whole point; giving any of the other options with it is an
    error, so a file never mixes silently with flags.
    """
    from ..attention import SCORES
    from ..gating import MEASURES
    from ..selection import RULES

    group = parser.add_argument_group("operating point")
    group.add_argument(
        "--point",
        metavar="calibrated.json",
        help="the operating point chosen by collabvit calibrate (instead of the options below)",
    )
    flag: dict[str, Any] = {"action": _PointFlag}
    group.add_argument("--score", default="mean", choices=tuple(SCORES), help="patch score", **flag)
    group.add_argument(
        "--rule", default=DEFAULT_RULE, choices=tuple(RULES), help="patch selection rule", **flag
    )
    parameters: dict[str, list[str]] = {}
    for name, rule in RULES.items():
        if rule.parameter:
            parameters.setdefault(rule.parameter, []).append(name)
    for parameter, names in parameters.items():
        metavar, meaning = _MEANINGS.get(parameter, ("X", parameter))
        counts = all(RULES[n].count for n in names)
        default = (
            f" (default {DEFAULT_DELTA_SUM:g} with {DEFAULT_RULE})"
            if DEFAULT_RULE in names and RULES[DEFAULT_RULE].parameter == parameter
            else ""
        )
        group.add_argument(
            _option(parameter),
            dest=_dest(parameter),
            type=int if counts else float,
            metavar=metavar,
            help=f"{', '.join(names)}: {meaning}{default}",
            **flag,
        )
    group.add_argument(
        "--threshold",
        type=float,
        metavar="X",
        help="an alias of the chosen rule's own parameter ("
        + ", ".join(f"{_option(p)} for {', '.join(n)}" for p, n in parameters.items())
        + ")",
        **flag,
    )
    group.add_argument(
        "--measure", default="min-entropy", choices=tuple(MEASURES), help="gate measure", **flag
    )
    group.add_argument(
        "--eta", type=float, default=DEFAULT_ETA, help="gate threshold (eq. 11)", **flag
    )
    group.add_argument(
        "--include-crossing",
        nargs=0,
        default=False,
        help="attention-sum: also keep the patch that crosses delta_sum",
        **flag,
    )
    group.add_argument("--seed", type=int, default=0, help="seed of the random rule", **flag)


def point_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The operating point of :func:`add_point_options` options, as keyword arguments.

    With ``--point FILE`` the point of a ``calibrated.json``
    (:func:`collabvit.calibration.read_point`); ConfigError when point
    options are given too, when the rule's parameter is missing, out of its
    range or given for a rule that does not use it, or when eta is outside
    its measure's range.
    """
    given = list(getattr(args, "point_flags_given", []))
    path = getattr(args, "point", None)
    if path is not None:
        from ..calibration import read_point

        if given:
            raise ConfigError(
                f"--point {path} fixes the operating point: drop {', '.join(given)} "
                "(or drop --point)"
            )
        return read_point(path)
    for option, rule_name in _RULE_ONLY.items():
        if option in given and args.rule != rule_name:
            raise ConfigError(f"--rule {args.rule} does not use {option} ({rule_name} only)")
    return {
        "score": args.score,
        "rule": args.rule,
        "threshold": _rule_parameter(args),
        "measure": args.measure,
        "eta": _eta(args, "--eta" in given),
        "include_crossing": bool(args.include_crossing),
        "seed": args.seed,
    }


def _rule_parameter(args: argparse.Namespace) -> float:
    from ..selection import RULES, get_rule

    rule = get_rule(args.rule)
    values = {
        _option(r.parameter): getattr(args, _dest(r.parameter), None)
        for r in RULES.values()
        if r.parameter
    }
    values["--threshold"] = getattr(args, "threshold", None)
    chosen = {option: v for option, v in values.items() if v is not None}
    own = _option(rule.parameter) if rule.parameter else None
    for option in chosen:
        if option not in (own, "--threshold") or own is None:
            raise ConfigError(f"--rule {rule.name} does not use {option}")
    if own is None:
        return 0.0
    if len(chosen) > 1:
        raise ConfigError(f"give one of {own} and --threshold (its alias), not both")
    if chosen:
        option, value = next(iter(chosen.items()))
    elif rule.name == DEFAULT_RULE:
        option, value = own, DEFAULT_DELTA_SUM
    else:
        metavar, meaning = _MEANINGS.get(rule.parameter, ("X", rule.parameter))
        raise ConfigError(f"--rule {rule.name} needs {own} {metavar} ({meaning})")
    try:
        return rule.check_chosen(value)
    except ConfigError as exc:
        raise ConfigError(f"{option} {value:g}: {exc}") from None


def _eta(args: argparse.Namespace, given: bool) -> float:
    from ..gating import get_measure

    measure = get_measure(args.measure)
    if not measure.gates:
        if given:
            raise ConfigError(f"--measure {measure.name} does not use --eta (it sends every image)")
        return float(args.eta)
    try:
        return measure.check_eta(args.eta)
    except ConfigError as exc:
        raise ConfigError(f"--eta {args.eta:g}: {exc}") from None


def point_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~collabvit.pipeline.OperatingPoint` of :func:`add_point_options` options."""
    from ..pipeline import OperatingPoint

    return OperatingPoint(**point_fields(args))
