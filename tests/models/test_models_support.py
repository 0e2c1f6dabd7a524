"""collabvit.models: which timm ViTs are supported (by class), and loading without side effects."""

from __future__ import annotations

import ast
import inspect
import random
from pathlib import Path

import huggingface_hub.constants as hub_constants
import numpy as np
import pytest
import timm
import torch

from collabvit.errors import ModelError
from collabvit.models import _vit, check_supported, hub, load_model, loading


@pytest.mark.parametrize("attn_layer", ["diff"])
def test_unsupported_attention_class_is_one_line_model_error_naming_the_supported(
    attn_layer: str,
) -> None:
    model = timm.create_model("vit_tiny_patch16_224", attn_layer=attn_layer, pretrained=False)
    with pytest.raises(ModelError) as info:
        check_supported(model, "vit_tiny_patch16_224")
    message = str(info.value)
    assert "\n" not in message
    assert "DiffAttention" in message
    assert "timm.layers.attention.Attention" in message


def test_a_subclass_of_the_supported_attention_is_refused() -> None:
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False)

    class Patched(type(model.blocks[0].attn)):  # type: ignore[misc]
        pass

    model.blocks[-1].attn.__class__ = Patched
    with pytest.raises(ModelError, match="Patched"):
        check_supported(model, "patched")


def test_the_shipped_and_standard_vits_are_supported() -> None:
    for name in ("fmnist-tiny", "deit_tiny_distilled_patch16_224"):
        loaded = load_model(name, random_init=0)
        assert all(type(b.attn) in _vit.SUPPORTED_ATTENTION for b in loaded.model.blocks)


def test_random_init_leaves_the_callers_rng_state_unchanged() -> None:
    torch.manual_seed(1234)
    before = torch.random.get_rng_state()
    np_before = np.random.get_state()[1].copy()
    py_before = random.getstate()
    a = load_model("fmnist-tiny", random_init=7)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert np.array_equal(np.random.get_state()[1], np_before)
    assert random.getstate() == py_before
    b = load_model("fmnist-tiny", random_init=7)  # and the seed still decides the weights
    for (k, va), vb in zip(
        a.model.state_dict().items(), b.model.state_dict().values(), strict=True
    ):
        assert torch.equal(va, vb), k


def test_offline_load_leaves_hf_hub_offline_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: False)
    before = hub_constants.HF_HUB_OFFLINE
    with pytest.raises(Exception, match="could not be downloaded"):
        load_model("deit_tiny_patch16_224")
    assert before == hub_constants.HF_HUB_OFFLINE


def test_no_library_module_assigns_another_librarys_constants() -> None:
    """No `module.CONSTANT = ...` (or torch.manual_seed / warnings.simplefilter) in src/."""
    root = Path(inspect.getfile(loading)).parents[1]
    offenders = []
    for path in root.rglob("*.py"):
        if "commands" in path.parts or path.name == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Attribute) and target.attr.isupper():
                        offenders.append(f"{path.name}:{node.lineno}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                name = node.func.attr
                if name in {"simplefilter", "filterwarnings", "seed"}:
                    offenders.append(f"{path.name}:{node.lineno} {name}")
    assert not offenders, offenders
