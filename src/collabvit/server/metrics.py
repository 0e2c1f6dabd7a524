"""Prometheus metrics of one server app, in their own registry, fed as batcher callbacks."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .api import Decoded
from .batcher import BatcherCallbacks

__all__ = ["ServerMetrics"]

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class ServerMetrics(BatcherCallbacks):
    """Prometheus metrics of one app, in their own registry.

    The app counts requests, bytes and latency itself; as the batcher's
    callback this records queue waits, batch sizes, tokens and inference times.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "collabvit_requests",
            "Requests by endpoint and outcome",
            ["endpoint", "outcome"],
            registry=r,
        )
        self.received_bytes = Counter(
            "collabvit_received_bytes", "Request body bytes received", ["endpoint"], registry=r
        )
        self.latency = Histogram(
            "collabvit_request_latency_seconds",
            "Time from request body received to answer, by endpoint",
            ["endpoint"],
            buckets=_SECONDS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "collabvit_queue_wait_seconds",
            "Time a request waits in the queue before its batch starts",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.batch_size = Histogram(
            "collabvit_batch_size",
            "Images per forward",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.batch_tokens = Histogram(
            "collabvit_batch_tokens",
            "Patch tokens per forward (sum of kept patches)",
            buckets=(16, 64, 256, 1024, 4096, 16384, 65536),
            registry=r,
        )
        self.inference = Histogram(
            "collabvit_inference_seconds",
            "Time of one batched forward",
            buckets=_SECONDS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "collabvit_queue_depth", "Requests waiting for the worker", registry=r
        )
        self.in_flight = Gauge(
            "collabvit_in_flight", "Requests accepted and not yet answered", registry=r
        )

    def track(self, queue_depth: Callable[[], float], in_flight: Callable[[], float]) -> None:
        """Read the two gauges from these functions at each scrape (e.g. a batcher's counts)."""
        self.queue_depth.set_function(queue_depth)
        self.in_flight.set_function(in_flight)

    def on_queue_wait(self, seconds: float) -> None:
        self.queue_wait.observe(seconds)

    def on_batch_start(self, batch: Sequence[Decoded]) -> None:
        self.batch_size.observe(len(batch))
        self.batch_tokens.observe(sum(int(d.keep_mask.sum()) for d in batch))

    def on_batch_end(self, size: int, seconds: float) -> None:
        self.inference.observe(seconds)
