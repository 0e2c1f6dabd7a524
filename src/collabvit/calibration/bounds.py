"""Binomial tails, Clopper-Pearson bounds and the p-values of Learn-then-Test.

For the null ``H: R > D`` on a risk R (the mean of a per-image loss) after
``losses`` events in n images: :func:`binomial_pvalue` (exact for a 0/1
loss) and :func:`hoeffding_bentkus_pvalue` (Angelopoulos et al. 2021, after
Bates et al. 2021: any loss in [0, 1]). Math and numpy only.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError

__all__ = [
    "P_VALUES",
    "binomial_cdf",
    "binomial_pvalue",
    "chance_pvalue",
    "check_risk",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "hoeffding_bentkus_pvalue",
    "min_images_to_certify",
]


def binomial_cdf(k: int, n: int, p: float) -> float:
    """``P(Binom(n, p) <= k)``, summed in log space (exact to float rounding)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    t = np.arange(1, k + 1, dtype=np.float64)
    log_choose = np.concatenate(([0.0], np.cumsum(np.log((n - t + 1) / t))))  # log C(n, i)
    i = np.arange(k + 1, dtype=np.float64)
    log_pmf = log_choose + i * math.log(p) + (n - i) * math.log1p(-p)
    top = float(log_pmf.max())
    return min(1.0, math.exp(top) * float(np.exp(log_pmf - top).sum()))


def _crossing(k: int, n: int, target: float) -> float:
    """The p in [0, 1] with ``P(Binom(n, p) <= k) = target`` (the CDF decreases in p)."""
    lo, hi = 0.0, 1.0
    while hi - lo > 1e-13:
        mid = 0.5 * (lo + hi)
        if binomial_cdf(k, n, mid) > target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def clopper_pearson_upper(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) upper bound on a proportion after k events in n draws.

    Clopper & Pearson (1934): the p with ``P(Binom(n, p) <= k) = alpha``.
    """
    check_risk(alpha)
    if n <= 0 or k >= n:
        return 1.0
    return _crossing(k, n, alpha)


def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) lower bound on a proportion after k successes in n draws.

    Clopper & Pearson (1934): the p with ``P(Binom(n, p) >= k) = alpha``.
    """
    check_risk(alpha)
    if n <= 0 or k <= 0:
        return 0.0
    return 1.0 - clopper_pearson_upper(n - k, n, alpha)


def binomial_pvalue(losses: int, n: int, max_risk: float) -> float:
    """p-value of ``H: R > max_risk`` after ``losses`` events in n images: ``P(Binom(n,
    max_risk) <= losses)``.

    Valid (super-uniform under H) for i.i.d. 0/1 losses: the binomial CDF
    decreases in p, so any risk above ``max_risk`` makes the tail smaller. For a
    0/1 loss it is at most both Hoeffding-Bentkus terms, so it is their minimum.
    """
    return binomial_cdf(losses, n, max_risk)


def _kl_bernoulli(a: float, b: float) -> float:
    """``h(a, b) = a log(a/b) + (1-a) log((1-a)/(1-b))`` (0 log 0 = 0)."""
    out = 0.0
    if a > 0:
        out += a * math.log(a / b)
    if a < 1:
        out += (1 - a) * math.log((1 - a) / (1 - b))
    return out


def hoeffding_bentkus_pvalue(losses: int, n: int, max_risk: float) -> float:
    """LTT's Hoeffding-Bentkus p-value of ``H: R > max_risk`` (Angelopoulos et al. 2021,
    Prop. 3, from Bates et al. 2021): ``min(exp(-n h(min(r, a), a)), e P(Binom(n, a) <=
    ceil(n r)))`` with ``r = losses / n`` and ``a = max_risk``.

    Valid for any independent losses in [0, 1]; for a 0/1 loss
    :func:`binomial_pvalue` is never larger.
    """
    if max_risk <= 0.0:
        return 1.0
    if max_risk >= 1.0:
        return 0.0
    r = losses / n
    hoeffding = math.exp(-n * _kl_bernoulli(min(r, max_risk), max_risk))
    bentkus = math.e * binomial_cdf(math.ceil(n * r), n, max_risk)
    return min(1.0, hoeffding, bentkus)


P_VALUES = {"binomial": binomial_pvalue, "hoeffding-bentkus": hoeffding_bentkus_pvalue}
"""The p-value of each grid point, by name (``--p-value``)."""


def min_images_to_certify(max_risk: float, level: float) -> int | None:
    """Fewest images with which a point with no loss at all reaches p <= level (binomial).

    ``(1 - D)^n <= level``; None when D = 0 (no finite sample certifies a zero risk).
    """
    if max_risk <= 0.0:
        return None
    if max_risk >= 1.0:
        return 0
    return math.ceil(math.log(level) / math.log1p(-max_risk))


def chance_pvalue(correct: int, n: int, chance: float) -> float:
    """p-value of "the server is no better than guessing": ``P(Binom(n, chance) >= correct)``.

    The guarantee of :func:`collabvit.calibration.calibrate` bounds the drop
    *against the server*; when the server itself may be answering at random
    (accuracy not above ``chance`` = 1 / classes), every point is trivially
    within any drop of it and the certificate says nothing. A small p-value
    rejects that null (exact one-sided binomial test).
    """
    if n <= 0 or correct <= 0:
        return 1.0
    return max(0.0, 1.0 - binomial_cdf(correct - 1, n, chance))


def check_risk(alpha: float) -> None:
    """ConfigError unless ``alpha`` is a probability strictly between 0 and 1."""
    if not (isinstance(alpha, (int, float)) and 0.0 < alpha < 1.0):
        raise ConfigError(f"--risk must be a probability in (0, 1), got {alpha}")
