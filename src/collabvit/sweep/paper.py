"""The paper's grid values and reference numbers (Tables II and III).

A sweep's ``"auto"`` values are derived from one reference rule and one
reference measure (the paper's method, Fig. 8): top-k / random / threshold
points match the mean cost of :data:`REFERENCE_RULE` at the reference
delta_sums, Shannon / margin etas match the transmit ratios of
:data:`REFERENCE_MEASURE` at the reference etas. Table II is about the
reference rule and Table III about the reference measure.
"""

from __future__ import annotations

__all__ = [
    "PAPER_DELTA_SUMS",
    "PAPER_ETAS",
    "PAPER_TABLE_II",
    "PAPER_TABLE_III",
    "REFERENCE_MEASURE",
    "REFERENCE_RULE",
]

REFERENCE_RULE = "attention-sum"
"""The rule whose mean patch counts the ``"auto"`` thresholds match (Table II)."""
REFERENCE_MEASURE = "min-entropy"
"""The measure whose transmit ratios the ``"auto"`` etas match (Table III)."""

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
