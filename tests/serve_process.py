"""Real ``collabvit`` processes for the end-to-end tests: a server on 127.0.0.1, a CLI run.

A plain module (tests/ is on ``sys.path`` through tests/conftest.py), shared by
tests/test_edge_e2e.py, tests/server/ and the Ray test, so that one way of
starting, waiting for and stopping a server serves them all.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx

START_TIMEOUT_S = 180  # importing torch on a busy 2-core machine is slow
RUN_TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "collabvit.cli", *args]


def cli_env(**extra: str) -> dict[str, str]:
    """This environment without a token or a Ray cluster to join, one OpenMP thread."""
    env = dict(os.environ)
    env.pop("COLLABVIT_TOKEN", None)
    env.pop("RAY_ADDRESS", None)  # the Ray engine starts a local Ray of its own
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def start(*args: str) -> subprocess.Popen[str]:
    """``collabvit ARGS`` in the background, its output captured."""
    return subprocess.Popen(
        cli_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=cli_env(),
    )  # fmt: skip


def finish(proc: subprocess.Popen[str], what: str, timeout: float = RUN_TIMEOUT_S) -> str:
    """The standard output of a :func:`start`-ed run that must exit 0 within ``timeout``."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"{what} timed out:\n{err[-3000:]}") from None
    assert proc.returncode == 0, f"{what} failed ({proc.returncode}):\n{err[-3000:]}"
    return out


class ServeProcess:
    """A ``collabvit serve`` process on a free 127.0.0.1 port (one thread); its log in a file.

    ``verbose``: ``collabvit -v``; ``ready``: the route that answers 200 once it
    serves; ``stop_timeout``: how long SIGTERM may take before SIGKILL.
    """

    def __init__(
        self,
        log_path: Path,
        server_json: Path,
        *options: str,
        verbose: bool = False,
        ready: str = "/healthz",
        start_timeout: float = START_TIMEOUT_S,
        stop_timeout: float = 30,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.ready = ready
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._log: IO[str] = open(log_path, "w")  # noqa: SIM115 (closed in stop())
        command = cli_command(
            *(["-v"] if verbose else []), "serve", "--server", str(server_json),
            "--host", "127.0.0.1", "--port", str(self.port), "--threads", "1", *options,
        )  # fmt: skip
        self.proc = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env=cli_env()
        )

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        with httpx.Client(base_url=self.url, timeout=3) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    code = self.proc.returncode
                    raise AssertionError(f"server exited with {code}:\n{self.log()[-5000:]}")
                try:
                    if client.get(self.ready).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
        raise AssertionError(
            f"server not ready after {self.start_timeout:g} s:\n{self.log()[-5000:]}"
        )

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def status_kib(self, field: str) -> int:
        """A ``/proc/PID/status`` field in KiB: ``VmRSS`` (resident now), ``VmHWM`` (its peak)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {field} in /proc/{self.proc.pid}/status")

    def reset_peak_rss(self) -> None:
        """Start VmHWM again from the current RSS (Linux: write 5 to clear_refs)."""
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self._log.close()
