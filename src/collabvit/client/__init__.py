"""The edge device of collaborative inference (paper Algorithm 1, Fig. 2), over HTTP.

Layered like httpx's ``send``, each layer in its own module:

- :mod:`~collabvit.client.config`: :class:`ClientConfig`, checked when made.
- :mod:`~collabvit.client.edge_client`: :class:`EdgeClient` decides on the
  edge (:func:`collabvit.pipeline.decide_on_edge`), encodes the transmitted
  images' patches (:mod:`collabvit.wire`) and orchestrates the run.
- :mod:`~collabvit.client.http`: ``send`` -> retries (backoff, ``Retry-After``)
  -> one attempt -> parse the answer; failures raise
  :class:`~collabvit.errors.ServerError` with ``status_code`` and ``attempts``.
- :mod:`~collabvit.client.breaker`: :class:`CircuitBreaker` (closed / open /
  half-open) on an injectable clock.
- :mod:`~collabvit.client.results`: :class:`ImageResult`, :class:`JsonlWriter`
  (a flushed line per answer), :func:`read_jsonl`, :func:`write_jsonl`,
  :func:`summarise` (the numbers of :func:`collabvit.metrics.summarise`).

The package never imports :mod:`collabvit.server`.
"""

from __future__ import annotations

from .breaker import BreakerState, CircuitBreaker
from .config import ClientConfig
from .edge_client import EdgeClient, EdgeDecision
from .http import DeadlineExceeded, InvalidAnswer, RetryPolicy, ServerAnswer
from .results import (
    FALLBACK_REASONS,
    SOURCES,
    ImageResult,
    JsonlWriter,
    read_jsonl,
    summarise,
    write_jsonl,
)

__all__ = [
    "FALLBACK_REASONS",
    "SOURCES",
    "BreakerState",
    "CircuitBreaker",
    "ClientConfig",
    "DeadlineExceeded",
    "EdgeClient",
    "EdgeDecision",
    "ImageResult",
    "InvalidAnswer",
    "JsonlWriter",
    "RetryPolicy",
    "ServerAnswer",
    "read_jsonl",
    "summarise",
    "write_jsonl",
]
