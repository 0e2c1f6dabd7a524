"""The edge client against hostile servers on 127.0.0.1 (issue 16, edge client items).

Each server is a raw asyncio socket server (client_support.HostileServer)
answering what no collabvit server would: a label of ``1e999``, a body that
trickles in one byte at a time. Every run is bounded by ``asyncio.wait_for``,
so a client that hangs fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from client_support import HostileServer, RawRequest, Respond, answering, http_response
from PIL import Image

from collabvit.client import ClientConfig, EdgeClient, ImageResult, summarise
from collabvit.data import Sample, discover
from collabvit.engine import OperatingPoint
from collabvit.errors import WireError
from collabvit.models import LoadedModel, load_model
from collabvit.wire import encode

RUN_LIMIT_S = 60.0
SEND_ALL = OperatingPoint(measure="none")  # the gate sends every image


@pytest.fixture(scope="module")
def edge(small_pair: tuple[Path, Path]) -> LoadedModel:
    return load_model(str(small_pair[0]))


@pytest.fixture(scope="module")
def samples(photo_dir: Path) -> list[Sample]:
    return discover(photo_dir, photo_dir / "labels.csv")[0]


def run_bounded(
    edge: LoadedModel,
    config: ClientConfig,
    samples: list[Sample],
    limit_s: float = RUN_LIMIT_S,
    point: OperatingPoint = SEND_ALL,
) -> list[ImageResult]:
    """EdgeClient.arun, failed (not hung) when it takes longer than ``limit_s``."""

    async def main() -> list[ImageResult]:
        client = EdgeClient(edge, point, config)
        return await asyncio.wait_for(client.arun(samples), limit_s)

    return asyncio.run(main())


def valid_answer(label: int) -> bytes:
    top = f'[{{"label": {label}, "class_name": "c{label}", "probability": 0.9}}]'
    return f'{{"label": {label}, "class_name": "c{label}", "top5": {top}}}'.encode()


# ----------------------------------------------------------------------------- item 6


@pytest.mark.parametrize("label", ["1e999", "-1", "1000", "7.5", '"7"'])
def test_a_server_answering_a_bad_label_gets_every_image_answered_by_the_edge(
    edge: LoadedModel, samples: list[Sample], label: str
) -> None:
    """Today ``{"label": 1e999}`` kills a worker (OverflowError); all such answers hang the run."""
    body = f'{{"label": {label}, "top5": [{{"label": 1, "probability": 0.5}}]}}'.encode()
    with HostileServer(answering(200, body)) as server:
        config = ClientConfig(server.url, concurrency=2, retries=1, backoff_s=0.01)
        results = run_bounded(edge, config, samples[:4])
    assert [r.file for r in results] == [s.file for s in samples[:4]]
    for r in results:
        assert r.source == "edge-fallback", r
        assert r.prediction == r.edge_prediction is not None
        assert r.attempts == 2  # a bad answer is a failed attempt: retried once
        assert "label" in (r.error or "")
    assert len(server.requests) == 8


def test_one_bad_answer_among_good_ones_is_retried_and_the_run_goes_on(
    edge: LoadedModel, samples: list[Sample]
) -> None:
    calls = 0

    async def first_bad(_request: RawRequest, writer: asyncio.StreamWriter) -> None:
        nonlocal calls
        calls += 1
        body = b'{"label": 1e999}' if calls == 1 else valid_answer(calls)
        writer.write(http_response(200, body))
        await writer.drain()

    with HostileServer(first_bad) as server:
        config = ClientConfig(server.url, concurrency=1, retries=1, backoff_s=0.01)
        results = run_bounded(edge, config, samples[:3])
    assert [r.source for r in results] == ["server"] * 3
    assert [r.attempts for r in results] == [2, 1, 1]
    assert [r.prediction for r in results] == [2, 3, 4]


# ----------------------------------------------------------------------------- item 7


def trickling(interval_s: float) -> Respond:
    """Headers at once, then a valid answer one byte every ``interval_s`` seconds."""

    async def respond(_request: RawRequest, writer: asyncio.StreamWriter) -> None:
        whole = http_response(200, valid_answer(3))
        head_end = whole.index(b"\r\n\r\n") + 4
        writer.write(whole[:head_end])
        await writer.drain()
        for i in range(head_end, len(whole)):
            await asyncio.sleep(interval_s)
            writer.write(whole[i : i + 1])
            await writer.drain()

    return respond


def test_a_trickled_body_cannot_outlast_the_deadline(
    edge: LoadedModel, samples: list[Sample]
) -> None:
    """Today a byte every 0.2 s never trips the 2 s read timeout: the image waits ~20 s."""
    assert ClientConfig("http://x").deadline_s == 10.0  # on by default
    with HostileServer(trickling(0.2)) as server:
        config = ClientConfig(
            server.url, concurrency=2, timeout_s=2.0, retries=1, backoff_s=0.01, deadline_s=1.0
        )
        started = time.monotonic()
        results = run_bounded(edge, config, samples[:4], limit_s=15.0)
        elapsed = time.monotonic() - started
    assert [r.source for r in results] == ["edge-fallback"] * 4
    assert all("deadline" in (r.error or "") for r in results)
    assert all(r.attempts == 1 for r in results)  # the deadline covers the retries too
    assert elapsed < 2 * 1.0 + 5.0  # two rounds of two images, plus the edge model
    summary = summarise(results)
    assert summary["fallbacks"] == {"deadline": 4}


def test_a_fast_answer_is_not_cut_by_the_deadline(edge: LoadedModel, samples: list[Sample]) -> None:
    with HostileServer(trickling(0.0)) as server:
        config = ClientConfig(server.url, concurrency=2, deadline_s=5.0)
        results = run_bounded(edge, config, samples[:2])
    assert [r.source for r in results] == ["server"] * 2


# ----------------------------------------------------------------------------- item 8


def test_a_stop_ends_the_run_with_the_answers_given_so_far(
    edge: LoadedModel, samples: list[Sample]
) -> None:
    """What SIGINT does in ``collabvit edge``: stop at once, keep what was answered."""

    async def slow(_request: RawRequest, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.3)
        writer.write(http_response(200, valid_answer(5)))
        await writer.drain()

    async def main(url: str) -> tuple[list[ImageResult], list[ImageResult], float]:
        stop = asyncio.Event()
        seen: list[ImageResult] = []

        def on_result(result: ImageResult) -> None:
            seen.append(result)
            if len(seen) == 2:
                stop.set()

        client = EdgeClient(edge, SEND_ALL, ClientConfig(url, concurrency=1))
        started = time.monotonic()
        results = await asyncio.wait_for(client.arun(samples, on_result, stop), RUN_LIMIT_S)
        return results, seen, time.monotonic() - started

    with HostileServer(slow) as server:
        results, seen, elapsed = asyncio.run(main(server.url))
    assert [r.file for r in results] == [r.file for r in seen] == [s.file for s in samples[:2]]
    assert all(r.source == "server" for r in results)
    assert elapsed < 0.3 * len(samples)  # it did not wait for the other images


# ----------------------------------------------------------------------------- item 10


def test_a_picture_the_codec_cannot_encode_is_sent_raw_and_counted(
    model_json_writer: Callable[..., Path], photo_dir: Path, tmp_path: Path
) -> None:
    """Pillow raises ``OSError: broken data stream`` on JPEG q90 of 224x224 noise: today
    that ends the run. Now the image goes out with the raw codec and is counted."""
    vit = {"img_size": 224, "patch_size": 16, "embed_dim": 32, "depth": 1, "num_heads": 2}
    edge = load_model(str(model_json_writer(tmp_path, "edge-224", seed=4, **vit)))
    folder = tmp_path / "photos"
    folder.mkdir()
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "noise.png")  # 256 * 0.875 = 224: cropped, not resized
    photo = sorted(photo_dir.glob("*.JPEG"))[0]
    shutil.copy(photo, folder / photo.name)
    samples, _ = discover(folder)
    every_patch = OperatingPoint(measure="none", rule="all")
    with HostileServer(answering(200, valid_answer(1))) as server:
        config = ClientConfig(server.url, codec="jpeg", quality=90, full_jpeg_baseline=True)
        results = run_bounded(edge, config, samples, point=every_patch)
        codec_ids = sorted(request.body[5] for request in server.requests)  # byte 5: codec id
    by_file = {r.file: r for r in results}
    assert [r.source for r in results] == ["server", "server"]
    noisy, plain = by_file["noise.png"], by_file[photo.name]
    assert (noisy.codec, plain.codec) == ("raw", "jpeg")
    assert "jpeg" in (noisy.codec_error or "") and plain.codec_error is None
    assert noisy.bytes_sent > 196 * 16 * 16 * 3  # the raw patches
    assert noisy.full_jpeg_bytes is None and (plain.full_jpeg_bytes or 0) > 0
    assert codec_ids == [0, 2]  # raw, jpeg
    assert summarise(results)["codec_fallbacks"] == 1
    # the codec itself raises only WireError (here Pillow's OSError, wrapped)
    crop = noise[16:240, 16:240].transpose(2, 0, 1)  # (3, 224, 224)
    with pytest.raises(WireError, match="broken data stream"):
        encode(np.ascontiguousarray(crop), np.ones(196, dtype=bool), 16, "jpeg", 90)
