"""Edge and server models: build, load and run timm ViTs, including on a subset of patches.

Any timm ``VisionTransformer`` with a class token works as edge or server:
``deit_{tiny,small,base}_patch16_224``, ``vit_*_patch16_224``, distilled DeiT
(its distillation token is a prefix token: never selected, always kept) and
register-token ViTs. Weights come from (a) the hub when online, (b) a local
checkpoint (timm/DeiT ``.pth`` with or without a top-level ``model`` key, or
``.safetensors``), (c) a seeded random initialisation, or (d) the pair shipped
inside this package (``fmnist-tiny``, ``fmnist-base``).

The server runs on the patches it received only (paper Sec. III, eq. 9):
:func:`forward_subset` embeds just the kept patches, each with its own position
embedding, and runs a batch of images with different patch counts in length
buckets, padding inside a bucket with a key mask.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from .errors import CheckpointError, ModelError

__all__ = [
    "SHIPPED_MODELS",
    "LoadedModel",
    "Preprocessing",
    "build_vit",
    "forward_kept",
    "forward_subset",
    "load_model",
    "plan_buckets",
    "vit_flops",
]

logger = logging.getLogger(__name__)

SHIPPED_MODELS = ("fmnist-tiny", "fmnist-base")
AUTHORS_CROP_PCT = 0.875  # DeiT evaluation: resize 256, centre crop 224


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the model's input tensor.

    Resize the shorter side to ``floor(H / crop_pct)`` with ``interpolation``,
    centre-crop ``H x W``, scale to [0, 1], normalise with ``mean``/``std``.
    The uint8 pixels after the crop are what the edge puts on the wire.
    """

    input_size: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"
    crop_pct: float = AUTHORS_CROP_PCT

    @property
    def channels(self) -> int:
        return self.input_size[0]

    @property
    def resize_to(self) -> int:
        return int(self.input_size[1] / self.crop_pct)


@dataclass
class LoadedModel:
    """A timm ViT with what collabvit needs to know about it."""

    name: str
    model: Any  # a timm VisionTransformer (its submodules are untyped in timm)
    preprocessing: Preprocessing
    class_names: list[str] | None = None
    source: str = "random"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def patch_size(self) -> int:
        return int(self.model.patch_embed.patch_size[0])

    @property
    def grid_size(self) -> tuple[int, int]:
        gh, gw = self.model.patch_embed.grid_size
        return int(gh), int(gw)

    @property
    def num_patches(self) -> int:
        gh, gw = self.grid_size
        return gh * gw

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.model.num_prefix_tokens)

    @property
    def embed_dim(self) -> int:
        return int(self.model.embed_dim)

    @property
    def depth(self) -> int:
        return len(self.model.blocks)

    @property
    def mlp_ratio(self) -> float:
        fc1 = self.model.blocks[0].mlp.fc1
        return fc1.out_features / fc1.in_features

    @property
    def num_classes(self) -> int:
        return int(self.model.num_classes)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def class_name(self, index: int) -> str:
        if self.class_names and 0 <= index < len(self.class_names):
            return self.class_names[index]
        return str(index)

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels (B, C, H, W) -> normalised float input (B, C, H, W)."""
        mean = torch.tensor(self.preprocessing.mean, device=pixels.device).view(1, -1, 1, 1)
        std = torch.tensor(self.preprocessing.std, device=pixels.device).view(1, -1, 1, 1)
        return (pixels.float() / 255.0 - mean) / std

    def flops(self, num_patches: int | torch.Tensor) -> float | torch.Tensor:
        """Eq. 9 cost of one forward over ``num_patches`` patches (+ prefix tokens)."""
        return vit_flops(
            num_patches + self.num_prefix_tokens, self.embed_dim, self.depth, self.mlp_ratio
        )

    def to(self, device: str | torch.device) -> LoadedModel:
        self.model.to(device)
        return self


def vit_flops(
    num_tokens: int | torch.Tensor, dim: int, depth: int = 12, mlp_ratio: float = 4.0
) -> Any:
    """Multiply-accumulates of a ViT encoder, the paper's eq. 9 generalised.

    Per block: ``(4 + 2 * mlp_ratio) * N * D^2`` (qkv, projection, MLP) plus
    ``2 * N^2 * D`` (scores and weighted sum). For 12 blocks and mlp_ratio 4 this
    is exactly eq. 9: ``144 N D^2 + 24 N^2 D``.
    """
    n = num_tokens
    return depth * ((4 + 2 * mlp_ratio) * n * dim**2 + 2 * n**2 * dim)


# --------------------------------------------------------------------------- building


def build_vit(kwargs: dict[str, Any]) -> VisionTransformer:
    """A timm VisionTransformer from constructor kwargs (the shipped models' JSON)."""
    return VisionTransformer(**kwargs)


def _shipped_dir() -> Path:
    return Path(str(resources.files("collabvit") / "assets" / "models"))


def _check_supported(model: Any, name: str) -> Any:
    if not isinstance(model, VisionTransformer):
        raise ModelError(
            f"{name} is a {type(model).__name__}, not a timm VisionTransformer: use a ViT with a "
            "class token such as deit_tiny_patch16_224 or vit_base_patch16_224"
        )
    if model.cls_token is None or model.global_pool != "token" or model.attn_pool is not None:
        raise ModelError(
            f"{name} does not classify from a class token (global_pool={model.global_pool!r}): "
            "the method needs the class token's attention; pick a model with a CLS token"
        )
    if not hasattr(model.blocks[-1], "attn") or not hasattr(model.blocks[-1].attn, "qkv"):
        raise ModelError(
            f"{name} uses an attention block collabvit cannot probe "
            f"({type(model.blocks[-1]).__name__}): use a standard timm ViT block"
        )
    kernel = model.patch_embed.proj.kernel_size
    stride = model.patch_embed.proj.stride
    if tuple(kernel) != tuple(stride) or kernel[0] != kernel[1]:
        raise ModelError(f"{name}: patch embedding must be a square stride=kernel convolution")
    if getattr(model, "dynamic_img_size", False):
        raise ModelError(f"{name}: dynamic image size is not supported; use a fixed-size ViT")
    return model


def _allow_training_args() -> AbstractContextManager[Any]:
    """Let ``weights_only`` loading accept the ``argparse.Namespace`` that DeiT and timm
    training scripts store under ``args`` in their checkpoints."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    return safe_globals([argparse.Namespace]) if safe_globals is not None else nullcontext()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file: ``.safetensors`` or a torch ``.pth``/``.pt``.

    Unwraps a top-level ``model``, ``state_dict`` or ``model_ema`` key and a
    ``module.`` prefix left by DistributedDataParallel.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist: check the path")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(p))
        else:
            with _allow_training_args():
                state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt archives raise many different types
        raise CheckpointError(
            f"checkpoint {p} cannot be read ({type(exc).__name__}): the file is corrupt or "
            "not a PyTorch/safetensors checkpoint of tensors (save model.state_dict())"
        ) from None
    if isinstance(state, dict):
        for key in ("model", "state_dict", "model_ema"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {p} holds no tensor state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_weights(model: Any, state: dict[str, torch.Tensor], path: Path, name: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            detail.append(
                f"{len(wrong)} of another shape (e.g. {k}: {tuple(state[k].shape)} in the file, "
                f"{tuple(own[k].shape)} in {name})"
            )
        raise CheckpointError(
            f"checkpoint {path} does not fit {name}: "
            + ", ".join(detail)
            + "; pass the model name the checkpoint was trained with"
        )
    model.load_state_dict(state)


def _num_classes_in(state: dict[str, torch.Tensor]) -> int | None:
    head = state.get("head.weight")
    return int(head.shape[0]) if head is not None and head.ndim == 2 else None


def _imagenet_names(num_classes: int) -> list[str] | None:
    if num_classes != 1000:
        return None
    try:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return [info.index_to_description(i).split(",")[0] for i in range(1000)]
    except Exception:  # metadata missing from an older timm
        return None


def _preprocessing_from_timm(model: Any, crop_pct: float | None) -> Preprocessing:
    cfg = model.pretrained_cfg or {}
    size = tuple(cfg.get("input_size", (3, *model.patch_embed.img_size)))
    return Preprocessing(
        input_size=(int(size[0]), int(size[1]), int(size[2])),
        mean=tuple(float(m) for m in cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(float(s) for s in cfg.get("std", (0.229, 0.224, 0.225))),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        crop_pct=AUTHORS_CROP_PCT if crop_pct is None else crop_pct,
    )


def _load_config_model(
    config_path: Path, weights: Path | None, crop_pct: float | None, random_init: int | None
) -> LoadedModel:
    try:
        cfg = json.loads(config_path.read_text())
        kwargs = dict(cfg["vit_kwargs"])
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"model config {config_path} is unreadable: {exc}") from None
    if random_init is not None:
        torch.manual_seed(random_init)
    model = build_vit(kwargs)
    source = f"random:{random_init}"
    if random_init is None:
        wpath = weights or config_path.with_suffix(".safetensors")
        _load_weights(model, read_state_dict(wpath), wpath, cfg.get("name", config_path.stem))
        source = str(wpath)
    prep = Preprocessing(
        input_size=tuple(cfg["input_size"]),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        interpolation=cfg.get("interpolation", "bilinear"),
        crop_pct=float(cfg.get("crop_pct", 1.0)) if crop_pct is None else crop_pct,
    )
    return LoadedModel(
        cfg.get("name", config_path.stem),
        model.eval(),
        prep,
        cfg.get("class_names"),
        source,
        extra=cfg,
    )


def load_model(
    name: str,
    checkpoint: str | Path | None = None,
    random_init: int | None = None,
    crop_pct: float | None = None,
    device: str | torch.device = "cpu",
    num_classes: int | None = None,
) -> LoadedModel:
    """Build an edge or server model, in eval mode.

    Args:
        name: a timm ViT name (``deit_tiny_patch16_224``), a shipped model
            (``fmnist-tiny``, ``fmnist-base``), or the path of a collabvit model
            JSON written by ``collabvit train``.
        checkpoint: weights file (``.pth``/``.pt``/``.safetensors``); its head
            decides the number of classes.
        random_init: seed for a random initialisation (no weights needed).
        crop_pct: crop ratio; default 0.875 for timm models (the authors'
            DeiT evaluation), the model's own for shipped models.
        device: where the model lives.
        num_classes: classifier size for random init (default: the model's).

    Without ``checkpoint`` or ``random_init`` the timm hub weights are used;
    offline this fails with one clear :class:`CheckpointError`.
    """
    path_like = Path(name)
    if name in SHIPPED_MODELS:
        config_path = _shipped_dir() / f"{name}.json"
        if not config_path.is_file():
            raise ModelError(f"shipped model {name} is missing from this install ({config_path})")
        loaded = _load_config_model(
            config_path, Path(checkpoint) if checkpoint else None, crop_pct, random_init
        )
    elif path_like.suffix == ".json":
        if not path_like.is_file():
            raise ModelError(f"model config {name} does not exist")
        loaded = _load_config_model(
            path_like, Path(checkpoint) if checkpoint else None, crop_pct, random_init
        )
    else:
        loaded = _load_timm_model(name, checkpoint, random_init, crop_pct, num_classes)
    _check_supported(loaded.model, name)
    return loaded.to(device)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub accepts a TCP connection (assumed so behind a proxy)."""
    from huggingface_hub import constants

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # only the proxy knows; let the hub client try
    url = urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError:
        return False
    return True


@contextmanager
def _offline_unless_reachable() -> Iterator[None]:
    """Put the hub client in offline mode (local cache only) while the hub is unreachable.

    NOTE: without this an offline machine waits through the client's retries
    (about a minute, with a warning per retry) before the download fails.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or _hub_reachable():
        yield
        return
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = False


def _load_timm_model(
    name: str,
    checkpoint: str | Path | None,
    random_init: int | None,
    crop_pct: float | None,
    num_classes: int | None,
) -> LoadedModel:
    import timm

    if not timm.is_model(name):
        raise ModelError(
            f"unknown model name {name!r}: use a timm ViT such as deit_tiny_patch16_224, "
            f"a shipped model ({', '.join(SHIPPED_MODELS)}), or a model JSON path"
        )
    kwargs: dict[str, Any] = {}
    if checkpoint is not None:
        path = Path(checkpoint)
        state = read_state_dict(path)
        n = _num_classes_in(state)
        if n is not None:
            kwargs["num_classes"] = n
        try:
            model = timm.create_model(name, pretrained=False, **kwargs)
        except Exception as exc:
            raise ModelError(f"cannot build {name}: {exc}") from None
        _check_supported(model, name)
        _load_weights(model, state, path, name)
        source = str(path)
    elif random_init is not None:
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        torch.manual_seed(random_init)
        model = timm.create_model(name, pretrained=False, **kwargs)
        if model.num_classes == 0:  # feature-only models (e.g. DINOv2): give them a head
            torch.manual_seed(random_init)
            model = timm.create_model(name, pretrained=False, num_classes=1000)
        source = f"random:{random_init}"
    else:
        try:
            with _offline_unless_reachable():
                model = timm.create_model(name, pretrained=True)
        except Exception as exc:  # the hub client raises many kinds when offline
            logger.debug("hub download of %s failed: %r", name, exc)
            raise CheckpointError(
                f"pretrained weights for {name} could not be downloaded (offline?): pass a "
                "checkpoint file with --edge-checkpoint/--server-checkpoint PATH, or "
                "--random-init SEED for untrained weights"
            ) from None
        source = "hub"
    model = _check_supported(model, name)
    if model.num_classes == 0:
        raise ModelError(f"{name} has no classifier head: pass a checkpoint with a head")
    return LoadedModel(
        name,
        model.eval(),
        _preprocessing_from_timm(model, crop_pct),
        _imagenet_names(int(model.num_classes)),
        source,
    )


def with_crop_pct(loaded: LoadedModel, crop_pct: float) -> LoadedModel:
    """The same model with another crop ratio."""
    return replace(loaded, preprocessing=replace(loaded.preprocessing, crop_pct=crop_pct))


# --------------------------------------------------------------------------- subset forward


def _prefix_tokens(model: Any, batch: int) -> torch.Tensor:
    """The prefix tokens (CLS, distillation or registers) with their position embeddings.

    Returns (B, num_prefix, D).
    """
    tokens = [model.cls_token]
    dist = getattr(model, "dist_token", None)
    if dist is not None:
        tokens.append(dist)
    if model.reg_token is not None:
        tokens.append(model.reg_token)
    prefix = torch.cat(tokens, dim=1)  # (1, P, D)
    if not model.no_embed_class and model.pos_embed is not None:
        prefix = prefix + model.pos_embed[:, : prefix.shape[1]]
    return prefix.expand(batch, -1, -1)


def _patch_pos_embed(model: Any) -> torch.Tensor:
    """Position embeddings of the patches only: (N, D)."""
    pos = model.pos_embed
    if model.no_embed_class:
        return pos[0]
    return pos[0, model.num_prefix_tokens :]


def _embed_patches(
    model: VisionTransformer, images: torch.Tensor, patch_index: torch.Tensor
) -> torch.Tensor:
    """Embed only the indexed patches of each image.

    Args:
        images: (B, C, H, W) normalised input.
        patch_index: (B, K) long, row-major patch indices to embed.

    Returns:
        (B, K, D) patch tokens with their own position embeddings.
    """
    proj = model.patch_embed.proj
    p = proj.kernel_size[0]
    b, c = images.shape[:2]
    patches = images.unfold(2, p, p).unfold(3, p, p)  # (B, C, gh, gw, p, p)
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(b, -1, c * p * p)  # (B, N, C*p*p)
    idx = patch_index.unsqueeze(-1).expand(-1, -1, patches.shape[-1])
    kept = torch.gather(patches, 1, idx)  # (B, K, C*p*p)
    tokens = F.linear(kept, proj.weight.reshape(proj.out_channels, -1), proj.bias)  # (B, K, D)
    tokens = model.patch_embed.norm(tokens)
    return tokens + _patch_pos_embed(model)[patch_index]


def _forward_tokens(
    model: VisionTransformer,
    images: torch.Tensor,
    patch_index: torch.Tensor,
    valid: torch.Tensor | None,
) -> torch.Tensor:
    """Run the encoder and head on the given patches. valid: (B, K) bool or None."""
    x = torch.cat(
        [_prefix_tokens(model, images.shape[0]), _embed_patches(model, images, patch_index)], dim=1
    )  # (B, P + K, D)
    x = model.norm_pre(x)
    if valid is None:
        x = model.blocks(x)
    else:
        prefix_ok = valid.new_ones(valid.shape[0], model.num_prefix_tokens)
        keys = torch.cat([prefix_ok, valid], dim=1)  # (B, P + K)
        mask = torch.zeros(keys.shape, dtype=x.dtype, device=x.device)
        mask.masked_fill_(~keys, float("-inf"))
        mask = mask[:, None, None, :]  # (B, 1, 1, P + K): padded keys get no weight
        for blk in model.blocks:
            x = blk(x, attn_mask=mask)
    x = model.norm(x)
    return model.forward_head(x)


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
    """Server logits from only the kept patches of each image.

    Only the kept patches are embedded; each keeps its own position embedding
    and the prefix tokens keep theirs. Images with different patch counts run
    in length buckets (see :func:`plan_buckets`); within a bucket shorter
    sequences are padded and the padding is masked out of every attention.
    The logits equal those of running each image alone (up to float rounding).

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
    out = torch.empty(b, loaded.num_classes, device=images.device)
    for bucket in plan_buckets(counts, max_batch, max_padding):
        out[bucket] = forward_kept(model, images[bucket], keep_mask[bucket]).float()
    return out


def forward_kept(
    model: VisionTransformer, images: torch.Tensor, keep_mask: torch.Tensor
) -> torch.Tensor:
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
        return _forward_tokens(model, images, patch_index, None)
    valid = torch.arange(k, device=keep_mask.device)[None, :] < counts[:, None]
    return _forward_tokens(model, images, patch_index, valid)
