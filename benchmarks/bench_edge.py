"""Item 3: what the CLS-attention probe adds to the edge forward.

:func:`collabvit.models.forward_with_scores` with the mean attention score
(a forward hook on the last block's qkv and a recomputed class-token row)
against a plain timm forward ``model(x)`` of the same model and batch, both
without autograd.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from collabvit.attention import cls_attention, mean_attention_score
from collabvit.models import _vit, forward_with_scores

from .common import Context, Result, median, ratio_of_medians, short_name, time_interleaved

__all__ = ["GOAL", "run"]

GOAL = 1.05
EDGE_SEED = 0
PROBE_CALLS = 20


def _probe_math_seconds(ctx: Context, edge: Any, x: torch.Tensor) -> float:
    """Median time of the probe's extra work alone: the CLS row from a captured qkv."""
    model = edge.model
    last = len(model.blocks) - 1
    captured: dict[str, torch.Tensor] = {}
    handle = model.blocks[last].attn.qkv.register_forward_hook(
        lambda _m, _i, out: captured.__setitem__("qkv", out.detach())
    )
    try:
        with torch.inference_mode():
            model(x)
    finally:
        handle.remove()
    attn, qkv, npre = model.blocks[last].attn, captured["qkv"], edge.num_prefix_tokens

    def probe_math() -> None:
        q, k = _vit.split_qk(attn, qkv)
        row = cls_attention(q[:, :, :1], k, attn.scale)  # (B, H, 1, L)
        mean_attention_score([row], npre)

    samples = []
    with torch.inference_mode():
        probe_math()
        for _ in range(PROBE_CALLS):
            ctx.sync()
            c0, w0 = time.process_time(), time.perf_counter()
            probe_math()
            ctx.sync()
            cpu, wall = time.process_time() - c0, time.perf_counter() - w0
            samples.append(cpu if ctx.clock == "cpu" else wall)
    return median(samples)


def run(ctx: Context) -> list[Result]:
    sizes = ctx.sizes
    edge = ctx.model(sizes.edge_model, EDGE_SEED)
    c, h, w = edge.preprocessing.input_size
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(sizes.edge_batch, c, h, w, generator=gen).to(ctx.device)

    def plain() -> None:
        edge.model(x)

    def probe() -> None:
        forward_with_scores(edge, x, ("mean",))

    ctx.log(f"[edge] {sizes.edge_model}: batch {sizes.edge_batch}")
    with torch.inference_mode():
        t = time_interleaved(
            ctx, {"plain": plain, "probe": probe}, sizes.edge_repeats, label="edge"
        )
    r = ratio_of_medians(t, "probe", "plain")
    med = t.medians()
    isolated = _probe_math_seconds(ctx, edge, x)
    details = {
        "model": sizes.edge_model,
        "batch": sizes.edge_batch,
        "repeats": sizes.edge_repeats,
        "median_plain_s": round(med["plain"], 4),
        "median_probe_s": round(med["probe"], 4),
        "ratio": round(r, 4),
        "ratio_wall_clock": round(ratio_of_medians(t, "probe", "plain", "wall"), 4),
        "paired_ratios": [
            round(p / q, 4) for p, q in zip(t.primary()["probe"], t.primary()["plain"], strict=True)
        ],
        "timings": t.to_dict(),
        "probe_math_s": round(isolated, 5),
        "probe_math_share_of_plain": round(isolated / med["plain"], 5),
    }
    return [
        Result(
            name="edge",
            figure=f"Edge overhead: forward with the CLS-attention probe vs plain timm forward "
            f"({short_name(sizes.edge_model)}, batch {sizes.edge_batch})",
            measured=f"{100 * (r - 1):+.1f}% ({r:.3f}x)",
            goal=f"<= {100 * (GOAL - 1):g}% extra",
            met=r <= GOAL,
            command=ctx.command("edge"),
            ratio=r,
            details=details,
            notes=[
                "Both without autograd (`inference_mode`); the probe keeps timm's fused "
                "attention and recomputes only the class token's row of the last block.",
                f"The probe's own work (the class-token row from the captured qkv, timed alone, "
                f"median of {PROBE_CALLS} calls) is {1000 * isolated:.1f} ms per batch, "
                f"{100 * isolated / med['plain']:.2f}% of the plain forward; the rest of the "
                "measured difference is timing noise of the shared machine.",
            ],
        )
    ]
