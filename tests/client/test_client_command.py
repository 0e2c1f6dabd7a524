"""``collabvit edge``'s exit status and token checks, against hostile servers on 127.0.0.1.

Issue 16 item 9: a wrong token (401) or a dead server exited 0 with a summary
that read like success. Now a fallback that a rerun cannot fix (a 4xx
refusal) or a server that answered nothing is exit 1 with one line on stderr;
``--fail-on-fallback`` makes any fallback exit 1; a bad token is a usage error
(ConfigError: exit 2) before anything runs. The command runs in-process
(``edge.execute``: the command without its fast-exit garbage-collector freeze).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import pytest
from client_support import HostileServer, RawRequest, answering, free_port

from collabvit.commands import edge as edge_command
from collabvit.errors import ConfigError

GOOD = b'{"label": 3, "class_name": "c3", "top5": [{"label": 3, "probability": 0.9}]}'


def parse(*options: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    edge_command.add_arguments(parser)
    return parser.parse_args(list(options))


def edge_args(
    small_pair: tuple[Path, Path], photo_dir: Path, out: Path, url: str, *more: str
) -> argparse.Namespace:
    return parse(
        "--edge", str(small_pair[0]), "--server-url", url, str(photo_dir),
        "--labels", str(photo_dir / "labels.csv"), "--measure", "none", "--limit", "4",
        "--retries", "1", "--out", str(out), *more,
    )  # fmt: skip


@pytest.fixture(autouse=True)
def no_token_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLLABVIT_TOKEN", raising=False)


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("collabvit edge: error:")]


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (401, "missing or wrong bearer token"),
        (403, "forbidden"),
        (400, "the server model takes 3x224x224, the payload is 3x64x64"),
    ],
)
def test_a_refused_request_is_exit_1_with_the_reason_in_one_line(
    small_pair: tuple[Path, Path],
    photo_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    status: int,
    reason: str,
) -> None:
    body = json.dumps({"error": reason}).encode()
    out = tmp_path / "answers.jsonl"
    with HostileServer(answering(status, body)) as server:
        code = edge_command.execute(edge_args(small_pair, photo_dir, out, server.url))
    assert code == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert f"server answered {status}: {reason}" in line and "4 of 4" in line
    assert len(out.read_text().splitlines()) == 4  # every image still has its answer


def test_transient_fallbacks_are_exit_0_unless_fail_on_fallback(
    small_pair: tuple[Path, Path],
    photo_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    calls = 0
    busy = answering(503, b'{"error": "queue full"}', Retry_After="0")
    good = answering(200, GOOD)

    async def first_image_busy(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        nonlocal calls
        calls += 1
        await (busy if calls <= 2 else good)(request, writer)  # the first image: 503 twice

    out = tmp_path / "answers.jsonl"
    with HostileServer(first_image_busy) as server:
        options = ("--concurrency", "1")
        assert (
            edge_command.execute(edge_args(small_pair, photo_dir, out, server.url, *options)) == 0
        )
        calls = 0
        strict = (*options, "--fail-on-fallback")
        code = edge_command.execute(edge_args(small_pair, photo_dir, out, server.url, *strict))
    assert code == 1
    err = capsys.readouterr().err
    (line,) = error_lines(err)
    assert "--fail-on-fallback" in line and "1 of 4" in line


def test_an_answered_run_is_exit_0(
    small_pair: tuple[Path, Path], photo_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "answers.jsonl"
    with HostileServer(answering(200, GOOD)) as server:
        args = edge_args(small_pair, photo_dir, out, server.url, "--fail-on-fallback")
        assert edge_command.execute(args) == 0


def test_a_dead_server_is_exit_1(
    small_pair: tuple[Path, Path],
    photo_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "answers.jsonl"
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    code = edge_command.execute(edge_args(small_pair, photo_dir, out, url, "--deadline", "5"))
    assert code == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert "answered none of the 4 images sent" in line and "cannot reach" in line


@pytest.mark.parametrize(
    ("options", "env", "words"),
    [
        (("--token", ""), {}, "--token is empty"),
        ((), {"COLLABVIT_TOKEN": ""}, "COLLABVIT_TOKEN is empty"),
        (("--token", "pässwort"), {}, "--token must be printable ASCII"),
        ((), {"COLLABVIT_TOKEN": "two words"}, "COLLABVIT_TOKEN must be printable ASCII"),
    ],
)
def test_an_empty_or_non_ascii_token_is_a_usage_error_at_start(
    small_pair: tuple[Path, Path],
    photo_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    options: tuple[str, ...],
    env: dict[str, str],
    words: str,
) -> None:
    """Today "" silently means no token, and a non-ASCII one crashes the first request."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "answers.jsonl"
    with HostileServer(answering(200, GOOD)) as server:
        args = edge_args(small_pair, photo_dir, out, server.url, *options)
        with pytest.raises(ConfigError, match=words) as caught:
            edge_command.execute(args)
        assert server.requests == []  # refused before anything was sent
    assert "\n" not in str(caught.value)
    assert "pässwort" not in str(caught.value)  # the secret is not echoed
    assert not out.exists()
