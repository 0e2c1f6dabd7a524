"""The server on a subset of patches (paper Sec. III, eq. 1 on the received tokens, eq. 9 cost).

:func:`forward_subset` embeds just the kept patches, each with its own position
embedding, and runs a batch of images with different patch counts in length
buckets. On a CPU a bucket's images are packed end to end
(:func:`collabvit.models._vit.forward_packed`): no padded token is computed
and no key mask is needed, so the cost falls with the real tokens, as eq. 9
counts, in any precision (:mod:`.precision`). On a GPU, and in
:func:`forward_kept` (the differentiable form training uses), a bucket is
padded to its longest image with a key mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..errors import ModelError
from . import _vit, precision
from .loading import LoadedModel

__all__ = ["forward_kept", "forward_subset", "plan_buckets"]


def plan_buckets(
    counts: Sequence[int], max_batch: int = 64, max_padding: float = 0.08
) -> list[list[int]]:
    """Group images into length buckets for one padded forward each.

    Images are sorted by patch count; a bucket grows while its padded tokens
    stay within ``max_padding`` of its real tokens and it holds at most
    ``max_batch`` images. Returns lists of positions into ``counts``.
    """
    order = sorted(range(len(counts)), key=lambda i: (counts[i], i))
    buckets: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in order:
        n = counts[i]
        if current:
            # counts ascend, so n is the new maximum length of the bucket
            padded = n * (len(current) + 1)
            if len(current) >= max_batch or padded - (real + n) > max_padding * (real + n):
                buckets.append(current)
                current, real = [], 0
        current.append(i)
        real += n
    if current:
        buckets.append(current)
    return buckets


@torch.no_grad()
def forward_subset(
    loaded: LoadedModel,
    images: torch.Tensor,
    keep_mask: torch.Tensor,
    max_batch: int = 64,
    max_padding: float = 0.08,
) -> torch.Tensor:
    """Server logits from only the kept patches of each image (eq. 1 on the kept tokens).

    Only the kept patches are embedded; each keeps its own position embedding
    and the prefix tokens keep theirs. The images run in buckets of similar
    length (see :func:`plan_buckets`; they bound the tokens of one forward).
    On a CPU each bucket is packed without padding
    (:func:`~collabvit.models._vit.forward_packed`); on a GPU it is padded to
    its longest image with the padding masked out of attention
    (:func:`forward_kept`).
    The logits equal those of running each image alone (up to float rounding).
    The model computes in its own dtype (:func:`~.precision.apply_precision`);
    the inputs are cast to it and the logits come back in float32.

    Args:
        loaded: the server model.
        images: (B, C, H, W) normalised input; unkept patches are never read.
        keep_mask: (B, N) bool, at least one True per row.

    Returns:
        (B, num_classes) logits.
    """
    model = loaded.model
    b, n = keep_mask.shape
    if n != loaded.num_patches:
        raise ModelError(f"keep_mask has {n} patches but {loaded.name} takes {loaded.num_patches}")
    counts = keep_mask.sum(1).tolist()
    # NOTE: a GPU pays a kernel launch per run of equal lengths in the packed
    # forward; there the padded, key-masked bucket (one fused attention call) is kept.
    run = _vit.forward_packed if images.device.type == "cpu" else forward_kept
    out = torch.empty(b, loaded.num_classes, device=images.device)
    with precision.matmul_scope(loaded):
        for bucket in plan_buckets(counts, max_batch, max_padding):
            if len(bucket) == b:  # one bucket: no copy of the images
                out[:] = run(model, images, keep_mask).float()
            else:
                out[bucket] = run(model, images[bucket], keep_mask[bucket]).float()
    return out


def forward_kept(model: Any, images: torch.Tensor, keep_mask: torch.Tensor) -> torch.Tensor:
    """Logits from the kept patches of each image, as one padded batch.

    The building block of :func:`forward_subset` (which adds length buckets and
    no_grad); differentiable, so training can use it to show the model the
    subsets it will be sent. Rows are padded to the longest and the padding is
    masked out of every attention.

    Args:
        model: a timm VisionTransformer.
        images: (B, C, H, W) normalised input.
        keep_mask: (B, N) bool, at least one True per row.
    """
    n = keep_mask.shape[1]
    counts = keep_mask.sum(1)
    shortest, k = torch.stack(counts.aminmax()).tolist()  # the one host sync
    positions = torch.arange(n, device=keep_mask.device)
    # kept indices first in ascending order, then padding slots
    sort_key = torch.where(keep_mask, positions, positions + n)
    patch_index = sort_key.argsort(dim=1)[:, :k] % n  # (B, K)
    if shortest == k:
        return _vit.forward_tokens(model, images, patch_index, None)
    valid = torch.arange(k, device=keep_mask.device)[None, :] < counts[:, None]
    return _vit.forward_tokens(model, images, patch_index, valid)
