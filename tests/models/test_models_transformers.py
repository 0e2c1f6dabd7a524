"""transformers ViT/DeiT checkpoints converted on load give the logits of the original model.

Random DeiT-Tiny-sized transformers models (hidden 192, 12 layers, 3 heads,
patch 16, 224 px) are saved with ``save_pretrained`` (or as a bare state
dict), loaded by collabvit as the matching timm model, and compared on real
ImageNet photos. The converted model takes transformers' layer-norm eps
(1e-12, timm's ViT default is 1e-6), so the two compute the same function and
agree to float32 round-off, well inside 1e-4 (measured: 0.0 on logits of std
0.27; with timm's eps 1e-6 left in place they would differ by about 4e-4).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from safetensors.torch import load_file

from collabvit.data import load_image, preprocess
from collabvit.errors import CheckpointError
from collabvit.models import LoadedModel, load_model

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {
    "hidden_size": 192,
    "num_hidden_layers": 12,
    "num_attention_heads": 3,
    "intermediate_size": 768,
    "image_size": 224,
    "patch_size": 16,
    "num_labels": 1000,
}
SMALL = {**TINY, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
SMALL.update(intermediate_size=64, image_size=32, num_labels=5)


def _hf_model(kind: str, seed: int, dims: dict[str, Any]) -> Any:
    """A randomly initialised transformers model (the caller's RNG left alone)."""
    config_cls = transformers.DeiTConfig if kind.startswith("DeiT") else transformers.ViTConfig
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, kind)(config_cls(**dims))
    return model.eval()


@pytest.fixture(scope="module")
def photos(imagenet_dir: Path) -> list[Path]:
    rows = (imagenet_dir / "labels.csv").read_text().splitlines()[1:7]
    return [imagenet_dir / "images" / row.split(",")[0] for row in rows]


def _inputs(loaded: LoadedModel, photos: list[Path]) -> torch.Tensor:
    """(B, 3, 224, 224) normalised real photos, as collabvit feeds its models."""
    pixels = []
    for path in photos:
        image = load_image(path, 3)
        assert image is not None
        pixels.append(preprocess(image, loaded.preprocessing))
    return loaded.normalise(torch.stack(pixels))


def _assert_same_logits(hf: Any, loaded: LoadedModel, photos: list[Path]) -> None:
    x = _inputs(loaded, photos)
    with torch.no_grad():
        want = hf(pixel_values=x).logits
        got = loaded.model(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    assert torch.equal(got.argmax(-1), want.argmax(-1))


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    hf = _hf_model("ViTForImageClassification", 0, TINY)
    folder = tmp_path_factory.mktemp("hf-vit")
    hf.save_pretrained(folder)
    return hf, folder


def test_save_pretrained_vit_folder_gives_the_same_logits_on_real_photos(
    vit_folder: tuple[Any, Path], photos: list[Path]
) -> None:
    hf, folder = vit_folder
    loaded = load_model("deit_tiny_patch16_224", checkpoint=folder)
    assert loaded.num_classes == 1000
    assert all(m.eps == 1e-12 for m in loaded.model.modules() if isinstance(m, torch.nn.LayerNorm))
    _assert_same_logits(hf, loaded, photos)


def test_distilled_deit_with_teacher_gives_the_same_logits(
    tmp_path: Path, photos: list[Path]
) -> None:
    hf = _hf_model("DeiTForImageClassificationWithTeacher", 1, TINY)
    hf.save_pretrained(tmp_path)
    loaded = load_model("deit_tiny_distilled_patch16_224", checkpoint=tmp_path)
    assert loaded.num_prefix_tokens == 2  # class + distillation token
    _assert_same_logits(hf, loaded, photos)


@pytest.mark.parametrize("form", ["safetensors-alone", "state-dict-alone", "bin-folder"])
def test_the_state_dict_alone_and_a_pytorch_model_bin_convert_too(
    form: str, vit_folder: tuple[Any, Path], photos: list[Path], tmp_path: Path
) -> None:
    hf, folder = vit_folder
    if form == "safetensors-alone":  # the hub's key names, no config.json
        path = tmp_path / "vit.safetensors"
        shutil.copy(folder / "model.safetensors", path)
    elif form == "state-dict-alone":  # model.state_dict(): this transformers' in-memory names
        path = tmp_path / "vit.pth"
        torch.save(hf.state_dict(), path)
    else:
        path = tmp_path / "bin"
        path.mkdir()
        shutil.copy(folder / "config.json", path / "config.json")
        torch.save(load_file(str(folder / "model.safetensors")), path / "pytorch_model.bin")
    loaded = load_model("deit_tiny_patch16_224", checkpoint=path)
    _assert_same_logits(hf, loaded, photos[:2])


def test_preprocessor_config_sets_mean_and_std(
    vit_folder: tuple[Any, Path], tmp_path: Path
) -> None:
    _, folder = vit_folder
    shutil.copytree(folder, tmp_path / "vit")
    prep = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
    (tmp_path / "vit" / "preprocessor_config.json").write_text(json.dumps(prep))
    loaded = load_model("deit_tiny_patch16_224", checkpoint=tmp_path / "vit")
    assert loaded.preprocessing.mean == (0.5, 0.5, 0.5)
    assert loaded.preprocessing.std == (0.5, 0.5, 0.5)


# ----------------------------------------------------------------------------- one-line failures


def _saved(kind: str, folder: Path, dims: dict[str, Any] = SMALL, **extra: Any) -> Path:
    _hf_model(kind, 0, {**dims, **extra}).save_pretrained(folder)
    return folder


def _one_line(info: pytest.ExceptionInfo[CheckpointError]) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_heads_mismatch_is_caught_from_config_json(
    vit_folder: tuple[Any, Path], tmp_path: Path
) -> None:
    _, folder = vit_folder
    shutil.copytree(folder, tmp_path / "vit")
    config = json.loads((tmp_path / "vit" / "config.json").read_text())
    config["num_attention_heads"] = 6  # same shapes, another attention: only the config tells
    (tmp_path / "vit" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as info:
        load_model("deit_tiny_patch16_224", checkpoint=tmp_path / "vit")
    message = _one_line(info)
    assert "a transformers ViT checkpoint" in message and "6 attention heads" in message


def test_a_distilled_checkpoint_for_a_plain_model_says_which_to_pass(tmp_path: Path) -> None:
    folder = _saved("DeiTForImageClassificationWithTeacher", tmp_path)
    with pytest.raises(CheckpointError) as info:
        load_model("deit_tiny_patch16_224", checkpoint=folder)
    message = _one_line(info)
    assert "a transformers DeiT checkpoint" in message and "distilled" in message


@pytest.mark.parametrize(
    ("kind", "needle"),
    [
        ("DeiTForImageClassification", "DeiTForImageClassificationWithTeacher"),
        ("ViTModel", "no classifier"),
    ],
)
def test_variants_timm_cannot_compute_are_refused(kind: str, needle: str, tmp_path: Path) -> None:
    folder = _saved(kind, tmp_path)
    with pytest.raises(CheckpointError) as info:
        load_model("deit_tiny_patch16_224", checkpoint=folder)
    message = _one_line(info)
    assert "looks like a transformers" in message and needle in message


def test_another_transformers_model_type_is_refused(tmp_path: Path) -> None:
    folder = _saved("ViTForImageClassification", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "swin"}))
    with pytest.raises(CheckpointError, match="only ViT and DeiT") as info:
        load_model("deit_tiny_patch16_224", checkpoint=folder)
    _one_line(info)


def test_a_key_with_no_timm_counterpart_is_named(tmp_path: Path) -> None:
    folder = _saved("ViTForImageClassification", tmp_path)
    state = load_file(str(folder / "model.safetensors"))
    state["vit.encoder.layer.0.attention.attention.rotary.weight"] = torch.zeros(1)
    path = tmp_path / "odd.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_model("deit_tiny_patch16_224", checkpoint=path)
    message = _one_line(info)
    assert "looks like a transformers ViT state dict but" in message and "rotary" in message


def test_folder_problems_are_one_line_each(tmp_path: Path) -> None:
    folder = _saved("ViTForImageClassification", tmp_path / "vit")
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    (folder / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(CheckpointError, match="sharded") as info:
        load_model("deit_tiny_patch16_224", checkpoint=folder)
    _one_line(info)
    (folder / "model.safetensors.index.json").unlink()
    with pytest.raises(CheckpointError, match=r"no model\.safetensors or pytorch_model\.bin"):
        load_model("deit_tiny_patch16_224", checkpoint=folder)


def test_ema_on_a_transformers_folder_says_drop_ema(tmp_path: Path) -> None:
    folder = _saved("ViTForImageClassification", tmp_path)
    with pytest.raises(CheckpointError, match="drop --ema") as info:
        load_model("deit_tiny_patch16_224", checkpoint=folder, ema=True)
    assert "a transformers ViT checkpoint" in _one_line(info)
