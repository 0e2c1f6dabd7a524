"""Build and load edge and server models: hub, checkpoint files, seeded random, shipped pair.

Any timm ``VisionTransformer`` with a class token works as edge or server:
``deit_{tiny,small,base}_patch16_224``, ``vit_*_patch16_224``, distilled DeiT
(its distillation token is a prefix token: never selected, always kept) and
register-token ViTs. Weights come from (a) the hub when online, (b) a local
checkpoint (timm/DeiT ``.pth`` with or without a top-level ``model`` key, or
``.safetensors``), (c) a seeded random initialisation, or (d) the pair shipped
inside this package (``fmnist-tiny``, ``fmnist-base``).

Loading has no process-wide side effects: a random initialisation draws from a
forked RNG (the caller's global RNG state is unchanged), and an offline machine
is detected before the hub client is asked, without touching its settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch

from ..cost import vit_flops
from ..data import AUTHORS_CROP_PCT, Preprocessing
from ..errors import CheckpointError, ModelError
from . import _vit

__all__ = [
    "SHIPPED_MODELS",
    "LoadedModel",
    "load_model",
    "read_state_dict",
    "with_crop_pct",
]

logger = logging.getLogger(__name__)

SHIPPED_MODELS = ("fmnist-tiny", "fmnist-base")


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
        return float(fc1.out_features / fc1.in_features)

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

    def flops(self, num_patches: Any) -> Any:
        """Eq. 9 cost of one forward over ``num_patches`` patches (+ prefix tokens)."""
        return vit_flops(
            num_patches + self.num_prefix_tokens, self.embed_dim, self.depth, self.mlp_ratio
        )

    def to(self, device: str | torch.device) -> LoadedModel:
        self.model.to(device)
        return self


def _shipped_dir() -> Path:
    return Path(str(resources.files("collabvit") / "assets" / "models"))


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


def _seeded(seed: int, build: Any) -> Any:
    """``build()`` with torch's CPU RNG seeded, without changing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _load_config_model(
    config_path: Path, weights: Path | None, crop_pct: float | None, random_init: int | None
) -> LoadedModel:
    try:
        cfg = json.loads(config_path.read_text())
        kwargs = dict(cfg["vit_kwargs"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"model config {config_path} is unreadable: {exc}") from None
    try:
        if random_init is not None:
            model = _seeded(random_init, lambda: _vit.build_vit(kwargs))
        else:
            model = _vit.build_vit(kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        raise CheckpointError(f"model config {config_path} cannot build a ViT: {exc}") from None
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
        random_init: seed for a random initialisation (no weights needed); the
            caller's global RNG state is left as it was.
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
    _vit.check_supported(loaded.model, name)
    return loaded.to(device)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub accepts a TCP connection (assumed so behind a proxy)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # only the proxy knows; let the hub client try
    url = urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def _cached_hub_file(name: str) -> str | None:
    """The hub weights of ``name`` already in the local Hugging Face cache, if any."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return found
    return None


def _hub_model(name: str) -> Any:
    """timm's pretrained model: downloaded when the hub answers, else from the local cache.

    NOTE: asking an unreachable hub costs about a minute of client retries, so
    offline the cached file is given to timm directly (no hub setting is changed).
    """
    import timm

    if _hub_reachable():
        return timm.create_model(name, pretrained=True)
    cached = _cached_hub_file(name)
    if cached is None:
        raise OSError("hub unreachable and no cached weights")
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": cached})


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
        n = _vit.num_classes_in(state)
        if n is not None:
            kwargs["num_classes"] = n
        try:
            model = timm.create_model(name, pretrained=False, **kwargs)
        except Exception as exc:
            raise ModelError(f"cannot build {name}: {exc}") from None
        _vit.check_supported(model, name)
        _load_weights(model, state, path, name)
        source = str(path)
    elif random_init is not None:
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        model = _seeded(random_init, lambda: timm.create_model(name, pretrained=False, **kwargs))
        if model.num_classes == 0:  # feature-only models (e.g. DINOv2): give them a head
            model = _seeded(
                random_init, lambda: timm.create_model(name, pretrained=False, num_classes=1000)
            )
        source = f"random:{random_init}"
    else:
        try:
            model = _hub_model(name)
        except Exception as exc:  # the hub client raises many kinds when offline
            logger.debug("hub download of %s failed: %r", name, exc)
            raise CheckpointError(
                f"pretrained weights for {name} could not be downloaded (offline?): pass a "
                "checkpoint file with --edge-checkpoint/--server-checkpoint PATH, or "
                "--random-init SEED for untrained weights"
            ) from None
        source = "hub"
    model = _vit.check_supported(model, name)
    if model.num_classes == 0:
        raise ModelError(f"{name} has no classifier head: pass a checkpoint with a head")
    return LoadedModel(
        name,
        model.eval(),
        _vit.preprocessing_from_timm(model, AUTHORS_CROP_PCT if crop_pct is None else crop_pct),
        _vit.imagenet_names(int(model.num_classes)),
        source,
    )


def with_crop_pct(loaded: LoadedModel, crop_pct: float) -> LoadedModel:
    """The same model with another crop ratio."""
    return replace(loaded, preprocessing=replace(loaded.preprocessing, crop_pct=crop_pct))
