"""Issue 16, item 13 (models): a bad model JSON or checkpoint path is one line, not a traceback.

A collabvit model JSON is checked key by key before a model is built (the
error names the file and the key); a checkpoint that is a folder of another
kind, or a transformers folder whose JSON files hold wrong types, is one
:class:`~collabvit.errors.CheckpointError` line. The CLI prints each as one
``collabvit evaluate: error: ...`` line and exits non-zero.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import transformers

from collabvit.cli import main
from collabvit.errors import CheckpointError, ModelError
from collabvit.models import load_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def good_json(
    tmp_path_factory: pytest.TempPathFactory, model_json_writer: Callable[..., Path]
) -> Path:
    return model_json_writer(tmp_path_factory.mktemp("good"), "tiny", seed=3)


def _variant(good: Path, folder: Path, edit: Callable[[dict[str, Any]], Any]) -> Path:
    """A copy of the good model JSON (and its weights) with ``edit`` applied to the config."""
    cfg = json.loads(good.read_text())
    out = edit(cfg)
    path = folder / "bad.json"
    path.write_text(out if isinstance(out, str) else json.dumps(cfg))
    shutil.copy(good.with_suffix(".safetensors"), folder / "bad.safetensors")
    return path


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda cfg: cfg.pop(key)


def _put(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda cfg: cfg.__setitem__(key, value)


BAD_CONFIGS = {
    "invalid JSON": (lambda cfg: '{"name": "x", vit_kwargs', "not valid JSON"),
    "a list": (lambda cfg: "[1, 2, 3]", "a JSON list, not an object"),
    "no vit_kwargs": (_drop("vit_kwargs"), "no 'vit_kwargs'"),
    "no input_size": (_drop("input_size"), "no 'input_size'"),
    "no mean": (_drop("mean"), "no 'mean'"),
    "no std": (_drop("std"), "no 'std'"),
    "vit_kwargs a list": (_put("vit_kwargs", [1]), "'vit_kwargs' must be an object"),
    "input_size text": (_put("input_size", "abc"), "'input_size' must be"),
    "input_size 2-d": (_put("input_size", [3, 64]), "'input_size' must be"),
    "input_size zero": (_put("input_size", [3, 0, 64]), "'input_size' must be"),
    "input_size floats": (_put("input_size", [3, 64.5, 64]), "'input_size' must be"),
    "input_size not the model's": (_put("input_size", [3, 32, 32]), "does not match"),
    "mean one channel": (_put("mean", [0.5]), "'mean' must be 3 numbers"),
    "mean text": (_put("mean", "x"), "'mean' must be 3 numbers"),
    "std zero": (_put("std", [0.2, 0.0, 0.2]), "'std' must be positive"),
    "std nan": (_put("std", [math.nan, 0.2, 0.2]), "'std' must be 3 numbers"),
    "crop_pct text": (_put("crop_pct", "big"), "'crop_pct' must be a number in (0, 1]"),
    "crop_pct zero": (_put("crop_pct", 0), "'crop_pct' must be a number in (0, 1]"),
    "interpolation number": (_put("interpolation", 5), "'interpolation' must be one of"),
    "interpolation unknown": (_put("interpolation", "lanczos"), "'interpolation' must be one of"),
    "name a number": (_put("name", 5), "'name' must be a string"),
    "class_names text": (_put("class_names", "abc"), "'class_names' must be a list"),
    "class_names too few": (_put("class_names", ["cat", "dog"]), "2 class names"),
    "no classifier head": (
        lambda cfg: cfg["vit_kwargs"].update(num_classes=0),
        "without a classifier head",
    ),
    "mean of 3 for one channel": (
        lambda cfg: (cfg["vit_kwargs"].update(in_chans=1), cfg.update(input_size=[1, 64, 64])),
        "'mean' must be 1 number (one per channel)",
    ),
    "vit_kwargs unbuildable": (
        lambda cfg: cfg["vit_kwargs"].update(num_heads=0),
        "cannot build a ViT",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_a_bad_model_json_is_one_line_naming_the_file(
    case: str, good_json: Path, tmp_path: Path
) -> None:
    """Today: KeyError / ValueError tracebacks, or a model with str 'pixels' and std 0."""
    edit, expected = BAD_CONFIGS[case]
    path = _variant(good_json, tmp_path, edit)
    for random_init in (None, 0):
        with pytest.raises(ModelError) as info:
            load_model(str(path), random_init=random_init)
        message = str(info.value)
        assert str(path) in message and expected in message and "\n" not in message


def test_the_good_model_json_still_loads(good_json: Path) -> None:
    loaded = load_model(str(good_json))
    assert loaded.preprocessing.input_size == (3, 64, 64) and loaded.num_classes == 1000


def test_a_bad_model_json_fails_the_cli_in_one_line(
    good_json: Path,
    small_pair: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = _variant(good_json, tmp_path, _drop("mean"))
    argv = ["evaluate", "--edge", str(bad), "--server", str(small_pair[1]), "--data", str(tmp_path)]
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if "error:" in line] == [
        f"collabvit evaluate: error: model config {bad}: has no 'mean'"
    ]


# ----------------------------------------------------------------------------- checkpoint folders


def test_a_checkpoint_folder_of_no_known_kind_is_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(
        CheckpointError, match=r"checkpoint folder .*empty holds no model\.safetensors"
    ):
        load_model("deit_tiny_patch16_224", checkpoint=empty)


def test_a_folder_holding_one_checkpoint_file_names_it(tmp_path: Path, good_json: Path) -> None:
    """Today: 'holds no model.safetensors' without a word about the weights that are there."""
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copy(good_json.with_suffix(".safetensors"), folder / "best.safetensors")
    (folder / "log.txt").write_text("epoch 1\n")
    with pytest.raises(CheckpointError, match=r"it holds best\.safetensors: pass that file"):
        load_model(str(good_json), checkpoint=folder)


def test_a_checkpoint_folder_fails_the_cli_in_one_line(
    small_pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edge, server = (str(p) for p in small_pair)
    argv = ["evaluate", "--edge", edge, "--edge-checkpoint", str(tmp_path), "--server", server,
            "--data", str(tmp_path)]  # fmt: skip
    assert main(argv) != 0
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "checkpoint folder" in errors[0] and "Traceback" not in err


SMALL_HF = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
SMALL_HF.update(intermediate_size=64, image_size=32, patch_size=16, num_labels=5)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny transformers ViT saved with save_pretrained."""
    folder = tmp_path_factory.mktemp("hf")
    model = transformers.ViTForImageClassification(transformers.ViTConfig(**SMALL_HF))
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    ("file", "change", "expected"),
    [
        ("config.json", {"layer_norm_eps": "x"}, "'layer_norm_eps' must be a positive number"),
        ("config.json", {"layer_norm_eps": -1}, "'layer_norm_eps' must be a positive number"),
        ("config.json", {"num_attention_heads": "two"}, "'num_attention_heads' must be a positive"),
        ("config.json", {"num_attention_heads": 2.5}, "'num_attention_heads' must be a positive"),
        ("preprocessor_config.json", {"image_mean": ["a", 0, 0]}, "'image_mean' must be a list"),
        ("preprocessor_config.json", {"image_mean": [0.5]}, "'image_mean' must be a list of 3"),
        ("preprocessor_config.json", {"image_std": [0, 1, 1]}, "'image_std' must be positive"),
    ],
)
def test_a_transformers_folder_with_wrong_types_is_one_line(
    hf_folder: Path, tmp_path: Path, file: str, change: dict[str, Any], expected: str
) -> None:
    """Today: ValueError tracebacks from float('x') / int('two') / float('a')."""
    folder = tmp_path / "hf"
    shutil.copytree(hf_folder, folder)
    path = folder / file
    cfg = json.loads(path.read_text()) if path.is_file() else {}
    cfg.setdefault("image_mean", [0.5, 0.5, 0.5]) if file.startswith("pre") else None
    cfg.setdefault("image_std", [0.5, 0.5, 0.5]) if file.startswith("pre") else None
    cfg.update(change)
    path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as info:
        load_model("vit_tiny_patch16_224", checkpoint=folder)
    assert file in str(info.value) and expected in str(info.value)
