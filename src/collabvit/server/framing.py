"""An ASGI middleware that refuses requests whose body framing is ambiguous.

A request with both ``Content-Length`` and ``Transfer-Encoding`` can be read
two ways; a proxy in front that reads it the other way is the classic request
smuggling setup. RFC 9112 (6.3) lets a server refuse it, and this one does:
400, and the connection is closed, because where this request ends (and the
next begins) is unknown. The check runs before the app, on every route.
"""

from __future__ import annotations

import logging

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["RefuseAmbiguousFraming"]

logger = logging.getLogger(__name__)


class RefuseAmbiguousFraming:
    """400 (connection closed) for Content-Length together with Transfer-Encoding."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            names = {name.lower() for name, _value in scope["headers"]}
            if b"content-length" in names and b"transfer-encoding" in names:
                logger.info("%s: refused Content-Length with Transfer-Encoding", scope["path"])
                refusal = JSONResponse(
                    {
                        "error": "a request may not carry both Content-Length and "
                        "Transfer-Encoding: send one of them"
                    },
                    status_code=400,
                    headers={"Connection": "close"},
                )
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)
