"""Loopback load test of ``collabvit serve``: collaborative payloads vs whole images.

Starts a real server process on a free 127.0.0.1 port, then, at 1, 8 and 32
concurrent clients, measures requests per second and p50/p99 latency of

* ``POST /v1/infer``: the patches an edge model selected from real ImageNet
  photos, raw codec (the collaborative system, every image transmitted), and
* ``POST /v1/infer-image``: the same photos as their JPEG files (server only:
  the server decodes, preprocesses and runs every patch),

against the same server model. Each phase is bounded in requests and seconds,
so the whole run stays within a few minutes on 2 CPU cores::

    python -m benchmarks.load                      # writes docs/load-test.md
    python -m benchmarks.load --edge fmnist-tiny --server fmnist-base ...

:func:`run_load` returns the measurements as a dict for the benchmark suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import torch

from collabvit.cli import add_point_options, point_from_args
from collabvit.client import ClientConfig, EdgeClient
from collabvit.data import discover
from collabvit.models import load_model
from collabvit.pipeline import OperatingPoint

from .common import REPO, conditions, imagenet_dir, machine_info

__all__ = ["LoadConfig", "main", "render_markdown", "run_load"]

BEGIN, END = "<!-- load-test:begin -->", "<!-- load-test:end -->"
DOC = REPO / "docs" / "load-test.md"


@dataclass(frozen=True)
class LoadConfig:
    """What to load-test, and the bounds that keep the run short."""

    edge: str = "deit_tiny_patch16_224"
    server: str = "deit_small_patch16_224"
    random_init: int | None = 0  # None: the models' own weights (shipped or checkpoints)
    data: str = ""  # folder with images/ and labels.csv (default: the shared ImageNet photos)
    num_images: int = 32  # distinct photos, sent round-robin
    levels: tuple[int, ...] = (1, 8, 32)  # concurrent clients
    seconds: float = 20.0  # per phase (one endpoint at one level), at most
    max_requests: int = 400  # per phase, at most
    warmup: int = 4  # untimed requests per phase
    server_threads: int = 1  # torch threads of the server process
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    timeout_s: float = 120.0
    start_timeout_s: float = 300.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between order statistics."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _payloads(cfg: LoadConfig, point: OperatingPoint) -> tuple[list[bytes], list[bytes], dict]:
    """Edge-selected raw payloads and the JPEG files of the same photos."""
    data = Path(cfg.data) if cfg.data else imagenet_dir()
    labels = data / "labels.csv"
    samples, _ = discover(
        data / "images" if (data / "images").is_dir() else data,
        labels if labels.is_file() else None,
        cfg.num_images,
    )
    edge = load_model(cfg.edge, random_init=cfg.random_init)
    client = EdgeClient(
        edge,
        replace(point, measure="none"),  # every image transmitted: per-request cost
        ClientConfig("http://127.0.0.1", codec="raw", full_jpeg_baseline=False),
    )
    decisions = [d for batch in client.decide(samples) for d in batch]
    payloads = [d.payload for d in decisions if d.payload is not None]
    files = [d.sample.path.read_bytes() for d in decisions if d.sample.path is not None]
    info = {
        "images": len(decisions),
        "num_patches": edge.num_patches,
        "mean_patches_sent": statistics.fmean(d.num_patches for d in decisions),
        "mean_payload_bytes": statistics.fmean(len(p) for p in payloads),
        "mean_jpeg_file_bytes": statistics.fmean(len(f) for f in files),
    }
    return payloads, files, info


class _Server:
    """``collabvit serve`` in a child process on 127.0.0.1."""

    def __init__(self, cfg: LoadConfig, log_path: Path) -> None:
        self.url = f"http://127.0.0.1:{_free_port()}"
        args = [
            sys.executable,
            "-m",
            "collabvit.cli",
            "serve",
            "--server",
            cfg.server,
            "--host",
            "127.0.0.1",
            "--port",
            self.url.rsplit(":", 1)[1],
            "--threads",
            str(cfg.server_threads),
            "--max-batch-size",
            str(cfg.max_batch_size),
            "--max-wait-ms",
            str(cfg.max_wait_ms),
            "--max-queue",
            str(max(256, 2 * max(cfg.levels))),
        ]
        if cfg.random_init is not None:
            args += ["--random-init", str(cfg.random_init)]
        env = dict(os.environ)
        env.pop("COLLABVIT_TOKEN", None)
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"server exited with {self.proc.returncode}: {self.log_path.read_text()}"
                    )
                try:
                    response = client.get("/healthz")
                    if response.status_code == 200:
                        return dict(response.json())
                except httpx.TransportError:
                    pass
                time.sleep(0.25)
        raise RuntimeError(f"server not ready after {timeout_s:g} s: {self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self._log.close()


async def _phase(
    url: str, path: str, bodies: Sequence[bytes], clients: int, cfg: LoadConfig, pid: int
) -> dict[str, Any]:
    """``clients`` closed-loop clients POST ``bodies`` round-robin; bounded in count and time."""
    latencies: list[float] = []
    batch_sizes: list[int] = []
    errors: dict[str, int] = {}
    next_index = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Content-Type": "application/octet-stream"}
    async with httpx.AsyncClient(
        base_url=url, timeout=cfg.timeout_s, limits=limits, headers=headers
    ) as http:
        warm = [http.post(path, content=bodies[i % len(bodies)]) for i in range(cfg.warmup)]
        await asyncio.gather(*warm)
        cpu_before = _cpu_seconds(pid)
        started = time.perf_counter()
        deadline = started + cfg.seconds

        async def worker() -> None:
            nonlocal next_index
            while next_index < cfg.max_requests and time.perf_counter() < deadline:
                body = bodies[next_index % len(bodies)]
                next_index += 1
                t0 = time.perf_counter()
                try:
                    response = await http.post(path, content=body)
                except httpx.HTTPError as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                if response.status_code != 200:
                    key = str(response.status_code)
                    errors[key] = errors.get(key, 0) + 1
                    continue
                latencies.append(time.perf_counter() - t0)
                batch_sizes.append(int(response.json().get("batch_size", 0)))

        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - started
        cpu_after = _cpu_seconds(pid)
    ms = [1000.0 * x for x in latencies]
    cpu_ms = None
    if cpu_before is not None and cpu_after is not None and latencies:
        cpu_ms = round(1000.0 * (cpu_after - cpu_before) / len(latencies), 1)
    return {
        "endpoint": path,
        "clients": clients,
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(elapsed, 3),
        "requests_per_s": round(len(latencies) / elapsed, 3) if elapsed > 0 else 0.0,
        "p50_ms": round(_percentile(ms, 50), 1),
        "p99_ms": round(_percentile(ms, 99), 1),
        "mean_batch_size": round(statistics.fmean(batch_sizes), 2) if batch_sizes else None,
        "server_cpu_ms_per_request": cpu_ms,
        "mean_body_bytes": round(statistics.fmean(len(b) for b in bodies)),
    }


def run_load(
    config: LoadConfig | None = None, point: OperatingPoint | None = None
) -> dict[str, Any]:
    """Start a server, measure both endpoints at each concurrency level, stop the server.

    Returns:
        ``{"config", "point", "payloads", "server", "machine", "conditions",
        "levels": [{"clients", "collaborative", "server_only", "throughput_ratio",
        "server_cpu_ratio"}], "wall_s"}``; each phase has requests, errors,
        requests_per_s, p50_ms, p99_ms, mean_batch_size and
        server_cpu_ms_per_request (the server process's CPU time per answered
        request, far less sensitive to other jobs on the machine than req/s).
        ``throughput_ratio`` is collaborative / server-only req/s;
        ``server_cpu_ratio`` is server-only / collaborative CPU per request
        (both > 1 when collaborative requests are cheaper).
    """
    cfg = config or LoadConfig()
    point = point or OperatingPoint()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="collabvit-load-") as tmp:
        server = _Server(cfg, Path(tmp) / "server.log")
        try:
            payloads, files, info = _payloads(cfg, point)  # while the server starts
            health = server.wait_ready(cfg.start_timeout_s)
            levels = []
            for clients in cfg.levels:
                pid = server.proc.pid
                collab = asyncio.run(_phase(server.url, "/v1/infer", payloads, clients, cfg, pid))
                only = asyncio.run(_phase(server.url, "/v1/infer-image", files, clients, cfg, pid))
                ratio = (
                    collab["requests_per_s"] / only["requests_per_s"]
                    if only["requests_per_s"]
                    else None
                )
                cpu_a, cpu_b = (
                    collab["server_cpu_ms_per_request"],
                    only["server_cpu_ms_per_request"],
                )
                levels.append(
                    {
                        "clients": clients,
                        "collaborative": collab,
                        "server_only": only,
                        "throughput_ratio": None if ratio is None else round(ratio, 3),
                        "server_cpu_ratio": round(cpu_b / cpu_a, 3) if cpu_a and cpu_b else None,
                    }
                )
        finally:
            server.stop()
    return {
        "config": asdict(cfg),
        "point": asdict(point),
        "payloads": info,
        "server": {k: health[k] for k in ("model", "geometry", "max_batch_size")},
        "machine": machine_info(torch.device("cpu")),
        "conditions": conditions(),
        "levels": levels,
        "wall_s": round(time.perf_counter() - began, 1),
    }


def render_markdown(result: dict[str, Any], command: str) -> str:
    """The measured block of docs/load-test.md: command, machine, table, JSON."""
    m, p, cfg = result["machine"], result["payloads"], result["config"]
    lines = [
        BEGIN,
        "",
        f"Measured {result['conditions']['time']} with:",
        "",
        "```",
        command,
        "```",
        "",
        f"Machine: {m['cpu_model']}, {m['usable_cores']} usable CPU cores, torch {m['torch']}, "
        f"server process with {cfg['server_threads']} torch thread(s); load average at the end "
        f"{result['conditions']['load_average']} (other jobs were running). "
        f"Edge {cfg['edge']}, server {cfg['server']}"
        + (
            f", random weights (seed {cfg['random_init']})"
            if cfg["random_init"] is not None
            else ""
        )
        + f"; {p['images']} photos sent round-robin; collaborative payloads keep "
        f"{p['mean_patches_sent']:.1f} of {p['num_patches']} patches on average "
        f"({p['mean_payload_bytes']:,.0f} B raw) vs JPEG files of "
        f"{p['mean_jpeg_file_bytes']:,.0f} B. Each phase: at most {cfg['max_requests']} "
        f"requests or {cfg['seconds']:g} s after "
        f"{cfg['warmup']} warm-up requests; whole run {result['wall_s']:g} s.",
        "",
        "| clients | endpoint | requests | errors | req/s | p50 ms | p99 ms | mean batch | "
        "server CPU ms/req | req/s ratio | CPU/req ratio |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for level in result["levels"]:
        for key, name in (
            ("collaborative", "/v1/infer (patches)"),
            ("server_only", "/v1/infer-image"),
        ):
            ph = level[key]
            first = key == "collaborative"
            ratio = f"**{level['throughput_ratio']:.2f}x**" if first else ""
            cpu_ratio = level["server_cpu_ratio"]
            cpu = f"**{cpu_ratio:.2f}x**" if first and cpu_ratio else ""
            errors = sum(ph["errors"].values())
            lines.append(
                f"| {level['clients']} | {name} | {ph['requests']} | {errors} | "
                f"{ph['requests_per_s']:.2f} | {ph['p50_ms']:.0f} | {ph['p99_ms']:.0f} | "
                f"{ph['mean_batch_size']} | {ph['server_cpu_ms_per_request']} | {ratio} | {cpu} |"
            )
    lines += ["", "<details><summary>JSON</summary>", "", "```json"]
    lines += [json.dumps(result, indent=2), "```", "", "</details>", "", END]
    return "\n".join(lines)


def write_doc(block: str, doc: Path = DOC) -> None:
    """Put ``block`` between the markers of ``doc`` (appended when they are missing)."""
    text = doc.read_text() if doc.is_file() else "# Load test\n\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    doc.write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__)
    d = LoadConfig()
    parser.add_argument("--edge", default=d.edge)
    parser.add_argument("--server", default=d.server)
    parser.add_argument(
        "--random-init", type=int, default=d.random_init, help="seed; -1: the models' own weights"
    )
    parser.add_argument("--data", default="", help="folder with images/ and labels.csv")
    parser.add_argument("--num-images", type=int, default=d.num_images)
    parser.add_argument("--levels", default=",".join(map(str, d.levels)), help="e.g. 1,8,32")
    parser.add_argument("--seconds", type=float, default=d.seconds, help="per phase, at most")
    parser.add_argument("--max-requests", type=int, default=d.max_requests, help="per phase")
    parser.add_argument("--server-threads", type=int, default=d.server_threads)
    parser.add_argument("--max-batch-size", type=int, default=d.max_batch_size)
    parser.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms)
    parser.add_argument("--out", default=str(DOC), help="Markdown file to update")
    parser.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    add_point_options(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cfg = LoadConfig(
        edge=args.edge,
        server=args.server,
        random_init=None
        if args.random_init is not None and args.random_init < 0
        else args.random_init,
        data=args.data,
        num_images=args.num_images,
        levels=tuple(int(x) for x in args.levels.split(",") if x.strip()),
        seconds=args.seconds,
        max_requests=args.max_requests,
        server_threads=args.server_threads,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
    )
    result = run_load(cfg, point_from_args(args))
    command = "python -m benchmarks.load" + (
        " " + " ".join(sys.argv[1:]) if argv is None and sys.argv[1:] else ""
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    write_doc(render_markdown(result, command), Path(args.out))
    for level in result["levels"]:
        c, s = level["collaborative"], level["server_only"]
        print(
            f"{level['clients']:>3} clients: patches {c['requests_per_s']:.2f} req/s "
            f"(p50 {c['p50_ms']:.0f} ms, p99 {c['p99_ms']:.0f} ms) | whole image "
            f"{s['requests_per_s']:.2f} req/s (p50 {s['p50_ms']:.0f} ms, p99 {s['p99_ms']:.0f} ms)"
            f" | ratio {level['throughput_ratio']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
