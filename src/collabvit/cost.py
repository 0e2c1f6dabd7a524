"""What collaborative inference costs (paper Sec. III and VI-A), as pure functions.

- :func:`vit_flops`: multiply-accumulates of a ViT encoder over N tokens, eq. 9
  (``144 N D^2 + 24 N^2 D`` for 12 blocks and MLP ratio 4), generalised to any
  depth and MLP ratio. The server runs on the received patches only, so its
  cost falls with the tokens.
- :func:`communication_cost`: transmitted patches over all patches of all
  images (Sec. VI-A), 0 when nothing is sent and 1 when every image is sent
  whole.

The bytes of a message and the paper's bit count of a selection live with the
format that defines them (:func:`collabvit.wire.payload_bits`,
:func:`collabvit.wire.full_image_bytes`).
"""

from __future__ import annotations

from typing import Any

from .errors import ConfigError

__all__ = ["communication_cost", "vit_flops"]


def vit_flops(num_tokens: Any, dim: int, depth: int = 12, mlp_ratio: float = 4.0) -> Any:
    """Eq. 9: multiply-accumulates of a ViT encoder over ``num_tokens`` tokens.

    Per block: ``(4 + 2 * mlp_ratio) * N * D^2`` (qkv, projection, MLP) plus
    ``2 * N^2 * D`` (scores and weighted sum). For 12 blocks and mlp_ratio 4 this
    is exactly eq. 9: ``144 N D^2 + 24 N^2 D``. ``num_tokens`` may be an int, a
    float, a numpy array or a tensor (element-wise).
    """
    n = num_tokens
    return depth * ((4 + 2 * mlp_ratio) * n * dim**2 + 2 * n**2 * dim)


def communication_cost(transmitted_patches: int, images: int, patches_per_image: int) -> float:
    """Sec. VI-A: patches transmitted over all patches of all ``images``.

    Raises:
        ConfigError: a negative count or an image without patches.
    """
    if images < 0 or transmitted_patches < 0 or patches_per_image < 1:
        raise ConfigError(
            f"communication cost of {transmitted_patches} patches over {images} images of "
            f"{patches_per_image} patches is undefined"
        )
    return transmitted_patches / (images * patches_per_image) if images else 0.0
