"""The HTTP app, in-process: the real app, its lifespan and batcher, over httpx's ASGI transport.

Every request goes through the same code as under uvicorn (body limits, auth,
decoding in a thread pool, the batcher's worker thread, metrics); only the
socket is left out. Real-process behaviour (SIGTERM, SIGKILL) is in
test_edge_e2e.py.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from server_support import (
    Gate,
    alone,
    first_photos,
    mask_of,
    metric,
    preprocessed,
    serve,
    wait_until,
)

from collabvit.models import LoadedModel, load_model
from collabvit.server import ServerConfig, create_app
from collabvit.wire import encode


@pytest.fixture(scope="module")
def server_model(small_pair: tuple[Path, Path]) -> LoadedModel:
    return load_model(str(small_pair[1]))


@pytest.fixture(scope="module")
def photos(imagenet_dir: Path) -> list[Path]:
    return first_photos(imagenet_dir)


@pytest.fixture(scope="module")
def pixels(server_model: LoadedModel, photos: list[Path]) -> list[np.ndarray]:
    """Real photos preprocessed for the server: (3, 64, 64) uint8 each."""
    return preprocessed(server_model, photos)


def test_healthz_reports_model_geometry_and_queue(server_model: LoadedModel) -> None:
    app = create_app(server_model, ServerConfig(max_queue=7))

    async def body(client: httpx.AsyncClient) -> dict[str, Any]:
        response = await client.get("/healthz")
        assert response.status_code == 200
        return dict(response.json())

    health = serve(app, body)
    assert health["status"] == "ok"
    assert health["model"] == "small-server"
    assert health["geometry"] == {
        "channels": 3,
        "height": 64,
        "width": 64,
        "patch_size": 8,
        "num_patches": 64,
    }
    assert health["queue_depth"] == 0 and health["in_flight"] == 0
    assert health["max_queue"] == 7 and health["auth"] is False


def test_concurrent_payloads_with_different_patch_counts_share_one_forward(
    server_model: LoadedModel, pixels: list[np.ndarray]
) -> None:
    counts = [1, 9, 30, 64, 17, 45]
    masks = [mask_of(k, offset=i) for i, k in enumerate(counts)]
    # the batch closes when all six are in; the long wait only bounds a slow machine
    app = create_app(server_model, ServerConfig(max_batch_size=6, max_wait_ms=5000))

    async def body(client: httpx.AsyncClient) -> tuple[list[httpx.Response], str]:
        answers = await asyncio.gather(
            *(
                client.post("/v1/infer", content=encode(p, m, 8))
                for p, m in zip(pixels, masks, strict=True)
            )
        )
        return list(answers), (await client.get("/metrics")).text

    answers, text = serve(app, body)
    for image, mask, response in zip(pixels, masks, answers, strict=True):
        assert response.status_code == 200, response.text
        got = response.json()
        assert got["batch_size"] == 6
        logits = alone(server_model, image, mask)
        assert got["label"] == int(logits.argmax())
        assert got["class_name"] == server_model.class_name(got["label"])
        probs = logits.double().softmax(-1)
        assert [t["label"] for t in got["top5"]] == probs.topk(5).indices.tolist()
        assert [t["probability"] for t in got["top5"]] == pytest.approx(
            probs.topk(5).values.tolist(), abs=1e-5
        )
        assert got["server_ms"] > 0
    assert metric(text, "collabvit_batch_size_count") == 1
    assert metric(text, "collabvit_batch_size_sum") == 6
    assert metric(text, "collabvit_batch_tokens_sum") == sum(counts)


def test_infer_image_preprocesses_and_runs_every_patch(
    server_model: LoadedModel, photos: list[Path], pixels: list[np.ndarray]
) -> None:
    app = create_app(server_model)

    async def body(client: httpx.AsyncClient) -> list[httpx.Response]:
        return [
            await client.post("/v1/infer-image", content=photos[0].read_bytes()),
            await client.post("/v1/infer-image", content=b"this is not an image"),
        ]

    good, bad = serve(app, body)
    assert good.status_code == 200
    full = np.ones(64, dtype=bool)
    assert good.json()["label"] == int(alone(server_model, pixels[0], full).argmax())
    assert bad.status_code == 400
    assert "not a readable image" in bad.json()["error"]


def _corrupt_crc(data: bytes) -> bytes:
    body = bytearray(data[:-4])
    body[-1] ^= 0xFF  # a pixel byte changes; the CRC no longer matches
    return bytes(body) + data[-4:]


def test_malformed_requests_get_4xx_and_the_next_valid_one_is_answered(
    server_model: LoadedModel, pixels: list[np.ndarray]
) -> None:
    good = encode(pixels[0], mask_of(20), 8)
    wrong_geometry = encode(pixels[0][:, :32, :32], mask_of(5, n=16), 8)
    wrong_patch = encode(pixels[0], mask_of(5, n=16), 16)
    no_patch = encode(pixels[0], np.zeros(64, dtype=bool), 8)
    recrc = bytearray(good[:-4])
    recrc[7] = 1  # nonzero flags, with a valid CRC
    flags = bytes(recrc) + zlib.crc32(bytes(recrc)).to_bytes(4, "little")
    cases: list[tuple[str, bytes, int, str]] = [
        ("truncated", good[: len(good) // 2], 400, "disagrees"),
        ("very short", good[:10], 400, "too short"),
        ("empty", b"", 400, "too short"),
        ("bad magic", b"XXXX" + good[4:], 400, "bad magic"),
        ("crc", _corrupt_crc(good), 400, "CRC mismatch"),
        ("flags", flags, 400, "nonzero flags"),
        ("geometry", wrong_geometry, 400, "server model takes"),
        ("patch size", wrong_patch, 400, "server model takes"),
        ("no patch", no_patch, 400, "no patch"),
        ("oversize", good + bytes(4000), 413, "limit"),
    ]
    limit = len(good) + 1000
    app = create_app(server_model, ServerConfig(max_body_bytes=limit, max_wait_ms=0))

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the stream is counted
        for _ in range(10):
            yield bytes(limit // 4)

    async def body(client: httpx.AsyncClient) -> tuple[list[httpx.Response], str]:
        answers = []
        for _name, data, _status, _words in cases:
            answers.append(await client.post("/v1/infer", content=data))
            answers.append(await client.post("/v1/infer", content=good))
        answers.append(await client.post("/v1/infer", content=chunks()))
        answers.append(await client.post("/v1/infer", content=good))
        return answers, (await client.get("/metrics")).text

    answers, text = serve(app, body)
    expected = [(name, status, words) for name, _d, status, words in cases]
    expected.append(("streamed oversize", 413, "limit"))
    for i, (name, status, words) in enumerate(expected):
        bad, after = answers[2 * i], answers[2 * i + 1]
        assert bad.status_code == status, (name, bad.text)
        assert words in bad.json()["error"], (name, bad.json())
        assert after.status_code == 200, (name, after.text)
    assert metric(text, "collabvit_requests_total", endpoint="/v1/infer", outcome="ok") == len(
        expected
    )
    assert metric(
        text, "collabvit_requests_total", endpoint="/v1/infer", outcome="bad_request"
    ) == sum(s == 400 for _n, s, _w in expected)
    assert metric(text, "collabvit_requests_total", endpoint="/v1/infer", outcome="too_large") == 2


def test_image_over_the_pixel_limit_is_refused_before_decoding(
    server_model: LoadedModel, photos: list[Path]
) -> None:
    app = create_app(server_model, ServerConfig(max_image_pixels=1000))

    async def body(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post("/v1/infer-image", content=photos[0].read_bytes())

    response = serve(app, body)
    assert response.status_code == 413
    assert "pixels" in response.json()["error"]


def test_full_queue_answers_503_with_retry_after_and_queued_requests_finish(
    server_model: LoadedModel, pixels: list[np.ndarray]
) -> None:
    gate = Gate()
    config = ServerConfig(max_batch_size=1, max_queue=1, max_wait_ms=0)
    app = create_app(server_model, config, callbacks=[gate])
    payload = encode(pixels[0], mask_of(10), 8)

    async def body(client: httpx.AsyncClient) -> tuple[httpx.Response, list[httpx.Response]]:
        first = asyncio.create_task(client.post("/v1/infer", content=payload))
        await asyncio.to_thread(gate.entered.wait, 10)  # the worker holds request 1
        second = asyncio.create_task(client.post("/v1/infer", content=payload))
        await wait_until(lambda: app.state.batcher.queue_depth == 1)  # request 2 waits
        health = (await client.get("/healthz")).json()
        assert health["queue_depth"] == 1 and health["in_flight"] == 2
        rejected = await client.post("/v1/infer", content=payload)
        gate.released.set()
        return rejected, list(await asyncio.gather(first, second))

    rejected, finished = serve(app, body)
    assert rejected.status_code == 503
    assert rejected.headers["Retry-After"] == "1"
    assert "queue is full" in rejected.json()["error"]
    assert [r.status_code for r in finished] == [200, 200]


def test_a_failing_batch_answers_500_and_the_server_keeps_serving(
    server_model: LoadedModel, pixels: list[np.ndarray]
) -> None:
    gate = Gate()
    gate.fail_next = True
    gate.released.set()
    app = create_app(server_model, ServerConfig(max_wait_ms=0), callbacks=[gate])
    payload = encode(pixels[0], mask_of(10), 8)

    async def body(client: httpx.AsyncClient) -> list[httpx.Response]:
        return [await client.post("/v1/infer", content=payload) for _ in range(2)]

    failed, answered = serve(app, body)
    assert failed.status_code == 500
    assert "RuntimeError" in failed.json()["error"]
    assert answered.status_code == 200


def test_bearer_token_guards_inference_and_metrics_not_healthz(
    server_model: LoadedModel, pixels: list[np.ndarray]
) -> None:
    app = create_app(server_model, ServerConfig(token="s3cret", max_wait_ms=0))
    payload = encode(pixels[0], mask_of(10), 8)

    async def body(client: httpx.AsyncClient) -> dict[str, int]:
        def auth(value: str) -> dict[str, str]:
            return {"Authorization": value}

        return {
            "none": (await client.post("/v1/infer", content=payload)).status_code,
            "wrong": (
                await client.post("/v1/infer", content=payload, headers=auth("Bearer nope"))
            ).status_code,
            "scheme": (
                await client.post("/v1/infer", content=payload, headers=auth("Basic s3cret"))
            ).status_code,
            "image": (await client.post("/v1/infer-image", content=b"x")).status_code,
            "right": (
                await client.post("/v1/infer", content=payload, headers=auth("Bearer s3cret"))
            ).status_code,
            "metrics": (await client.get("/metrics")).status_code,
            "metrics ok": (await client.get("/metrics", headers=auth("Bearer s3cret"))).status_code,
            "healthz": (await client.get("/healthz")).status_code,
        }

    codes = serve(app, body)
    assert codes == {
        "none": 401,
        "wrong": 401,
        "scheme": 401,
        "image": 401,
        "right": 200,
        "metrics": 401,
        "metrics ok": 200,
        "healthz": 200,
    }


def test_metrics_count_requests_bytes_batches_and_each_app_has_its_own_registry(
    server_model: LoadedModel, pixels: list[np.ndarray], photos: list[Path]
) -> None:
    payload = encode(pixels[0], mask_of(12), 8)
    image = photos[1].read_bytes()
    app = create_app(server_model, ServerConfig(max_wait_ms=0))
    other = create_app(server_model)

    async def body(client: httpx.AsyncClient) -> httpx.Response:
        for _ in range(3):
            assert (await client.post("/v1/infer", content=payload)).status_code == 200
        assert (await client.post("/v1/infer-image", content=image)).status_code == 200
        assert (await client.post("/v1/infer", content=b"junk")).status_code == 400
        return await client.get("/metrics")

    response = serve(app, body)
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    infer = {"endpoint": "/v1/infer"}
    assert metric(text, "collabvit_requests_total", outcome="ok", **infer) == 3
    assert metric(text, "collabvit_requests_total", outcome="bad_request", **infer) == 1
    assert metric(text, "collabvit_requests_total", endpoint="/v1/infer-image", outcome="ok") == 1
    assert metric(text, "collabvit_received_bytes_total", **infer) == 3 * len(payload) + 4
    assert metric(text, "collabvit_received_bytes_total", endpoint="/v1/infer-image") == len(image)
    assert metric(text, "collabvit_batch_size_count") == 4
    assert metric(text, "collabvit_batch_tokens_sum") == 3 * 12 + 64
    assert metric(text, "collabvit_queue_wait_seconds_count") == 4
    assert metric(text, "collabvit_inference_seconds_count") == 4
    assert metric(text, "collabvit_request_latency_seconds_count", **infer) == 3
    assert "collabvit_queue_depth 0.0" in text
    assert "collabvit_in_flight 0.0" in text

    async def fresh(client: httpx.AsyncClient) -> str:
        return (await client.get("/metrics")).text

    assert metric(serve(other, fresh), "collabvit_batch_size_count") == 0
