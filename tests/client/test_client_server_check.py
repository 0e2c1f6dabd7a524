"""The edge checks the server's geometry once, before its first upload (issue 13).

A server of another input size or patch size would refuse every payload; one
of another label space would answer labels of another model. The edge reads
``/healthz`` (the real answer of :func:`collabvit.server.create_app`) and
refuses such a server in one line, before any image is sent.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from collabvit import cli
from collabvit.client import ClientConfig, EdgeClient
from collabvit.client.server_check import check_geometry, wait_for_server
from collabvit.errors import ConfigError
from collabvit.models import LoadedModel, load_model
from collabvit.pipeline import OperatingPoint
from collabvit.server import create_app


def health_of(model: LoadedModel) -> bytes:
    """The ``/healthz`` body a real server of ``model`` answers."""

    async def get() -> bytes:
        transport = httpx.ASGITransport(app=create_app(model))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return (await client.get("/healthz")).content

    return asyncio.run(get())


@pytest.fixture(scope="module")
def other_geometry(
    model_json_writer: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> LoadedModel:
    folder = tmp_path_factory.mktemp("other")
    path = model_json_writer(folder, "other-server", seed=3, img_size=48, patch_size=16)
    return load_model(str(path))


@contextmanager
def health_server(body: bytes) -> Iterator[tuple[str, list[str]]]:
    """A stdlib server answering ``/healthz`` with ``body``; (its URL, the POST paths seen)."""
    posts: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            posts.append(self.path)
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="health-server")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", posts
    finally:
        server.shutdown()
        server.server_close()
        thread.join(30)


def test_a_server_of_another_geometry_is_refused_in_one_line(
    small_pair: tuple[Path, Path], other_geometry: LoadedModel
) -> None:
    edge = load_model(str(small_pair[0]))
    with pytest.raises(ConfigError) as caught:
        check_geometry(edge, httpx.Response(200, content=health_of(other_geometry)).json())
    message = str(caught.value)
    assert "\n" not in message
    assert "server other-server takes 3x48x48 with 16-pixel patches" in message
    assert "this edge sends 3x64x64 with 8-pixel patches" in message


def test_the_same_geometry_passes_and_a_server_that_does_not_say_is_not_checked(
    small_pair: tuple[Path, Path],
) -> None:
    edge, server = load_model(str(small_pair[0])), load_model(str(small_pair[1]))
    check_geometry(edge, httpx.Response(200, content=health_of(server)).json())
    check_geometry(edge, {"status": "ok"})  # a foreign or older server
    check_geometry(edge, None)
    with pytest.raises(ConfigError, match="has 10 classes but this edge has 1000"):
        check_geometry(
            edge, {**httpx.Response(200, content=health_of(server)).json(), "num_classes": 10}
        )


def test_edge_client_checks_before_the_first_upload(
    small_pair: tuple[Path, Path], other_geometry: LoadedModel, photo_dir: Path
) -> None:
    from collabvit.data import discover

    edge = load_model(str(small_pair[0]))
    samples, _ = discover(photo_dir, photo_dir / "labels.csv", 3)
    with health_server(health_of(other_geometry)) as (url, posts):
        client = EdgeClient(
            edge, OperatingPoint(measure="none"), ClientConfig(url, check_server=True)
        )
        with pytest.raises(ConfigError, match="takes 3x48x48"):
            client.run(samples)
        unchecked = EdgeClient(edge, OperatingPoint(measure="none"), ClientConfig(url, retries=0))
        results = unchecked.run(samples)  # the library default: no check, the server's 500s
    assert posts == ["/v1/infer"] * 3  # only the unchecked client uploaded
    assert {r.source for r in results} == {"edge-fallback"}


def test_collabvit_edge_refuses_a_mismatched_server_with_one_line(
    small_pair: tuple[Path, Path],
    other_geometry: LoadedModel,
    photo_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("COLLABVIT_TOKEN", raising=False)
    with health_server(health_of(other_geometry)) as (url, posts):
        code = cli.main(
            [
                "edge", "--edge", str(small_pair[0]), "--server-url", url, str(photo_dir),
                "--measure", "none", "--limit", "3", "--threads", "1",
                "--out", str(tmp_path / "out.jsonl"),
            ]
        )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("collabvit edge: error:")]
    assert line.startswith("collabvit edge: error: server other-server takes 3x48x48")
    assert "Traceback" not in err
    assert posts == []  # nothing was uploaded


def test_waiting_polls_until_the_server_answers(small_pair: tuple[Path, Path]) -> None:
    edge = load_model(str(small_pair[0]))
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(503) if len(seen) < 3 else httpx.Response(200, json={})

    async def main() -> None:
        transport = httpx.MockTransport(handler)
        async with httpx.AsyncClient(transport=transport, base_url="http://s") as http:
            await wait_for_server(http, edge, 30.0, "http://s")

    asyncio.run(main())
    assert seen == ["/healthz"] * 3
