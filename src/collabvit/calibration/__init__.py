"""Choosing an operating point with a finite-sample guarantee (``collabvit calibrate``).

The paper picks its point (attention-sum 0.97, min-entropy 0.8) on the very
images it reports. Here the point is chosen on *calibration* images so that it
holds on new images from the same distribution, by Learn-then-Test
(Angelopoulos, Bates, Candès, Jordan, Lei, "Learn then Test: Calibrating
Predictive Algorithms to Achieve Risk Control", arXiv:2110.01052, 2021):

- The loss of grid point j on image i is ``L_ij = 1[server right and point j
  wrong]`` (server: the server alone on the whole image). The accuracy drop
  against server-only is ``mean(1[s right, j wrong]) - mean(1[s wrong, j
  right]) <= mean(L_j)``, so a bound on the risk ``R_j = E[L_ij]`` bounds the
  drop from above.
- For each point the null ``H_j: R_j > D`` gets a p-value from the calibration
  losses (:func:`binomial_pvalue`, exact for a 0/1 loss; or
  :func:`hoeffding_bentkus_pvalue`, LTT's Prop. for any loss in [0, 1]).
- A family-wise-error-controlling procedure rejects some nulls
  (:func:`reject_chains`, or Bonferroni); every rejected point is *certified*:
  with probability >= 1 - alpha over the calibration draw, *every* certified
  point has ``R_j <= D``, so the cheapest certified point may be picked after
  looking at the data.

Modules: :mod:`.bounds` (binomial tails, Clopper-Pearson, p-values),
:mod:`.ltt` (the procedures, :func:`calibrate`, the budget pick
:func:`most_accurate_within`), :mod:`.point_file` (``calibrated.json``).
Pure: math and numpy only.
"""

from __future__ import annotations

from .bounds import (
    P_VALUES,
    binomial_cdf,
    binomial_pvalue,
    chance_pvalue,
    check_risk,
    clopper_pearson_lower,
    clopper_pearson_upper,
    hoeffding_bentkus_pvalue,
    min_images_to_certify,
)
from .ltt import (
    PROCEDURES,
    Budget,
    Calibration,
    Outcomes,
    calibrate,
    most_accurate_within,
    reject_bonferroni,
    reject_chains,
)
from .point_file import FORMAT, POINT_FIELDS, read_point

__all__ = [
    "FORMAT",
    "POINT_FIELDS",
    "PROCEDURES",
    "P_VALUES",
    "Budget",
    "Calibration",
    "Outcomes",
    "binomial_cdf",
    "binomial_pvalue",
    "calibrate",
    "chance_pvalue",
    "check_risk",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "hoeffding_bentkus_pvalue",
    "min_images_to_certify",
    "most_accurate_within",
    "read_point",
    "reject_bonferroni",
    "reject_chains",
]
