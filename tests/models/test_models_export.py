"""Tests of collabvit.models.export and `collabvit export`: the ONNX graph equals the torch probe.

The graph's ``logits`` and ``scores`` (eq. 10) are compared with
:func:`collabvit.models.forward_with_scores` on the normalised pixels, for a
DeiT-Tiny with random weights made peaky (the head and the last block's q and
k scaled, so predictions, gate statistics and patch scores spread), for the
shipped ``fmnist-tiny`` and for a ViT with register tokens and qk-norm.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from vit_support import register_vit

from collabvit import __version__
from collabvit.cli import main
from collabvit.commands.export import export
from collabvit.data import discover, iter_batches
from collabvit.errors import ConfigError
from collabvit.fmnist import shipped_samples
from collabvit.models import LoadedModel, forward_with_scores, load_model
from collabvit.models.export import EdgeGraph, export_edge
from collabvit.onnx_edge import FORMAT, EdgeMetadata, load_edge
from collabvit.sweep.cache import model_identity

pytestmark = pytest.mark.usefixtures("one_thread")

TOLERANCE = 1e-4
HEAD_SCALE = 10.0  # min-entropy of the random DeiT-Tiny spreads over ~0.5..4.5 bits
QK_SCALE = 6.0  # attention-sum 0.97 keeps ~46..179 of 196 patches


def peaky_deit() -> LoadedModel:
    """DeiT-Tiny, seeded random weights, with a scaled head and last-block q/k."""
    edge = load_model("deit_tiny_patch16_224", random_init=0)
    d = edge.embed_dim
    with torch.no_grad():
        edge.model.head.weight.mul_(HEAD_SCALE)
        qkv = edge.model.blocks[-1].attn.qkv
        qkv.weight[: 2 * d].mul_(QK_SCALE)  # the q and k rows of (3 D, D)
        qkv.bias[: 2 * d].mul_(QK_SCALE)
    return edge


def _torch_outputs(edge: LoadedModel, pixels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    logits, scores = forward_with_scores(edge, edge.normalise(pixels), ("mean",))
    return logits.numpy(), scores["mean"].numpy()


@pytest.fixture(scope="module")
def deit(tmp_path_factory: pytest.TempPathFactory) -> tuple[LoadedModel, Path]:
    edge = peaky_deit()
    path = tmp_path_factory.mktemp("export") / "deit.onnx"
    export(edge, path)
    return edge, path


@pytest.fixture(scope="module")
def photos(imagenet_dir: Path) -> torch.Tensor:
    """16 real photos, preprocessed for a 224 x 224 model: (16, 3, 224, 224) uint8."""
    samples, _ = discover(imagenet_dir / "images", imagenet_dir / "labels.csv", limit=16)
    prep = load_model("deit_tiny_patch16_224", random_init=0).preprocessing
    return next(iter_batches(samples, prep, 16)).pixels


def test_deit_logits_and_scores_match_the_torch_probe(deit, photos: torch.Tensor) -> None:
    edge, path = deit
    runtime = load_edge(path, threads=1)
    noise = torch.randint(0, 256, (3, 3, 224, 224), generator=torch.Generator().manual_seed(1))
    for pixels in (photos, photos[:1], noise.to(torch.uint8)):  # batch 16, 1, 3: dynamic axis
        logits, scores = runtime.forward(pixels.numpy())
        want_logits, want_scores = _torch_outputs(edge, pixels)
        assert logits.shape == want_logits.shape and scores.shape == (len(pixels), 196)
        np.testing.assert_allclose(logits, want_logits, rtol=0, atol=TOLERANCE)
        np.testing.assert_allclose(scores, want_scores, rtol=0, atol=TOLERANCE)
        np.testing.assert_allclose(scores.sum(1), 1.0, atol=1e-5)
    logits, _ = runtime.forward(photos.numpy())
    assert len(set(logits.argmax(1).tolist())) > 4, "the peaky head must not predict one class"


def test_shipped_fmnist_tiny_matches_the_torch_probe(tmp_path: Path) -> None:
    edge = load_model("fmnist-tiny")
    export(edge, tmp_path / "fmnist.onnx")
    runtime = load_edge(tmp_path / "fmnist.onnx", threads=1)
    pixels = next(iter_batches(shipped_samples(256), edge.preprocessing, 256)).pixels
    logits, scores = runtime.forward(pixels.numpy())
    want_logits, want_scores = _torch_outputs(edge, pixels)
    np.testing.assert_allclose(logits, want_logits, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(scores, want_scores, rtol=0, atol=TOLERANCE)


def test_register_tokens_and_qk_norm_are_handled_like_the_probe(tmp_path: Path) -> None:
    edge = register_vit()
    export_edge(edge, tmp_path / "reg.onnx", _metadata(edge))
    runtime = load_edge(tmp_path / "reg.onnx")
    pixels = torch.randint(0, 256, (4, 3, 64, 64), generator=torch.Generator().manual_seed(0))
    logits, scores = runtime.forward(pixels.to(torch.uint8).numpy())
    want_logits, want_scores = _torch_outputs(edge, pixels.to(torch.uint8))
    assert scores.shape == (4, 64)  # the four registers and the class token are dropped
    np.testing.assert_allclose(logits, want_logits, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(scores, want_scores, rtol=0, atol=TOLERANCE)


def _metadata(edge: LoadedModel) -> dict[str, str]:
    from collabvit.commands.export import build_metadata

    return build_metadata(edge, "0" * 64, "fp32", "none").to_props()


def test_metadata_describes_the_model(deit) -> None:
    edge, path = deit
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["collabvit.format"] == FORMAT
    assert props["collabvit.model"] == "deit_tiny_patch16_224"
    assert props["collabvit.weights_sha256"] == model_identity(edge)["weights_sha256"]
    assert json.loads(props["collabvit.input_size"]) == [3, 224, 224]
    assert props["collabvit.patch_size"] == "16"
    assert json.loads(props["collabvit.mean"]) == list(edge.preprocessing.mean)
    assert json.loads(props["collabvit.std"]) == list(edge.preprocessing.std)
    assert float(props["collabvit.crop_pct"]) == 0.875
    assert props["collabvit.interpolation"] == "bicubic"
    assert props["collabvit.version"] == __version__
    names = json.loads(props["collabvit.class_names"])
    assert names == edge.class_names and len(names) == 1000
    meta = EdgeMetadata.from_props(props, str(path))
    assert (meta.num_patches, meta.num_classes, meta.num_prefix_tokens) == (196, 1000, 1)
    graph = model.graph
    assert [i.name for i in graph.input] == ["pixels"]
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [o.name for o in graph.output] == ["logits", "scores"]
    batch = graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value, "the batch axis must be dynamic"


def test_export_leaves_the_callers_model_as_it_was(deit) -> None:
    edge, _ = deit
    digest = model_identity(edge)["weights_sha256"]
    graph = EdgeGraph(edge)
    assert type(edge.model.blocks[-1].attn.qkv) is torch.nn.Linear
    assert graph.model.blocks[-1].attn.qkv is not edge.model.blocks[-1].attn.qkv
    assert model_identity(edge)["weights_sha256"] == digest


def test_fp16_and_int8_run_and_stay_close(tmp_path: Path) -> None:
    edge = load_model("fmnist-tiny")
    pixels = next(iter_batches(shipped_samples(256), edge.preprocessing, 256)).pixels
    want_logits, _ = _torch_outputs(edge, pixels)
    sizes = {}
    for precision, quantize in (("fp32", "none"), ("fp16", "none"), ("fp32", "int8")):
        path = tmp_path / f"{precision}-{quantize}.onnx"
        export(edge, path, precision, quantize)
        runtime = load_edge(path)
        assert (runtime.metadata.precision, runtime.metadata.quantize) == (precision, quantize)
        logits, scores = runtime.forward(pixels.numpy())
        assert logits.dtype == np.float32 and scores.dtype == np.float32
        np.testing.assert_allclose(scores.sum(1), 1.0, atol=1e-3)
        agree = float((logits.argmax(1) == want_logits.argmax(1)).mean())
        assert agree >= 0.9, f"{precision}/{quantize}: top-1 agrees on {agree:.1%}"
        sizes[(precision, quantize)] = path.stat().st_size
    assert sizes[("fp16", "none")] < 0.8 * sizes[("fp32", "none")]  # weights halved


def test_bad_options_are_one_config_error(tmp_path: Path) -> None:
    edge = load_model("fmnist-tiny")
    with pytest.raises(ConfigError, match="precision"):
        export(edge, tmp_path / "a.onnx", "bf16")
    with pytest.raises(ConfigError, match="fp32"):
        export(edge, tmp_path / "a.onnx", "fp16", "int8")
    with pytest.raises(ConfigError, match="quantize"):
        export(edge, tmp_path / "a.onnx", "fp32", "int4")
    assert not list(tmp_path.iterdir()), "a refused export writes nothing"


def test_cli_export_writes_one_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "edge.onnx"
    assert main(["export", "--edge", "fmnist-tiny", "--out", str(out)]) == 0
    assert "fmnist-tiny fp32" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["edge.onnx"], "no temporary file left"
    assert load_edge(out).metadata.model == "fmnist-tiny"
