"""Models from the Hugging Face hub: timm names and ``hf-hub:OWNER/REPO`` ids.

Online, timm downloads the weights (and, for an ``hf-hub:`` id, the config that
names the architecture). Offline, asking the hub costs about a minute of client
retries, so an unreachable hub is detected first and the files already in the
local Hugging Face cache are handed to timm directly; the hub client's settings
(``HF_HUB_OFFLINE`` and the rest) are never changed.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import CheckpointError, ModelError

__all__ = ["HUB_PREFIX", "hub_architecture", "hub_reachable", "is_hub_id", "pretrained_model"]

logger = logging.getLogger(__name__)

HUB_PREFIX = "hf-hub:"
"""timm's prefix for a model named by its hub repository: ``hf-hub:timm/deit_tiny_patch16_224``."""

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def is_hub_id(name: str) -> bool:
    """Whether ``name`` is an ``hf-hub:OWNER/REPO[@REVISION]`` id."""
    return name.startswith(HUB_PREFIX)


def _split_hub_id(name: str) -> tuple[str, str | None]:
    """(repo id, revision or None) of an ``hf-hub:`` id; ModelError when malformed."""
    repo, _, revision = name[len(HUB_PREFIX) :].partition("@")
    owner, _, model = repo.partition("/")
    if not owner or not model or "/" in model:
        raise ModelError(
            f"{name!r} is not a hub model id: write hf-hub:OWNER/REPO, e.g. "
            "hf-hub:timm/deit_tiny_patch16_224.fb_in1k"
        )
    return repo, revision or None


def hub_reachable(timeout: float = 3.0) -> bool:
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


def _cached(repo: str, filename: str, revision: str | None = None) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, revision=revision)
    return found if isinstance(found, str) else None


def _cached_hub_file(name: str) -> str | None:
    """The hub weights of the timm model ``name`` already in the local cache, if any."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        return None
    for filename in _WEIGHT_FILES:
        found = _cached(repo, filename)
        if found is not None:
            return found
    return None


def _cached_snapshot(name: str, with_weights: bool) -> Path | None:
    """The cached snapshot folder of an ``hf-hub:`` id (config.json, and weights if asked)."""
    repo, revision = _split_hub_id(name)
    config = _cached(repo, "config.json", revision)
    if config is None:
        return None
    folder = Path(config).parent
    if with_weights and not any(_cached(repo, f, revision) for f in _WEIGHT_FILES):
        return None
    return folder


def _offline_advice(name: str) -> str:
    advice = (
        "pass a checkpoint file with --edge-checkpoint/--server-checkpoint PATH, or "
        "--random-init SEED for untrained weights"
    )
    if is_hub_id(name):
        arch = _split_hub_id(name)[0].split("/", 1)[1].split(".", 1)[0]
        advice += f"; with either, name the architecture ({arch}): the id's config is on the hub"
    return advice


class _NotCached(Exception):
    """The hub is unreachable and the files are not in the local cache."""


def _create(name: str, pretrained: bool, **kwargs: Any) -> Any:
    """``timm.create_model``; offline, from the local hub cache (_NotCached when absent)."""
    import timm

    if hub_reachable():
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    if is_hub_id(name):
        folder = _cached_snapshot(name, with_weights=pretrained)
        if folder is None:
            raise _NotCached
        logger.info("hub unreachable: %s from the local cache (%s)", name, folder)
        return timm.create_model(f"local-dir:{folder}", pretrained=pretrained, **kwargs)
    cached = _cached_hub_file(name)
    if cached is None:
        raise _NotCached
    return timm.create_model(
        name, pretrained=True, pretrained_cfg_overlay={"file": cached}, **kwargs
    )


def _why(exc: Exception) -> str:
    if isinstance(exc, _NotCached):
        return "offline?"
    first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def pretrained_model(name: str) -> Any:
    """timm's pretrained model ``name`` (a timm name or an ``hf-hub:`` id), weights included.

    Raises:
        CheckpointError: the weights could not be downloaded and are not cached.
    """
    try:
        return _create(name, pretrained=True)
    except ModelError:
        raise
    except Exception as exc:  # the hub client raises many kinds when offline
        logger.debug("hub download of %s failed: %r", name, exc)
        raise CheckpointError(
            f"pretrained weights for {name} could not be downloaded ({_why(exc)}): "
            + _offline_advice(name)
        ) from None


def hub_architecture(name: str, **kwargs: Any) -> Any:
    """The architecture of an ``hf-hub:`` id without its weights (its config.json is fetched).

    Raises:
        CheckpointError: the config could not be downloaded and is not cached.
    """
    try:
        return _create(name, pretrained=False, **kwargs)
    except ModelError:
        raise
    except Exception as exc:
        logger.debug("hub config of %s failed: %r", name, exc)
        raise CheckpointError(
            f"the config of {name} could not be downloaded ({_why(exc)}): it names the "
            "architecture; " + _offline_advice(name)
        ) from None
