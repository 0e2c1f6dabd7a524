"""Item 1, second row: the server's subset forward in bf16 vs fp32, and their agreement.

The same batched :func:`collabvit.models.forward_subset` call as item 1 (64
images, patch counts spread like attention-sum at delta_sum 0.97, mean ~149
of 196) is timed side by side with the weights cast to bf16 once
(:func:`collabvit.models.precision.apply_precision`), in fp32, and with fp32
weights under ``torch.autocast`` (bf16). Then the shipped pair (fmnist-tiny
edge, fmnist-base server) runs its 10,000 test images in fp32 and in bf16 at
the default operating point: how often the final predictions and the gate's
decisions agree.
"""

from __future__ import annotations

import copy
from functools import partial
from typing import Any

import torch

from collabvit.models import forward_subset
from collabvit.models.precision import apply_precision

from .bench_subset import PROFILE_IMAGES, SERVER_SEED, profile_ops
from .common import (
    Context,
    Result,
    ServerCase,
    Timings,
    cpu_bf16,
    cpu_model,
    ratio_of_medians,
    short_name,
    spread_counts,
    spread_keep_mask,
    time_interleaved,
)

__all__ = ["AGREEMENT_GOAL", "PRECISION_GOAL", "precision_row", "shipped_pair_agreement"]

PRECISION_GOAL = 3.0  # bf16 vs fp32, deit_small, on a CPU
AGREEMENT_GOAL = 0.995  # final predictions of bf16 and fp32 on the shipped pair


def precision_timings(ctx: Context, case: ServerCase) -> dict[str, Any]:
    """bf16 weights, fp32, and fp32 weights under autocast: the same batched call, interleaved."""
    loaded = ctx.model(case.model, SERVER_SEED)
    low = apply_precision(copy.deepcopy(loaded), "bf16")
    n = loaded.num_patches
    c, h, w = loaded.preprocessing.input_size
    counts = spread_counts(case.images, n, seed=0)
    keep = spread_keep_mask(counts, n, seed=0).to(ctx.device)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(case.images, c, h, w, generator=gen).to(ctx.device)
    wi = max(1, min(ctx.sizes.warmup_images, case.images))

    def autocast() -> None:
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16):
            forward_subset(loaded, images, keep)

    cases = {
        "fp32": lambda: forward_subset(loaded, images, keep),
        "bf16": lambda: forward_subset(low, images, keep),
        "autocast": autocast,
    }
    warm = {
        "fp32": lambda: forward_subset(loaded, images[:wi], keep[:wi]),
        "bf16": lambda: forward_subset(low, images[:wi], keep[:wi]),
    }
    ctx.log(f"[precision] {case.model}: {case.images} images, mean {sum(counts) / len(counts):.1f}")
    with torch.inference_mode():
        t = time_interleaved(ctx, cases, case.repeats + 1, warm, label=f"{case.model} precision")
        if ctx.device.type == "cpu":
            k = min(PROFILE_IMAGES, case.images)
            profile = {
                name: profile_ops(partial(forward_subset, m, images[:k], keep[:k]))
                for name, m in (("fp32", loaded), ("bf16", low))
            }
        else:
            profile = {}
    return {"counts": counts, "timings": t, "profile": profile, "num_patches": n}


def shipped_pair_agreement(ctx: Context) -> dict[str, Any]:
    """bf16 vs fp32 decisions of the shipped pair (fmnist-tiny -> fmnist-base), default point."""
    from collabvit.engine import OperatingPoint, evaluate
    from collabvit.fmnist import shipped_samples
    from collabvit.models import load_model

    limit = {"full": None, "quick": 2000}.get(ctx.sizes.label, 200)
    samples = shipped_samples(limit)
    point = OperatingPoint()
    records = {}
    for name in ("fp32", "bf16"):
        edge = apply_precision(load_model("fmnist-tiny", device=ctx.device), name)
        server = apply_precision(load_model("fmnist-base", device=ctx.device), name)
        records[name] = evaluate(edge, server, samples, point, batch_size=500).records
    pairs = list(zip(records["fp32"], records["bf16"], strict=True))
    both = [(a, b) for a, b in pairs if a.transmitted and b.transmitted]

    def share(items: list[Any], same: Any) -> float:
        return round(sum(bool(same(a, b)) for a, b in items) / max(1, len(items)), 5)

    return {
        "images": len(pairs),
        "point": f"{point.rule} {point.threshold}, {point.measure} eta {point.eta}",
        "final_prediction": share(pairs, lambda a, b: a.final_pred == b.final_pred),
        "gate_decision": share(pairs, lambda a, b: a.transmitted == b.transmitted),
        "edge_prediction": share(pairs, lambda a, b: a.edge_pred == b.edge_pred),
        "patch_count_when_both_sent": share(both, lambda a, b: a.num_patches == b.num_patches),
        "sent_by_both": len(both),
        "accuracy_fp32": sum(r.final_pred == r.label for r in records["fp32"]) / len(pairs),
        "accuracy_bf16": sum(r.final_pred == r.label for r in records["bf16"]) / len(pairs),
    }


def _profile_note(model: str, profile: dict[str, Any]) -> str:
    parts = []
    for name in ("fp32", "bf16"):
        p = profile[name]
        ops = ", ".join(
            f"{o['op'].removeprefix('aten::')} {100 * o['share']:.0f}%" for o in p["top_ops"][:4]
        )
        parts.append(f"{name} {p['self_cpu_ms']:.0f} ms ({ops})")
    return (
        f"Profile of {short_name(model)} ({PROFILE_IMAGES} images, torch.profiler self CPU time): "
        + "; ".join(parts)
        + ". The matrix multiplies gain most from bf16 (AMX); the attention kernel, GELU, "
        "LayerNorm and copies are memory-bound and gain far less, so their share caps the ratio."
    )


def precision_row(ctx: Context) -> Result:
    details: dict[str, Any] = {}
    ratios: dict[str, float] = {}
    notes = [
        "All three call `forward_subset` on the same 'batched' images and keep masks as the "
        "subset row: `bf16` has its weights cast once (`apply_precision`), `autocast` keeps fp32 "
        "weights under `torch.autocast(bfloat16)` (a cast of every weight on every call).",
    ]
    for case in ctx.sizes.server_cases:
        m = precision_timings(ctx, case)
        t: Timings = m["timings"]
        med = t.medians()
        ratios[case.model] = ratio_of_medians(t, "fp32", "bf16")
        details[case.model] = {
            "images": case.images,
            "mean_patches": round(sum(m["counts"]) / len(m["counts"]), 2),
            "num_patches": m["num_patches"],
            "median_s": {k: round(v, 3) for k, v in med.items()},
            "ratio_bf16": round(ratios[case.model], 3),
            "ratio_autocast": round(ratio_of_medians(t, "fp32", "autocast"), 3),
            "ratio_bf16_wall_clock": round(ratio_of_medians(t, "fp32", "bf16", "wall"), 3),
            "timings": t.to_dict(),
            "profile": m["profile"],
        }
    agree = shipped_pair_agreement(ctx)
    details["shipped_pair_agreement"] = agree
    first = ctx.sizes.server_cases[0].model
    if ctx.device.type == "cpu":
        details["cpu"] = {"model": cpu_model(), "bf16": cpu_bf16()}
        notes.append(
            f"CPU: {cpu_model()}, bf16 instructions: {cpu_bf16()}. The goal was set on a "
            "Xeon with AMX, whose bf16 tiles multiply several times faster than fp32; "
            "AVX-512 BF16 alone about doubles it."
        )
        if ratios[first] < PRECISION_GOAL:
            notes.append(_profile_note(first, details[first]["profile"]))
    notes.append(
        f"Shipped pair, {agree['images']} test images at {agree['point']}: bf16 and fp32 agree on "
        f"{100 * agree['final_prediction']:.2f} % of final predictions, "
        f"{100 * agree['gate_decision']:.2f} % of gate decisions and "
        f"{100 * agree['edge_prediction']:.2f} % of edge predictions."
    )
    measured = ", ".join(
        f"{short_name(k)} {v:.2f}x (autocast {details[k]['ratio_autocast']:.2f}x)"
        for k, v in ratios.items()
    )
    measured += (
        f"; agreement {100 * agree['final_prediction']:.2f} % "
        f"(gate {100 * agree['gate_decision']:.2f} %)"
    )
    ok = agree["final_prediction"] >= AGREEMENT_GOAL
    return Result(
        name="precision",
        figure=f"Server subset forward bf16 vs fp32 ({', '.join(short_name(k) for k in ratios)}; "
        f"{details[first]['images']} images, mean {details[first]['mean_patches']:.0f} of "
        f"{details[first]['num_patches']} patches); bf16 vs fp32 agreement on the shipped pair",
        measured=measured,
        goal=f">= {PRECISION_GOAL:g}x for {short_name(first)} on the CPU, "
        f">= {100 * AGREEMENT_GOAL:g} % agreement",
        met=ok and (ratios[first] >= PRECISION_GOAL or ctx.device.type != "cpu"),
        command=ctx.command("subset"),
        ratio=ratios[first],
        details=details,
        notes=notes,
    )
