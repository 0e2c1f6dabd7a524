"""Which model a server runs, said in ``/healthz``, in every JSON answer and in headers.

An edge that talks to the wrong server (another model, other weights, another
input size) gets answers that look right and are not. The identity —
model name, SHA-256 of the weights, the geometry it decodes, the collabvit
version — is in ``/healthz`` (key ``identity``), in every inference answer
(same key) and, so that errors carry it too, in four response headers
(:data:`HEADERS`) on every response of the app.

The weights digest is the one ``collabvit export`` writes into the ONNX
metadata and the sweep cache keys on: SHA-256 over the state dict's tensors
in name order, each prefixed with ``name|dtype|shape|``.
"""

from __future__ import annotations

import hashlib
from importlib import metadata
from typing import Any, Final

import torch
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..models import LoadedModel
from ..wire import Geometry

__all__ = ["HEADERS", "IdentityHeaders", "collabvit_version", "model_identity", "weights_sha256"]

HEADERS: Final = (
    "x-collabvit-model",
    "x-collabvit-weights-sha256",
    "x-collabvit-geometry",
    "x-collabvit-version",
)
"""The response headers that carry the identity (lower-case, as ASGI sends them)."""


def collabvit_version() -> str:
    """The installed collabvit distribution's version ("unknown" when not installed)."""
    try:
        return metadata.version("collabvit")
    except metadata.PackageNotFoundError:
        return "unknown"


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 of the weights (the digest ``collabvit export`` and the sweep cache use)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_identity(loaded: LoadedModel, geometry: Geometry) -> dict[str, Any]:
    """The identity of the served model: the JSON object of ``identity`` keys."""
    return {
        "model": loaded.name,
        "weights_sha256": weights_sha256(loaded.model),
        "geometry": {
            "channels": geometry.channels,
            "height": geometry.height,
            "width": geometry.width,
            "patch_size": geometry.patch_size,
        },
        "num_classes": loaded.num_classes,
        "collabvit_version": collabvit_version(),
    }


def _header_values(identity: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    g = identity["geometry"]
    geometry = f"{g['channels']}x{g['height']}x{g['width']}/{g['patch_size']}"
    version = identity["collabvit_version"]
    values = (identity["model"], identity["weights_sha256"], geometry, version)
    # header values are latin-1 on the wire: a model name outside it is replaced, not an error
    return [
        (name.encode(), str(value).encode("latin-1", "replace"))
        for name, value in zip(HEADERS, values, strict=True)
    ]


class IdentityHeaders:
    """ASGI middleware: the identity headers on every HTTP response, errors included."""

    def __init__(self, app: ASGIApp, identity: dict[str, Any]) -> None:
        self.app = app
        self.headers = _header_values(identity)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_identity(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.headers]
            await send(message)

        await self.app(scope, receive, send_with_identity)
