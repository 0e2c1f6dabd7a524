"""Item ray (issue 13): the Ray Serve engine's images/s, 2 replicas vs 1, and vs uvicorn.

Three real ``collabvit serve`` processes on 127.0.0.1, all up at once and
measured in turn (three interleaved slices each, so that the other jobs on
the machine weigh on the three alike), with the same deit_small server
(random weights), the same batching and the same load generator
(:func:`benchmarks.load._phase`: closed-loop clients POSTing the patches a
deit_tiny edge selected from real photos, bounded in requests and seconds):

* ``--engine uvicorn --threads 1``: one process, one model worker;
* ``--engine ray --replicas 1 --threads 1``;
* ``--engine ray --replicas 2 --threads 1`` (each replica one torch thread).

Goal: 2 replicas >= 1.5x the images/s of 1 on this 2-core machine. Ray 1
replica vs uvicorn is the cost of the engine (proxy, ingress, handle call,
serialisation), reported; its only goal is a sanity floor (>= 0.5x). The
machine is shared: the 1-minute load average before and after each phase is
in the details.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from collabvit.pipeline import OperatingPoint

from . import load
from .common import Context, Result

__all__ = ["GOAL", "run"]

GOAL = 1.5
ENGINE_FLOOR = 0.5  # Ray 1 replica vs uvicorn: a sanity floor, not the goal
SEED = 0
ENGINES = (("uvicorn", 1), ("ray", 1), ("ray", 2))
ROUNDS = 3  # measured slices per server, interleaved


def _start(engine: str, replicas: int, cfg: Any, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = load._free_port()
    args = [
        sys.executable, "-m", "collabvit.cli", "serve", "--server", cfg.server,
        "--random-init", str(SEED), "--host", "127.0.0.1", "--port", str(port),
        "--threads", "1", "--max-batch-size", str(cfg.max_batch_size),
        "--max-wait-ms", str(cfg.max_wait_ms), "--max-queue", "512", "--engine", engine,
    ]  # fmt: skip
    if engine == "ray":
        args += ["--replicas", str(replicas), "--drain-delay", "0"]
    env = {k: v for k, v in os.environ.items() if k not in ("COLLABVIT_TOKEN", "RAY_ADDRESS")}
    env["OMP_NUM_THREADS"] = "1"
    with open(log, "w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    return proc, f"http://127.0.0.1:{port}"


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path, timeout_s: float) -> float:
    began = time.monotonic()
    with httpx.Client(base_url=url, timeout=3) as client:
        while time.monotonic() - began < timeout_s:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {proc.returncode}: {log.read_text()[-2000:]}"
                )
            try:
                if client.get("/readyz").status_code == 200:
                    return time.monotonic() - began
            except httpx.TransportError:
                pass
            time.sleep(0.5)
    raise RuntimeError(f"server not ready after {timeout_s:g} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def _load_average() -> float | None:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _measure(ctx: Context, cfg: Any, payloads: list[bytes], clients: int) -> dict[str, Any]:
    """All three servers up at once, measured in turn, ``ROUNDS`` slices each.

    Interleaving the slices spreads the other jobs' load evenly over the three
    (a server waiting for its turn is idle); each server's figure is its
    answers over its measured seconds, summed over its slices.
    """
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="collabvit-bench-ray-") as tmp:
        servers = {}
        try:
            for engine, replicas in ENGINES:  # one after the other: two Ray starts at once
                key = f"{engine}-{replicas}"  # overload a busy 2-core machine
                log = Path(tmp) / f"{key}.log"
                proc, url = _start(engine, replicas, cfg, log)
                servers[key] = (proc, url, log)
                out[key] = {"start_s": round(_wait_ready(proc, url, log, cfg.start_timeout_s), 1)}
                out[key] |= {"slices": [], "load_average_1m": []}
            slice_cfg = replace(cfg, seconds=cfg.seconds / ROUNDS)
            for _ in range(ROUNDS):
                for key, (proc, url, _log) in servers.items():
                    out[key]["load_average_1m"].append(_load_average())
                    phase = asyncio.run(
                        load._phase(url, "/v1/infer", payloads, clients, slice_cfg, proc.pid)
                    )
                    phase.pop("server_cpu_ms_per_request", None)  # the driver's only, for Ray
                    out[key]["slices"].append(phase)
        finally:
            for proc, _url, _log in servers.values():
                _stop(proc)
    for key, numbers in out.items():
        slices = numbers["slices"]
        answered = sum(int(p["requests"]) for p in slices)
        seconds = sum(float(p["seconds"]) for p in slices)
        numbers["requests"] = answered
        numbers["seconds"] = round(seconds, 3)
        numbers["requests_per_s"] = round(answered / seconds, 3) if seconds else 0.0
        numbers["errors"] = sum(sum(p["errors"].values()) for p in slices)
        ctx.log(
            f"[ray] {key}: {numbers['requests_per_s']:.2f} images/s over {ROUNDS} slices, "
            f"errors {numbers['errors']}, load {numbers['load_average_1m']}"
        )
    return out


def run(ctx: Context) -> list[Result]:
    try:
        import ray.serve  # noqa: F401
    except ImportError as exc:
        return [
            Result(
                name="ray",
                figure="Ray Serve engine: images/s with 2 replicas vs 1 (loopback)",
                measured="not available",
                goal=f">= {GOAL:g}x images/s",
                met=None,
                command=ctx.command("ray"),
                status="not available",
                notes=[f"Ray Serve is not installed (pip install 'collabvit[ray]'): {exc}"],
            )
        ]
    sizes = ctx.sizes
    quick = sizes.label == "quick"
    clients = 8 if quick else 16
    cfg = load.LoadConfig(
        edge=sizes.serve_edge,
        server=sizes.serve_server,
        random_init=SEED,
        data=str(ctx.data_dir),
        num_images=sizes.serve_images,
        levels=(clients,),
        seconds=6.0 if quick else 36.0,  # per server, over its ROUNDS slices
        max_requests=10_000,
        warmup=8,
        server_threads=1,
        start_timeout_s=600.0,
    )
    payloads, _files, info = load._payloads(cfg, replace(OperatingPoint(), measure="none"))
    phases = _measure(ctx, cfg, payloads, clients)
    rate = {k: float(v["requests_per_s"]) for k, v in phases.items()}
    scale = rate["ray-2"] / rate["ray-1"] if rate["ray-1"] else None
    engine_cost = rate["ray-1"] / rate["uvicorn-1"] if rate["uvicorn-1"] else None
    details = {"clients": clients, "payloads": info, "phases": phases, "cpus": os.cpu_count()}
    notes = [
        f"{clients} closed-loop clients, deit_small server (random weights), batches <= "
        f"{cfg.max_batch_size}, wait <= {cfg.max_wait_ms:g} ms, one torch thread per replica; "
        f"the three servers are up together and measured in turn, {ROUNDS} interleaved "
        "slices each, on a machine shared with other jobs (1-minute load average per "
        "slice in the details)."
    ]
    return [
        Result(
            name="ray",
            figure="Ray Serve engine: images/s with 2 replicas vs 1 (loopback, deit_small)",
            measured=f"{scale:.2f}x ({rate['ray-2']:.1f} vs {rate['ray-1']:.1f} images/s)"
            if scale is not None
            else "no answers",
            goal=f">= {GOAL:g}x images/s",
            met=None if scale is None else scale >= GOAL,
            command=ctx.command("ray"),
            ratio=None if scale is None else round(scale, 3),
            details=details,
            notes=notes,
            mode=sizes.label,
        ),
        Result(
            name="ray-engine-cost",
            figure="Ray Serve 1 replica vs uvicorn: images/s (the cost of the engine)",
            measured=f"{engine_cost:.2f}x ({rate['ray-1']:.1f} vs {rate['uvicorn-1']:.1f} images/s)"
            if engine_cost is not None
            else "no answers",
            goal=f">= {ENGINE_FLOOR:g}x (reported: the engine's own cost)",
            met=None if engine_cost is None else engine_cost >= ENGINE_FLOOR,
            command=ctx.command("ray"),
            ratio=None if engine_cost is None else round(engine_cost, 3),
            details={"phases": {k: phases[k] for k in ("uvicorn-1", "ray-1")}},
            mode=sizes.label,
        ),
    ]
