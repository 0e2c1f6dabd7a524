"""Helpers shared by the server tests (a plain module: no conftest.py in this folder).

A second conftest.py would take the name ``conftest`` from tests/conftest.py
for the modules that ``from conftest import ...``; so the fixtures stay in each
test module, built from the functions here.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import torch

from collabvit.data import load_image, preprocess
from collabvit.models import LoadedModel, forward_subset
from collabvit.server import BatcherCallbacks, Decoded

T = TypeVar("T")
BASE = "http://collabvit.test"


def first_photos(imagenet_dir: Path, count: int = 6) -> list[Path]:
    return sorted((imagenet_dir / "images").iterdir())[:count]


def preprocessed(model: LoadedModel, photos: list[Path]) -> list[np.ndarray]:
    """Real photos preprocessed for the server: (3, 64, 64) uint8 each."""
    out = []
    for path in photos:
        image = load_image(path, 3)
        assert image is not None
        out.append(preprocess(image, model.preprocessing).numpy())
    return out


def mask_of(count: int, n: int = 64, offset: int = 0) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[(np.arange(count) * 5 + offset) % n] = True  # spread over the grid
    return mask


def serve(app: Any, body: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
    """Run ``body`` with a client against ``app`` inside the app's lifespan."""

    async def main() -> T:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
                return await body(client)

    return asyncio.run(main())


def alone(model: LoadedModel, image: np.ndarray, mask: np.ndarray) -> torch.Tensor:
    """Logits of one image run by itself through forward_subset."""
    x = model.normalise(torch.from_numpy(image)[None])
    return forward_subset(model, x, torch.from_numpy(mask)[None])[0]


def metric(text: str, name: str, **labels: str) -> float:
    """One sample's value from Prometheus text (0 when absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        key, value = line.rsplit(" ", 1)
        sample, _, rest = key.partition("{")
        found = dict(
            (k, v.strip('"'))
            for k, v in (p.split("=", 1) for p in rest.rstrip("}").split(",") if p)
        )
        if sample == name and found == labels:
            return float(value)
    return 0.0


class Gate(BatcherCallbacks):
    """A batcher callback that holds the worker before each batch until released (bounded wait)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.released = threading.Event()
        self.fail_next = False

    def on_batch_start(self, batch: Sequence[Decoded]) -> None:
        self.entered.set()
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("injected failure")
        assert self.released.wait(20), "test never released the worker"


async def wait_until(check: Callable[[], bool], seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in time")
