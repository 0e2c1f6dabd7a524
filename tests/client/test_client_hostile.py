"""The edge client against hostile servers on 127.0.0.1 (issue 16, edge client items).

Each server is a raw asyncio socket server (client_support.HostileServer)
answering what no collabvit server would: a label of ``1e999``, a body that
trickles in one byte at a time. Every run is bounded by ``asyncio.wait_for``,
so a client that hangs fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from client_support import HostileServer, RawRequest, answering, http_response

from collabvit.client import ClientConfig, EdgeClient, ImageResult
from collabvit.data import Sample, discover
from collabvit.engine import OperatingPoint
from collabvit.models import LoadedModel, load_model

RUN_LIMIT_S = 60.0
SEND_ALL = OperatingPoint(measure="none")  # the gate sends every image


@pytest.fixture(scope="module")
def edge(small_pair: tuple[Path, Path]) -> LoadedModel:
    return load_model(str(small_pair[0]))


@pytest.fixture(scope="module")
def samples(photo_dir: Path) -> list[Sample]:
    return discover(photo_dir, photo_dir / "labels.csv")[0]


def run_bounded(
    edge: LoadedModel, config: ClientConfig, samples: list[Sample], limit_s: float = RUN_LIMIT_S
) -> list[ImageResult]:
    """EdgeClient.arun, failed (not hung) when it takes longer than ``limit_s``."""

    async def main() -> list[ImageResult]:
        client = EdgeClient(edge, SEND_ALL, config)
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
