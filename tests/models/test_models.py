"""Tests of collabvit.models: loading, checkpoints, preprocessing, subset forward, eq. 9."""

from __future__ import annotations

import argparse
import random
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from safetensors.torch import save_file
from vit_support import register_vit

from collabvit.errors import CheckpointError, ModelError
from collabvit.models import (
    LoadedModel,
    forward_kept,
    forward_subset,
    load_model,
    plan_buckets,
    vit_flops,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------- helpers


pytestmark = pytest.mark.usefixtures("one_thread")


_CACHE: dict[str, LoadedModel] = {}


def _model(name: str) -> LoadedModel:
    """Random-init models, built once per test session."""
    if name not in _CACHE:
        _CACHE[name] = (
            register_vit(mean=IMAGENET_MEAN, std=IMAGENET_STD)
            if name == "register"
            else load_model(name, random_init=0)
        )
    return _CACHE[name]


def _images(loaded: LoadedModel, count: int, seed: int = 0) -> torch.Tensor:
    _, h, w = loaded.preprocessing.input_size
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, h, w, generator=gen)


def _masks(n: int, counts: list[int], seed: int = 0) -> torch.Tensor:
    """One random keep mask per count."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(len(counts), n, dtype=torch.bool)
    for row, k in enumerate(counts):
        mask[row, torch.randperm(n, generator=gen)[:k]] = True
    return mask


def _reference_subset(loaded: LoadedModel, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Server logits of one image from timm's own embedding of the full image, then dropping
    the unkept patch tokens (prefix tokens always kept). x: (1, C, H, W), keep: (N,)."""
    model: Any = loaded.model
    tokens = model._pos_embed(model.patch_embed(x))  # (1, P + N, D), timm's own code
    p = loaded.num_prefix_tokens
    index = torch.cat([torch.arange(p), p + keep.nonzero().flatten()])
    tokens = model.norm_pre(tokens[:, index])
    return model.forward_head(model.norm(model.blocks(tokens)))


SERVER_FAMILIES = ["deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "register"]


# ----------------------------------------------------------------------------- subset forward


@pytest.mark.parametrize("family", SERVER_FAMILIES)
def test_batched_subset_equals_each_image_alone(family: str) -> None:
    loaded = _model(family)
    n = loaded.num_patches
    counts = [1, n // 7, n // 2, n - 3, n]
    x = _images(loaded, len(counts), seed=1)
    keep = _masks(n, counts, seed=2)
    assert keep.sum(1).tolist() == counts
    alone = torch.cat([forward_subset(loaded, x[i : i + 1], keep[i : i + 1]) for i in range(5)])
    batched = forward_subset(loaded, x, keep)  # default buckets
    one_bucket = forward_subset(loaded, x, keep, max_padding=1e9)  # all padded together
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(one_bucket, alone, rtol=1e-4, atol=1e-5)
    # and each equals timm's own embedding with the dropped tokens removed
    with torch.no_grad():
        reference = torch.cat([_reference_subset(loaded, x[i : i + 1], keep[i]) for i in range(5)])
    torch.testing.assert_close(one_bucket, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", SERVER_FAMILIES)
def test_all_patches_kept_equals_plain_forward(family: str) -> None:
    loaded = _model(family)
    x = _images(loaded, 2, seed=3)
    keep = torch.ones(2, loaded.num_patches, dtype=torch.bool)
    with torch.no_grad():
        plain = loaded.model(x)
    torch.testing.assert_close(forward_subset(loaded, x, keep), plain, rtol=0, atol=1e-4)


def test_dropping_patches_changes_the_output_but_unkept_pixels_are_never_read() -> None:
    loaded = _model("deit_tiny_distilled_patch16_224")
    x = _images(loaded, 1, seed=4)
    full = torch.ones(1, loaded.num_patches, dtype=torch.bool)
    keep = _masks(loaded.num_patches, [50], seed=5)
    out = forward_subset(loaded, x, keep)
    assert not torch.allclose(out, forward_subset(loaded, x, full), atol=1e-3)
    # overwrite one dropped patch (row-major index -> 16x16 pixel block)
    dropped = int((~keep[0]).nonzero()[0])
    row, col = divmod(dropped, loaded.grid_size[1])
    p = loaded.patch_size
    x2 = x.clone()
    x2[..., row * p : (row + 1) * p, col * p : (col + 1) * p] = 100.0
    torch.testing.assert_close(forward_subset(loaded, x2, keep), out, rtol=0, atol=0)
    # changing a kept patch does change it
    kept = int(keep[0].nonzero()[0])
    row, col = divmod(kept, loaded.grid_size[1])
    x2[..., row * p : (row + 1) * p, col * p : (col + 1) * p] = 100.0
    assert not torch.allclose(forward_subset(loaded, x2, keep), out, atol=1e-3)


def test_forward_kept_trains_on_the_kept_patches_only() -> None:
    """Gradients reach every kept pixel and no unkept one, rows of mixed length included."""
    loaded = load_model("fmnist-base")
    model = loaded.model
    x = torch.randn(3, 1, 28, 28, requires_grad=True)
    keep = _masks(loaded.num_patches, [49, 30, 7], seed=6)
    logits = forward_kept(model, x, keep)
    torch.testing.assert_close(
        logits, forward_subset(loaded, x.detach(), keep), rtol=1e-4, atol=1e-5
    )
    logits.logsumexp(dim=1).sum().backward()
    assert x.grad is not None
    p = loaded.patch_size
    per_patch = x.grad.abs().unfold(2, p, p).unfold(3, p, p).sum(dim=(1, 4, 5)).flatten(1)
    assert bool((per_patch[~keep] == 0).all())
    assert bool((per_patch[keep] > 0).all())
    assert all(param.grad is not None for param in model.blocks.parameters())


def test_prefix_tokens_are_counted() -> None:
    assert _model("deit_tiny_patch16_224").num_prefix_tokens == 1
    assert _model("deit_tiny_distilled_patch16_224").num_prefix_tokens == 2
    assert _model("register").num_prefix_tokens == 5
    assert _model("deit_tiny_patch16_224").num_patches == 196


def test_keep_mask_of_the_wrong_width_is_a_model_error() -> None:
    loaded = _model("register")
    with pytest.raises(ModelError, match="patches"):
        forward_subset(loaded, _images(loaded, 1), torch.ones(1, 10, dtype=torch.bool))


# ----------------------------------------------------------------------------- buckets, eq. 9


def test_plan_buckets_groups_by_length() -> None:
    assert plan_buckets([]) == []
    assert plan_buckets([10, 10, 10]) == [[0, 1, 2]]
    # sorted by count: 10 | 100, 101 (1 padded token on 201 real is within 8%)
    assert plan_buckets([100, 10, 101]) == [[1], [0, 2]]
    # equal counts keep their original order (ties by position)
    assert plan_buckets([5, 3, 5, 3]) == [[1, 3], [0, 2]]
    # max_batch caps a bucket
    assert plan_buckets([7] * 5, max_batch=2) == [[0, 1], [2, 3], [4]]
    # max_padding 0: only equal lengths share a bucket
    assert plan_buckets([4, 5, 4, 6], max_padding=0.0) == [[0, 2], [1], [3]]
    # 92 + 100 = 192 real tokens, 200 padded: 8 <= 0.08 * 192 -> together
    assert plan_buckets([92, 100]) == [[0, 1]]
    # 90 + 100 = 190 real, 200 padded: 10 > 15.2? no -> together; 80 + 100: 20 > 14.4 -> apart
    assert plan_buckets([90, 100]) == [[0, 1]]
    assert plan_buckets([80, 100]) == [[0], [1]]
    # every position appears exactly once
    counts = [3, 196, 50, 51, 1, 196, 120]
    flat = sorted(i for b in plan_buckets(counts) for i in b)
    assert flat == list(range(len(counts)))


def test_vit_flops_is_eq9_for_depth_12_mlp_4() -> None:
    for n, d in [(197, 192), (197, 768), (50, 384), (1, 64)]:
        assert vit_flops(n, d) == 144 * n * d**2 + 24 * n**2 * d
    # DeiT-Base on a full image: 197 tokens, D = 768
    assert vit_flops(197, 768) == 144 * 197 * 768**2 + 24 * 197**2 * 768
    # generalised: depth 3, mlp 2 -> 3 * (8 N D^2 + 2 N^2 D)
    assert vit_flops(10, 32, depth=3, mlp_ratio=2.0) == 3 * (8 * 10 * 32**2 + 2 * 10**2 * 32)


def test_loaded_flops_counts_prefix_tokens_and_falls_with_fewer_patches() -> None:
    tiny = _model("deit_tiny_patch16_224")
    assert tiny.depth == 12 and tiny.mlp_ratio == 4.0 and tiny.embed_dim == 192
    assert tiny.flops(196) == 144 * 197 * 192**2 + 24 * 197**2 * 192
    costs = [float(tiny.flops(k)) for k in (196, 150, 100, 50, 1)]
    assert costs == sorted(costs, reverse=True)
    assert len(set(costs)) == len(costs)
    distilled = _model("deit_tiny_distilled_patch16_224")
    assert distilled.flops(196) == vit_flops(198, 192)


# ----------------------------------------------------------------------------- checkpoints


def _logits(loaded: LoadedModel, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return loaded.model(x)


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in _model("deit_tiny_patch16_224").model.state_dict().items()}


@pytest.mark.parametrize("form", ["plain", "wrapped", "module-prefix", "safetensors"])
def test_checkpoint_round_trip(
    form: str, tiny_state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    if form == "safetensors":
        path = tmp_path / "tiny.safetensors"
        save_file({k: v.contiguous() for k, v in tiny_state.items()}, str(path))
    else:
        path = tmp_path / "tiny.pth"
        state: Any = tiny_state
        if form == "wrapped":
            state = {"model": tiny_state, "epoch": 3}
        elif form == "module-prefix":
            state = {"model": {f"module.{k}": v for k, v in tiny_state.items()}}
        torch.save(state, path)
    loaded = load_model("deit_tiny_patch16_224", checkpoint=path)
    assert loaded.source == str(path)
    x = _images(loaded, 2, seed=6)
    torch.testing.assert_close(
        _logits(loaded, x), _logits(_model("deit_tiny_patch16_224"), x), rtol=0, atol=0
    )


def test_training_checkpoint_with_args_and_optimizer(
    tiny_state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    # what DeiT's main.py and timm's train.py save: weights next to optimizer state and args
    path = tmp_path / "checkpoint.pth"
    torch.save(
        {
            "model": tiny_state,
            "optimizer": {"state": {}, "param_groups": [{"lr": 5e-4, "params": [0, 1]}]},
            "epoch": 299,
            "args": argparse.Namespace(model="deit_tiny_patch16_224", lr=5e-4),
        },
        path,
    )
    loaded = load_model("deit_tiny_patch16_224", checkpoint=path)
    x = _images(loaded, 1, seed=7)
    torch.testing.assert_close(
        _logits(loaded, x), _logits(_model("deit_tiny_patch16_224"), x), rtol=0, atol=0
    )


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "whole-model.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "hook": Path("/")}, path)  # not a tensor file
    with pytest.raises(CheckpointError, match=r"state_dict\(\)"):
        load_model("deit_tiny_patch16_224", checkpoint=path)


def test_checkpoint_head_sets_the_number_of_classes(tmp_path: Path) -> None:
    reference = load_model("deit_tiny_patch16_224", random_init=1, num_classes=10)
    path = tmp_path / "ten.pth"
    torch.save(reference.model.state_dict(), path)
    loaded = load_model("deit_tiny_patch16_224", checkpoint=path)
    assert loaded.num_classes == 10
    x = _images(loaded, 1)
    torch.testing.assert_close(_logits(loaded, x), _logits(reference, x), rtol=0, atol=0)


def test_model_json_with_a_pth_checkpoint(small_pair: tuple[Path, Path], tmp_path: Path) -> None:
    edge_json, _ = small_pair
    edge = load_model(str(edge_json))
    path = tmp_path / "edge.pth"
    torch.save({"state_dict": edge.model.state_dict()}, path)
    again = load_model(str(edge_json), checkpoint=path)
    x = _images(edge, 2)
    torch.testing.assert_close(_logits(again, x), _logits(edge, x), rtol=0, atol=0)


def test_unknown_model_name_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="deit_tinny_patch16_224") as info:
        load_model("deit_tinny_patch16_224", random_init=0)
    assert not isinstance(info.value, CheckpointError)


def test_a_model_that_is_not_a_vit_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="VisionTransformer"):
        load_model("resnet18", random_init=0)


def test_missing_model_json_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_model(str(tmp_path / "nope.json"))


def test_missing_checkpoint_is_a_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.pth"
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model("deit_tiny_patch16_224", checkpoint=path)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_corrupt_checkpoint_is_a_checkpoint_error(suffix: str, tmp_path: Path) -> None:
    path = tmp_path / f"corrupt{suffix}"
    path.write_bytes(random.Random(0).randbytes(4096))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model("deit_tiny_patch16_224", checkpoint=path)


def test_checkpoint_without_tensors_is_a_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(CheckpointError, match="no tensor state dict"):
        load_model("deit_tiny_patch16_224", checkpoint=path)


def test_checkpoint_of_another_architecture_is_a_checkpoint_error(tmp_path: Path) -> None:
    torch.manual_seed(0)
    small = timm.create_model("deit_small_patch16_224", pretrained=False)
    path = tmp_path / "deit_small.pth"
    torch.save(small.state_dict(), path)
    del small
    with pytest.raises(CheckpointError) as info:
        load_model("deit_tiny_patch16_224", checkpoint=path)
    message = str(info.value)
    assert "does not fit deit_tiny_patch16_224" in message
    assert "(384,)" in message or "384" in message  # names a shape from the file
    assert "model name" in message  # says what to do


def test_small_pair_checkpoint_swap_is_a_checkpoint_error(small_pair: tuple[Path, Path]) -> None:
    edge_json, server_json = small_pair
    with pytest.raises(CheckpointError, match="does not fit"):
        load_model(str(edge_json), checkpoint=server_json.with_suffix(".safetensors"))


def test_no_weights_offline_fails_fast_with_advice(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import huggingface_hub.constants as hub_constants

    def no_network(*_args: object, **_kwargs: object) -> None:
        raise OSError("network is unreachable (test)")

    # no network and an empty hub cache, whatever machine this runs on
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    start = time.monotonic()
    with pytest.raises(CheckpointError) as info:
        load_model("deit_tiny_patch16_224")
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert "deit_tiny_patch16_224" in message
    assert "checkpoint" in message and "--random-init" in message
    assert elapsed < 15, f"offline failure took {elapsed:.1f}s"
    assert hub_constants.HF_HUB_OFFLINE is False  # offline mode was only for the attempt


# ----------------------------------------------------------------------------- preprocessing


def test_deit_preprocessing_defaults_to_the_authors_crop() -> None:
    loaded = _model("deit_tiny_patch16_224")
    cfg = loaded.model.pretrained_cfg
    prep = loaded.preprocessing
    assert prep.input_size == (3, 224, 224)
    assert prep.crop_pct == 0.875
    assert prep.resize_to == 256
    assert prep.mean == tuple(cfg["mean"]) == IMAGENET_MEAN
    assert prep.std == tuple(cfg["std"]) == IMAGENET_STD
    assert prep.interpolation == cfg["interpolation"] == "bicubic"
    assert cfg["crop_pct"] == 0.9  # timm's own value is not the default here


def test_crop_pct_is_overridable() -> None:
    loaded = load_model("deit_tiny_patch16_224", random_init=0, crop_pct=0.9)
    assert loaded.preprocessing.crop_pct == 0.9
    assert loaded.preprocessing.resize_to == 248  # floor(224 / 0.9), as timm
    assert (
        load_model("deit_tiny_patch16_224", random_init=0, crop_pct=1.0).preprocessing.resize_to
        == 224
    )


def test_model_json_preprocessing(small_pair: tuple[Path, Path]) -> None:
    edge = load_model(str(small_pair[0]))
    assert edge.preprocessing.input_size == (3, 64, 64)
    assert edge.preprocessing.crop_pct == 0.875
    assert edge.preprocessing.resize_to == 73
    assert load_model(str(small_pair[0]), crop_pct=1.0).preprocessing.crop_pct == 1.0
    assert edge.num_patches == 64 and edge.patch_size == 8 and edge.num_classes == 1000


def test_normalise_uses_the_models_mean_and_std() -> None:
    loaded = _model("register")
    pixels = torch.full((1, 3, 64, 64), 255, dtype=torch.uint8)
    out = loaded.normalise(pixels)
    for c in range(3):
        assert out[0, c, 0, 0].item() == pytest.approx((1 - IMAGENET_MEAN[c]) / IMAGENET_STD[c])
