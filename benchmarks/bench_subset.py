"""Item 1: the server's batched subset forward vs the authors' one image at a time; precision.

Both sides run :func:`collabvit.models.forward_subset` on the same images and
keep masks (patch counts spread like attention-sum at delta_sum 0.97: mean
~149 of 196 over 64 images, sd ~25): once as one batched call (packed tokens,
no padding), once image by image, as the authors' server does for the
threshold rules. The same measurement also times every image at all 196
patches, for item 2.

The item's second row, ``precision``, is :mod:`.bench_precision`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from collabvit.models import forward_subset

from .common import (
    Context,
    Result,
    ServerCase,
    Timings,
    ratio_of_medians,
    short_name,
    spread_counts,
    spread_keep_mask,
    stratified_subset,
    time_interleaved,
)

__all__ = ["GOAL", "run", "server_forward_timings"]

GOAL = 1.0  # on a CPU: batched no slower than one image at a time
CUDA_GOAL = 2.0
SERVER_SEED = 1
PROFILE_IMAGES = 8
MATMUL_OPS = {"aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm"}


def server_forward_timings(ctx: Context, case: ServerCase) -> dict[str, Any]:
    """Time batched-spread, one-at-a-time and (if wanted) batched-full forwards together.

    Memoised in ``ctx.cache`` so items 1 and 2 share one interleaved run.
    """
    key = f"server-forward:{case.model}"
    if key in ctx.cache:
        return dict(ctx.cache[key])
    want_loop = "subset" in ctx.selected
    want_full = "tokens" in ctx.selected and case.tokens
    loaded = ctx.model(case.model, SERVER_SEED)
    n = loaded.num_patches
    c, h, w = loaded.preprocessing.input_size
    counts = spread_counts(case.images, n, seed=0)
    keep = spread_keep_mask(counts, n, seed=0).to(ctx.device)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(case.images, c, h, w, generator=gen).to(ctx.device)
    full = torch.ones_like(keep)
    loop_idx = stratified_subset(counts, case.loop_images)
    wi = max(1, min(ctx.sizes.warmup_images, case.images))

    def batched() -> None:
        forward_subset(loaded, images, keep)

    def one_at_a_time(idx: list[int] = loop_idx) -> None:
        for i in idx:
            forward_subset(loaded, images[i : i + 1], keep[i : i + 1])

    def all_patches() -> None:
        forward_subset(loaded, images, full)

    cases: dict[str, Any] = {"batched": batched}
    warm: dict[str, Any] = {"batched": lambda: forward_subset(loaded, images[:wi], keep[:wi])}
    if want_loop:
        cases["one_at_a_time"] = one_at_a_time
        warm["one_at_a_time"] = lambda: one_at_a_time(list(range(wi)))
    if want_full:
        cases["all_patches"] = all_patches
        warm["all_patches"] = lambda: forward_subset(loaded, images[:wi], full[:wi])
    ctx.log(
        f"[server forward] {case.model}: {case.images} images, mean "
        f"{sum(counts) / len(counts):.1f} of {n} patches, loop over {len(loop_idx)}"
    )
    with torch.inference_mode():
        t = time_interleaved(ctx, cases, case.repeats, warm, label=case.model)
    out = {
        "loaded": loaded,
        "counts": counts,
        "loop_idx": loop_idx,
        "timings": t,
        "loop_scale": case.images / len(loop_idx),
    }
    ctx.cache[key] = out
    return dict(out)


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the profiler's C++ start/stop lines (written straight to fd 2)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def profile_ops(fn: Callable[[], object], top: int = 6) -> dict[str, Any]:
    """Self CPU time by operator of one call of ``fn`` (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = list(prof.key_averages())
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS)
    return {
        "self_cpu_ms": round(total / 1000, 1),
        "matmul_share": round(matmul / total, 3),
        "top_ops": [
            {"op": e.key, "share": round(e.self_cpu_time_total / total, 3), "calls": e.count}
            for e in ranked[:top]
        ],
    }


def _profile_case(ctx: Context, case: ServerCase) -> dict[str, Any]:
    """Operator profile of both sides on a few of the images (the evidence for a miss)."""
    m = server_forward_timings(ctx, case)
    loaded, counts = m["loaded"], m["counts"]
    k = min(PROFILE_IMAGES, case.images)
    n = loaded.num_patches
    c, h, w = loaded.preprocessing.input_size
    keep = spread_keep_mask(counts, n, seed=0)[:k].to(ctx.device)
    images = torch.randn(k, c, h, w, generator=torch.Generator().manual_seed(0)).to(ctx.device)

    def one_at_a_time() -> None:
        for i in range(k):
            forward_subset(loaded, images[i : i + 1], keep[i : i + 1])

    with torch.inference_mode():
        forward_subset(loaded, images, keep)  # warm
        batched = profile_ops(lambda: forward_subset(loaded, images, keep))
        single = profile_ops(one_at_a_time)
    return {"images": k, "batched": batched, "one_at_a_time": single}


def _loop_ratio(t: Timings, scale: float, clock: str | None = None) -> float:
    return ratio_of_medians(t, "one_at_a_time", "batched", clock) * scale


def _subset_row(ctx: Context) -> Result:
    ratios: list[float] = []
    details: dict[str, Any] = {}
    notes = [
        "Both sides call `forward_subset` on the same images and keep masks; the "
        "one-at-a-time side calls it once per image (batch of 1, no padding, no mask), "
        "as the authors' server loops over images for the threshold rules.",
    ]
    for case in ctx.sizes.server_cases:
        m = server_forward_timings(ctx, case)
        t: Timings = m["timings"]
        counts, loop_idx, scale = m["counts"], m["loop_idx"], m["loop_scale"]
        r = _loop_ratio(t, scale)
        ratios.append(r)
        med = t.medians()
        details[case.model] = {
            "images": case.images,
            "mean_patches": round(sum(counts) / len(counts), 2),
            "num_patches": m["loaded"].num_patches,
            "loop_images": len(loop_idx),
            "loop_mean_patches": round(sum(counts[i] for i in loop_idx) / len(loop_idx), 2),
            "loop_scale": round(scale, 4),
            "repeats": case.repeats,
            "median_batched_s": round(med["batched"], 3),
            "median_one_at_a_time_s_scaled": round(med["one_at_a_time"] * scale, 3),
            "ratio": round(r, 3),
            "ratio_wall_clock": round(_loop_ratio(t, scale, "wall"), 3),
            "timings": t.to_dict(),
        }
        if len(loop_idx) < case.images:
            notes.append(
                f"{case.model}: the one-at-a-time side ran {len(loop_idx)} of the "
                f"{case.images} images (sorted by patch count, the middle one of each run of "
                f"{scale:g}; mean {details[case.model]['loop_mean_patches']} vs "
                f"{details[case.model]['mean_patches']} patches) and its time is scaled by "
                f"{scale:g}; the batched side ran all {case.images}."
            )
    worst = min(ratios)
    first = next(iter(details.values()))
    goal = GOAL if ctx.device.type == "cpu" else CUDA_GOAL
    if worst < goal and ctx.device.type == "cpu":
        case = ctx.sizes.server_cases[0]
        prof = _profile_case(ctx, case)
        details["profile"] = {case.model: prof}
        b, s1 = prof["batched"], prof["one_at_a_time"]
        notes.append(
            f"Profile ({short_name(case.model)}, {prof['images']} images, torch.profiler): "
            f"matrix multiplies take {100 * b['matmul_share']:.0f}% of the batched call's "
            f"self CPU time and {100 * s1['matmul_share']:.0f}% of the one-at-a-time loop's "
            f"(loop / batched self CPU time: {s1['self_cpu_ms'] / b['self_cpu_ms']:.2f}). Both "
            "sides do the same multiplies; on a CPU core one ~150-token image is already a "
            "large enough GEMM, so batching can only win GEMM efficiency and per-call "
            "overhead. The 2x of batching is a GPU effect (kernel launches, occupancy); "
            f"`--device cuda` measures it there (goal >= {CUDA_GOAL:g}x)."
        )
    measured = ", ".join(
        f"{short_name(c.model)} {details[c.model]['ratio']:.2f}x" for c in ctx.sizes.server_cases
    )
    notes.append(
        f"Goal restated (issue 11): on a CPU batching is to be no slower than one image at a "
        f"time (>= {GOAL:g}x); the >= {CUDA_GOAL:g}x goal is kept for `--device cuda`."
    )
    return Result(
        name="subset",
        figure="Server subset forward: one batched call vs one image at a time "
        f"({', '.join(short_name(c.model) for c in ctx.sizes.server_cases)}; "
        f"{first['images']} images, mean {first['mean_patches']:.0f} of {first['num_patches']}"
        " patches)",
        measured=measured,
        goal=f">= {GOAL:g}x on the CPU" if ctx.device.type == "cpu" else f">= {goal:g}x",
        met=worst >= goal,
        command=ctx.command("subset"),
        ratio=worst,
        details=details,
        notes=notes,
    )


def run(ctx: Context) -> list[Result]:
    from .bench_precision import precision_row

    return [_subset_row(ctx), precision_row(ctx)]
