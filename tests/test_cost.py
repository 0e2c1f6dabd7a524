"""Tests of collabvit.cost: eq. 9 server FLOPs and the Sec. VI-A communication cost."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from collabvit.cost import communication_cost, vit_flops
from collabvit.errors import CollabViTError, ConfigError


def _eq9(n: int, d: int) -> int:
    """Eq. 9: 144 N D^2 + 24 N^2 D (12 blocks, MLP ratio 4)."""
    return 144 * n * d**2 + 24 * n**2 * d


# ----------------------------------------------------------------------------- vit_flops


@pytest.mark.parametrize(
    ("n", "d"), [(197, 768), (197, 384), (50, 192), (65, 192), (1, 1), (0, 384)]
)
def test_vit_flops_is_eq9_for_depth_12_and_mlp_ratio_4(n: int, d: int) -> None:
    assert vit_flops(n, d) == _eq9(n, d)
    assert vit_flops(n, d, depth=12, mlp_ratio=4.0) == _eq9(n, d)


def test_vit_flops_by_hand() -> None:
    # N = 2, D = 3: 144 * 2 * 9 + 24 * 4 * 3 = 2592 + 288
    assert vit_flops(2, 3) == 2880


def test_vit_flops_other_depth_and_mlp_ratio() -> None:
    # per block (4 + 2 r) N D^2 + 2 N^2 D
    assert vit_flops(10, 8, depth=6, mlp_ratio=2.0) == 6 * (8 * 10 * 64 + 2 * 100 * 8)
    assert vit_flops(10, 8, depth=1, mlp_ratio=0.0) == 4 * 10 * 64 + 2 * 100 * 8
    assert vit_flops(10, 8, depth=0) == 0


def test_vit_flops_is_element_wise_and_falls_with_the_tokens() -> None:
    tokens = np.arange(0, 198)
    flops = vit_flops(tokens, 768)
    assert isinstance(flops, np.ndarray)
    assert flops.shape == (198,)
    assert flops.tolist() == [_eq9(int(n), 768) for n in tokens]
    assert bool((np.diff(flops) > 0).all())
    as_tensor = vit_flops(torch.arange(0, 198, dtype=torch.float64), 768)
    assert as_tensor.tolist() == flops.tolist()
    assert vit_flops(98.5, 2) == 144 * 98.5 * 4 + 24 * 98.5**2 * 2  # a mean token count


# ----------------------------------------------------------------------------- communication cost


def test_communication_cost_by_hand() -> None:
    # 5 images of 16 patches; 4 + 2 + 16 patches sent
    assert communication_cost(22, 5, 16) == 22 / 80
    assert communication_cost(80, 5, 16) == 1.0  # every image sent whole
    assert communication_cost(0, 5, 16) == 0.0  # nothing sent
    assert communication_cost(0, 0, 196) == 0.0  # no images: nothing sent
    assert communication_cost(196, 1, 196) == 1.0
    assert isinstance(communication_cost(3, 2, 4), float)


@pytest.mark.parametrize(
    ("patches", "images", "per_image"), [(-1, 5, 16), (4, -1, 16), (4, 5, 0), (0, 0, -3)]
)
def test_communication_cost_undefined_is_a_config_error(
    patches: int, images: int, per_image: int
) -> None:
    with pytest.raises(ConfigError, match="undefined") as info:
        communication_cost(patches, images, per_image)
    assert isinstance(info.value, CollabViTError)
    assert isinstance(info.value, ValueError)
    assert f"{patches} patches over {images} images" in str(info.value)
