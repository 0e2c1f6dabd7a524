"""--device auto|cpu|cuda|cuda:N: one resolution, and a missing device is one line before loading.

The GPU paths are tested by telling torch what this machine has (is_available,
device_count), so they run the same on a CPU box and on a GPU one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from collabvit.cli import main
from collabvit.errors import ConfigError
from collabvit.models import resolve_device


def _gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_cpu_and_auto_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    _gpus(monkeypatch, 0)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_auto_and_cuda_with_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    _gpus(monkeypatch, 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


def test_cuda_without_a_gpu_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    _gpus(monkeypatch, 0)
    with pytest.raises(ConfigError) as info:
        resolve_device("cuda")
    message = str(info.value)
    assert "'cuda' is not available" in message and "--device cpu" in message
    assert "\n" not in message


def test_a_gpu_index_past_the_last_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    _gpus(monkeypatch, 1)
    with pytest.raises(ConfigError, match=r"'cuda:3' is not available.*1 CUDA GPU \(cuda:0\)"):
        resolve_device("cuda:3")
    _gpus(monkeypatch, 2)
    with pytest.raises(ConfigError, match=r"2 CUDA GPUs \(cuda:0 \.\. cuda:1\)"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "cuda:-1", "mps0", ""])
def test_a_name_that_is_not_a_device(spec: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _gpus(monkeypatch, 1)
    with pytest.raises(ConfigError, match="is not a device: use auto, cpu, cuda or cuda:N"):
        resolve_device(spec)


@pytest.mark.parametrize(
    "argv",
    [
        ["evaluate", "--edge", "fmnist-tiny", "--server", "fmnist-base", "--data", "D"],
        ["sweep", "--edge", "fmnist-tiny", "--server", "fmnist-base", "--data", "D", "--out", "O"],
        ["serve", "--server", "fmnist-base"],
        ["edge", "--edge", "fmnist-tiny", "--server-url", "http://h:1", "--out", "o.jsonl", "x"],
        ["visualize", "--edge", "fmnist-tiny", "--out", "O", "x.png"],
        ["demo"],
        ["train", "fmnist-tiny"],
    ],
    ids=lambda argv: argv[0],
)
def test_every_command_refuses_a_missing_gpu_before_loading_anything(
    argv: list[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import collabvit.models
    import collabvit.training

    def must_not_run(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a model was built before --device was checked")

    _gpus(monkeypatch, 0)
    monkeypatch.setattr(collabvit.models, "load_model", must_not_run)
    monkeypatch.setattr(collabvit.training, "train", must_not_run)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "D").mkdir()  # inputs that exist, so only the device can be wrong
    for name in ("x", "x.png"):
        (tmp_path / name).write_bytes(b"")
    assert main([*argv, "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"collabvit {argv[0]}: error: device 'cuda' is not available")
    assert "\n" not in err
