"""Tests of collabvit.onnx_edge: the torch-free edge decides as the torch edge does.

- Preprocessing: Pillow gives the same uint8 pixels as collabvit.data
  (torchvision) on every one of the 1,300 real photos and on odd images.
- Bad input: a missing file, a file that is not ONNX, an ONNX model without
  our metadata or with broken metadata, a graph that does not match it, a
  server of another geometry: one clear line each.
- Decisions: over the 10,000 shipped Fashion-MNIST test images (fmnist-tiny)
  and the 1,300 photos (a DeiT-Tiny with peaky random weights) the ONNX edge
  transmits the same images and selects the same patches as the torch edge on
  >= 99.9 % of images (fp32); the int8 agreement is recorded, not asserted.
- A fresh virtual environment made by the documented device install (a venv
  without pip, ``collabvit[edge]`` installed by an outside pip with
  ``--no-compile``; no torch, timm or torchvision) runs ``collabvit edge
  --runtime onnx`` over 12 real photos against a real ``collabvit serve`` and
  answers as the torch edge does.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from PIL import Image

from collabvit.client import ClientConfig, EdgeClient
from collabvit.client.runtimes import DecidedBatch, OnnxRuntimeEdge, TorchEdge
from collabvit.commands.export import export
from collabvit.data import Preprocessing, discover
from collabvit.data import load_image as torch_load_image
from collabvit.data import preprocess as torch_preprocess
from collabvit.errors import ConfigError, ModelError
from collabvit.fmnist import shipped_samples
from collabvit.models import LoadedModel, load_model
from collabvit.onnx_edge import (
    EdgeMetadata,
    EdgePoint,
    check_server,
    decide,
    load_edge,
    pixels_from_array,
    pixels_from_file,
)
from collabvit.pipeline import OperatingPoint
from collabvit.sweep.cache import model_identity

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
AGREEMENT = 0.999
HEAD_SCALE, QK_SCALE = 10.0, 6.0  # as tests/models/test_models_export.py: peaky, not tied


def peaky_deit() -> LoadedModel:
    """DeiT-Tiny, seeded random weights, with a scaled head and last-block q/k."""
    edge = load_model("deit_tiny_patch16_224", random_init=0)
    d = edge.embed_dim
    with torch.no_grad():
        edge.model.head.weight.mul_(HEAD_SCALE)
        edge.model.blocks[-1].attn.qkv.weight[: 2 * d].mul_(QK_SCALE)
        edge.model.blocks[-1].attn.qkv.bias[: 2 * d].mul_(QK_SCALE)
    return edge


def _meta(**changes: object) -> EdgeMetadata:
    base = {
        "model": "m",
        "weights_sha256": "0" * 64,
        "input_size": (3, 224, 224),
        "patch_size": 16,
        "num_patches": 196,
        "num_prefix_tokens": 1,
        "num_classes": 1000,
        "mean": (0.5,) * 3,
        "std": (0.5,) * 3,
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "class_names": None,
        "version": "0",
    }
    base.update(changes)
    return EdgeMetadata(**base)  # type: ignore[arg-type]


def _prep(meta: EdgeMetadata) -> Preprocessing:
    return Preprocessing(meta.input_size, meta.mean, meta.std, meta.interpolation, meta.crop_pct)


# ----------------------------------------------------------------------------- preprocessing


def test_the_runtime_imports_no_torch() -> None:
    code = (
        "import sys, collabvit.onnx_edge, collabvit.client, collabvit.wire, collabvit.data\n"
        "bad = sorted({'torch', 'timm', 'torchvision'} & set(sys.modules))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_pillow_gives_torchvisions_pixels_on_every_photo(imagenet_dir: Path) -> None:
    samples, _ = discover(imagenet_dir / "images", imagenet_dir / "labels.csv")
    assert len(samples) == 1300
    meta = _meta()
    different = [
        s.file
        for s in samples
        if not np.array_equal(
            pixels_from_file(s.path, meta),  # type: ignore[arg-type]
            torch_preprocess(torch_load_image(s.path, 3), _prep(meta)).numpy(),  # type: ignore[arg-type]
        )
    ]
    assert not different, f"{len(different)} of 1300 photos differ (first: {different[0]})"


@pytest.mark.parametrize(
    "changes",
    [
        {"interpolation": "bilinear"},
        {"interpolation": "nearest"},
        {"crop_pct": 1.0},
        {"crop_pct": 1.3},  # resize below the crop: zero padding
        {"input_size": (3, 224, 160), "num_patches": 140},  # a wider crop than the resize
    ],
)
def test_pillow_matches_torchvision_settings(imagenet_dir: Path, changes: dict) -> None:
    samples, _ = discover(imagenet_dir / "images", imagenet_dir / "labels.csv", limit=40)
    meta = _meta(**changes)
    for s in samples:
        want = torch_preprocess(torch_load_image(s.path, 3), _prep(meta)).numpy()  # type: ignore[arg-type]
        assert np.array_equal(pixels_from_file(s.path, meta), want), s.file  # type: ignore[arg-type]


def test_odd_images_convert_as_the_torch_edge_does(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (90, 70, 4), dtype=np.uint8)
    images = {
        "grey.png": Image.fromarray(rng.integers(0, 256, (300, 200), dtype=np.uint8)),
        "rgba.png": Image.fromarray(rgba, "RGBA"),
        "cmyk.jpg": Image.fromarray(rng.integers(0, 256, (64, 300, 3), np.uint8)).convert("CMYK"),
        "palette.png": Image.fromarray(rgba[..., :3]).convert("P"),
        "tiny.png": Image.fromarray(rng.integers(0, 256, (5, 3, 3), dtype=np.uint8)),
    }
    images["palette.png"].info["transparency"] = 0
    for name, image in images.items():
        image.save(tmp_path / name, **({"transparency": 0} if name == "palette.png" else {}))
    (tmp_path / "broken.jpg").write_bytes(b"not a picture")
    for channels, meta in (
        (3, _meta()),
        (1, _meta(input_size=(1, 28, 28), num_patches=49, patch_size=4, mean=(0.5,), std=(0.5,))),
    ):
        for name in [*images, "broken.jpg"]:
            got = pixels_from_file(tmp_path / name, meta)
            image = torch_load_image(tmp_path / name, channels)
            if image is None:
                assert got is None, name
                continue
            assert np.array_equal(got, torch_preprocess(image, _prep(meta)).numpy()), name


def test_in_memory_images_match_iter_batches() -> None:
    from collabvit.data import iter_batches

    meta = _meta(input_size=(1, 28, 28), num_patches=49, patch_size=4, mean=(0.5,), std=(0.5,))
    samples = shipped_samples(300)
    want = next(iter_batches(samples, _prep(meta), 300)).pixels.numpy()
    got = np.stack([pixels_from_array(s.array, meta) for s in samples])  # type: ignore[arg-type]
    assert np.array_equal(got, want)


# ----------------------------------------------------------------------------- bad input


def _onnx_file(path: Path, props: dict[str, str] | None = None) -> Path:
    """An Identity graph over uint8 (B, 3, 224, 224), with these metadata_props."""
    x = helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["B", 3, 224, 224])
    y = helper.make_tensor_value_info("logits", TensorProto.UINT8, ["B", 3, 224, 224])
    graph = helper.make_graph([helper.make_node("Identity", ["pixels"], ["logits"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    for key, value in (props or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert "\n" not in text and len(text) < 400, text
    return text


def test_bad_model_files_are_one_line_each(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as exc:
        load_edge(tmp_path / "missing.onnx")
    assert "does not exist" in _one_line(exc)
    (tmp_path / "junk.onnx").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ModelError) as exc:
        load_edge(tmp_path / "junk.onnx")
    assert "is not an ONNX model" in _one_line(exc)
    with pytest.raises(ModelError) as exc:
        load_edge(_onnx_file(tmp_path / "plain.onnx"))
    assert "without collabvit metadata" in _one_line(exc) and "collabvit export" in str(exc.value)
    props = _meta().to_props()
    with pytest.raises(ModelError) as exc:
        load_edge(_onnx_file(tmp_path / "graph.onnx", props))
    assert "does not match its collabvit metadata" in _one_line(exc)
    broken = {**props, "collabvit.input_size": "[3, 224"}
    with pytest.raises(ModelError) as exc:
        load_edge(_onnx_file(tmp_path / "broken.onnx", broken))
    assert "broken collabvit metadata" in _one_line(exc)
    del broken["collabvit.input_size"]
    with pytest.raises(ModelError, match=r"missing key collabvit\.input_size"):
        load_edge(_onnx_file(tmp_path / "missing-key.onnx", broken))
    future = {**props, "collabvit.format": "collabvit-edge-onnx/99"}
    with pytest.raises(ModelError, match="export it again"):
        load_edge(_onnx_file(tmp_path / "future.onnx", future))


@pytest.fixture(scope="module")
def fmnist_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[LoadedModel, Path]:
    edge = load_model("fmnist-tiny")
    path = tmp_path_factory.mktemp("fmnist") / "fmnist-tiny.onnx"
    export(edge, path)
    return edge, path


def test_providers_pixels_and_server_geometry_are_checked(fmnist_onnx) -> None:
    _, path = fmnist_onnx
    with pytest.raises(ConfigError, match="not in this onnxruntime build"):
        load_edge(path, providers=["NoSuchExecutionProvider"])
    assert load_edge(path, [("CPUExecutionProvider", {})]).providers == ["CPUExecutionProvider"]
    edge = load_edge(path)
    with pytest.raises(ConfigError, match=r"takes uint8 \(B, 1, 28, 28\)"):
        edge.forward(np.zeros((2, 3, 28, 28), np.uint8))
    geometry = {"channels": 1, "height": 28, "width": 28, "patch_size": 4, "num_patches": 49}
    check_server(edge, {"model": "fmnist-base", "num_classes": 10, "geometry": geometry})
    deit = {"channels": 3, "height": 224, "width": 224, "patch_size": 16, "num_patches": 196}
    with pytest.raises(ConfigError) as exc:
        check_server(edge, {"model": "deit", "num_classes": 10, "geometry": deit})
    assert "server deit takes" in _one_line(exc)
    with pytest.raises(ConfigError, match="classes"):
        check_server(edge, {"model": "x", "num_classes": 1000, "geometry": geometry})


def test_edge_point_refuses_what_the_graph_cannot_do() -> None:
    with pytest.raises(ConfigError, match="mean attention score"):
        EdgePoint(score="rollout")
    with pytest.raises(ConfigError, match="unknown selection rule"):
        EdgePoint(rule="nope")
    with pytest.raises(ConfigError, match="delta_sum"):
        EdgePoint(threshold=2.0)


# ----------------------------------------------------------------------------- decisions


def _eta_between(values: np.ndarray) -> float:
    """An eta halfway between the two middle statistics: about half the images are sent."""
    ordered = np.sort(values)
    middle = len(ordered) // 2
    return float((ordered[middle - 1] + ordered[middle]) / 2)


def _flatten(batches: Iterator[DecidedBatch], n: int) -> dict[str, np.ndarray]:
    out = {"pred": [], "sent": [], "keep": [], "values": []}  # type: dict[str, list]
    for b in batches:
        for j in range(len(b.samples)):
            mask = b.masks.get(j)
            out["pred"].append(b.edge_pred[j])
            out["sent"].append(mask is not None)
            out["keep"].append(np.zeros(n, bool) if mask is None else mask)
            out["values"].append(b.uncertainty[j])
    return {k: np.asarray(v) for k, v in out.items()}


def _agreement(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    same = (a["pred"] == b["pred"]) & (a["sent"] == b["sent"]) & (a["keep"] == b["keep"]).all(1)
    return float(same.mean())


def _parts(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, float]:
    """Where two edges differ: prediction, transmit decision, masks of the images both send."""
    both = a["sent"] & b["sent"]
    union = (a["keep"][both] | b["keep"][both]).sum(1)
    inter = (a["keep"][both] & b["keep"][both]).sum(1)
    kept = a["keep"][both].sum(1) - b["keep"][both].sum(1)
    return {
        "prediction": round(float((a["pred"] == b["pred"]).mean()), 4),
        "transmit": round(float((a["sent"] == b["sent"]).mean()), 4),
        "same_mask": round(float((a["keep"][both] == b["keep"][both]).all(1).mean()), 4),
        "mask_iou": round(float((inter / union).mean()), 4),
        "mean_abs_patch_difference": round(float(np.abs(kept).mean()), 2),
    }


def _torch_point(values: np.ndarray, **rule: object) -> OperatingPoint:
    return OperatingPoint(eta=_eta_between(values), **rule)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "rule",
    [{}, {"rule": "top-k", "threshold": 12}, {"rule": "random", "threshold": 20, "seed": 3}],
    ids=["attention-sum", "top-k", "random"],
)
def test_fmnist_onnx_edge_decides_as_the_torch_edge(fmnist_onnx, rule: dict) -> None:
    edge, path = fmnist_onnx
    samples = shipped_samples()
    assert len(samples) == 10_000
    probe = _flatten(TorchEdge(edge, OperatingPoint()).batches(samples[:2000], 500, None), 49)
    point = _torch_point(probe["values"], **rule)
    want = _flatten(TorchEdge(edge, point).batches(samples, 500, None), 49)
    got = _flatten(
        OnnxRuntimeEdge(load_edge(path, threads=1), point).batches(samples, 500, None), 49
    )
    assert 0.2 < want["sent"].mean() < 0.8, "eta must split the images"
    assert _agreement(want, got) >= AGREEMENT
    np.testing.assert_allclose(got["values"], want["values"], rtol=0, atol=1e-4)


@pytest.mark.slow
def test_deit_onnx_edge_decides_as_the_torch_edge_on_1300_photos(
    imagenet_dir: Path, tmp_path: Path
) -> None:
    edge = peaky_deit()
    export(edge, tmp_path / "fp32.onnx")
    export(edge, tmp_path / "int8.onnx", quantize="int8")
    samples, _ = discover(imagenet_dir / "images", imagenet_dir / "labels.csv")
    assert len(samples) == 1300
    probe = _flatten(TorchEdge(edge, OperatingPoint()).batches(samples[:200], 50, None), 196)
    point = _torch_point(probe["values"])
    torch_batches = list(TorchEdge(edge, point).batches(samples, 50, None))
    want = _flatten(iter(torch_batches), 196)
    fp32 = load_edge(tmp_path / "fp32.onnx", threads=1)
    got = _flatten(OnnxRuntimeEdge(fp32, point).batches(samples, 50, None), 196)
    assert 0.2 < want["sent"].mean() < 0.8 and len(np.unique(want["keep"].sum(1))) > 20
    fp32_agreement = _agreement(want, got)
    int8 = load_edge(tmp_path / "int8.onnx", threads=1)
    int8_batches = []
    for b in torch_batches:  # the same pixels: the quantized model's agreement alone
        d = decide(int8, b.pixels, [s.index for s in b.samples], point)
        masks = {} if d.selection is None else dict(zip(d.rows, d.selection.keep_mask, strict=True))
        int8_batches.append(DecidedBatch(b.samples, b.pixels, d.edge_pred, d.uncertainty, masks))
    int8_agreement = _agreement(want, _flatten(iter(int8_batches), 196))
    # reported (pytest -rA shows it), not asserted: docs/edge-device.md quotes it
    print(f"agreement with the torch edge: fp32 {fp32_agreement:.4%}, int8 {int8_agreement:.4%}")
    print("int8 parts:", _parts(want, _flatten(iter(int8_batches), 196)))
    assert fp32_agreement >= AGREEMENT, f"fp32 agrees on {fp32_agreement:.4%}"


def _in_process(app: object, edge: object, point: object, samples: list) -> list:
    import asyncio

    async def main() -> list:
        async with app.router.lifespan_context(app):  # type: ignore[attr-defined]
            transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
            config = ClientConfig("http://collabvit.test", concurrency=3, batch_size=64)
            return await EdgeClient(edge, point, config, transport).arun(samples)  # type: ignore[arg-type]

    return asyncio.run(main())


def test_the_client_answers_alike_with_either_runtime(fmnist_onnx) -> None:
    from collabvit.server import ServerConfig, create_app

    edge, path = fmnist_onnx
    samples = shipped_samples(300)
    probe = _flatten(TorchEdge(edge, OperatingPoint()).batches(samples, 300, None), 49)
    point = _torch_point(probe["values"])
    app = create_app(load_model("fmnist-base"), ServerConfig(max_wait_ms=5))
    want = _in_process(app, edge, point, samples)
    got = _in_process(app, load_edge(path, threads=1), EdgePoint(eta=point.eta), samples)
    assert {r.source for r in want} == {"edge", "server"}
    fields = ("file", "prediction", "source", "patches_sent", "bytes_sent", "edge_prediction")
    for g, w in zip(got, want, strict=True):
        assert {f: getattr(g, f) for f in fields} == {f: getattr(w, f) for f in fields}


def test_cli_refuses_a_bad_model_file_in_one_line(
    tmp_path: Path, photo_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from collabvit.cli import main

    (tmp_path / "edge.onnx").write_bytes(b"\x00not onnx")
    base = [str(photo_dir), "--labels", str(photo_dir / "labels.csv"), "--out", str(tmp_path / "a")]
    base += ["--server-url", "http://127.0.0.1:9"]
    assert main(["edge", "--runtime", "onnx", "--model", str(tmp_path / "edge.onnx"), *base]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not an ONNX model" in err[0], err
    assert main(["edge", "--runtime", "onnx", *base]) == 2
    assert "needs --model" in capsys.readouterr().err
    assert main(["edge", *base]) == 2
    assert "--edge NAME is required" in capsys.readouterr().err
    assert not (tmp_path / "a").exists(), "nothing written before the model is checked"


# ----------------------------------------------------------------------------- the device install


def _serve(log: Path, port: int) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "collabvit.cli",
        "serve",
        "--server",
        "deit_tiny_patch16_224",
        "--random-init",
        "1",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--threads",
        "1",
    ]
    with open(log, "wb") as fh:
        return subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"server not ready:\n{log.read_text()}")


LIST_DISTRIBUTIONS = (
    "import importlib.metadata as m, json; "
    "print(json.dumps([d.metadata['Name'] for d in m.distributions()]))"
)


def _edge_venv(folder: Path) -> Path:
    """The device install of docs/edge-device.md, from the project's copied sources.

    ``python3 -m venv --without-pip env && python3 -m pip --python env/bin/python install
    --no-compile 'collabvit[edge]'`` (this venv's pip plays the outside pip).
    """
    source = folder / "source"
    shutil.copytree(
        REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install"]
    subprocess.run([*pip, "-q", "--no-compile", f"{source}[edge]"], check=True, timeout=900)
    return venv


@pytest.mark.slow
def test_a_fresh_edge_install_without_torch_answers_as_the_torch_edge(
    photo_dir: Path, tmp_path: Path
) -> None:
    venv = _edge_venv(tmp_path)
    python = str(venv / "bin" / "python")
    listed = subprocess.run(
        [python, "-c", LIST_DISTRIBUTIONS], check=True, capture_output=True, text=True, timeout=120
    ).stdout
    names = {name.lower() for name in json.loads(listed)}
    assert "onnxruntime" in names and not names & {"torch", "timm", "torchvision"}, names
    assert not names & {"pip", "setuptools"}, names  # the install leaves no installer behind
    assert not list(venv.rglob("*.pyc")), "--no-compile: no bytecode before the first run"
    for module in ("torch", "timm", "torchvision"):
        assert subprocess.run([python, "-c", f"import {module}"], capture_output=True).returncode
    help_text = subprocess.run(
        [str(venv / "bin" / "collabvit"), "--help"],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert "edge" in help_text and "export" in help_text

    edge = peaky_deit()
    export(edge, tmp_path / "edge.onnx")
    assert (
        load_edge(tmp_path / "edge.onnx").metadata.weights_sha256
        == model_identity(edge)["weights_sha256"]
    )
    samples, _ = discover(photo_dir, photo_dir / "labels.csv")
    probe = _flatten(TorchEdge(edge, OperatingPoint()).batches(samples, 12, None), 196)
    point = _torch_point(probe["values"])
    port = _free_port()
    url, log = f"http://127.0.0.1:{port}", tmp_path / "serve.log"
    server = _serve(log, port)
    try:
        _wait_ready(url, server, log)
        want = EdgeClient(edge, point, ClientConfig(url, concurrency=2)).run(samples)
        run = subprocess.run(
            [
                str(venv / "bin" / "collabvit"),
                "edge",
                str(photo_dir),
                "--labels",
                str(photo_dir / "labels.csv"),
                "--runtime",
                "onnx",
                "--model",
                str(tmp_path / "edge.onnx"),
                "--server-url",
                url,
                "--eta",
                repr(point.eta),
                "--concurrency",
                "2",
                "--threads",
                "1",
                "--out",
                str(tmp_path / "onnx.jsonl"),
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        server.terminate()
        server.wait(60)
    assert run.returncode == 0, run.stderr
    got = [json.loads(line) for line in (tmp_path / "onnx.jsonl").read_text().splitlines()]
    assert [g["file"] for g in got] == [w.file for w in want]
    assert {w.source for w in want} == {"edge", "server"}, "some images must go to the server"
    for g, w in zip(got, want, strict=True):
        fields = ("prediction", "source", "patches_sent", "bytes_sent", "edge_prediction")
        assert {f: g[f] for f in fields} == {f: getattr(w, f) for f in fields}, w.file


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
