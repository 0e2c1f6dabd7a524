"""uvicorn's HTTP/1.1 protocol with a deadline on the request line and headers.

A client that opens a connection and sends half a request (or nothing, or one
byte a second) would hold the connection for ever: uvicorn's keep-alive
timeout runs only between requests, and any byte received cancels it. An ASGI
app never sees such a request (it is called once the headers are complete),
so this deadline lives in the protocol: from the moment the connection opens,
and from the first byte after each answer (an idle keep-alive connection is
uvicorn's ``timeout_keep_alive``), the request line and headers must be
complete within ``header_timeout_s``, or the connection is closed. Bytes of
a body the app answered without reading count as the next request's. The
body's own deadline is the app's (``ServerConfig.body_timeout_s``, answered
408).

``collabvit serve`` passes :func:`http_protocol` to ``uvicorn.Config(http=...)``.
"""

from __future__ import annotations

import asyncio
import logging

# NOTE: the class uvicorn itself uses for http="h11"; a subclass keeps all of its behaviour.
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..errors import ConfigError

__all__ = ["HeaderDeadlineProtocol", "http_protocol"]

logger = logging.getLogger(__name__)


class HeaderDeadlineProtocol(H11Protocol):
    """:class:`H11Protocol` that closes connections whose request headers are late."""

    header_timeout_s: float = 10.0

    def connection_made(  # type: ignore[override]
        self, transport: asyncio.Transport
    ) -> None:
        self._header_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._await_headers()

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        if self._header_timer is None and (cycle is None or cycle.response_complete):
            self._await_headers()  # the first byte after an answer: the next request begins
        super().data_received(data)
        if self.cycle is not cycle:  # a request's headers are complete: the app takes over
            self._stop_waiting()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        self._stop_waiting()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _stop_waiting(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        logger.info(
            "closed the connection of %s: no complete request headers within %g s",
            client,
            self.header_timeout_s,
        )
        self.transport.close()


def http_protocol(header_timeout_s: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)``, with this header deadline."""
    if not 0 < header_timeout_s <= 3600:
        raise ConfigError(f"header_timeout_s must be in (0, 3600] seconds, got {header_timeout_s}")

    class Protocol(HeaderDeadlineProtocol):
        pass

    Protocol.header_timeout_s = header_timeout_s
    return Protocol
