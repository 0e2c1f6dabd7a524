"""The Ray Serve engine: the same FastAPI app and predict_batch, scaled over replicas.

``collabvit serve --engine ray`` runs two deployments (docs/deploy.md):

* ``CollabvitIngress``: our FastAPI app from :func:`~collabvit.server.create_app`
  behind ``@serve.ingress``, so the routes, wire payloads, answers, token,
  body limits and error codes are those of the uvicorn engine. Its work queue
  is a :class:`RemoteQueue`: each decoded request goes to the model worker
  through a deployment handle instead of an in-process
  :class:`~collabvit.server.batcher.Batcher`.
* ``CollabvitModel``: the model worker, whose batched method is our
  :func:`~collabvit.server.api.predict_batch` (``forward_subset``'s length
  buckets inside) under ``@serve.batch`` with the server's batch size and wait.
  ``max_ongoing_requests`` bounds what one replica holds (two batches),
  ``max_queued_requests`` (``--max-queue``) what waits in the handle: beyond
  it Ray raises ``BackPressureError``, which the app answers 503 with
  ``Retry-After`` as the uvicorn engine answers its full queue. With
  ``--autoscale MIN:MAX`` Ray scales replicas on ongoing requests (target: one
  batch per replica).

Ray's own metrics (``ray_serve_*``: replica queue lengths, batch sizes,
latencies) are scraped from the node's metrics agent and appended to ours on
``/metrics`` when the agent answers. :func:`serve_forever` is the driver:
it starts a local Ray (bound to 127.0.0.1, a small object store, a fixed CPU
count, no dashboard) or joins a cluster, runs the app, and on SIGTERM or
Ctrl+C turns ``/readyz`` to 503, waits ``drain_delay_s``, then shuts Serve
down (replicas finish their requests within ``graceful_timeout_s``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from ..errors import ConfigError, ServerBusy
from ..models import LoadedModel
from .api import Decoded, ServerConfig, predict_batch
from .app import begin_draining, create_app

__all__ = ["Ingress", "ModelWorker", "RayOptions", "RemoteQueue", "build_app"]

logger = logging.getLogger(__name__)

APP_NAME = "collabvit"
Loader = Callable[[], LoadedModel]


@dataclass(frozen=True)
class RayOptions:
    """How the Ray engine places and scales the model worker."""

    replicas: int = 1  # fixed replica count (ignored with autoscale)
    autoscale: tuple[int, int] | None = None  # (min, max) replicas, scaled on ongoing requests
    replica_cpus: float = 1.0  # CPUs Ray reserves per model replica
    replica_gpus: float = 0.0  # GPUs Ray reserves per model replica (--device cuda)
    max_ongoing: int | None = None  # requests one replica holds (None: 2 batches)
    threads: int | None = None  # torch threads per replica (None: Ray's OMP_NUM_THREADS)
    address: str | None = None  # join this cluster; None: start a local Ray
    graceful_timeout_s: float = 30.0  # a stopping replica finishes its requests within this
    drain_delay_s: float = 2.0  # /readyz answers 503 this long before Serve shuts down
    metrics_port: int | None = None  # local Ray's metrics agent port (None: Ray's choice)

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ConfigError(f"--replicas must be >= 1, got {self.replicas}")
        if self.autoscale is not None:
            low, high = self.autoscale
            if not 0 <= low <= high or high < 1:
                raise ConfigError(
                    f"--autoscale MIN:MAX needs 0 <= MIN <= MAX and MAX >= 1, got {low}:{high}"
                )
        if not self.replica_cpus > 0 or not self.replica_gpus >= 0:
            raise ConfigError(
                f"--replica-cpus must be > 0 and --replica-gpus >= 0, got "
                f"{self.replica_cpus} and {self.replica_gpus}"
            )
        if self.max_ongoing is not None and self.max_ongoing < 1:
            raise ConfigError(f"--max-ongoing must be >= 1, got {self.max_ongoing}")
        if not 0 <= self.drain_delay_s <= 3600:
            raise ConfigError(f"--drain-delay must be in [0, 3600] s, got {self.drain_delay_s}")

    @property
    def max_replicas(self) -> int:
        return self.autoscale[1] if self.autoscale else self.replicas


class ModelWorker:
    """The model worker replica: :func:`predict_batch` under ``@serve.batch``."""

    def __init__(self, loader: Loader, config: ServerConfig, threads: int | None) -> None:
        if threads is not None:
            torch.set_num_threads(max(1, threads))
        self.loaded = loader()
        batched: Any = self.predict  # Ray's batch wrapper: its settings are set per replica
        batched.set_max_batch_size(config.max_batch_size)
        batched.set_batch_wait_timeout_s(config.max_wait_ms / 1000.0)
        # one thread: the replica's event loop stays free for Ray's health checks
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="collabvit-predict")
        logger.info("model worker ready: %s, %d threads", self.loaded.name, torch.get_num_threads())

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def predict(self, batch: list[Decoded]) -> list[tuple[torch.Tensor, int]]:
        """One batched forward for the requests Ray gathered: (logits row, batch size) each."""
        loop = asyncio.get_running_loop()
        logits = await loop.run_in_executor(self._executor, predict_batch, self.loaded, batch)
        return [(logits[i], len(batch)) for i in range(len(batch))]


class RemoteQueue:
    """The app's work queue on Ray: each request is one call to the model worker's handle.

    Ray batches and queues (``@serve.batch``, ``max_queued_requests``); this
    only counts what is in flight, refuses work while stopped or beyond
    ``limit`` requests in flight, and turns Ray's back-pressure into
    :class:`~collabvit.errors.ServerBusy` (503 with ``Retry-After``).
    """

    def __init__(self, worker: DeploymentHandle, limit: int) -> None:
        self.worker = worker
        self.limit = limit
        self.in_flight = 0
        self._running = False

    @property
    def running(self) -> bool:
        return self._running

    @property
    def queue_depth(self) -> int:
        return 0  # Ray holds the queue: ray_serve_* metrics report it

    async def start(self) -> None:
        self._running = True

    async def stop(self) -> None:
        """Refuse new requests and wait (bounded) for those in flight."""
        self._running = False
        for _ in range(600):
            if self.in_flight == 0:
                return
            await asyncio.sleep(0.05)

    def flush(self) -> None:
        """Nothing to hurry: Ray's batches have their own wait."""

    def check_accepting(self) -> None:
        if not self._running:
            raise ServerBusy("the server is not accepting requests (starting or stopping)")
        if self.in_flight >= self.limit:
            raise ServerBusy(f"the server has {self.in_flight} requests in flight")

    async def submit(self, decoded: Decoded) -> tuple[torch.Tensor, int]:
        self.check_accepting()
        self.in_flight += 1
        try:
            row, size = await self.worker.predict.remote(decoded)
            return row, int(size)
        except BackPressureError as exc:
            raise ServerBusy(f"the model workers' queue is full ({exc})") from None
        finally:
            self.in_flight -= 1


@serve.ingress()
class Ingress:
    """The ingress replica: our FastAPI app, its work sent to the model worker."""

    def __init__(
        self,
        worker: DeploymentHandle,
        loader: Loader,
        config: ServerConfig,
        limit: int,
        metrics_url: str | None,
    ) -> None:
        self.queue = RemoteQueue(worker, limit)
        self.metrics_url = metrics_url
        extra = self._ray_metrics if metrics_url else None
        self.fastapi_app = create_app(loader(), config, queue=self.queue, extra_metrics=extra)

    def __serve_build_asgi_app__(self) -> Any:
        return self.fastapi_app

    def drain(self) -> bool:
        """Called by the driver on SIGTERM: ``/readyz`` answers 503 from now on."""
        begin_draining(self.fastapi_app)
        return True

    def _ray_metrics(self) -> bytes:
        import httpx

        assert self.metrics_url is not None
        try:
            answer = httpx.get(self.metrics_url, timeout=2.0)
            answer.raise_for_status()
        except httpx.HTTPError as exc:
            logger.info("Ray's metrics agent did not answer (%s): ours only", exc)
            return b""
        return b"# Ray's metrics (the node's metrics agent)\n" + answer.content


def build_app(
    loader: Loader, config: ServerConfig, options: RayOptions, metrics_url: str | None = None
) -> Any:
    """The Serve application: ingress -> model worker, with the scaling options."""
    ongoing = options.max_ongoing or 2 * config.max_batch_size  # one batch running, one gathering
    scaling: dict[str, Any] = {"num_replicas": options.replicas}
    if options.autoscale is not None:
        low, high = options.autoscale
        scaling = {
            "autoscaling_config": {
                "min_replicas": low,
                "initial_replicas": max(low, 1),
                "max_replicas": high,
                "target_ongoing_requests": max(1, ongoing // 2),  # one batch per replica
            }
        }
    worker = serve.deployment(
        name="CollabvitModel",
        max_ongoing_requests=ongoing,
        max_queued_requests=config.max_queue,
        graceful_shutdown_timeout_s=options.graceful_timeout_s,
        ray_actor_options={"num_cpus": options.replica_cpus, "num_gpus": options.replica_gpus},
        **scaling,
    )(ModelWorker).bind(loader, config, options.threads)
    # twice what the workers hold and queue: beyond it the ingress sheds load itself, before
    # reading bodies; below it overload is Ray's back-pressure (max_queued_requests)
    limit = 2 * (options.max_replicas * ongoing + config.max_queue)
    ingress = serve.deployment(
        name="CollabvitIngress",
        num_replicas=1,  # /readyz draining reaches it through one handle call
        max_ongoing_requests=limit + 64,  # overload is answered by our 503, not the proxy's
        graceful_shutdown_timeout_s=options.graceful_timeout_s,
        ray_actor_options={"num_cpus": 0},
    )(Ingress)
    return ingress.bind(worker, loader, config, limit, metrics_url)
