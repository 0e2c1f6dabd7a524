"""The collaborative server: an HTTP service around the server ViT (paper Sec. III, Fig. 2a).

The edge device sends the patches it selected as one :mod:`collabvit.wire`
message; the server classifies the image from those patches alone
(:func:`~collabvit.models.forward_subset`, eq. 9 cost) and answers with the
label. Endpoints:

* ``POST /v1/infer``: body = wire payload bytes -> JSON ``label``,
  ``class_name``, ``top5`` (``label``, ``class_name``, ``probability``),
  ``server_ms``, ``batch_size``.
* ``POST /v1/infer-image``: body = a whole image file (JPEG, PNG, ...): the
  server-only baseline; the server preprocesses it itself and runs every patch.
* ``GET /healthz``: model name, geometry, queue depth (never needs the token).
* ``GET /metrics``: Prometheus text format, one registry per app.

Like LitServe, the work is three separate steps (:mod:`.api`, no web
framework): :func:`decode_request` / :func:`decode_image` (untrusted bytes ->
pixels and keep mask, in a thread pool), :func:`predict` (one batched forward
in a single worker thread) and :func:`encode_response` (logits row -> JSON). A
:class:`Batcher` (:mod:`.batcher`) between them gathers concurrent requests,
whatever their patch counts, into one ``predict_batch`` call (at most
``max_batch_size`` images, waiting at most ``max_wait_ms`` for the batch to
fill). Its queue is bounded: a full queue answers 503 with ``Retry-After``. On
shutdown (uvicorn's graceful shutdown after SIGTERM) requests already accepted
are finished before the batcher stops. :class:`ServerMetrics` (:mod:`.metrics`)
is one of its :class:`BatcherCallbacks`; :func:`create_app` (:mod:`.app`) wires
it all to HTTP. The limits (header and body deadlines, concurrent decodes,
the geometry checked from the wire header before any allocation, body,
pixel and decoded-byte caps, the token charset) are in docs/serving.md,
Limits; :mod:`.protocol` holds the header deadline, :mod:`.framing` the
refusal of ambiguous body framing.

``ImageTooLarge`` and ``QueueFullError`` are the former names of
:class:`~collabvit.errors.PayloadTooLarge` and :class:`~collabvit.errors.ServerBusy`.
"""

from __future__ import annotations

from ..errors import PayloadTooLarge, ServerBusy
from .api import (
    TOKEN_CHARACTERS,
    Decoded,
    ServerConfig,
    check_declared_geometry,
    check_token,
    decode_image,
    decode_request,
    encode_response,
    geometry_of,
    predict,
    predict_batch,
)
from .app import create_app
from .batcher import Batcher, BatcherCallbacks, Rows
from .metrics import ServerMetrics

ImageTooLarge = PayloadTooLarge  # former name, kept for compatibility
QueueFullError = ServerBusy  # former name, kept for compatibility

__all__ = [
    "TOKEN_CHARACTERS",
    "Batcher",
    "BatcherCallbacks",
    "Decoded",
    "ImageTooLarge",
    "QueueFullError",
    "Rows",
    "ServerConfig",
    "ServerMetrics",
    "check_declared_geometry",
    "check_token",
    "create_app",
    "decode_image",
    "decode_request",
    "encode_response",
    "geometry_of",
    "predict",
    "predict_batch",
]
