"""Where and how the edge talks to the server: :class:`ClientConfig`.

Every value is checked when the config is made, so a bad option fails at
start with one :class:`~collabvit.errors.ConfigError`, before any model loads.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from ..errors import ConfigError
from ..wire import CODECS
from .http import RetryPolicy

__all__ = ["ClientConfig", "check_token"]

TOKEN_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F))
"""A bearer token's characters: printable ASCII without spaces (``!`` to ``~``)."""


def check_token(token: str, source: str = "token") -> str:
    """``token`` if it can be a bearer token; a one-line ConfigError naming ``source`` otherwise.

    An empty token would silently mean "no authentication", and a character
    outside :data:`TOKEN_CHARS` cannot be sent in an HTTP header (or never
    matches on the server), so both are refused. The token itself is never
    put in the message.
    """
    if not token:
        raise ConfigError(
            f"{source} is empty: give the server's token, or none for a server without one"
        )
    bad = next((i for i, ch in enumerate(token) if ch not in TOKEN_CHARS), None)
    if bad is not None:
        raise ConfigError(
            f"{source} must be printable ASCII without spaces (! to ~); character {bad + 1} "
            f"of {len(token)} is not"
        )
    return token


@dataclass(frozen=True)
class ClientConfig:
    """Where and how the edge talks to the server."""

    server_url: str  # e.g. http://127.0.0.1:8000
    codec: str = "raw"  # raw | png | jpeg
    quality: int = 90  # jpeg quality
    concurrency: int = 4  # requests in flight
    timeout_s: float = 30.0  # per network operation (connect, write, each read)
    deadline_s: float = 10.0  # one image's whole exchange with the server, retries included
    retries: int = 2  # extra attempts after the first
    backoff_s: float = 0.2  # delay before the first retry; doubles each retry
    max_backoff_s: float = 30.0  # cap on any delay, Retry-After included
    token: str | None = None  # bearer token: printable ASCII without spaces (None: no auth)
    batch_size: int = 64  # images per edge forward
    breaker_failures: int = 5  # consecutive failed images that pause the server (0: never)
    breaker_cooldown_s: float = 5.0  # how long it stays paused
    full_jpeg_baseline: bool = False  # also measure each original as a JPEG q90 upload
    wait_for_server_s: float = 0.0  # before the first upload, wait this long for /healthz
    ca_file: str | None = None  # PEM CA bundle an https:// server's certificate must chain to
    check_server: bool = False  # ask /healthz once and refuse a server of another geometry

    def __post_init__(self) -> None:
        if self.token is not None:
            check_token(self.token)
        if not self.server_url.startswith(("http://", "https://")):
            raise ConfigError(f"server URL {self.server_url!r} must start with http:// or https://")
        if self.codec not in CODECS:
            raise ConfigError(f"unknown codec {self.codec!r}: use one of {', '.join(CODECS)}")
        if not 1 <= self.quality <= 100:
            raise ConfigError(f"quality must be 1..100, got {self.quality}")
        if self.concurrency < 1 or self.batch_size < 1:
            raise ConfigError("concurrency and batch size must be >= 1")
        if self.retries < 0 or self.breaker_failures < 0:
            raise ConfigError("retries and breaker failures must be >= 0")
        for name in ("timeout_s", "deadline_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a finite number > 0, got {value}")
        for name in ("backoff_s", "max_backoff_s", "breaker_cooldown_s", "wait_for_server_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value}")

        if self.ca_file is not None and not os.path.isfile(self.ca_file):
            raise ConfigError(f"--ca-file {self.ca_file} does not exist")
        if self.ca_file is not None and not self.server_url.startswith("https://"):
            raise ConfigError(f"--ca-file needs an https:// server URL, got {self.server_url!r}")

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(self.retries, self.backoff_s, self.max_backoff_s)
