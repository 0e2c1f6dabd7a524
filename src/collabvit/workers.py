"""How many loader worker processes this machine can run: cores and shared memory.

:func:`resolve_workers` turns ``--workers`` (or its absence) into a count;
:func:`check_shared_memory` refuses, in one line, workers whose shared-memory
image slots (:mod:`collabvit.loader`) would not fit before any worker starts.
"""

from __future__ import annotations

import math
import os

from .errors import ConfigError

__all__ = [
    "MAX_AUTO_WORKERS",
    "SHM_DIR",
    "check_shared_memory",
    "default_workers",
    "resolve_workers",
]

MAX_AUTO_WORKERS = 8
SHM_DIR = "/dev/shm"  # where torch's shared tensors live on Linux (a container's is often 64 MiB)


def default_workers() -> int:
    """The usable cores of this process (its CPU affinity), at most :data:`MAX_AUTO_WORKERS`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_AUTO_WORKERS))


def resolve_workers(workers: int | None, num_samples: int, batch_size: int) -> int:
    """``workers`` checked (>= 0), or for None the usable cores; 0 when one batch is all.

    Starting worker processes costs more than decoding a single batch here.
    """
    if workers is None:
        return 0 if num_samples <= batch_size else default_workers()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"--workers must be an integer >= 0, not {workers!r}")
    return workers


def check_shared_memory(nbytes: int, workers: int, where: str = SHM_DIR) -> None:
    """Refuse, in one line, ``workers`` whose slots (``nbytes``) do not fit in ``where``.

    Without this a full ``/dev/shm`` (Docker gives 64 MiB) shows up as a bus
    error in a worker, or a "No space left on device" traceback, mid-run. A
    platform without ``where`` (not Linux) is not checked.
    """
    try:
        st = os.statvfs(where)
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if nbytes > free:
        mib = 2**20
        raise ConfigError(
            f"--workers {workers} needs {math.ceil(nbytes / mib)} MiB of shared memory for "
            f"its image slots and {where} has {free // mib} MiB free: pass fewer --workers "
            "(0 decodes in this process) or a smaller --batch-size, or give the container "
            "more (docker run --shm-size=1g)"
        )
