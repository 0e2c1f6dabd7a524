"""Before the first upload: wait for the server, then check that it takes this edge's patches.

A server of another geometry (input size, patch size) or label space would
refuse every payload (400) or, worse, answer labels of another model; the
edge asks ``/healthz`` once and refuses such a server with one
:class:`~collabvit.errors.ConfigError` line. The identity the server reports
(model, weights SHA-256, collabvit version) is logged. A server that does not
answer, or answers without a geometry (an older or foreign server), is not
checked: the run goes on and answers on the edge if it must.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Any

import httpx

from ..errors import ConfigError

__all__ = ["check_geometry", "edge_geometry", "tls_context", "wait_for_server"]

logger = logging.getLogger(__name__)

KEYS = ("channels", "height", "width", "patch_size")


def tls_context(ca_file: str | None) -> ssl.SSLContext | bool:
    """What httpx verifies the server with: the system CAs, or those of ``ca_file``."""
    if ca_file is None:
        return True
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"--ca-file {ca_file} is not a readable PEM CA bundle "
            f"({getattr(exc, 'strerror', None) or exc})"
        ) from None


def edge_geometry(edge: Any) -> dict[str, int]:
    """The geometry the edge sends: a torch ``LoadedModel`` or an ``OnnxEdge``."""
    meta = getattr(edge, "metadata", None)  # OnnxEdge
    c, h, w = meta.input_size if meta is not None else edge.preprocessing.input_size
    return {"channels": c, "height": h, "width": w, "patch_size": int(edge.patch_size)}


def check_geometry(edge: Any, health: Any) -> None:
    """ConfigError in one line when the ``/healthz`` answer names another geometry."""
    if not isinstance(health, dict) or not isinstance(health.get("geometry"), dict):
        return  # a server that does not say: not checked
    ours = edge_geometry(edge)
    theirs = {k: health["geometry"].get(k) for k in KEYS}
    name = health.get("model", "?")
    if theirs != ours:
        raise ConfigError(
            f"server {name} takes {_describe(theirs)} but this edge sends {_describe(ours)}: "
            "use an edge model with the server's input size and patch size"
        )
    classes = health.get("num_classes")
    if isinstance(classes, int) and classes != edge.num_classes:
        raise ConfigError(
            f"server {name} has {classes} classes but this edge has {edge.num_classes}: "
            "the pair must share one label space"
        )
    identity = health.get("identity")
    if isinstance(identity, dict):
        logger.info(
            "server %s: weights sha256 %s, collabvit %s, %s",
            name,
            str(identity.get("weights_sha256", "?"))[:12],
            identity.get("collabvit_version", "?"),
            _describe(theirs),
        )


def _describe(g: dict[str, Any]) -> str:
    return f"{g['channels']}x{g['height']}x{g['width']} with {g['patch_size']}-pixel patches"


async def wait_for_server(
    http: httpx.AsyncClient, edge: Any, wait_s: float, url: str, check: bool = True
) -> None:
    """Poll ``/healthz`` for at most ``wait_s`` (at least once), then check its geometry."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            answer = await http.get("/healthz", timeout=2.0)
            if answer.status_code == 200:
                if check:
                    check_geometry(edge, _json(answer))
                return
        except httpx.TransportError:
            pass
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.2)
    if wait_s > 0:
        logger.warning("%s did not answer /healthz within %g s: trying anyway", url, wait_s)


def _json(answer: httpx.Response) -> Any:
    try:
        return answer.json()
    except ValueError:
        return None
