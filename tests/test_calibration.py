"""collabvit.calibration: the bounds, p-values and procedures by hand, and the guarantee
measured on the shipped pair over 200 random calibration/test splits of one sweep."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from collabvit.calibration import (
    Outcomes,
    binomial_cdf,
    binomial_pvalue,
    calibrate,
    chance_pvalue,
    clopper_pearson_lower,
    clopper_pearson_upper,
    hoeffding_bentkus_pvalue,
    min_images_to_certify,
    most_accurate_within,
    read_point,
    reject_bonferroni,
    reject_chains,
)
from collabvit.errors import ConfigError
from collabvit.metrics import accuracy_interval, wilson_interval

# ----------------------------------------------------------------------------- bounds


def test_wilson_interval_known_values() -> None:
    low, high = wilson_interval(91, 100)
    assert low == pytest.approx(0.83774, abs=1e-5) and high == pytest.approx(0.95193, abs=1e-5)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert accuracy_interval([1, 2, 3], [-1, -1, -1]) is None
    assert accuracy_interval([1, 2, 0], [1, 2, -1]) == wilson_interval(2, 2)
    with pytest.raises(ValueError):
        wilson_interval(1, 0)


@pytest.mark.parametrize(("n", "p"), [(1, 0.3), (10, 0.01), (37, 0.5), (200, 0.9)])
def test_binomial_cdf_equals_the_sum_of_the_pmf(n: int, p: float) -> None:
    for k in range(-1, n + 2):
        exact = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(max(0, k + 1)))
        assert binomial_cdf(k, n, p) == pytest.approx(min(1.0, exact), rel=1e-9, abs=1e-300)


def test_clopper_pearson_inverts_the_tail() -> None:
    u = clopper_pearson_upper(3, 100, 0.1)
    assert binomial_cdf(3, 100, u) == pytest.approx(0.1, abs=1e-9)
    assert clopper_pearson_upper(0, 200, 0.1) == pytest.approx(1 - 0.1 ** (1 / 200), rel=1e-9)
    lo = clopper_pearson_lower(91, 100, 0.05)
    assert 1 - binomial_cdf(90, 100, lo) == pytest.approx(0.05, abs=1e-9)
    assert clopper_pearson_lower(0, 10, 0.1) == 0.0 and clopper_pearson_upper(10, 10, 0.1) == 1.0


def test_binomial_pvalue_is_never_above_hoeffding_bentkus_for_a_01_loss() -> None:
    for n in (50, 1000, 5000):
        for k in range(0, n // 10, max(1, n // 200)):
            for d in (0.005, 0.01, 0.05):
                assert binomial_pvalue(k, n, d) <= hoeffding_bentkus_pvalue(k, n, d) * (1 + 1e-12)
    assert binomial_pvalue(0, 200, 0.01) == pytest.approx(0.99**200)
    assert binomial_pvalue(3, 100, 0.0) == 1.0  # a zero risk is never certified
    assert min_images_to_certify(0.01, 0.1) == 230 and min_images_to_certify(0.0, 0.1) is None


def test_binomial_pvalue_is_super_uniform_under_the_null() -> None:
    rng = np.random.default_rng(1)
    n, risk = 400, 0.03  # the null R > D holds with equality at D = risk
    p = np.array([binomial_pvalue(int(k), n, risk) for k in rng.binomial(n, risk, 4000)])
    for t in (0.05, 0.1, 0.2):
        assert (p <= t).mean() <= t + 3 * math.sqrt(t * (1 - t) / p.size)


# ----------------------------------------------------------------------------- procedures


def test_chains_stop_at_the_first_kept_null_and_recycle_alpha() -> None:
    # two chains at 0.1 / 2 = 0.05 each: chain 0 rejects 0, 1 and stops at 2
    p = [0.01, 0.04, 0.3, 0.001, 0.2]
    assert reject_chains(p, [(0, 1, 2), (3, 4)], 0.1).tolist() == [1, 1, 0, 1, 0]
    # chain 1 = (3,) is exhausted: its alpha goes to chain 0, whose 0.08 passes at 0.1
    p = [0.01, 0.08, 0.3, 0.001]
    assert reject_chains(p, [(0, 1, 2), (3,)], 0.1).tolist() == [1, 1, 0, 1]
    assert reject_chains(p, [(0, 1, 2, 3)], 0.1).tolist() == [1, 1, 0, 0]  # order matters
    assert reject_bonferroni(p, 0.1).tolist() == [1, 0, 0, 1]
    with pytest.raises(ConfigError, match="chains"):
        reject_chains(p, [(0, 1)], 0.1)


def test_chains_control_the_family_wise_error_under_the_global_null() -> None:
    rng = np.random.default_rng(2)
    chains = [(0, 1, 2), (3, 4), (5,), (6, 7, 8, 9)]
    any_rejected = [reject_chains(rng.random(10).tolist(), chains, 0.1).any() for _ in range(4000)]
    assert np.mean(any_rejected) <= 0.1 + 3 * math.sqrt(0.09 / 4000)


def _outcomes() -> Outcomes:
    """Three points over 1000 images: server right on 900; losses 0, 10, 60."""
    n = 1000
    server = np.arange(n) < 900
    correct = np.tile(server, (3, 1))
    correct[1, :10] = False  # 10 losses
    correct[2, :60] = False  # 60 losses
    correct[2, 950:] = True  # and 50 images the server gets wrong: drop 1 point
    patches = np.stack([np.full(n, 49), np.full(n, 20), np.full(n, 5)])
    return Outcomes(server, correct, patches, 49, ((0, 1, 2),))


def test_calibrate_picks_the_cheapest_certified_point() -> None:
    o = _outcomes()
    assert o.drops().tolist() == pytest.approx([0.0, 1.0, 1.0])
    assert o.costs().tolist() == pytest.approx([1.0, 20 / 49, 5 / 49])
    cal = calibrate(o, max_drop=2.0, alpha=0.1)
    # 10 losses in 1000 pass D = 2 %, 60 do not (the drop of point 2 is 1 point: the loss
    # is an upper bound of the drop, not the drop)
    assert cal.certified.tolist() == [True, True, False]
    assert cal.chosen == 1 and cal.closest is None
    none = calibrate(o, max_drop=0.1, alpha=0.1)
    assert none.chosen is None and none.closest == 0  # smallest p-value
    with pytest.raises(ConfigError, match="max-drop"):
        calibrate(o, -1.0, 0.1)
    for alpha in (0.0, 1.0, 1.5):
        with pytest.raises(ConfigError, match="risk"):
            calibrate(o, 1.0, alpha)


def test_chance_pvalue_is_the_upper_binomial_tail() -> None:
    # P(Binom(1300, 1/1000) >= k), summed by hand
    def tail(k: int, n: int, p: float) -> float:
        return 1 - sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k))

    for k in (1, 2, 4, 9):
        assert chance_pvalue(k, 1300, 1e-3) == pytest.approx(tail(k, 1300, 1e-3), rel=1e-9)
    assert chance_pvalue(0, 1300, 1e-3) == 1.0 and chance_pvalue(5, 0, 0.1) == 1.0
    assert chance_pvalue(900, 1000, 0.1) < 1e-100


def test_a_server_at_chance_certifies_nothing_whatever_the_losses() -> None:
    # a random-weight server: right on 1 of 1000 images (10 classes: chance 10 %), and
    # every point agrees with it, so every loss is 0 and every p-value tiny
    n = 1000
    server = np.arange(n) < 1
    correct = np.tile(server, (2, 1))
    patches = np.stack([np.full(n, 49), np.full(n, 5)])
    o = Outcomes(server, correct, patches, 49, ((0, 1),))
    plain = calibrate(o, max_drop=1.0, alpha=0.1)
    assert plain.certified.all() and plain.refused is None  # vacuous without the check
    cal = calibrate(o, max_drop=1.0, alpha=0.1, chance=0.1)
    assert not cal.certified.any() and cal.chosen is None
    assert cal.refused is not None and "not above chance (1 of 1000 right" in cal.refused
    assert cal.p_values.tolist() == plain.p_values.tolist()  # reported all the same
    # an informative server (900 of 1000 at chance 10 %) is certified as before
    real = _outcomes()
    same = calibrate(real, max_drop=2.0, alpha=0.1, chance=0.1)
    assert same.refused is None
    assert same.certified.tolist() == calibrate(real, 2.0, 0.1).certified.tolist()


def test_budget_is_the_most_accurate_within_cost_with_a_union_bound() -> None:
    o = _outcomes()
    b = most_accurate_within(o, 0.5, 0.1)
    # points 1 and 2 are both within the budget and both 89 % right: the cheaper wins
    assert b.chosen == 2 and b.candidates == 2 and b.accuracy == pytest.approx(0.89)
    assert b.accuracy_lower == pytest.approx(clopper_pearson_lower(890, 1000, 0.05))
    assert most_accurate_within(o, 0.01, 0.1).chosen is None


def test_read_point_checks_the_file(tmp_path: Path) -> None:
    good = {"score": "mean", "rule": "all", "threshold": 0.0, "measure": "min-entropy",
            "eta": 0.5, "include_crossing": False, "seed": 0}  # fmt: skip
    path = tmp_path / "calibrated.json"
    path.write_text(json.dumps({"point": good}))
    assert read_point(path) == good
    cases = {
        "not json": "certified no|readable",
        json.dumps({"point": None, "closest": {"description": "X"}}): "certified no .*X",
        json.dumps({"point": good | {"eta": "high"}}): "eta",
        json.dumps({"point": {"rule": "all"}}): "exactly",
        json.dumps([1]): "no 'point'",
    }
    for text, message in cases.items():
        path.write_text(text)
        with pytest.raises(ConfigError, match=message):
            read_point(path)


def test_calibration_imports_no_torch() -> None:
    import subprocess

    code = "import collabvit.calibration, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- the guarantee

SPLITS, MAX_DROP, RISK = 200, 1.0, 0.1


def binomial_slack(trials: int, rate: float, tail: float = 0.001) -> int:
    """The most failures ``Binom(trials, rate)`` exceeds with probability <= tail."""
    k = 0
    while 1.0 - binomial_cdf(k, trials, rate) > tail:
        k += 1
    return k


@pytest.fixture(scope="module")
def shipped_sweep(tmp_path_factory: pytest.TempPathFactory) -> object:
    """One sweep of the shipped pair over the 10,000 shipped test images, demo grid (cached)."""
    from collabvit.commands.demo import demo_grid
    from collabvit.fmnist import shipped_samples
    from collabvit.models import load_model
    from collabvit.sweep import run_sweep

    edge, server = load_model("fmnist-tiny"), load_model("fmnist-base")
    cache = tmp_path_factory.mktemp("calibration-sweep")
    return run_sweep(edge, server, shipped_samples(), demo_grid(), batch_size=256, cache_dir=cache)


def test_outcomes_are_the_sweep_records(shipped_sweep: object) -> None:
    from collabvit.sweep import SweepResult, calibration_outcomes

    assert isinstance(shipped_sweep, SweepResult)
    points, o = calibration_outcomes(shipped_sweep)
    assert o.images == 10_000 and len(points) == o.correct.shape[0] == 41
    rows = [r for r in shipped_sweep.grid_rows() if r.encoder == "edge"]
    server = shipped_sweep.server_accuracy
    assert server is not None
    for j, (p, row) in enumerate(zip(points, rows, strict=True)):
        assert row.accuracy is not None and row.accuracy_low is not None
        assert o.drops()[j] == pytest.approx(100 * (server - row.accuracy), abs=1e-9)
        assert o.costs()[j] == pytest.approx(row.communication_cost, abs=1e-12)
        assert row.accuracy_low < row.accuracy < (row.accuracy_high or 0.0)
        if j % 10 == 3:  # a few points against the per-image records
            finals = [r.final_pred for r in shipped_sweep.records(p)]
            assert finals == shipped_sweep.outcomes(p).final_pred.tolist()
    # a chain per delta_sum (etas in transmit-most-first order), server only, the gate alone
    assert [len(c) for c in o.chains] == [10, 10, 10, 1, 10]
    assert all(points[c[0]].eta <= points[c[-1]].eta for c in o.chains)


@pytest.mark.parametrize(
    ("p_value", "procedure"),
    [("binomial", "chains"), ("hoeffding-bentkus", "chains"), ("binomial", "bonferroni")],
)
def test_guarantee_over_200_random_splits(
    shipped_sweep: object, p_value: str, procedure: str
) -> None:
    """D = 1 point, ALPHA = 0.1: the test-half drop exceeds D in at most 10 % of the splits
    plus the binomial slack of 200 draws (P(Binom(200, 0.1) > 34) < 0.001: at most 34)."""
    from collabvit.sweep import SweepResult, calibration_outcomes

    assert isinstance(shipped_sweep, SweepResult)
    _, o = calibration_outcomes(shipped_sweep)
    slack = binomial_slack(SPLITS, RISK)
    assert slack == 34
    rng = np.random.default_rng(2021)
    exceeded = uncertified = 0
    chosen_cost, oracle_cost, test_drop = [], [], []
    for _ in range(SPLITS):
        order = rng.permutation(o.images)
        cal, test = o.subset(order[: o.images // 2]), o.subset(order[o.images // 2 :])
        result = calibrate(cal, MAX_DROP, RISK, p_value, procedure)
        drops, costs = test.drops(), test.costs()
        oracle_cost.append(float(costs[drops <= MAX_DROP].min()))  # the price's reference
        if result.chosen is None:
            uncertified += 1
            continue
        exceeded += int(drops[result.chosen] > MAX_DROP)
        chosen_cost.append(float(costs[result.chosen]))
        test_drop.append(float(drops[result.chosen]))
    figures = {
        "p_value": p_value,
        "procedure": procedure,
        "splits": SPLITS,
        "exceeded": exceeded,
        "allowed": slack,
        "uncertified": uncertified,
        "mean_chosen_cost": float(np.mean(chosen_cost)),
        "mean_cheapest_cost_meeting_D_on_test": float(np.mean(oracle_cost)),
        "mean_test_drop_of_chosen": float(np.mean(test_drop)),
        "max_test_drop_of_chosen": float(np.max(test_drop)),
    }
    print(json.dumps(figures))  # the figures of docs/calibrate.md (pytest -s)
    assert exceeded <= slack, figures
    assert uncertified == 0, figures  # 5,000 images are plenty for D = 1 on this pair
    # the guarantee has a price, and the chosen point still saves communication
    assert figures["mean_chosen_cost"] >= figures["mean_cheapest_cost_meeting_D_on_test"]
    assert figures["mean_chosen_cost"] < 0.75


# ----------------------------------------------------------------------------- intervals


def test_every_sweep_output_carries_the_interval(shipped_sweep: object, tmp_path: Path) -> None:
    import csv

    from collabvit.report import write_outputs
    from collabvit.sweep import RESULT_FIELDS, ResultRow, SweepResult

    assert isinstance(shipped_sweep, SweepResult)
    assert RESULT_FIELDS[-2:] == ("accuracy_low", "accuracy_high")  # appended: columns keep
    assert RESULT_FIELDS.index("raised_to_one_patch") == 19  # their positions
    for row in shipped_sweep.rows:
        assert row.accuracy is not None and row.accuracy_low is not None
        n = row.images
        assert (row.accuracy_low, row.accuracy_high) == wilson_interval(round(row.accuracy * n), n)
    old = {k: v for k, v in shipped_sweep.rows[0].to_dict().items() if "accuracy_" not in k}
    old |= {"edge_accuracy": shipped_sweep.rows[0].edge_accuracy}
    assert ResultRow.from_mapping(old).accuracy_low is None  # rows written before the columns
    files = write_outputs(shipped_sweep, tmp_path, figures=True)
    with open(tmp_path / "results.csv") as fh:
        header = next(csv.reader(fh))
    assert header == list(RESULT_FIELDS)
    assert "95% CI" in (tmp_path / "tables.md").read_text()
    assert tmp_path / "figures" / "tradeoff.png" in files


def test_trade_off_lines_draw_bands_and_points_draw_error_bars() -> None:
    from collabvit.report import drawing as dr

    plain = [
        {"communication_cost": c, "accuracy": a} for c, a in ((0.1, 0.8), (0.5, 0.85), (0.9, 0.9))
    ]
    rows = [r | {"accuracy_low": r["accuracy"] - 0.01, "accuracy_high": r["accuracy"] + 0.01}
            for r in plain]  # fmt: skip
    _, (ax,) = dr.new_figure()
    dr.line(ax, rows, "a line")
    assert len(ax.collections) == 1  # the band
    dr.line(ax, rows, "points", ls="none")
    assert len(ax.collections) == 2  # + the error bars
    dr.line(ax, plain, "rows written before the interval columns")
    assert len(ax.collections) == 2
