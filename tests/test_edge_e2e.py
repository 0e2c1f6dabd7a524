"""End to end with real processes on 127.0.0.1: collabvit serve, edge and evaluate.

A process spends most of its start importing torch, so the server processes
are started together, once: the end-to-end test uses the plain server first,
then the SIGKILL test takes it (a fresh one is started if it is gone); the
SIGTERM test has its own, configured to keep requests waiting.
"""

from __future__ import annotations

import asyncio
import json
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import numpy as np
import pytest
from serve_process import (
    RUN_TIMEOUT_S,
    START_TIMEOUT_S,
    ServeProcess,
    finish,
    start,
)

from collabvit.client import ClientConfig, EdgeClient, ImageResult, write_jsonl
from collabvit.data import discover, iter_batches, load_image, preprocess
from collabvit.engine import OperatingPoint
from collabvit.gating import uncertainty
from collabvit.models import forward_with_scores, load_model
from collabvit.wire import encode

# a batch would wait 30 s to fill, so requests stay in flight until SIGTERM;
# the server must then answer them at once (well before its 20 s grace ends)
DRAIN = ("--max-batch-size", "8", "--max-wait-ms", "30000", "--graceful-timeout", "20")


class ServerPool:
    """Server processes by name, started ahead of use; ``take`` hands one over for good."""

    def __init__(self, folder: Path, server_json: Path) -> None:
        self.folder = folder
        self.server_json = server_json
        self.ready: dict[str, ServeProcess] = {}
        self.all: list[ServeProcess] = []

    def start(self, name: str, *options: str) -> None:
        proc = ServeProcess(self.folder / f"{name}-{len(self.all)}.log", self.server_json, *options)
        self.ready[name] = proc
        self.all.append(proc)

    def get(self, name: str, *options: str) -> ServeProcess:
        if name not in self.ready or self.ready[name].proc.poll() is not None:
            self.start(name, *options)
        proc = self.ready[name]
        proc.wait_ready()
        return proc

    def url_of(self, name: str, *options: str) -> str:
        """The URL of a server, started now if need be, without waiting for it."""
        if name not in self.ready or self.ready[name].proc.poll() is not None:
            self.start(name, *options)
        return self.ready[name].url

    def take(self, name: str, *options: str) -> ServeProcess:
        proc = self.get(name, *options)
        del self.ready[name]
        return proc


@pytest.fixture(scope="module")
def servers(
    small_pair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerPool]:
    pool = ServerPool(tmp_path_factory.mktemp("servers"), small_pair[1])
    pool.start("plain")
    pool.start("drain", *DRAIN)
    try:
        yield pool
    finally:
        for proc in pool.all:
            proc.terminate()
        for proc in pool.all:
            proc.stop()


def median_min_entropy(edge_json: Path, photo_dir: Path) -> float:
    """The median edge min-entropy over the photos: an eta that splits them in two."""
    edge = load_model(str(edge_json))
    samples, _ = discover(photo_dir, photo_dir / "labels.csv")
    values: list[float] = []
    for batch in iter_batches(samples, edge.preprocessing, 64):
        logits, _ = forward_with_scores(edge, edge.normalise(batch.pixels))
        values += uncertainty(logits, "min-entropy").tolist()
    return statistics.median(values)


def test_edge_over_http_predicts_exactly_what_evaluate_predicts(
    servers: ServerPool,
    small_pair: tuple[Path, Path],
    photo_dir: Path,
    tmp_path: Path,
) -> None:
    edge_json, server_json = small_pair
    labels = photo_dir / "labels.csv"
    # eta at the median edge min-entropy: about half the photos go to the server
    point = ["--measure", "min-entropy", "--eta", repr(median_min_entropy(edge_json, photo_dir))]
    point += ["--rule", "attention-sum", "--threshold", "0.9"]
    models = ["--edge", str(edge_json)]
    records, jsonl = tmp_path / "records.csv", tmp_path / "edge.jsonl"
    data = [str(photo_dir), "--labels", str(labels)]
    evaluation = start(
        "evaluate", *models, "--server", str(server_json), "--data", *data, *point,
        "--records", str(records),
    )  # fmt: skip
    # the edge starts with the server (both spend their start importing torch) and
    # waits for its /healthz before the first upload
    url = servers.url_of("plain")
    edge = start(
        "edge", *models, "--server-url", url, *data, *point, "--codec", "raw",
        "--concurrency", "3", "--threads", "1", "--wait-for-server", str(START_TIMEOUT_S),
        "--baseline-bytes", "--out", str(jsonl),
    )  # fmt: skip
    assert servers.get("plain").url == url
    finish(evaluation, "collabvit evaluate")
    summary = finish(edge, "collabvit edge")
    assert "12 images" in summary and "whole JPEG q90" in summary

    lines = [json.loads(x) for x in jsonl.read_text().splitlines()]
    header, *rest = records.read_text().splitlines()
    rows = [dict(zip(header.split(","), r.split(","), strict=True)) for r in rest]
    assert len(lines) == len(rows) == 12
    for line, row in zip(lines, rows, strict=True):
        assert line["file"] == row["file"]
        assert line["label"] == int(row["label"])
        assert line["prediction"] == int(row["final_pred"]), line["file"]
        assert line["edge_prediction"] == int(row["edge_pred"])
        assert line["source"] == ("server" if row["transmitted"] == "1" else "edge")
        assert line["patches_sent"] == int(row["num_patches"])
        assert line["uncertainty"] == pytest.approx(float(row["uncertainty"]), abs=1e-6)
    assert {line["source"] for line in lines} == {"server", "edge"}


def test_killing_the_server_mid_run_leaves_every_image_answered_by_the_edge(
    servers: ServerPool,
    small_pair: tuple[Path, Path],
    photo_dir: Path,
    tmp_path: Path,
) -> None:
    server = servers.take("plain")
    edge = load_model(str(small_pair[0]))
    samples, _ = discover(photo_dir, photo_dir / "labels.csv")
    config = ClientConfig(
        server.url, concurrency=1, batch_size=4, retries=1, backoff_s=0.05, timeout_s=10
    )
    answered = 0

    def kill_after_four(result: ImageResult) -> None:
        nonlocal answered
        answered += result.source == "server"
        if answered == 4 and server.proc.poll() is None:
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait(30)

    results = EdgeClient(edge, OperatingPoint(measure="none"), config).run(
        samples, on_result=kill_after_four
    )
    out = tmp_path / "killed.jsonl"
    write_jsonl(results, out)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert server.proc.returncode == -signal.SIGKILL
    assert [line["file"] for line in lines] == [s.file for s in samples]
    assert [line["source"] for line in lines] == ["server"] * 4 + ["edge-fallback"] * 8
    for line in lines[4:]:
        assert line["prediction"] == line["edge_prediction"] is not None
        assert line["error"]


def test_sigterm_answers_the_requests_in_flight_before_exiting(
    servers: ServerPool, photo_dir: Path, small_pair: tuple[Path, Path]
) -> None:
    server = servers.take("drain", *DRAIN)
    prep = load_model(str(small_pair[1])).preprocessing
    payloads = []
    for i, path in enumerate(sorted(photo_dir.glob("*.JPEG"))[:3]):
        image = load_image(path, 3)
        assert image is not None
        mask = np.zeros(64, dtype=bool)
        mask[: 10 + i] = True
        payloads.append(encode(preprocess(image, prep).numpy(), mask, 8))

    async def main() -> tuple[list[httpx.Response], float, list[float]]:
        done_at: list[float] = []

        async def post(client: httpx.AsyncClient, payload: bytes) -> httpx.Response:
            response = await client.post("/v1/infer", content=payload)
            done_at.append(time.monotonic())
            return response

        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            tasks = [asyncio.create_task(post(client, p)) for p in payloads]
            async with httpx.AsyncClient(base_url=server.url, timeout=5) as probe:
                for _ in range(500):
                    if (await probe.get("/healthz")).json()["in_flight"] == len(payloads):
                        break
                    await asyncio.sleep(0.01)
                else:
                    pytest.fail("the requests never reached the server")
            server.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            return list(await asyncio.gather(*tasks)), signalled, done_at

    answers, signalled, done_at = asyncio.run(main())
    assert [r.status_code for r in answers] == [200, 200, 200]
    assert [r.json()["batch_size"] for r in answers] == [3, 3, 3]
    assert min(done_at) > signalled  # they were in flight when the signal came
    assert max(done_at) - signalled < 20  # flushed at SIGTERM, not after the 30 s wait
    assert server.proc.wait(60) == 0
    log = server.log()
    assert "batcher stopped; every accepted request was answered" in log


# ----------------------------------------------------------------------------- SIGINT and --resume


class SlowPredictions(BaseHTTPRequestHandler):
    """Answers every POST with a valid prediction after ``delay_s``; counts the POSTs."""

    delay_s = 0.5
    posts: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self._answer(b'{"status": "ok"}')

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.posts.append(self.path)
        time.sleep(self.delay_s)
        n = len(self.posts)
        top5 = [{"label": n, "class_name": f"c{n}", "probability": 0.5}]
        self._answer(json.dumps({"label": n, "class_name": f"c{n}", "top5": top5}).encode())

    def _answer(self, body: bytes) -> None:
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the edge went away (SIGINT)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def slow_server(delay_s: float) -> Iterator[tuple[str, list[str]]]:
    """A stdlib HTTP server on 127.0.0.1 in a thread: (its URL, the POSTs it saw)."""
    posts: list[str] = []
    handler = type("Handler", (SlowPredictions,), {"delay_s": delay_s, "posts": posts})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="slow-server")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", posts
    finally:
        server.shutdown()
        server.server_close()  # joins the handler threads (each ends within delay_s)
        thread.join(30)


def jsonl_lines(path: Path) -> list[dict[str, object]]:
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.endswith("}")]


def test_sigint_keeps_every_answer_and_resume_answers_each_image_exactly_once(
    small_pair: tuple[Path, Path], photo_dir: Path, tmp_path: Path
) -> None:
    """Issue 16 item 8: today Ctrl-C leaves no file at all (answers are written at the end)."""
    out = tmp_path / "answers.jsonl"
    every = sorted(p.name for p in photo_dir.glob("*.JPEG"))
    with slow_server(0.5) as (url, posts):
        args = [
            "edge", "--edge", str(small_pair[0]), "--server-url", url, str(photo_dir),
            "--labels", str(photo_dir / "labels.csv"), "--measure", "none",
            "--concurrency", "1", "--threads", "1", "--out", str(out),
        ]  # fmt: skip
        proc = start(*args)
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(jsonl_lines(out)) < 3:  # each line is on disk as soon as it is answered
            assert proc.poll() is None, f"edge exited early:\n{proc.communicate()[1][-3000:]}"
            assert time.monotonic() < deadline, "no line written"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        try:
            summary, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("the edge did not stop on SIGINT")
        assert proc.returncode == 130, err[-3000:]
        first = jsonl_lines(out)
        assert 3 <= len(first) < len(every)
        assert len({line["file"] for line in first}) == len(first)
        assert "interrupted" in err and "--resume" in err
        assert f"{len(first)} images" in summary  # the summary of what was answered

        sent_before = len(posts)
        summary = finish(start(*args, "--resume"), "collabvit edge --resume")
        resent = len(posts) - sent_before
    final = jsonl_lines(out)
    assert [line["file"] for line in final] == every  # each once, in input order
    assert resent == len(every) - len(first)  # the answered images were not sent again
    by_file = {line["file"]: line for line in final}
    for line in first:
        assert by_file[str(line["file"])] == line  # kept as they were
    assert {line["source"] for line in final} == {"server"}
    assert f"{len(every)} images" in summary


# ----------------------------------------------------------------------------- exit status


class Refusing(SlowPredictions):
    """Answers every POST 401, as a server with another token does."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        body = b'{"error": "missing or wrong bearer token"}'
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_exit_status_2_for_a_bad_token_and_1_for_a_refused_one(
    small_pair: tuple[Path, Path], photo_dir: Path, tmp_path: Path
) -> None:
    """Issue 16 item 9: a wrong token used to exit 0 with a summary that read like success."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    thread = threading.Thread(target=server.serve_forever, name="refusing-server")
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    common = ["edge", "--edge", str(small_pair[0]), "--server-url", url, str(photo_dir),
              "--measure", "none", "--limit", "3", "--threads", "1"]  # fmt: skip
    try:
        usage = start(*common, "--token", "", "--out", str(tmp_path / "usage.jsonl"))
        refused = start(*common, "--token", "wrong", "--out", str(tmp_path / "refused.jsonl"))
        outputs = [p.communicate(timeout=RUN_TIMEOUT_S) for p in (usage, refused)]
    finally:
        for p in (usage, refused):
            if p.poll() is None:
                p.kill()
        server.shutdown()
        server.server_close()
        thread.join(30)
    (_, usage_err), (refused_out, refused_err) = outputs
    assert usage.returncode == 2, usage_err[-3000:]
    expected = (
        "collabvit edge: error: --token is empty: give the server's token, or none for a "
        "server without one"
    )
    assert usage_err.strip() == expected  # one line, no traceback
    assert not (tmp_path / "usage.jsonl").exists()
    assert refused.returncode == 1, refused_err[-3000:]
    errors = [x for x in refused_err.splitlines() if x.startswith("collabvit edge: error:")]
    assert len(errors) == 1 and "refused 3 of 3" in errors[0] and "401" in errors[0]
    assert "3 images" in refused_out  # the summary still comes
    assert len((tmp_path / "refused.jsonl").read_text().splitlines()) == 3
