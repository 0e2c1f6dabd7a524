"""Build and load edge and server models: hub, checkpoint files, seeded random, shipped pair.

Any timm ``VisionTransformer`` with a class token works as edge or server:
``deit_{tiny,small,base}_patch16_224``, ``vit_*_patch16_224``, distilled DeiT
(its distillation token is a prefix token: never selected, always kept) and
register-token ViTs. Weights come from (a) the hub (:mod:`.hub`: a timm name or
an ``hf-hub:OWNER/REPO`` id; online, or from the local cache), (b) a local
checkpoint of any format :mod:`.checkpoints` reads (timm/DeiT ``.pth`` or
``.safetensors``, timm train checkpoints and their EMA weights, transformers
ViT/DeiT checkpoints converted on load), (c) a seeded random initialisation, or
(d) the pair shipped inside this package (``fmnist-tiny``, ``fmnist-base``).

Loading has no process-wide side effects: a random initialisation draws from a
forked RNG (the caller's global RNG state is unchanged), and an offline machine
is detected before the hub client is asked, without touching its settings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ..cost import vit_flops
from ..data import AUTHORS_CROP_PCT, Preprocessing
from ..errors import CheckpointError, ModelError
from . import _vit, hub
from ._model_json import check_built, read_model_json
from .checkpoints import Checkpoint, fit_checkpoint, read_checkpoint, read_state_dict
from .devices import resolve_device

__all__ = [
    "SHIPPED_MODELS",
    "LoadedModel",
    "load_model",
    "read_state_dict",
    "with_crop_pct",
]

logger = logging.getLogger(__name__)

SHIPPED_MODELS = ("fmnist-tiny", "fmnist-base", "cfmnist-tiny", "cfmnist-base")


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


def _seeded(seed: int, build: Any) -> Any:
    """``build()`` with torch's CPU RNG seeded, without changing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _load_config_model(
    config_path: Path,
    weights: Path | None,
    crop_pct: float | None,
    random_init: int | None,
    ema: bool = False,
) -> LoadedModel:
    cfg = read_model_json(config_path)
    kwargs = dict(cfg["vit_kwargs"])
    try:
        if random_init is not None:
            model = _seeded(random_init, lambda: _vit.build_vit(kwargs))
        else:
            model = _vit.build_vit(kwargs)
    except Exception as exc:  # timm's constructor fails in many ways on bad arguments
        raise CheckpointError(
            f"model config {config_path}: its vit_kwargs cannot build a ViT "
            f"({type(exc).__name__}: {exc})"
        ) from None
    check_built(cfg, model, config_path)
    source = f"random:{random_init}"
    if random_init is None:
        wpath = weights or config_path.with_suffix(".safetensors")
        fit_checkpoint(model, read_checkpoint(wpath, ema=ema), cfg.get("name", config_path.stem))
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
    ema: bool = False,
) -> LoadedModel:
    """Build an edge or server model, in eval mode.

    Args:
        name: a timm ViT name (``deit_tiny_patch16_224``), a hub id
            (``hf-hub:timm/deit_tiny_patch16_224.fb_in1k``), a shipped model
            (``fmnist-tiny``, ``fmnist-base``), or the path of a collabvit model
            JSON written by ``collabvit train``.
        checkpoint: weights of any format :mod:`.checkpoints` reads (timm/DeiT
            ``.pth``/``.safetensors``, timm train checkpoints, transformers
            ViT/DeiT files or folders); its head decides the number of classes.
        random_init: seed for a random initialisation (no weights needed); the
            caller's global RNG state is left as it was.
        crop_pct: crop ratio; default 0.875 for timm models (the authors'
            DeiT evaluation), the model's own for shipped models.
        device: where the model lives: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``,
            checked (:func:`.devices.resolve_device`) before anything is built.
        num_classes: classifier size for random init (default: the model's).
        ema: the EMA weights of a timm/DeiT train checkpoint.

    Without ``checkpoint`` or ``random_init`` the timm hub weights are used;
    offline this fails with one clear :class:`CheckpointError`.
    """
    where = resolve_device(device)
    path_like = Path(name)
    if name in SHIPPED_MODELS:
        config_path = _shipped_dir() / f"{name}.json"
        if not config_path.is_file():
            raise ModelError(f"shipped model {name} is missing from this install ({config_path})")
        loaded = _load_config_model(
            config_path, Path(checkpoint) if checkpoint else None, crop_pct, random_init, ema
        )
    elif path_like.suffix == ".json":
        if not path_like.is_file():
            what = "is a folder, not a file" if path_like.is_dir() else "does not exist"
            raise ModelError(f"model config {name} {what}")
        loaded = _load_config_model(
            path_like, Path(checkpoint) if checkpoint else None, crop_pct, random_init, ema
        )
    else:
        loaded = _load_timm_model(name, checkpoint, random_init, crop_pct, num_classes, ema)
    _vit.check_supported(loaded.model, name)
    return loaded.to(where)


def _build(name: str, **kwargs: Any) -> Any:
    """An untrained timm model (an ``hf-hub:`` id: the architecture its config names)."""
    import timm

    if hub.is_hub_id(name):
        return hub.hub_architecture(name, **kwargs)
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except Exception as exc:
        raise ModelError(f"cannot build {name}: {exc}") from None


def _from_checkpoint(name: str, ckpt: Checkpoint) -> Any:
    n = ckpt.num_classes
    model = _build(name, **({"num_classes": n} if n is not None else {}))
    _vit.check_supported(model, name)
    fit_checkpoint(model, ckpt, name)
    return model


def _preprocessing(model: Any, crop_pct: float | None, ckpt: Checkpoint | None) -> Preprocessing:
    prep = _vit.preprocessing_from_timm(model, AUTHORS_CROP_PCT if crop_pct is None else crop_pct)
    if ckpt is None or ckpt.mean is None or ckpt.std is None:
        return prep
    if (ckpt.mean, ckpt.std) != (prep.mean, prep.std):
        logger.info(
            "%s: normalising with its preprocessor_config.json mean %s / std %s (not %s / %s)",
            ckpt.label,
            ckpt.mean,
            ckpt.std,
            prep.mean,
            prep.std,
        )
    return replace(prep, mean=ckpt.mean, std=ckpt.std)


def _load_timm_model(
    name: str,
    checkpoint: str | Path | None,
    random_init: int | None,
    crop_pct: float | None,
    num_classes: int | None,
    ema: bool = False,
) -> LoadedModel:
    import timm

    if not hub.is_hub_id(name) and not timm.is_model(name):
        raise ModelError(
            f"unknown model name {name!r}: use a timm ViT such as deit_tiny_patch16_224, "
            f"an hf-hub:OWNER/REPO id, a shipped model ({', '.join(SHIPPED_MODELS)}), "
            "or a model JSON path"
        )
    ckpt = None
    if checkpoint is not None:
        ckpt = read_checkpoint(checkpoint, ema=ema)
        model = _from_checkpoint(name, ckpt)
        source = str(checkpoint)
    elif random_init is not None:
        kwargs = {"num_classes": num_classes} if num_classes is not None else {}
        model = _seeded(random_init, lambda: _build(name, **kwargs))
        if model.num_classes == 0:  # feature-only models (e.g. DINOv2): give them a head
            model = _seeded(random_init, lambda: _build(name, num_classes=1000))
        source = f"random:{random_init}"
    else:
        model = hub.pretrained_model(name)
        source = "hub"
    model = _vit.check_supported(model, name)
    if model.num_classes == 0:
        raise ModelError(f"{name} has no classifier head: pass a checkpoint with a head")
    return LoadedModel(
        name,
        model.eval(),
        _preprocessing(model, crop_pct, ckpt),
        _vit.imagenet_names(int(model.num_classes)),
        source,
    )


def with_crop_pct(loaded: LoadedModel, crop_pct: float) -> LoadedModel:
    """The same model with another crop ratio."""
    return replace(loaded, preprocessing=replace(loaded.preprocessing, crop_pct=crop_pct))
