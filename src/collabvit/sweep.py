"""Operating-point sweeps: a whole grid of (score, rule, threshold, measure, eta) in one pass.

``collabvit evaluate`` runs the models once per operating point. A sweep runs
them once per *image* and per distinct *selection* instead, and derives every
grid point from those per-image results:

1. **Edge pass** (chunk by chunk): the edge model classifies each image once;
   its prediction, its three gate statistics (min-entropy, Shannon entropy,
   margin) and the patch scores the grid needs (mean attention and/or the two
   rollouts) are kept. For Fig. 14 the server also scores each full image once
   (its own mean attention, the "server as semantic encoder" baseline).
2. **Resolve** data-derived grid values (``"auto"``): top-k / random patch
   counts and attention-threshold deltas that match the mean cost of the
   reference attention-sum thresholds, Shannon / margin etas that match the
   transmit ratios of the reference min-entropy etas.
3. **Server pass** (chunk by chunk): every selection the grid needs is computed
   with :func:`collabvit.selection.select_patches`; an image needs a selection
   only when some eta of some series using it transmits the image. Identical
   keep masks of one image (across rules, scores and thresholds) are merged and
   the server runs :func:`collabvit.models.forward_subset` once per distinct
   (image, mask), batched by patch count. The full-image mask (server-only
   accuracy) is one more selection. Wire sizes are computed per distinct
   selection too.
4. **Points**: each grid point is a gate over the cached results; nothing is
   recomputed per eta. Its records equal ``engine.evaluate`` at that point.

Everything the models produce is cached on disk per chunk (``.npz``, written
atomically) under a fingerprint of the two models (name, source, a SHA-256 of
their weights, preprocessing), the data file list, the batch size and the
device type. An interrupted run resumes at the first missing chunk, and a new
grid over the same models and data only runs the selections it has not seen.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from . import wire
from .attention import SCORES
from .data import Sample, iter_batches
from .errors import ConfigError, DataError
from .gating import MEASURES, transmit_mask, uncertainty
from .metrics import ImageRecord
from .models import LoadedModel, forward_subset, forward_with_scores
from .pipeline import OperatingPoint, check_method, check_pair, make_record
from .selection import RULES, select_patches

__all__ = [
    "ALL",
    "AUTO",
    "GATE_MEASURES",
    "PAPER_DELTA_SUMS",
    "PAPER_ETAS",
    "PAPER_TABLE_II",
    "PAPER_TABLE_III",
    "RESULT_FIELDS",
    "FrontierSpec",
    "GridPoint",
    "ProgressFn",
    "Series",
    "SweepGrid",
    "SweepResult",
    "SweepStats",
    "choose_best",
    "data_identity",
    "iter_points",
    "make_record",
    "model_identity",
    "pareto_frontier",
    "run_sweep",
    "tables_markdown",
    "write_outputs",
]

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]
"""``progress(phase, done_now, total)``: phase is ``"edge"`` or ``"server"``."""

PAPER_DELTA_SUMS = (0.87, 0.90, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99)
"""Table II: the attention-sum thresholds delta_sum."""
PAPER_ETAS = (0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0)
"""Table III: the min-entropy thresholds eta_m."""
PAPER_TABLE_II = dict(
    zip(
        PAPER_DELTA_SUMS,
        (88.40, 100.84, 110.82, 116.51, 122.80, 129.86, 137.89, 147.24, 158.47, 172.76),
        strict=True,
    )
)
"""Expected patches (of 196) per delta_sum, DeiT-Tiny on ImageNet val, no gating."""
PAPER_TABLE_III = {
    0.1: 0.9714,
    0.2: 0.8445,
    0.3: 0.7109,
    0.4: 0.6246,
    0.6: 0.5116,
    0.8: 0.4290,
    1.0: 0.3567,
}
"""Transmitted image ratio per eta_m, DeiT-Tiny on ImageNet val."""

GATE_MEASURES = ("min-entropy", "shannon", "margin")
AUTO = "auto"
ALL = "all"
CACHE_VERSION = 1
DEFAULT_CHUNK = 512
SAVE_EVERY_S = 120.0  # flush server results inside a chunk this often (resume points)

RESULT_FIELDS = (
    "kind",
    "encoder",
    "score",
    "rule",
    "threshold",
    "measure",
    "eta",
    "images",
    "accuracy",
    "edge_accuracy",
    "server_accuracy",
    "transmit_ratio",
    "mean_patches_transmitted",
    "mean_patches_all",
    "communication_cost",
    "server_flops_ratio",
    "codec",
    "bytes_per_image",
    "bytes_per_transmitted_image",
    "raised_to_one_patch",
)
"""Columns of ``results.csv`` (accuracies and ratios are fractions, not %)."""


# --------------------------------------------------------------------------- the grid


def _floats(name: str, values: Any, low: float | None = 0.0) -> tuple[float, ...]:
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


@dataclass(frozen=True)
class Series:
    """One family of grid points: ``thresholds x etas`` for one score, rule and measure.

    ``thresholds`` is a list of k (``top-k``, ``random``), delta (``threshold``)
    or delta_sum (``attention-sum``) values, or:

    - ``"auto"`` (``top-k``, ``random``, ``threshold``): values matching the
      mean patch counts of attention-sum at the grid's reference delta_sums on
      this data (k = rounded mean count; delta = the score quantile that keeps
      the same share of all patches);
    - ``"all"`` (``top-k``, ``random``): every patch, i.e. no patch selection.

    ``etas`` is a list, or ``"auto"``: for min-entropy the grid's reference
    etas, for Shannon and margin the values giving the same transmit ratios as
    min-entropy at the reference etas. With measure ``none`` eta is 0 and unused.
    """

    rule: str = "attention-sum"
    thresholds: tuple[float, ...] | str = PAPER_DELTA_SUMS
    measure: str = "none"
    etas: tuple[float, ...] | str = (0.0,)
    score: str = "mean"

    def __post_init__(self) -> None:
        check_method(self.score, self.rule, self.measure)
        if isinstance(self.thresholds, str):
            allowed = {"top-k": (AUTO, ALL), "random": (AUTO, ALL), "threshold": (AUTO,)}
            if self.thresholds not in allowed.get(self.rule, ()):
                raise ConfigError(
                    f"thresholds {self.thresholds!r} is not available for rule {self.rule}: "
                    "'auto' works for top-k, random and threshold, 'all' for top-k and random"
                )
        else:
            object.__setattr__(
                self, "thresholds", _floats(f"{self.rule} thresholds", self.thresholds)
            )
        if self.measure == "none":
            object.__setattr__(self, "etas", (0.0,))
        elif isinstance(self.etas, str):
            if self.etas != AUTO:
                raise ConfigError(f"etas must be a list of numbers or 'auto', got {self.etas!r}")
        else:
            object.__setattr__(self, "etas", _floats(f"{self.measure} etas", self.etas, None))

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "rule": self.rule,
            "thresholds": self.thresholds
            if isinstance(self.thresholds, str)
            else list(self.thresholds),
            "measure": self.measure,
            "etas": self.etas if isinstance(self.etas, str) else list(self.etas),
        }


@dataclass(frozen=True)
class FrontierSpec:
    """Which grid points form the trade-off curve (the paper's black line) and ``best``."""

    score: str = "mean"
    rule: str = "attention-sum"
    measures: tuple[str, ...] = ("min-entropy", "none")

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise ConfigError(f"frontier score {self.score!r}: use one of {', '.join(SCORES)}")
        if self.rule not in RULES:
            raise ConfigError(f"frontier rule {self.rule!r}: use one of {', '.join(RULES)}")
        measures = (self.measures,) if isinstance(self.measures, str) else tuple(self.measures)
        for m in measures:
            if m not in MEASURES:
                raise ConfigError(f"frontier measure {m!r}: use one of {', '.join(MEASURES)}")
        object.__setattr__(self, "measures", measures)

    def matches(self, row: Mapping[str, Any]) -> bool:
        return (
            row.get("kind") == "grid"
            and row.get("encoder") == "edge"
            and row.get("score") == self.score
            and row.get("rule") == self.rule
            and row.get("measure") in self.measures
        )


_TOP_KEYS = {
    "base",
    "series",
    "encoder_thresholds",
    "reference_delta_sums",
    "reference_etas",
    "include_crossing",
    "seed",
    "frontier",
}
_SERIES_KEYS = {"score", "rule", "thresholds", "measure", "etas"}
_FRONTIER_KEYS = {"score", "rule", "measures"}


@dataclass(frozen=True)
class SweepGrid:
    """A sweep grid: series of points plus the Fig. 14 encoder comparison.

    ``encoder_thresholds``: attention-sum delta_sums at which the server's own
    mean attention (on the full image) selects the patches, no gating (Fig. 14);
    empty to skip the extra server pass. ``include_crossing`` and ``seed``
    apply to every point (see :class:`collabvit.engine.OperatingPoint`).
    """

    series: tuple[Series, ...]
    encoder_thresholds: tuple[float, ...] = ()
    reference_delta_sums: tuple[float, ...] = PAPER_DELTA_SUMS
    reference_etas: tuple[float, ...] = PAPER_ETAS
    include_crossing: bool = False
    seed: int = 0
    frontier: FrontierSpec = field(default_factory=FrontierSpec)

    def __post_init__(self) -> None:
        object.__setattr__(self, "series", tuple(self.series))
        if not self.series and not self.encoder_thresholds:
            raise ConfigError("the grid has no series and no encoder thresholds: nothing to do")
        enc = tuple(self.encoder_thresholds)
        object.__setattr__(
            self, "encoder_thresholds", _floats("encoder_thresholds", enc) if enc else ()
        )
        object.__setattr__(
            self,
            "reference_delta_sums",
            _floats("reference_delta_sums", tuple(self.reference_delta_sums)),
        )
        object.__setattr__(
            self, "reference_etas", _floats("reference_etas", tuple(self.reference_etas), None)
        )
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")

    # ------------------------------------------------------------------ presets

    @classmethod
    def paper(cls) -> SweepGrid:
        """The paper's grids (Figs. 7-14, Tables II-III); about 71 selections per image."""
        d = PAPER_DELTA_SUMS
        return cls(
            series=(
                Series("attention-sum", d, "min-entropy", PAPER_ETAS),  # Fig. 8/9, Table III
                Series("attention-sum", d, "none"),  # no gating, Table II, Figs. 11/12/14
                Series("attention-sum", d, "none", score="rollout"),  # Fig. 11
                Series("attention-sum", d, "none", score="rollout-standard"),  # Fig. 11
                Series("top-k", AUTO, "none"),  # Figs. 10, 12
                Series("threshold", AUTO, "none"),  # Fig. 12
                Series("random", AUTO, "none"),  # Fig. 10 (MOT-style)
                Series("top-k", ALL, "none"),  # server only
                Series("top-k", ALL, "min-entropy", AUTO),  # Fig. 13
                Series("top-k", ALL, "shannon", AUTO),  # Fig. 13
                Series("top-k", ALL, "margin", AUTO),  # Fig. 13
            ),
            encoder_thresholds=d,  # Fig. 14
        )

    @classmethod
    def small(cls) -> SweepGrid:
        """A fast demo grid (at most 13 selections per image): Figs. 7, 8, 10, 12, 13."""
        d = (0.9, 0.95, 0.97, 0.99)
        etas = (0.2, 0.6, 1.0)
        return cls(
            series=(
                Series("attention-sum", d, "min-entropy", etas),
                Series("attention-sum", d, "none"),
                Series("top-k", AUTO, "none"),
                Series("random", AUTO, "none"),
                Series("top-k", ALL, "none"),
                Series("top-k", ALL, "min-entropy", AUTO),
                Series("top-k", ALL, "shannon", AUTO),
            ),
            reference_delta_sums=d,
            reference_etas=etas,
        )

    # ------------------------------------------------------------------ files

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SweepGrid:
        """A grid from the TOML schema of ``docs/sweep.md`` (already parsed)."""
        unknown = set(data) - _TOP_KEYS
        if unknown:
            raise ConfigError(
                f"unknown grid key(s) {', '.join(sorted(unknown))}: use "
                f"{', '.join(sorted(_TOP_KEYS))}"
            )
        base_name = data.get("base", "paper")
        presets = {"paper": cls.paper, "small": cls.small}
        if base_name == "none":
            if "series" not in data and "encoder_thresholds" not in data:
                raise ConfigError("base = 'none' needs [[series]] or encoder_thresholds")
            base: dict[str, Any] = {"series": (), "encoder_thresholds": ()}
        elif base_name in presets:
            b = presets[base_name]()
            base = {
                "series": b.series,
                "encoder_thresholds": b.encoder_thresholds,
                "reference_delta_sums": b.reference_delta_sums,
                "reference_etas": b.reference_etas,
            }
        else:
            raise ConfigError(f"grid base {base_name!r}: use paper, small or none")
        kwargs = dict(base)
        if "series" in data:
            items = data["series"]
            if not isinstance(items, list):
                raise ConfigError("series must be an array of tables ([[series]])")
            series = []
            for i, item in enumerate(items):
                if not isinstance(item, Mapping):
                    raise ConfigError(f"series {i + 1} is not a table")
                bad = set(item) - _SERIES_KEYS
                if bad:
                    raise ConfigError(
                        f"series {i + 1}: unknown key(s) {', '.join(sorted(bad))}: use "
                        f"{', '.join(sorted(_SERIES_KEYS))}"
                    )
                thresholds = item.get("thresholds", PAPER_DELTA_SUMS)
                etas = item.get("etas", (0.0,))
                series.append(
                    Series(
                        rule=item.get("rule", "attention-sum"),
                        thresholds=thresholds
                        if isinstance(thresholds, str)
                        else _floats(f"series {i + 1} thresholds", thresholds),
                        measure=item.get("measure", "none"),
                        etas=etas if isinstance(etas, str) else _floats("etas", etas, None),
                        score=item.get("score", "mean"),
                    )
                )
            kwargs["series"] = tuple(series)
        for key in ("encoder_thresholds", "reference_delta_sums", "reference_etas"):
            if key in data:
                value = data[key]
                kwargs[key] = () if value == [] else value
        if "include_crossing" in data:
            if not isinstance(data["include_crossing"], bool):
                raise ConfigError("include_crossing must be true or false")
            kwargs["include_crossing"] = data["include_crossing"]
        if "seed" in data:
            kwargs["seed"] = data["seed"]
        if "frontier" in data:
            f = data["frontier"]
            if not isinstance(f, Mapping) or set(f) - _FRONTIER_KEYS:
                raise ConfigError(f"[frontier] takes only {', '.join(sorted(_FRONTIER_KEYS))}")
            default = FrontierSpec()
            kwargs["frontier"] = FrontierSpec(
                f.get("score", default.score),
                f.get("rule", default.rule),
                tuple(f.get("measures", default.measures)),
            )
        return cls(**kwargs)

    @classmethod
    def from_toml(cls, path: str | Path) -> SweepGrid:
        """Read a grid file (schema in ``docs/sweep.md``)."""
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - Python 3.10
            import tomli as tomllib
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read grid file {p}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"grid file {p} is not valid TOML: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def named(cls, spec: str) -> SweepGrid:
        """``paper``, ``small`` or the path of a TOML grid file."""
        if spec == "paper":
            return cls.paper()
        if spec == "small":
            return cls.small()
        return cls.from_toml(spec)

    def to_dict(self) -> dict[str, Any]:
        return {
            "series": [s.to_dict() for s in self.series],
            "encoder_thresholds": list(self.encoder_thresholds),
            "reference_delta_sums": list(self.reference_delta_sums),
            "reference_etas": list(self.reference_etas),
            "include_crossing": self.include_crossing,
            "seed": self.seed,
            "frontier": {
                "score": self.frontier.score,
                "rule": self.frontier.rule,
                "measures": list(self.frontier.measures),
            },
        }

    def edge_scores(self) -> tuple[str, ...]:
        """The edge patch scores this grid needs, in :data:`SCORES` order."""
        wanted = {s.score for s in self.series}
        return tuple(s for s in SCORES if s in wanted)


@dataclass(frozen=True)
class GridPoint:
    """One resolved point. ``encoder`` says whose mean attention picks the patches."""

    score: str
    rule: str
    threshold: float
    measure: str
    eta: float
    encoder: str = "edge"

    def operating_point(self, include_crossing: bool = False, seed: int = 0) -> OperatingPoint:
        if self.encoder != "edge":
            raise ConfigError("server-encoder points have no collaborative operating point")
        return OperatingPoint(
            self.score, self.rule, self.threshold, self.measure, self.eta, include_crossing, seed
        )

    @property
    def combo(self) -> tuple[str, str, str, float]:
        return (self.encoder, self.score, self.rule, self.threshold)


_FULL = ("edge", "-", "full", -1.0)  # the full-image selection (server-only accuracy)


# --------------------------------------------------------------------------- results


@dataclass
class SweepStats:
    """What a sweep cost, in model calls (counted images, not time)."""

    edge_images: int = 0  # images through the edge model
    server_images: int = 0  # (image, selection) pairs through forward_subset
    server_encoder_images: int = 0  # full images through the server for its own scores
    distinct_selections: int = 0  # distinct (image, keep mask) pairs the grid needs
    cached_selections: int = 0  # of those, already in the cache
    encoded_selections: int = 0  # wire.encode calls (bytes on the wire)
    edge_chunks_cached: int = 0
    chunks: int = 0
    wall_s: float = 0.0


@dataclass
class _EdgeData:
    positions: npt.NDArray[np.int64]  # sample positions of the readable images
    chunk_bounds: list[tuple[int, int, int, int]]  # (start, end, row_a, row_b) per chunk
    edge_pred: npt.NDArray[np.int64]
    values: dict[str, npt.NDArray[np.float64]]  # gate statistic per measure
    scores: dict[str, npt.NDArray[np.float32]]  # edge patch scores (n, N)
    server_scores: npt.NDArray[np.float32] | None
    full_bytes: dict[str, npt.NDArray[np.int64]]  # jpeg_q90, png
    skipped: list[int]


@dataclass
class _ComboData:
    pred: npt.NDArray[np.int64]  # server prediction, -1 where not needed
    count: npt.NDArray[np.int64]  # patches kept
    nbytes: npt.NDArray[np.int64]  # wire bytes
    raised: npt.NDArray[np.bool_]


@dataclass
class SweepResult:
    """Every grid point of a sweep, plus what is needed to rebuild its records."""

    rows: list[dict[str, Any]]  # grid points and baselines, as results.csv
    frontier: list[dict[str, Any]]
    best: dict[str, Any] | None
    edge_accuracy: float | None
    server_accuracy: float | None
    stats: SweepStats
    points: list[GridPoint]
    grid: SweepGrid
    meta: dict[str, Any]
    histogram: dict[str, Any] | None = None
    files: list[Path] = field(default_factory=list)
    _samples: list[Sample] = field(default_factory=list, repr=False)
    _edge: _EdgeData | None = field(default=None, repr=False)
    _combos: dict[tuple[str, str, str, float], _ComboData] = field(default_factory=dict, repr=False)

    def grid_rows(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["kind"] == "grid"]

    def _find(self, point: GridPoint | OperatingPoint) -> GridPoint:
        if isinstance(point, OperatingPoint):
            if point.include_crossing != self.grid.include_crossing or (
                point.rule == "random" and point.seed != self.grid.seed
            ):
                raise ConfigError("this sweep ran with another include_crossing/seed")
            eta = 0.0 if point.measure == "none" else float(point.eta)
            key = GridPoint(point.score, point.rule, float(point.threshold), point.measure, eta)
        else:
            key = point
        for p in self.points:
            same = (p.encoder, p.score, p.rule, p.measure) == (
                key.encoder,
                key.score,
                key.rule,
                key.measure,
            )
            if (
                same
                and math.isclose(p.threshold, key.threshold, rel_tol=0, abs_tol=1e-12)
                and (p.measure == "none" or math.isclose(p.eta, key.eta, rel_tol=0, abs_tol=1e-12))
            ):
                return p
        raise ConfigError(f"{key} is not a point of this sweep")

    def records(self, point: GridPoint | OperatingPoint) -> list[ImageRecord]:
        """The per-image records at one grid point (equal to ``engine.evaluate``'s)."""
        p = self._find(point)
        assert self._edge is not None
        edge = self._edge
        sent, values = _gate(edge, p.measure, p.eta, p.encoder)
        data = self._combos[p.combo]
        out = []
        for j, pos in enumerate(edge.positions.tolist()):
            s = bool(sent[j])
            out.append(
                make_record(
                    self._samples[pos],
                    int(edge.edge_pred[j]),
                    float(values[j]),
                    s,
                    int(data.count[j]),
                    int(data.pred[j]) if s else None,
                )
            )
        return out


# --------------------------------------------------------------------------- cache


def _tensor_digest(h: Any, model: torch.nn.Module) -> None:
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def model_identity(m: LoadedModel) -> dict[str, Any]:
    """Name, weight source, SHA-256 of the weights, preprocessing of a model."""
    h = hashlib.sha256()
    _tensor_digest(h, m.model)
    return {
        "name": m.name,
        "source": m.source,
        "weights_sha256": h.hexdigest(),
        "preprocessing": asdict(m.preprocessing),
        "num_patches": m.num_patches,
    }


def data_identity(samples: Sequence[Sample]) -> dict[str, Any]:
    """Digest of the ordered file list: index, name, label, and file size (or array bytes)."""
    h = hashlib.sha256()
    for pos, s in enumerate(samples):
        if s.array is not None:
            extra = hashlib.sha256(np.ascontiguousarray(s.array).tobytes()).hexdigest()
        elif s.path is not None:
            try:
                extra = str(s.path.stat().st_size)
            except OSError:
                extra = "missing"
        else:
            extra = ""
        h.update(f"{pos}\t{s.index}\t{s.file}\t{s.label}\t{extra}\n".encode())
    return {"images": len(samples), "files_sha256": h.hexdigest()}


class _Cache:
    """Per-chunk ``.npz`` files under ``root/<fingerprint>``; None root = memory only."""

    def __init__(self, root: Path | None, identity: dict[str, Any], chunk_batches: int) -> None:
        self.identity = identity
        text = json.dumps(identity, sort_keys=True)
        self.fingerprint = hashlib.sha256(text.encode()).hexdigest()
        self.chunk_batches = chunk_batches
        self.memory: dict[str, dict[str, np.ndarray]] = {}
        self.dir: Path | None = None
        if root is not None:
            self.dir = root / self.fingerprint[:24]
            self.dir.mkdir(parents=True, exist_ok=True)
            manifest = self.dir / "manifest.json"
            if manifest.is_file():
                try:
                    stored = json.loads(manifest.read_text())
                    self.chunk_batches = int(stored["chunk_batches"])
                except (OSError, ValueError, KeyError):
                    logger.warning("cache manifest %s unreadable: rewriting it", manifest)
                    self._write_manifest(manifest)
            else:
                self._write_manifest(manifest)

    def _write_manifest(self, path: Path) -> None:
        body = {
            "version": CACHE_VERSION,
            "fingerprint": self.fingerprint,
            "chunk_batches": self.chunk_batches,
            "identity": self.identity,
        }
        _atomic_write(path, (json.dumps(body, indent=2) + "\n").encode())

    def load(self, name: str) -> dict[str, np.ndarray] | None:
        if self.dir is None:
            return self.memory.get(name)
        path = self.dir / f"{name}.npz"
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except Exception as exc:  # a torn or foreign file: recompute the chunk
            logger.warning("cache file %s unreadable (%s): recomputing", path, exc)
            return None

    def save(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        if self.dir is None:
            self.memory[name] = arrays
            return
        path = self.dir / f"{name}.npz"
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- the sweep


def _u_key(measure: str) -> str:
    return "u_" + measure.replace("-", "_")


def _s_key(score: str) -> str:
    return "s_" + score.replace("-", "_")


def _bytes_key(codec: str, quality: int) -> str:
    return f"bytes_{codec}_q{quality}" if codec == "jpeg" else f"bytes_{codec}"


def _gate(
    edge: _EdgeData, measure: str, eta: float, encoder: str = "edge"
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
    """Transmit mask and gate statistic of every image (as evaluate computes them)."""
    n = len(edge.positions)
    if measure == "none" or encoder != "edge":
        values = np.zeros(n, dtype=np.float64)
        return np.ones(n, dtype=bool), values
    values = edge.values[measure]
    sent = transmit_mask(values, measure, eta)
    return sent, values


class _Sweep:
    def __init__(
        self,
        edge: LoadedModel,
        server: LoadedModel,
        samples: Sequence[Sample],
        grid: SweepGrid,
        batch_size: int,
        codec: str,
        quality: int,
        cache: _Cache,
        progress: ProgressFn | None,
    ) -> None:
        self.edge = edge
        self.server = server
        self.samples = list(samples)
        self.grid = grid
        self.batch_size = batch_size
        self.codec = codec
        self.quality = quality
        self.cache = cache
        self.progress = progress
        self.stats = SweepStats()
        self.n_patches = edge.num_patches
        self.scores_needed = grid.edge_scores()
        self.want_server_scores = bool(grid.encoder_thresholds)

    def _tick(self, phase: str, n: int, total: int) -> None:
        if self.progress is not None and n:
            self.progress(phase, n, total)

    # ------------------------------------------------------------------ edge pass

    def _edge_arrays_missing(self, stored: Mapping[str, np.ndarray]) -> tuple[bool, bool, bool]:
        """(edge pass needed, server score pass needed, full-image sizes needed)."""
        need_edge = any(_u_key(m) not in stored for m in GATE_MEASURES) or any(
            _s_key(s) not in stored for s in self.scores_needed
        )
        need_server = self.want_server_scores and "server_s_mean" not in stored
        need_bytes = "full_jpeg_q90" not in stored or "full_png" not in stored
        return need_edge, need_server, need_bytes

    def _edge_chunk(
        self, start: int, end: int | None, stored: dict[str, np.ndarray] | None
    ) -> dict[str, np.ndarray]:
        """Compute (what is missing of) the chunk that starts at sample ``start``.

        ``end`` is None for a new chunk: it then holds ``cache.chunk_batches``
        batches of readable images (the batches ``engine.evaluate`` forms).
        """
        do_edge, do_server, do_bytes = (
            (True, self.want_server_scores, True)
            if stored is None
            else self._edge_arrays_missing(stored)
        )
        sub = self.samples[start:end] if end is not None else self.samples[start:]
        skipped: list[Sample] = []
        ptr = 0
        located: list[int] = []
        preds: list[np.ndarray] = []
        values: dict[str, list[np.ndarray]] = {m: [] for m in GATE_MEASURES}
        scores: dict[str, list[np.ndarray]] = {s: [] for s in self.scores_needed}
        sscores: list[np.ndarray] = []
        jpeg: list[int] = []
        png: list[int] = []
        total = len(self.samples)
        exhausted = True
        skipped_seen = 0
        batches = iter_batches(sub, self.edge.preprocessing, self.batch_size, skipped)
        for done, batch in enumerate(batches, start=1):
            for s in batch.samples:
                while sub[ptr] is not s:
                    ptr += 1
                located.append(start + ptr)
                ptr += 1
            pixels = batch.pixels.to(self.edge.device)
            if do_edge:
                logits, sc = forward_with_scores(
                    self.edge, self.edge.normalise(pixels), self.scores_needed
                )
                self.stats.edge_images += len(batch.samples)
                preds.append(logits.argmax(-1).cpu().numpy().astype(np.int64))
                for m in GATE_MEASURES:
                    values[m].append(uncertainty(logits, m))
                for s_name in self.scores_needed:
                    scores[s_name].append(sc[s_name].cpu().numpy().astype(np.float32))
            if do_server:
                spx = self.server.normalise(batch.pixels.to(self.server.device))
                _, ssc = forward_with_scores(self.server, spx, ("mean",))
                self.stats.server_encoder_images += len(batch.samples)
                sscores.append(ssc["mean"].cpu().numpy().astype(np.float32))
            if do_bytes:
                for i in range(len(batch.samples)):
                    hwc = batch.pixels[i].permute(1, 2, 0).numpy()
                    jpeg.append(wire.full_image_bytes(hwc, "jpeg", 90))
                    png.append(wire.full_image_bytes(hwc, "png"))
            self._tick("edge", len(batch.samples) + len(skipped) - skipped_seen, total)
            skipped_seen = len(skipped)
            if end is None and done == self.cache.chunk_batches:
                exhausted = False
                break
        if end is None:
            end = len(self.samples) if exhausted or not located else located[-1] + 1
        self._tick("edge", len(skipped) - skipped_seen, total)
        located_set = set(located)
        out: dict[str, np.ndarray] = dict(stored) if stored is not None else {}
        pos = np.asarray(located, dtype=np.int64)
        if stored is not None and not np.array_equal(stored["pos"], pos):
            raise DataError(
                "the images readable now differ from those in the cache: delete the cache"
            )
        out["version"] = np.asarray(CACHE_VERSION)
        out["start"] = np.asarray(start, dtype=np.int64)
        out["end"] = np.asarray(end, dtype=np.int64)
        out["pos"] = pos
        out["skipped"] = np.asarray(
            [p for p in range(start, end) if p not in located_set], dtype=np.int64
        )
        n_patch = self.n_patches

        def cat(parts: list[np.ndarray], dtype: Any, width: int | None = None) -> np.ndarray:
            if parts:
                return np.concatenate(parts).astype(dtype, copy=False)
            shape = (0,) if width is None else (0, width)
            return np.zeros(shape, dtype=dtype)

        if do_edge:
            out["edge_pred"] = cat(preds, np.int64)
            for m in GATE_MEASURES:
                out[_u_key(m)] = cat(values[m], np.float64)
            for s_name in self.scores_needed:
                out[_s_key(s_name)] = cat(scores[s_name], np.float32, n_patch)
        if do_server:
            out["server_s_mean"] = cat(sscores, np.float32, n_patch)
        if do_bytes:
            out["full_jpeg_q90"] = np.asarray(jpeg, dtype=np.int64)
            out["full_png"] = np.asarray(png, dtype=np.int64)
        return out

    def edge_pass(self) -> _EdgeData:
        n_samples = len(self.samples)
        parts: list[dict[str, np.ndarray]] = []
        start = 0
        k = 0
        while start < n_samples:
            name = f"edge-{k:05d}"
            stored = self.cache.load(name)
            if stored is not None and (
                int(stored.get("version", -1)) != CACHE_VERSION or int(stored["start"]) != start
            ):
                stored = None
            if stored is not None and not any(self._edge_arrays_missing(stored)):
                self.stats.edge_chunks_cached += 1
                self._tick("edge", int(stored["end"]) - start, n_samples)
                chunk = stored
            else:
                end = None if stored is None else int(stored["end"])
                chunk = self._edge_chunk(start, end, stored)
                self.cache.save(name, chunk)
            parts.append(chunk)
            start = int(chunk["end"])
            k += 1
        self.stats.chunks = k
        return self._merge(parts)

    def _merge(self, parts: list[dict[str, np.ndarray]]) -> _EdgeData:
        bounds = []
        row = 0
        for p in parts:
            n = len(p["pos"])
            bounds.append((int(p["start"]), int(p["end"]), row, row + n))
            row += n
        if row == 0:
            raise DataError("no image could be read: every file was skipped as unreadable")

        def cat(key: str) -> np.ndarray:
            return np.concatenate([p[key] for p in parts])

        skipped = [int(x) for p in parts for x in p["skipped"].tolist()]
        if skipped:
            logger.warning(
                "%d file(s) skipped as unreadable (first: %s)",
                len(skipped),
                self.samples[skipped[0]].file,
            )
        return _EdgeData(
            positions=cat("pos").astype(np.int64),
            chunk_bounds=bounds,
            edge_pred=cat("edge_pred").astype(np.int64),
            values={m: cat(_u_key(m)).astype(np.float64) for m in GATE_MEASURES},
            scores={s: cat(_s_key(s)).astype(np.float32) for s in self.scores_needed},
            server_scores=cat("server_s_mean").astype(np.float32)
            if self.want_server_scores
            else None,
            full_bytes={"jpeg_q90": cat("full_jpeg_q90"), "png": cat("full_png")},
            skipped=skipped,
        )

    # ------------------------------------------------------------------ grid resolution

    def resolve(self, edge: _EdgeData) -> tuple[list[GridPoint], dict[str, Any]]:
        """Turn ``auto``/``all`` into numbers on this data; return points and what was derived."""
        grid = self.grid
        n = len(edge.positions)
        derived: dict[str, Any] = {}
        counts_cache: dict[str, list[float]] = {}

        def mean_counts(score: str) -> list[float]:
            if score not in counts_cache:
                t = edge.scores[score]
                counts_cache[score] = [
                    float(
                        select_patches(t, "attention-sum", d, grid.include_crossing)
                        .num_patches.astype(np.float64)
                        .mean()
                    )
                    for d in grid.reference_delta_sums
                ]
                derived[f"attention_sum_mean_patches[{score}]"] = dict(
                    zip(grid.reference_delta_sums, counts_cache[score], strict=True)
                )
            return counts_cache[score]

        ratios: list[float] | None = None

        def ref_ratios() -> list[float]:
            nonlocal ratios
            if ratios is None:
                v = edge.values["min-entropy"]
                ratios = [
                    float(transmit_mask(v, "min-entropy", e).astype(np.float64).mean())
                    for e in grid.reference_etas
                ]
                derived["min_entropy_transmit_ratio"] = dict(
                    zip(grid.reference_etas, ratios, strict=True)
                )
            return ratios

        points: list[GridPoint] = []
        seen: set[GridPoint] = set()

        def add(p: GridPoint) -> None:
            if p not in seen:
                seen.add(p)
                points.append(p)

        for s in grid.series:
            if s.thresholds == ALL:
                thresholds: list[float] = [float(self.n_patches)]
            elif s.thresholds == AUTO:
                counts = mean_counts(s.score)
                if s.rule == "threshold":
                    flat = np.sort(edge.scores[s.score].reshape(-1))[::-1]
                    thresholds = []
                    for c in counts:
                        m = min(max(round(c * n), 1), flat.size)
                        thresholds.append(float(flat[m - 1]))
                else:
                    thresholds = [float(max(round(c), 1)) for c in counts]
                thresholds = sorted(set(thresholds))
                derived[f"{s.rule}[{s.score}]"] = thresholds
            else:
                assert not isinstance(s.thresholds, str)
                thresholds = list(s.thresholds)
            if s.measure == "none":
                etas = [0.0]
            elif s.etas == AUTO:
                if s.measure == "min-entropy":
                    etas = list(grid.reference_etas)
                else:
                    etas = sorted(
                        {_eta_for_ratio(edge.values[s.measure], s.measure, r) for r in ref_ratios()}
                    )
                    derived[f"etas[{s.measure}]"] = etas
            else:
                assert not isinstance(s.etas, str)
                etas = list(s.etas)
            for t in thresholds:
                for e in etas:
                    add(GridPoint(s.score, s.rule, t, s.measure, e))
        for t in grid.encoder_thresholds:
            add(GridPoint("mean", "attention-sum", t, "none", 0.0, "server"))
        return points, derived

    # ------------------------------------------------------------------ server pass

    def _needs(
        self, edge: _EdgeData, points: list[GridPoint]
    ) -> dict[tuple[str, str, str, float], npt.NDArray[np.bool_]]:
        """Per selection (combo): which images some point of the grid transmits."""
        n = len(edge.positions)
        gates: dict[tuple[str, float], npt.NDArray[np.bool_]] = {}
        needs: dict[tuple[str, str, str, float], npt.NDArray[np.bool_]] = {
            _FULL: np.ones(n, dtype=bool)
        }
        for p in points:
            g = ("none", 0.0) if p.encoder != "edge" else (p.measure, p.eta)
            if g not in gates:
                gates[g] = _gate(edge, p.measure, p.eta, p.encoder)[0]
            if p.combo in needs:
                needs[p.combo] |= gates[g]
            else:
                needs[p.combo] = gates[g].copy()
        return needs

    def _select(
        self,
        edge: _EdgeData,
        combo: tuple[str, str, str, float],
        rows: npt.NDArray[np.int64],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Keep masks (len(rows), N) and raised-to-one flags of one combo at global rows."""
        if combo == _FULL:
            return np.ones((len(rows), self.n_patches), dtype=bool), np.zeros(len(rows), bool)
        encoder, score, rule, threshold = combo
        if encoder == "edge":
            src = edge.scores[score]
        else:
            assert edge.server_scores is not None
            src = edge.server_scores
        device = self.edge.device
        scores = torch.from_numpy(src[rows]).to(device)
        ids = torch.tensor(
            [self.samples[int(p)].index for p in edge.positions[rows].tolist()], dtype=torch.long
        )
        sel = select_patches(
            scores, rule, threshold, self.grid.include_crossing, self.grid.seed, ids
        )
        return sel.keep_mask, sel.raised_to_one

    def _plan_chunk(
        self,
        ci: int,
        edge: _EdgeData,
        needs: Mapping[tuple[str, str, str, float], npt.NDArray[np.bool_]],
    ) -> _ChunkPlan:
        start, end, a, b = edge.chunk_bounds[ci]
        plan = _ChunkPlan(ci, start, end, a, b)
        stored = self.cache.load(f"server-{ci:05d}")
        bkey = _bytes_key(self.codec, self.quality)
        cached: dict[tuple[int, bytes], int] = {}
        if stored is not None and "keys" in stored:
            plan.stored = stored
            for i, (p, key) in enumerate(zip(stored["pos"].tolist(), stored["keys"], strict=True)):
                cached[(int(p), key.tobytes())] = i
        for combo, need in needs.items():
            local = np.nonzero(need[a:b])[0]
            if local.size == 0:
                continue
            rows = local + a
            masks, raised = self._select(edge, combo, rows)
            packed = np.packbits(masks, axis=1)
            uids = np.empty(local.size, dtype=np.int64)
            for j in range(local.size):
                key = (int(edge.positions[rows[j]]), packed[j].tobytes())
                uid = plan.index.get(key)
                if uid is None:
                    uid = len(plan.keys)
                    plan.index[key] = uid
                    plan.keys.append(key)
                    plan.local_rows.append(int(local[j]))
                    plan.masks.append(masks[j])
                    plan.cached.append(cached.get(key, -1))
                uids[j] = uid
            plan.combos[combo] = (rows, uids, masks.sum(axis=1).astype(np.int64), raised)
        have_bytes = stored is not None and bkey in stored
        for uid, ci_stored in enumerate(plan.cached):
            if ci_stored < 0:
                plan.todo_server.append(uid)
                plan.todo_bytes.append(uid)
            elif not have_bytes or int(plan.stored[bkey][ci_stored]) < 0:  # type: ignore[index]
                plan.todo_bytes.append(uid)
        return plan

    def _chunk_pixels(self, plan: _ChunkPlan, edge: _EdgeData) -> torch.Tensor:
        sub = self.samples[plan.start : plan.end]
        parts = [b.pixels for b in iter_batches(sub, self.edge.preprocessing, self.batch_size)]
        pixels = torch.cat(parts) if parts else torch.zeros(0)
        if pixels.shape[0] != plan.b - plan.a:
            raise DataError(
                f"images {plan.start}..{plan.end - 1} read differently than during the edge "
                "pass (a file changed or became unreadable): delete the cache and rerun"
            )
        return pixels

    def _run_chunk(self, plan: _ChunkPlan, edge: _EdgeData, total: int) -> dict[str, np.ndarray]:
        """Server predictions and wire sizes for every distinct selection of the chunk."""
        m = len(plan.keys)
        pred = np.full(m, -1, dtype=np.int64)
        nbytes = np.full(m, -1, dtype=np.int64)
        bkey = _bytes_key(self.codec, self.quality)
        stored = plan.stored
        for uid, si in enumerate(plan.cached):
            if si >= 0 and stored is not None:
                pred[uid] = int(stored["pred"][si])
                if bkey in stored:
                    nbytes[uid] = int(stored[bkey][si])
        if plan.todo_server or plan.todo_bytes:
            pixels = self._chunk_pixels(plan, edge)
            order = sorted(plan.todo_server, key=lambda u: (int(plan.masks[u].sum()), u))
            group = max(1, self.batch_size)
            patch = self.edge.patch_size
            last_save = time.monotonic()

            def encode(uids: Sequence[int]) -> None:
                for uid in uids:
                    px = pixels[plan.local_rows[uid]].numpy()
                    size = len(wire.encode(px, plan.masks[uid], patch, self.codec, self.quality))
                    nbytes[uid] = size
                    self.stats.encoded_selections += 1

            for g in range(0, len(order), group):
                uids = order[g : g + group]
                rows = torch.tensor([plan.local_rows[u] for u in uids], dtype=torch.long)
                images = self.server.normalise(pixels[rows].to(self.server.device))
                keep = torch.from_numpy(np.stack([plan.masks[u] for u in uids]))
                out = forward_subset(
                    self.server, images, keep.to(self.server.device), max_batch=group
                )
                pred[uids] = out.argmax(-1).cpu().numpy()
                self.stats.server_images += len(uids)
                encode(uids)
                self._tick("server", len(uids), total)
                if time.monotonic() - last_save > SAVE_EVERY_S:  # resume points inside a chunk
                    self._save_server_chunk(plan, pred, nbytes, bkey)
                    last_save = time.monotonic()
            encode([u for u in plan.todo_bytes if nbytes[u] < 0])
            self._save_server_chunk(plan, pred, nbytes, bkey)
        return {"pred": pred, "nbytes": nbytes}

    def _save_server_chunk(
        self, plan: _ChunkPlan, pred: np.ndarray, nbytes: np.ndarray, bkey: str
    ) -> None:
        """Write the chunk's cache file: the rows it had plus every selection done so far.

        Rebuilt from the file as loaded when the chunk was planned, so calling
        it again later in the chunk is safe; one atomic replace each time.
        """
        nb = (self.n_patches + 7) // 8
        stored = plan.stored
        old = len(stored["pos"]) if stored is not None else 0
        new_uids = [u for u, si in enumerate(plan.cached) if si < 0 and pred[u] >= 0]
        pos = np.concatenate(
            [
                stored["pos"] if stored is not None else np.zeros(0, np.int64),
                np.asarray([plan.keys[u][0] for u in new_uids], dtype=np.int64),
            ]
        )
        keys = np.concatenate(
            [
                stored["keys"] if stored is not None else np.zeros((0, nb), np.uint8),
                np.asarray(
                    [np.frombuffer(plan.keys[u][1], dtype=np.uint8) for u in new_uids],
                    dtype=np.uint8,
                ).reshape(len(new_uids), nb),
            ]
        )
        preds = np.concatenate(
            [
                stored["pred"] if stored is not None else np.zeros(0, np.int64),
                pred[new_uids].astype(np.int64),
            ]
        )
        out: dict[str, np.ndarray] = {"pos": pos, "keys": keys, "pred": preds}
        if stored is not None:
            for k, v in stored.items():
                if k.startswith("bytes_"):
                    out[k] = np.concatenate([v, np.full(len(new_uids), -1, np.int64)])
        if bkey not in out:
            out[bkey] = np.full(len(pos), -1, dtype=np.int64)
        column = out[bkey]
        slot = {u: old + j for j, u in enumerate(new_uids)}
        for uid, si in enumerate(plan.cached):
            row = si if si >= 0 else slot.get(uid, -1)
            if row >= 0 and nbytes[uid] >= 0:
                column[row] = nbytes[uid]
        self.cache.save(f"server-{plan.ci:05d}", out)

    def server_pass(
        self, edge: _EdgeData, points: list[GridPoint]
    ) -> dict[tuple[str, str, str, float], _ComboData]:
        needs = self._needs(edge, points)
        n = len(edge.positions)
        combos = {
            c: _ComboData(
                np.full(n, -1, dtype=np.int64),
                np.zeros(n, dtype=np.int64),
                np.zeros(n, dtype=np.int64),
                np.zeros(n, dtype=bool),
            )
            for c in needs
        }
        # a cheap planning pass first, so the progress bar knows its total
        total = 0
        for ci in range(len(edge.chunk_bounds)):
            total += len(self._plan_chunk(ci, edge, needs).todo_server)
        for ci in range(len(edge.chunk_bounds)):
            plan = self._plan_chunk(ci, edge, needs)
            self.stats.distinct_selections += len(plan.keys)
            self.stats.cached_selections += sum(1 for s in plan.cached if s >= 0)
            res = self._run_chunk(plan, edge, total)
            for combo, (rows, uids, counts, raised) in plan.combos.items():
                d = combos[combo]
                d.pred[rows] = res["pred"][uids]
                d.nbytes[rows] = res["nbytes"][uids]
                d.count[rows] = counts
                d.raised[rows] = raised
        return combos


@dataclass
class _ChunkPlan:
    ci: int
    start: int
    end: int
    a: int
    b: int
    stored: dict[str, np.ndarray] | None = None
    index: dict[tuple[int, bytes], int] = field(default_factory=dict)
    keys: list[tuple[int, bytes]] = field(default_factory=list)
    local_rows: list[int] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    cached: list[int] = field(default_factory=list)  # row in the stored file, -1 if new
    todo_server: list[int] = field(default_factory=list)
    todo_bytes: list[int] = field(default_factory=list)
    combos: dict[
        tuple[str, str, str, float],
        tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], np.ndarray, np.ndarray],
    ] = field(default_factory=dict)


def _eta_for_ratio(values: npt.NDArray[np.float64], measure: str, ratio: float) -> float:
    """The eta at which about ``ratio`` of the images are transmitted under ``measure``."""
    n = len(values)
    m = round(ratio * n)
    if measure == "margin":  # transmitted when margin <= eta
        asc = np.sort(values)
        return -1.0 if m == 0 else float(asc[m - 1])
    desc = np.sort(values)[::-1]  # entropies: transmitted when value >= eta
    return float(desc[0]) + 1.0 if m == 0 else float(desc[m - 1])


# --------------------------------------------------------------------------- metrics


def _accuracy(pred: np.ndarray, labels: np.ndarray) -> float | None:
    labelled = labels >= 0
    k = int(labelled.sum())
    return int((pred[labelled] == labels[labelled]).sum()) / k if k else None


def _point_row(
    p: GridPoint,
    edge: _EdgeData,
    data: _ComboData,
    labels: np.ndarray,
    flops_table: np.ndarray,
    n_patches: int,
    common: Mapping[str, Any],
) -> dict[str, Any]:
    n = len(edge.positions)
    sent, _ = _gate(edge, p.measure, p.eta, p.encoder)
    final = np.where(sent, data.pred, edge.edge_pred)
    k = int(sent.sum())
    counts = data.count[sent]
    total_patches = int(counts.sum())
    total_bytes = int(data.nbytes[sent].sum())
    row = {
        "kind": "grid",
        "encoder": p.encoder,
        "score": p.score,
        "rule": p.rule,
        "threshold": p.threshold,
        "measure": p.measure,
        "eta": p.eta,
        "images": n,
        "accuracy": _accuracy(final, labels),
        "transmit_ratio": k / n,
        "mean_patches_transmitted": total_patches / k if k else 0.0,
        "mean_patches_all": total_patches / n,
        "communication_cost": total_patches / (n * n_patches),
        "server_flops_ratio": float(flops_table[counts].sum() / (n * flops_table[n_patches])),
        "bytes_per_image": total_bytes / n,
        "bytes_per_transmitted_image": total_bytes / k if k else 0.0,
        "raised_to_one_patch": int(data.raised[sent].sum()),
    }
    row.update(common)
    return {f: row.get(f) for f in RESULT_FIELDS}


def _baseline(name: str, codec: str, accuracy: float | None, n: int, **kw: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "kind": "baseline",
        "encoder": "",
        "score": "",
        "rule": name,
        "threshold": None,
        "measure": "",
        "eta": None,
        "images": n,
        "accuracy": accuracy,
        "codec": codec,
        "raised_to_one_patch": 0,
    }
    row.update(kw)
    return {f: row.get(f) for f in RESULT_FIELDS}


def pareto_frontier(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The rows no other row beats on both communication cost and accuracy, cheapest first.

    A row is kept when it is strictly more accurate than every cheaper (or
    equally cheap) row; rows without an accuracy are ignored.
    """
    usable = [r for r in rows if r.get("accuracy") is not None]
    usable.sort(key=lambda r: (r["communication_cost"], -r["accuracy"]))
    out: list[dict[str, Any]] = []
    best = -math.inf
    for r in usable:
        if r["accuracy"] > best:
            out.append(dict(r))
            best = r["accuracy"]
    return out


def choose_best(
    rows: Sequence[Mapping[str, Any]], server_accuracy: float | None, target_drop: float
) -> dict[str, Any] | None:
    """The cheapest row within ``target_drop`` accuracy points (%) of the server alone.

    Ties on cost go to the more accurate row. When no row is close enough the
    most accurate one is returned, marked ``within_target: false``.
    """
    usable = [r for r in rows if r.get("accuracy") is not None]
    if not usable or server_accuracy is None:
        return None
    floor = server_accuracy - target_drop / 100.0
    close = [r for r in usable if r["accuracy"] >= floor - 1e-12]
    if close:
        pick = min(close, key=lambda r: (r["communication_cost"], -r["accuracy"]))
        within = True
    else:
        pick = max(usable, key=lambda r: (r["accuracy"], -r["communication_cost"]))
        within = False
    best = dict(pick)
    best.update(
        {
            "target_drop_points": target_drop,
            "within_target": within,
            "accuracy_drop_points": 100.0 * (server_accuracy - pick["accuracy"]),
            "communication_reduction": 1.0 - pick["communication_cost"],
        }
    )
    return best


def _histogram(scores: npt.NDArray[np.float32], bins: int = 60) -> dict[str, Any] | None:
    flat = scores.reshape(-1).astype(np.float64)
    if flat.size == 0:
        return None
    positive = flat[flat > 0]
    zeros = int(flat.size - positive.size)
    if positive.size == 0:
        return {"edges": [0.0, 1.0], "fractions": [0.0], "zeros": zeros, "total": int(flat.size)}
    lo, hi = float(positive.min()), float(positive.max())
    if hi <= lo:
        lo, hi = lo * 0.9, hi * 1.1
    edges = np.geomspace(lo, hi, bins + 1)
    counts, _ = np.histogram(positive, bins=edges)
    return {
        "edges": edges.tolist(),
        "fractions": (counts / flat.size).tolist(),
        "zeros": zeros,
        "total": int(flat.size),
        "num_patches": int(scores.shape[1]) if scores.ndim == 2 else None,
    }


# --------------------------------------------------------------------------- entry point


def run_sweep(
    edge: LoadedModel,
    server: LoadedModel,
    samples: Sequence[Sample],
    grid: SweepGrid | None = None,
    out_dir: str | Path | None = None,
    batch_size: int = 64,
    codec: str = "raw",
    cache_dir: str | Path | None = None,
    target_drop: float = 1.0,
    progress: ProgressFn | None = None,
    figures: bool = True,
    *,
    quality: int = 90,
    use_cache: bool = True,
    chunk_size: int = DEFAULT_CHUNK,
) -> SweepResult:
    """Evaluate every point of ``grid`` with one edge pass and one server pass per selection.

    Args:
        edge, server: the two models (same input size and patch grid).
        samples: images from :func:`collabvit.data.discover`.
        grid: the points (default :meth:`SweepGrid.paper`).
        out_dir: where results, tables and figures go (None: write nothing).
        batch_size: images per edge batch (as ``evaluate``), and per server batch.
        codec: wire codec for the bytes columns: raw, png or jpeg (``quality``).
        cache_dir: the model-output cache (default ``out_dir/cache``; memory
            only when ``use_cache`` is false or there is no ``out_dir``).
        target_drop: accuracy points (%) below the server alone that ``best`` may lose.
        progress: ``progress(phase, n, total)`` after each batch.
        figures: render the figures (PNG + PDF) under ``out_dir/figures``.
        chunk_size: images per cache chunk (rounded up to whole batches).

    Returns:
        a :class:`SweepResult`; ``stats`` counts the model calls made.
    """
    t0 = time.monotonic()
    grid = grid or SweepGrid.paper()
    check_pair(edge, server)
    if codec not in wire.CODECS:
        raise ConfigError(f"unknown codec {codec!r}: use one of {', '.join(wire.CODECS)}")
    if not 1 <= quality <= 100:
        raise ConfigError(f"quality must be 1..100, got {quality}")
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    if not math.isfinite(target_drop) or target_drop < 0:
        raise ConfigError(
            f"target drop must be a number of accuracy points >= 0, got {target_drop}"
        )
    if not samples:
        raise DataError("no images to sweep")
    out = Path(out_dir) if out_dir is not None else None
    root: Path | None = None
    if use_cache:
        if cache_dir is not None:
            root = Path(cache_dir)
        elif out is not None:
            root = out / "cache"
    identity = {
        "version": CACHE_VERSION,
        "edge": model_identity(edge),
        "server": model_identity(server),
        "data": data_identity(samples),
        "batch_size": batch_size,
        "device": [edge.device.type, server.device.type],
    }
    chunk_batches = max(1, math.ceil(chunk_size / batch_size))
    cache = _Cache(root, identity, chunk_batches)
    sweep = _Sweep(edge, server, samples, grid, batch_size, codec, quality, cache, progress)
    logger.info("sweep: %d images, cache %s", len(samples), cache.dir if cache.dir else "in memory")
    edge_data = sweep.edge_pass()
    points, derived = sweep.resolve(edge_data)
    logger.info("sweep: %d grid points", len(points))
    combos = sweep.server_pass(edge_data, points)

    n = len(edge_data.positions)
    n_patches = edge.num_patches
    labels = np.asarray([sweep.samples[int(p)].label for p in edge_data.positions], np.int64)
    edge_acc = _accuracy(edge_data.edge_pred, labels)
    full = combos[_FULL]
    server_acc = _accuracy(full.pred, labels)
    flops_table = np.asarray([float(server.flops(k)) for k in range(n_patches + 1)])
    common = {
        "edge_accuracy": edge_acc,
        "server_accuracy": server_acc,
        "codec": codec if codec != "jpeg" else f"jpeg-q{quality}",
    }
    rows = [
        _point_row(p, edge_data, combos[p.combo], labels, flops_table, n_patches, common)
        for p in points
    ]
    frontier_candidates = [r for r in rows if grid.frontier.matches(r)]

    def whole_image(name: str, codec: str, mean_bytes: float) -> dict[str, Any]:
        """A baseline that sends every image whole to the server."""
        return _baseline(
            name,
            codec,
            server_acc,
            n,
            edge_accuracy=edge_acc,
            server_accuracy=server_acc,
            transmit_ratio=1.0,
            mean_patches_transmitted=float(n_patches),
            mean_patches_all=float(n_patches),
            communication_cost=1.0,
            server_flops_ratio=1.0,
            bytes_per_image=mean_bytes,
            bytes_per_transmitted_image=mean_bytes,
        )

    baselines = [
        _baseline(
            "edge-only",
            "",
            edge_acc,
            n,
            edge_accuracy=edge_acc,
            server_accuracy=server_acc,
            transmit_ratio=0.0,
            mean_patches_transmitted=0.0,
            mean_patches_all=0.0,
            communication_cost=0.0,
            server_flops_ratio=0.0,
            bytes_per_image=0.0,
            bytes_per_transmitted_image=0.0,
        ),
        whole_image("server-only", str(common["codec"]), float(full.nbytes.mean())),
    ]
    baselines += [
        whole_image("full-image-file", fmt, float(edge_data.full_bytes[key].mean()))
        for fmt, key in (("jpeg-q90", "jpeg_q90"), ("png", "png"))
    ]
    all_rows = rows + baselines
    frontier = pareto_frontier(frontier_candidates + baselines[:1])
    best = choose_best(frontier_candidates, server_acc, target_drop)
    hist = _histogram(edge_data.scores["mean"]) if "mean" in edge_data.scores else None
    sweep.stats.wall_s = time.monotonic() - t0
    meta = {
        "edge": edge.name,
        "server": server.name,
        "edge_source": edge.source,
        "server_source": server.source,
        "images": n,
        "skipped_files": len(edge_data.skipped),
        "num_patches_per_image": n_patches,
        "patch_size": edge.patch_size,
        "codec": common["codec"],
        "target_drop_points": target_drop,
        "edge_accuracy": edge_acc,
        "server_accuracy": server_acc,
        "grid": grid.to_dict(),
        "derived": {k: _jsonable(v) for k, v in derived.items()},
        "fingerprint": cache.fingerprint,
        "cache": str(cache.dir) if cache.dir else None,
        "batch_size": batch_size,
        "full_image_note": "full-image-file rows: bytes of the whole preprocessed "
        f"{edge.preprocessing.input_size[1]}x{edge.preprocessing.input_size[2]} crop as one "
        "JPEG (quality 90) or PNG file; accuracy is the server on the uncompressed pixels",
    }
    result = SweepResult(
        rows=all_rows,
        frontier=frontier,
        best=best,
        edge_accuracy=edge_acc,
        server_accuracy=server_acc,
        stats=sweep.stats,
        points=points,
        grid=grid,
        meta=meta,
        histogram=hist,
        _samples=sweep.samples,
        _edge=edge_data,
        _combos=combos,
    )
    if out is not None:
        result.files = write_outputs(result, out, figures)
    result.meta["stats"] = asdict(sweep.stats)
    logger.info(
        "sweep done in %.1fs: %d edge images, %d server selections (%d cached)",
        sweep.stats.wall_s,
        sweep.stats.edge_images,
        sweep.stats.server_images,
        sweep.stats.cached_selections,
    )
    return result


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


# --------------------------------------------------------------------------- outputs


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return str(v)


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(RESULT_FIELDS)
        for r in rows:
            writer.writerow([_fmt(r.get(f)) for f in RESULT_FIELDS])


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def tables_markdown(result: SweepResult) -> str:
    """Tables II and III of the paper, recomputed on this sweep, as Markdown."""
    meta = result.meta
    grid = result.grid
    n_patches = meta["num_patches_per_image"]
    lines = [
        "# Sweep tables",
        "",
        f"Edge `{meta['edge']}` ({meta['edge_source']}), server `{meta['server']}` "
        f"({meta['server_source']}), {meta['images']} images "
        f"({meta['skipped_files']} skipped), {n_patches} patches per image.",
        "",
        f"- edge only: {_pct(result.edge_accuracy)} top-1",
        f"- server only (full image): {_pct(result.server_accuracy)} top-1",
    ]
    b = result.best
    if b is not None:
        lines.append(
            f"- chosen point (cheapest within {b['target_drop_points']:g} accuracy point(s) of the "
            f"server{'' if b['within_target'] else '; none was, so the most accurate'}): "
            f"{b['score']} / {b['rule']} threshold {b['threshold']:g}, {b['measure']} "
            f"eta {b['eta']:g} -> {_pct(b['accuracy'])}, communication cost "
            f"{b['communication_cost']:.4f} ({100 * b['communication_reduction']:.1f}% "
            f"reduction), {b['transmit_ratio']:.4f} of images transmitted, "
            f"{b['mean_patches_transmitted']:.2f} patches per transmitted image"
        )
    f = grid.frontier
    lines += [
        "",
        "## Table II: attention-sum threshold and expected number of patches (no gating)",
        "",
    ]
    t2 = [
        r
        for r in result.grid_rows()
        if r["encoder"] == "edge"
        and r["rule"] == "attention-sum"
        and r["score"] == f.score
        and r["measure"] == "none"
    ]
    with_paper = n_patches == 196  # the paper's column only where the patch grids agree
    if t2:
        lines += [
            f"Score: {f.score}."
            + (
                " Paper column: DeiT-Tiny on the 50,000 ImageNet validation images."
                if with_paper
                else ""
            ),
            "",
            "| delta_sum | expected patches | of all patches | communication cost | accuracy |"
            + (" paper (patches) |" if with_paper else ""),
            "|---:|---:|---:|---:|---:|" + ("---:|" if with_paper else ""),
        ]
        for r in sorted(t2, key=lambda r: r["threshold"]):
            paper = PAPER_TABLE_II.get(round(r["threshold"], 6))
            line = (
                f"| {r['threshold']:g} | {r['mean_patches_all']:.2f} | "
                f"{r['mean_patches_all'] / n_patches:.4f} | {r['communication_cost']:.4f} | "
                f"{_pct(r['accuracy'])} |"
            )
            if with_paper:
                line += f" {'' if paper is None else f'{paper:.2f}'} |"
            lines.append(line)
    else:
        lines.append("(the grid has no attention-sum series without gating)")
    lines += ["", "## Table III: min-entropy threshold and ratio of transmitted images", ""]
    t3: dict[float, dict[str, Any]] = {}
    for r in result.grid_rows():
        if r["encoder"] == "edge" and r["measure"] == "min-entropy":
            t3.setdefault(r["eta"], r)
    if t3:
        lines += [
            "Independent of the selection rule. Paper column: DeiT-Tiny on ImageNet val.",
            "",
            "| eta_m | transmitted ratio | paper |",
            "|---:|---:|---:|",
        ]
        for eta in sorted(t3, reverse=True):
            paper3 = PAPER_TABLE_III.get(round(eta, 6))
            lines.append(
                f"| {eta:g} | {t3[eta]['transmit_ratio']:.4f} | "
                f"{'' if paper3 is None else f'{paper3:.4f}'} |"
            )
    else:
        lines.append("(the grid has no min-entropy series)")
    lines += ["", "## Uploads of the full image (baselines)", ""]
    lines += ["| upload | bytes per image | accuracy |", "|---|---:|---:|"]
    for r in result.rows:
        if r["kind"] == "baseline" and r["rule"] != "edge-only":
            lines.append(
                f"| {r['rule']} ({r['codec']}) | {r['bytes_per_image']:.0f} | "
                f"{_pct(r['accuracy'])} |"
            )
    lines += ["", meta["full_image_note"] + ".", ""]
    return "\n".join(lines)


def write_outputs(result: SweepResult, out: Path, figures: bool = True) -> list[Path]:
    """results.csv/.json, frontier.csv, best.json, tables.md, histogram.csv, figures/."""
    out.mkdir(parents=True, exist_ok=True)
    files = []
    p = out / "results.csv"
    write_csv(result.rows, p)
    files.append(p)
    p = out / "results.json"
    body = {"meta": result.meta | {"stats": asdict(result.stats)}, "rows": result.rows}
    _atomic_write(p, (json.dumps(body, indent=2) + "\n").encode())
    files.append(p)
    p = out / "frontier.csv"
    write_csv(result.frontier, p)
    files.append(p)
    p = out / "best.json"
    _atomic_write(p, (json.dumps(result.best, indent=2) + "\n").encode())
    files.append(p)
    p = out / "tables.md"
    p.write_text(tables_markdown(result))
    files.append(p)
    if result.histogram is not None:
        p = out / "histogram.csv"
        h = result.histogram
        with open(p, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(("bin_low", "bin_high", "fraction_of_patches"))
            for lo, hi, frac in zip(h["edges"][:-1], h["edges"][1:], h["fractions"], strict=True):
                w.writerow((repr(lo), repr(hi), repr(frac)))
        files.append(p)
    if figures:
        from .plots import render_figures

        files += render_figures(result, out / "figures")
    return files


def iter_points(result: SweepResult) -> Iterator[tuple[GridPoint, dict[str, Any]]]:
    """(point, row) pairs of a sweep, in grid order."""
    rows = result.grid_rows()
    yield from zip(result.points, rows, strict=True)
