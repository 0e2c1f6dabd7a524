"""Item 2: the server's cost is proportional to the tokens it gets (paper eq. 9).

Time of one batched :func:`~collabvit.models.forward_subset` over the spread
patch counts (mean ~147 of 196) divided by the time of the same images at all
196 patches, against the eq. 9 ratio ``sum_i F(n_i) / (B * F(196))`` with
``F(n) = 144 (n+1) D^2 + 24 (n+1)^2 D`` (one class token). Shares its run with
item 1 when both are selected.
"""

from __future__ import annotations

from typing import Any

from .bench_subset import server_forward_timings
from .common import Context, Result, Timings, ratio_of_medians, short_name

__all__ = ["TOLERANCE", "run"]

TOLERANCE = 0.10


def run(ctx: Context) -> list[Result]:
    cases = [c for c in ctx.sizes.server_cases if c.tokens]
    details: dict[str, Any] = {}
    worst = 0.0
    worst_ratio = 1.0
    parts = []
    for case in cases:
        m = server_forward_timings(ctx, case)
        t: Timings = m["timings"]
        loaded, counts = m["loaded"], m["counts"]
        n = loaded.num_patches
        flops_ratio = sum(float(loaded.flops(c)) for c in counts) / (
            len(counts) * float(loaded.flops(n))
        )
        time_ratio = ratio_of_medians(t, "batched", "all_patches")
        rel = time_ratio / flops_ratio - 1.0
        if abs(rel) >= worst:
            worst, worst_ratio = abs(rel), time_ratio / flops_ratio
        med = t.medians()
        details[case.model] = {
            "images": case.images,
            "mean_patches": round(sum(counts) / len(counts), 2),
            "num_patches": n,
            "repeats": case.repeats,
            "median_spread_s": round(med["batched"], 3),
            "median_all_patches_s": round(med["all_patches"], 3),
            "time_ratio": round(time_ratio, 4),
            "time_ratio_wall_clock": round(
                ratio_of_medians(t, "batched", "all_patches", "wall"), 4
            ),
            "eq9_flops_ratio": round(flops_ratio, 4),
            "tokens_ratio": round(sum(counts) / (len(counts) * n), 4),
            "relative_difference": round(rel, 4),
            "timings": t.to_dict(),
        }
        parts.append(
            f"{short_name(case.model)}: {time_ratio:.3f} vs eq. 9 {flops_ratio:.3f} "
            f"({100 * rel:+.1f}%)"
        )
    notes = [
        "Both sides are one batched `forward_subset` call; the spread side runs in length "
        "buckets (default `max_padding` 0.08), so its padded tokens are part of the "
        "measured cost.",
        "The same images and keep masks as item 1; the three cases (batched spread, one at a "
        "time, batched at all patches) are timed in one interleaved run"
        + (", whose time is counted under item 1." if "subset" in ctx.selected else "."),
    ]
    return [
        Result(
            name="tokens",
            figure="Server cost proportional to tokens: time at the spread / time at all "
            f"patches ({', '.join(short_name(c.model) for c in cases)}, batched)",
            measured="; ".join(parts),
            goal=f"within {100 * TOLERANCE:g}% of the eq. 9 FLOPs ratio",
            met=worst <= TOLERANCE,
            command=ctx.command("tokens"),
            ratio=worst_ratio,
            details=details,
            notes=notes,
        )
    ]
