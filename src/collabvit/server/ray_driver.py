"""The driver of the Ray engine: start or join Ray, run the app, drain on SIGTERM.

Without an address it starts a local Ray for this process alone: the node
bound to 127.0.0.1, ``num_cpus`` set (enough for every replica), a 128 MiB
object store (requests are small), no dashboard, Ray's logging left to ours,
and a metrics agent on a free port whose ``ray_*`` metrics the app appends to
``/metrics``. With an address (``ray://...`` or ``HOST:PORT``, as
``ray.init`` takes it) it joins that cluster and, on exit, deletes only its
own application. See docs/deploy.md.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import threading
import time
from typing import Any

from .api import ServerConfig
from .ray_app import APP_NAME, Loader, RayOptions, build_app

__all__ = ["serve_forever"]

logger = logging.getLogger(__name__)

OBJECT_STORE_BYTES = 128 * 1024 * 1024
START_ATTEMPTS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_ray(options: RayOptions) -> str | None:
    """Start or join Ray; the URL of the local metrics agent (None on a cluster)."""
    import ray

    if options.address is not None:
        ray.init(address=options.address, namespace=APP_NAME, configure_logging=False)
        return None
    cpus = max(os.cpu_count() or 1, math.ceil(options.max_replicas * options.replica_cpus))
    for attempt in range(1, START_ATTEMPTS + 1):
        port = options.metrics_port or _free_port()
        try:
            ray.init(
                address="local",
                num_cpus=cpus,
                include_dashboard=False,
                object_store_memory=OBJECT_STORE_BYTES,
                namespace=APP_NAME,
                configure_logging=False,
                _node_ip_address="127.0.0.1",
                _metrics_export_port=port,
            )
            break
        except Exception as exc:
            # NOTE: Ray gives its raylet a fixed 30 s to register with the GCS; on a
            # machine busy with other work that is not always enough. The processes of a
            # failed start are this process's children and end with it.
            if "timed out during startup" not in str(exc) or attempt == START_ATTEMPTS:
                raise
            logger.warning("local Ray did not start (%s): trying again", exc)
            ray.shutdown()
    return f"http://127.0.0.1:{port}/metrics"


def serve_forever(
    loader: Loader,
    config: ServerConfig,
    options: RayOptions,
    http: dict[str, Any],
) -> int:
    """Run the app until SIGTERM/SIGINT; ``http``: Serve's ``http_options`` (host, port, ssl)."""
    import ray
    from ray import serve

    stop = threading.Event()
    started = time.perf_counter()
    metrics_url = _start_ray(options)
    # after ray.init, which installs its own SIGTERM handler in this process
    previous = {
        sig: signal.signal(sig, lambda _sig, _frame: stop.set())
        for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        local = options.address is None
        serve.start(proxy_location="HeadOnly" if local else None, http_options=http)
        handle = serve.run(
            build_app(loader, config, options, metrics_url),
            name=APP_NAME,
            route_prefix="/",
            blocking=False,
        )
        scheme = "https" if http.get("ssl_certfile") else "http"
        low, high = options.autoscale or (options.replicas, options.replicas)
        logger.info(
            "ray serve app %r ready in %.1f s on %s://%s:%s: model replicas %s, batches of <= %d, "
            "queue <= %d%s",
            APP_NAME,
            time.perf_counter() - started,
            scheme,
            http["host"],
            http["port"],
            f"{low}..{high} (autoscaled)" if options.autoscale else str(low),
            config.max_batch_size,
            config.max_queue,
            ", bearer token required" if config.token else "",
        )
        while not stop.wait(0.5):
            pass
        logger.info("stopping: /readyz answers 503, then %g s before Serve shuts down",
                    options.drain_delay_s)  # fmt: skip
        handle.drain.remote().result(timeout_s=30)
        time.sleep(options.drain_delay_s)
        if local:
            serve.shutdown()
        else:
            serve.delete(APP_NAME)
        logger.info("ray serve app stopped; every accepted request was answered")
    finally:
        ray.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
