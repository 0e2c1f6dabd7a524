"""Hostile clients against a real ``collabvit serve`` process on 127.0.0.1 (issue 16, items 1-5).

One server process for the module, with short read timeouts (1 s for the
headers, 2 s for the body) so that the slow-client tests stay short. Every
socket has a timeout and every loop a bound: a server that never closes a
connection fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from serve_process import ServeProcess, cli_command, cli_env, free_port
from server_support import (
    blank_png,
    connect,
    first_photos,
    half_body,
    half_headers,
    mask_of,
    metric,
    one_patch_png_message,
    preprocessed,
    read_until_closed,
    trickled_headers,
)

from collabvit.models import load_model
from collabvit.wire import encode

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 2.0
SLACK_S = 3.0  # a busy 2-core machine


@pytest.fixture(scope="module")
def server(
    small_pair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServeProcess]:
    folder = tmp_path_factory.mktemp("hardening")
    proc = ServeProcess(
        folder / "serve.log",
        small_pair[1],
        "--header-timeout", str(HEADER_TIMEOUT_S),
        "--body-timeout", str(BODY_TIMEOUT_S),
        "--max-wait-ms", "0",
        verbose=True,
    )  # fmt: skip
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def payload(small_pair: tuple[Path, Path], imagenet_dir: Path) -> bytes:
    """A valid wire message for the small server: a real photo, 20 of 64 patches."""
    model = load_model(str(small_pair[1]))
    pixels = preprocessed(model, first_photos(imagenet_dir, 1))[0]
    return encode(pixels, mask_of(20), 8)


def _post_all(url: str, requests: list[tuple[str, bytes]]) -> list[httpx.Response]:
    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return list(
                await asyncio.gather(*(client.post(path, content=body) for path, body in requests))
            )

    return asyncio.run(main())


def test_oversized_geometry_and_huge_images_are_refused_before_any_allocation(
    server: ServeProcess, payload: bytes
) -> None:
    """Item 1: 3x8192x8192 messages (~200 KB each, 192 MiB decoded) and huge PNGs, concurrently."""
    bomb = one_patch_png_message(3, 8192)
    big = blank_png(7000, 7000)  # ~140 KB: 49 M pixels, under the former 50 M limit
    huge = blank_png(20_000, 20_000, rows=64)  # only its header matters
    for answer in _post_all(server.url, [("/v1/infer", payload)] * 3):  # warm up
        assert answer.status_code == 200, answer.text
    time.sleep(0.5)
    idle_kib = server.status_kib("VmRSS")
    server.reset_peak_rss()
    requests = [("/v1/infer", bomb)] * 4 + [("/v1/infer-image", big)] * 4
    answers = _post_all(server.url, [*requests, ("/v1/infer-image", huge)])
    peak_kib = server.status_kib("VmHWM")
    grew_mib = (peak_kib - idle_kib) / 1024
    assert grew_mib < 64, f"RSS peaked {grew_mib:.0f} MiB above idle ({idle_kib // 1024} MiB)"
    for answer in answers[:4]:
        assert answer.status_code == 400, answer.text
        assert "server model takes 3x64x64 with patch 8" in answer.json()["error"]
    for answer in answers[4:]:
        assert answer.status_code == 413, answer.text
        assert "pixels" in answer.json()["error"]
    assert "7000x7000 = 49000000 pixels" in answers[4].json()["error"]
    assert "decompression-bomb limit" in answers[-1].json()["error"]
    assert _post_all(server.url, [("/v1/infer", payload)])[0].status_code == 200


def _half_headers(port: int) -> tuple[bytes, float | None]:
    return half_headers(port, HEADER_TIMEOUT_S + SLACK_S)


def _silent(port: int) -> tuple[bytes, float | None]:
    with connect(port) as sock:
        return read_until_closed(sock, HEADER_TIMEOUT_S + SLACK_S)


def _trickled_headers(port: int) -> tuple[bytes, float | None]:
    return trickled_headers(port, 0.2)


def _half_body(port: int) -> tuple[bytes, float | None]:
    return half_body(port, BODY_TIMEOUT_S + SLACK_S)


def test_half_sent_requests_are_closed_and_normal_clients_are_still_answered(
    server: ServeProcess, payload: bytes
) -> None:
    """Item 2: header and body read deadlines, with real slow sockets."""
    slow: list[Callable[[int], tuple[bytes, float | None]]] = [
        _half_headers,
        _silent,
        _trickled_headers,
        _half_body,
    ]
    with ThreadPoolExecutor(len(slow)) as pool:
        futures = [pool.submit(client, server.port) for client in slow]
        time.sleep(0.3)  # the slow sockets are open: a normal client is answered meanwhile
        normal = _post_all(server.url, [("/v1/infer", payload)])[0]
        results = {client.__name__: f.result(30) for client, f in zip(slow, futures, strict=True)}
    assert normal.status_code == 200, normal.text
    for name in ("_half_headers", "_silent", "_trickled_headers"):
        data, closed = results[name]
        assert closed is not None, f"{name}: still open after {HEADER_TIMEOUT_S + SLACK_S} s"
        assert HEADER_TIMEOUT_S - 0.2 < closed < HEADER_TIMEOUT_S + SLACK_S, (name, closed)
    data, closed = results["_half_body"]
    assert closed is not None, f"half a body: still open after {BODY_TIMEOUT_S + SLACK_S} s"
    assert BODY_TIMEOUT_S - 0.2 < closed < BODY_TIMEOUT_S + SLACK_S, closed
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert b"connection: close" in data.lower()
    with httpx.Client(base_url=server.url, timeout=10) as client:
        text = client.get("/metrics").text
    assert metric(text, "collabvit_requests_total", endpoint="/v1/infer", outcome="timeout") >= 1


def test_an_idle_keep_alive_connection_is_not_held_to_the_header_deadline(
    server: ServeProcess, payload: bytes
) -> None:
    """Idle time between requests is the keep-alive timeout's (5 s), not the header deadline's."""
    with httpx.Client(base_url=server.url, timeout=10) as client:
        first = client.post("/v1/infer", content=payload)
        time.sleep(HEADER_TIMEOUT_S + 0.5)  # idle, on the same connection
        second = client.post("/v1/infer", content=payload)
    assert (first.status_code, second.status_code) == (200, 200)
    assert first.extensions["network_stream"] is second.extensions["network_stream"]


def _wait_for_metric(server: ServeProcess, outcome: str, count: float) -> str:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for _ in range(100):
            text = client.get("/metrics").text
            got = metric(text, "collabvit_requests_total", endpoint="/v1/infer", outcome=outcome)
            if got >= count:
                return text
            time.sleep(0.05)
    raise AssertionError(f"never counted {count} {outcome!r} requests:\n{text}")


def test_a_client_gone_mid_upload_is_counted_as_aborted_and_logged_at_info(
    server: ServeProcess,
) -> None:
    """Item 4: a real socket closes after 1,000 of 50,000 body bytes."""
    with httpx.Client(base_url=server.url, timeout=10) as client:
        before = client.get("/metrics").text
    aborted = metric(before, "collabvit_requests_total", endpoint="/v1/infer", outcome="aborted")
    errors = metric(before, "collabvit_requests_total", endpoint="/v1/infer", outcome="error")
    with connect(server.port) as sock:
        sock.sendall(b"POST /v1/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 50000\r\n\r\n")
        sock.sendall(bytes(1000))
        time.sleep(0.2)  # the server is reading the body
    text = _wait_for_metric(server, "aborted", aborted + 1)
    assert metric(text, "collabvit_requests_total", endpoint="/v1/infer", outcome="error") == errors
    log = server.log()
    assert "Traceback" not in log and "ERROR" not in log, log
    lines = [line for line in log.splitlines() if "went away" in line]
    assert lines and all(line.startswith("INFO ") for line in lines), log


def _chunked(body: bytes) -> bytes:
    return f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"


def test_content_length_together_with_chunked_encoding_is_refused(
    server: ServeProcess, payload: bytes
) -> None:
    """Item 5: ambiguous framing (request smuggling) gets 400 and the connection closes."""
    head = (
        "POST /v1/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
    )
    both = f"{head}Content-Length: {len(payload)}\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked = f"{head}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    answers = []
    for request in (both, chunked):
        with connect(server.port) as sock:
            sock.sendall(request.encode() + _chunked(payload))
            answers.append(read_until_closed(sock, 10))
    (refused, closed), (accepted, _) = answers
    assert refused.startswith(b"HTTP/1.1 400"), refused[:300]
    assert b"Content-Length" in refused and b"Transfer-Encoding" in refused
    assert closed is not None, "the connection stayed open after the refusal"
    assert accepted.startswith(b"HTTP/1.1 200"), accepted[:300]


TOKEN_CASES = [
    (("--token", ""), {}, "--token is empty"),
    ((), {"COLLABVIT_TOKEN": ""}, "COLLABVIT_TOKEN is empty"),
    (("--token", "pässwort"), {}, "printable ASCII"),
    (("--token", "two words"), {}, "printable ASCII"),
]


def test_an_empty_or_non_ascii_token_stops_serve_with_one_line(
    small_pair: tuple[Path, Path],
) -> None:
    """Item 3: today an empty token silently turns authentication off (four processes at once)."""
    procs = []
    for options, env, _words in TOKEN_CASES:
        port = str(free_port())
        command = cli_command("serve", "--server", str(small_pair[1]), "--port", port, *options)
        procs.append(
            subprocess.Popen(
                command,
                env=cli_env(**env),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    deadline = time.monotonic() + 150
    try:
        results = [p.communicate(timeout=max(1, deadline - time.monotonic())) for p in procs]
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"serve started despite a bad token: {exc.cmd}") from exc
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for (options, env, words), p, (_out, err) in zip(TOKEN_CASES, procs, results, strict=True):
        assert p.returncode == 2, (options, env, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("collabvit serve: error: "), err
        assert words in lines[0], lines[0]


def test_concurrent_normal_clients_all_get_200(server: ServeProcess, payload: bytes) -> None:
    """The limits refuse only what they should: 16 concurrent valid uploads are answered."""
    answers = _post_all(server.url, [("/v1/infer", payload)] * 16)
    assert [a.status_code for a in answers] == [200] * 16
    assert all(np.isfinite(a.json()["top5"][0]["probability"]) for a in answers)
