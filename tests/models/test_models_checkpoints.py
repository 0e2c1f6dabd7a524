"""Checkpoint formats beyond a plain state dict: timm/DeiT train checkpoints and --ema,
unrecognised layouts, and ``hf-hub:`` ids (offline: from the local cache, or one fast line).

The transformers ViT/DeiT conversion has its own file (test_models_transformers.py).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import huggingface_hub.constants as hub_constants
import pytest
import torch

from collabvit.cli import add_model_options, load_role
from collabvit.errors import CheckpointError, ModelError
from collabvit.models import LoadedModel, hub, load_model, read_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def _logits(loaded: LoadedModel, seed: int = 0) -> torch.Tensor:
    _, h, w = loaded.preprocessing.input_size
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return loaded.model(x)


def _perturbed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Other weights of the same shapes (stand-in for the EMA copy)."""
    return {k: v + 0.01 * torch.ones_like(v) for k, v in state.items()}


@pytest.fixture(scope="module")
def edge(small_pair: tuple[Path, Path]) -> tuple[str, LoadedModel, LoadedModel]:
    """(model JSON path, its model, the same model with 'EMA' weights)."""
    edge_json = str(small_pair[0])
    plain = load_model(edge_json)
    ema = load_model(edge_json)
    ema.model.load_state_dict(_perturbed(plain.model.state_dict()))
    return edge_json, plain, ema


def _train_checkpoint(path: Path, plain: LoadedModel, ema: LoadedModel | None, style: str) -> Path:
    """What timm's train.py (style 'timm') or DeiT's main.py (style 'deit') saves."""
    timm_style = style == "timm"
    weights, ema_key = ("state_dict", "state_dict_ema") if timm_style else ("model", "model_ema")
    ckpt: dict[str, Any] = {
        weights: plain.model.state_dict(),
        "optimizer": {"state": {}, "param_groups": [{"lr": 5e-4, "params": [0]}]},
        "epoch": 299,
        "args": argparse.Namespace(model="deit_tiny_patch16_224"),
    }
    if ema is not None:  # timm's EMA wrapper may leave its module. prefix
        ckpt[ema_key] = {f"module.{k}": v for k, v in ema.model.state_dict().items()}
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("style", ["timm", "deit"])
def test_ema_picks_the_ema_weights_and_plain_is_the_default_and_logged(
    style: str,
    edge: tuple[str, LoadedModel, LoadedModel],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    name, plain, ema = edge
    path = _train_checkpoint(tmp_path / "checkpoint.pth", plain, ema, style)
    with caplog.at_level(logging.INFO, logger="collabvit.models"):
        default = load_model(name, checkpoint=path)
    assert "plain weights" in caplog.text and "--ema" in caplog.text
    torch.testing.assert_close(_logits(default), _logits(plain), rtol=0, atol=0)
    chosen = load_model(name, checkpoint=path, ema=True)
    torch.testing.assert_close(_logits(chosen), _logits(ema), rtol=0, atol=0)
    assert not torch.equal(_logits(chosen), _logits(plain))


def test_ema_without_ema_weights_says_drop_ema(
    edge: tuple[str, LoadedModel, LoadedModel], tmp_path: Path
) -> None:
    name, plain, _ = edge
    path = _train_checkpoint(tmp_path / "no-ema.pth", plain, None, "timm")
    with pytest.raises(CheckpointError) as info:
        load_model(name, checkpoint=path, ema=True)
    message = str(info.value)
    assert "a timm train checkpoint without EMA weights" in message and "drop --ema" in message
    torch.save(plain.model.state_dict(), tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match=r"plain state dict.*drop --ema"):
        load_model(name, checkpoint=tmp_path / "plain.pth", ema=True)


def test_only_ema_weights_are_used_without_ema_and_logged(
    edge: tuple[str, LoadedModel, LoadedModel], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    name, _, ema = edge
    path = tmp_path / "ema-only.pth"
    torch.save({"model_ema": ema.model.state_dict(), "epoch": 3}, path)
    with caplog.at_level(logging.INFO, logger="collabvit.models"):
        loaded = load_model(name, checkpoint=path)
    assert "EMA weights 'model_ema'" in caplog.text
    torch.testing.assert_close(_logits(loaded), _logits(ema), rtol=0, atol=0)


def test_the_fit_error_names_the_format(
    edge: tuple[str, LoadedModel, LoadedModel], small_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    _, plain, _ = edge
    path = _train_checkpoint(tmp_path / "checkpoint.pth", plain, None, "deit")
    with pytest.raises(CheckpointError) as info:
        load_model(str(small_pair[1]), checkpoint=path)  # edge weights, server model
    message = str(info.value)
    assert "(a timm train checkpoint ('model')) does not fit small-server" in message


def test_a_state_dict_of_another_kind_of_network_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(4, 3, 7, 7), "fc.weight": torch.zeros(10, 4)}, path)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert "not a ViT in any supported layout" in message and "conv1" in message
    assert "transformers ViT/DeiT" in message and "\n" not in message


def test_an_empty_wrapped_state_dict_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.pth"
    torch.save({"state_dict": {}, "epoch": 1}, path)
    with pytest.raises(CheckpointError, match="'state_dict' holds no tensor state dict"):
        read_checkpoint(path)


# ----------------------------------------------------------------------------- hf-hub ids

HUB_ID = "hf-hub:timm/deit_tiny_patch16_224.fb_in1k"


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No hub, and an empty local hub cache (returned) whatever machine this runs on."""
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: False)
    cache = tmp_path / "hub-cache"
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    return cache


def _cache_repo(cache: Path, repo: str, model: Any) -> Path:
    """Lay ``model`` out as the hub client caches a timm repo; return the snapshot folder."""
    from timm.models import save_for_hf

    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / ("0" * 40)
    save_for_hf(model, str(snapshot), safe_serialization=True)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text("0" * 40)
    return snapshot


def test_hub_id_offline_and_uncached_fails_fast_in_one_line(offline: Path) -> None:
    before = hub_constants.HF_HUB_OFFLINE
    start = time.monotonic()
    with pytest.raises(CheckpointError) as info:
        load_model(HUB_ID)
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert HUB_ID in message and "offline?" in message and "--random-init" in message
    assert "name the architecture (deit_tiny_patch16_224)" in message
    with pytest.raises(CheckpointError, match="the config of"):
        load_model(HUB_ID, random_init=0)  # the architecture itself is on the hub
    assert before == hub_constants.HF_HUB_OFFLINE


def test_hub_id_offline_loads_from_the_local_cache(offline: Path) -> None:
    reference = load_model("deit_tiny_patch16_224", random_init=3)
    snapshot = _cache_repo(offline, "timm/deit_tiny_patch16_224.fb_in1k", reference.model)
    loaded = load_model(HUB_ID)
    assert loaded.source == "hub" and loaded.name == HUB_ID
    torch.testing.assert_close(_logits(loaded), _logits(reference), rtol=0, atol=0)
    untrained = load_model(HUB_ID, random_init=3)  # architecture from the cached config
    torch.testing.assert_close(_logits(untrained), _logits(reference), rtol=0, atol=0)
    # the snapshot folder itself is a checkpoint too (a timm hub folder)
    again = load_model("deit_tiny_patch16_224", checkpoint=snapshot)
    torch.testing.assert_close(_logits(again), _logits(reference), rtol=0, atol=0)


def test_hub_id_online_is_handed_to_timm(monkeypatch: pytest.MonkeyPatch) -> None:
    import timm

    calls: list[tuple[str, bool]] = []
    real = timm.create_model

    def create(name: str, pretrained: bool = False, **kwargs: Any) -> Any:
        calls.append((name, pretrained))
        return real("deit_tiny_patch16_224", pretrained=False, **kwargs)

    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(timm, "create_model", create)
    loaded = load_model(HUB_ID)
    assert calls == [(HUB_ID, True)] and loaded.source == "hub"


def test_a_malformed_hub_id_is_a_model_error(offline: Path) -> None:
    with pytest.raises(ModelError, match="hf-hub:OWNER/REPO"):
        load_model("hf-hub:deit_tiny", random_init=0)


# ----------------------------------------------------------------------------- the CLI


def test_ema_option_reaches_load_model(monkeypatch: pytest.MonkeyPatch) -> None:
    import collabvit.models

    seen: dict[str, Any] = {}

    class Seen(Exception):
        pass

    def record(name: str, **kw: Any) -> None:
        seen.update(kw)
        raise Seen  # what load_model was given is all this test needs

    monkeypatch.setattr(collabvit.models, "load_model", record)
    parser = argparse.ArgumentParser()
    add_model_options(parser, roles=("edge",))
    args = parser.parse_args(["--edge", HUB_ID, "--edge-checkpoint", "x.pth", "--ema"])
    with pytest.raises(Seen):
        load_role(args, "edge")
    assert seen["ema"] is True and seen["checkpoint"] == "x.pth"
    assert seen["device"] == torch.device("cpu")
