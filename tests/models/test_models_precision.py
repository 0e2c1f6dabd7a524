"""Tests of collabvit.models.precision: names, the one weight cast, float32 outputs, TF32 scope.

The agreement test runs the shipped pair (fmnist-tiny edge, fmnist-base server)
over the 10,000 shipped Fashion-MNIST test images at the default operating
point in fp32 and in bf16, and prints the final-prediction and gate agreements.
"""

from __future__ import annotations

import pytest
import torch

from collabvit.engine import OperatingPoint, evaluate
from collabvit.errors import ConfigError
from collabvit.fmnist import shipped_samples
from collabvit.models import (
    LoadedModel,
    forward_kept,
    forward_subset,
    forward_with_scores,
    precision,
)
from collabvit.models import load_model as _load
from collabvit.models.precision import (
    apply_precision,
    check_precision,
    dtype_of,
    matmul_scope,
    parse_precision,
    precision_of,
)

pytestmark = pytest.mark.usefixtures("one_thread")

LOW = [p for p in ("bf16", "fp16") if precision._mkldnn_supports(p)]


def _masks(n: int, counts: list[int], seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    keep = torch.zeros(len(counts), n, dtype=torch.bool)
    for i, c in enumerate(counts):
        keep[i, torch.randperm(n, generator=gen)[:c]] = True
    return keep


def _images(loaded: LoadedModel, b: int, seed: int) -> torch.Tensor:
    c, h, w = loaded.preprocessing.input_size
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed))


def test_precision_names_aliases_and_one_line_errors() -> None:
    assert parse_precision("BF16") == "bf16"
    assert parse_precision("bfloat16") == "bf16"
    assert parse_precision(" float32 ") == "fp32"
    assert parse_precision("half") == "fp16"
    assert parse_precision("auto") == "auto"
    assert dtype_of("bf16") is torch.bfloat16 and dtype_of("fp32") is torch.float32
    with pytest.raises(ConfigError) as err:
        parse_precision("int8")
    assert str(err.value) == "precision 'int8' is not one of fp32, bf16, fp16, auto"
    with pytest.raises(ConfigError, match="resolved"):
        dtype_of("auto")


def test_auto_and_fp16_follow_what_the_cpu_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    want = "bf16" if precision._mkldnn_supports("bf16") else "fp32"
    assert check_precision("auto", "cpu") == want
    assert check_precision("fp32", torch.device("cpu")) == "fp32"
    # a CPU without fp16 kernels (this one has them: AVX512-FP16) refuses in one line
    monkeypatch.setattr(precision, "_mkldnn_supports", lambda kind: False)
    with pytest.raises(ConfigError) as err:
        check_precision("fp16", "cpu")
    assert "\n" not in str(err.value) and "use bf16 or fp32" in str(err.value)
    assert check_precision("auto", "cpu") == "fp32"
    with pytest.raises(ConfigError, match="not one of"):
        apply_precision(_load("fmnist-tiny"), "fp8")


@pytest.mark.parametrize("name", LOW)
def test_weights_are_cast_once_and_outputs_stay_float32(name: str) -> None:
    server, edge = _load("fmnist-base"), _load("fmnist-tiny")
    ref_server, ref_edge = _load("fmnist-base"), _load("fmnist-tiny")
    assert apply_precision(server, name) is server
    apply_precision(edge, name)
    dtype = dtype_of(name)
    tensors = [*server.model.parameters(), *server.model.buffers()]
    assert all(t.dtype == dtype for t in tensors if t.is_floating_point())
    assert precision_of(server) == name and precision_of(ref_server) == "fp32"
    assert server.extra["precision"] == name and server.extra["tf32"] is False
    x = _images(server, 6, seed=1)
    keep = _masks(server.num_patches, [49, 30, 30, 7, 1, 45], seed=2)
    out = forward_subset(server, x, keep)
    assert out.dtype == torch.float32
    ref = forward_subset(ref_server, x, keep)
    torch.testing.assert_close(out, ref, rtol=0, atol=0.25)
    assert not torch.equal(out, ref)  # it really ran in the lower precision
    # a mixed-length batch gives each image's own logits (packed, no padding)
    alone = torch.cat([forward_subset(server, x[i : i + 1], keep[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(out, alone, rtol=0, atol=0.05)
    # the padded, key-masked form (a GPU's path, and training's) casts its input alike
    with torch.no_grad():
        masked = forward_kept(server.model, x, keep)
    assert masked.dtype == dtype
    torch.testing.assert_close(masked.float(), out, rtol=0, atol=0.05)
    logits, scores = forward_with_scores(edge, x, ("mean", "rollout"))
    ref_logits, ref_scores = forward_with_scores(ref_edge, x, ("mean", "rollout"))
    assert logits.dtype == torch.float32
    assert all(s.dtype == torch.float32 for s in scores.values())
    torch.testing.assert_close(scores["mean"].sum(1), torch.ones(6), rtol=0, atol=1e-5)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=0.25)
    torch.testing.assert_close(scores["mean"], ref_scores["mean"], rtol=0, atol=0.01)


def test_packed_subset_forward_equals_the_key_masked_one() -> None:
    """fp32: the packed forward (no padding) and the padded, key-masked one agree."""
    loaded = _load("fmnist-base")
    x = _images(loaded, 7, seed=3)
    keep = _masks(loaded.num_patches, [1, 2, 2, 20, 33, 48, 49], seed=4)
    with torch.no_grad():
        masked = forward_kept(loaded.model, x, keep)
    one_bucket = forward_subset(loaded, x, keep, max_padding=1e9)
    torch.testing.assert_close(one_bucket, masked, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        forward_subset(loaded, x, keep, max_batch=2), masked, atol=1e-5, rtol=1e-4
    )


def _tf32() -> object:
    return precision._tf32_state()


def test_tf32_is_scoped_to_the_forwards_that_asked_for_it() -> None:
    loaded = _load("fmnist-tiny")
    before = _tf32()
    assert loaded.extra.get("tf32") is None
    with matmul_scope(loaded):  # fp32 on the CPU: nothing to switch
        assert _tf32() == before
    loaded.extra["tf32"] = True  # what apply_precision records for fp32 on CUDA
    on = precision._tf32_on(before)
    with matmul_scope(loaded):
        assert _tf32() == on
        with matmul_scope(loaded):  # nested (or a concurrent forward)
            assert _tf32() == on
        assert _tf32() == on  # the inner exit does not switch it off
        forward_subset(loaded, _images(loaded, 2, 5), torch.ones(2, 49, dtype=torch.bool))
    assert _tf32() == before
    with pytest.raises(RuntimeError), matmul_scope(loaded):
        raise RuntimeError("a failing forward")
    assert _tf32() == before


@pytest.mark.skipif("bf16" not in LOW, reason="this CPU has no bf16 kernels")
def test_bf16_agrees_with_fp32_on_the_shipped_pair(capsys: pytest.CaptureFixture[str]) -> None:
    samples = shipped_samples()
    assert len(samples) == 10_000
    point = OperatingPoint()
    records = {}
    for name in ("fp32", "bf16"):
        edge = apply_precision(_load("fmnist-tiny"), name)
        server = apply_precision(_load("fmnist-base"), name)
        records[name] = evaluate(edge, server, samples, point, batch_size=500).records
    pairs = list(zip(records["fp32"], records["bf16"], strict=True))
    n = len(pairs)
    final = sum(a.final_pred == b.final_pred for a, b in pairs) / n
    gate = sum(a.transmitted == b.transmitted for a, b in pairs) / n
    edge_pred = sum(a.edge_pred == b.edge_pred for a, b in pairs) / n
    both = [(a, b) for a, b in pairs if a.transmitted and b.transmitted]
    patches = sum(a.num_patches == b.num_patches for a, b in both) / len(both)
    with capsys.disabled():
        print(
            f"\nbf16 vs fp32 on the shipped pair ({n} images, {point.rule} "
            f"{point.threshold}, {point.measure} eta {point.eta}): final prediction "
            f"{100 * final:.2f} %, gate decision {100 * gate:.2f} %, edge prediction "
            f"{100 * edge_pred:.2f} %, same patch count {100 * patches:.2f} % of the "
            f"{len(both)} sent in both"
        )
    assert final >= 0.995
    assert gate >= 0.99
