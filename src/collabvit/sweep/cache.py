"""The sweep's on-disk cache: what the models produced, per chunk, under a fingerprint.

Everything the models produce is cached per chunk (``.npz``, written
atomically) under a fingerprint of the two models (name, source, a SHA-256 of
their weights, preprocessing), the data file list with a SHA-256 of each
file's content, the batch size and the device type. An interrupted run resumes
at the first missing chunk, and a new grid over the same models and data only
runs the selections it has not seen. The layout is described in
``docs/sweep.md`` ("The cache"). Caches of version 1 keyed files on their size
(an image changed in place at the same size reused stale results); they are
not read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from ..data import Sample
from ..models import LoadedModel

__all__ = [
    "CACHE_VERSION",
    "Arrays",
    "Cache",
    "atomic_write",
    "cache_identity",
    "data_identity",
    "model_identity",
]

logger = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: files keyed on their content's SHA-256 (1: on their size)
Arrays = dict[str, npt.NDArray[Any]]
"""One cache file: array name -> array."""


def _tensor_digest(h: Any, model: torch.nn.Module) -> None:
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def model_identity(m: LoadedModel) -> dict[str, Any]:
    """Name, weight source, SHA-256 of the weights, preprocessing of a model."""
    h = hashlib.sha256()
    _tensor_digest(h, m.model)
    return {
        "name": m.name,
        "source": m.source,
        "weights_sha256": h.hexdigest(),
        "preprocessing": asdict(m.preprocessing),
        "num_patches": m.num_patches,
    }


def _file_sha256(path: Path | None) -> str:
    """SHA-256 of a file's bytes ("missing" when it cannot be read)."""
    if path is None:
        return ""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    except OSError:
        return "missing"
    return h.hexdigest()


def data_identity(samples: Sequence[Sample], threads: int = 4) -> dict[str, Any]:
    """Digest of the ordered file list: index, name, label and the SHA-256 of each file's
    content (array samples: of their pixels).

    The content, not the size or the modification time: an image replaced in place
    by another of the same size is a different data set (issue 16, item 16).
    Files are hashed on ``threads`` threads (hashlib releases the GIL).
    """
    paths = [s.path if s.array is None else None for s in samples]
    with ThreadPoolExecutor(max(1, threads)) as pool:
        digests = list(pool.map(_file_sha256, paths, chunksize=64))
    h = hashlib.sha256()
    for pos, (s, digest) in enumerate(zip(samples, digests, strict=True)):
        if s.array is not None:
            digest = hashlib.sha256(np.ascontiguousarray(s.array).tobytes()).hexdigest()
        h.update(f"{pos}\t{s.index}\t{s.file}\t{s.label}\t{digest}\n".encode())
    return {"images": len(samples), "files_sha256": h.hexdigest(), "key": "content-sha256"}


def cache_identity(
    edge: LoadedModel, server: LoadedModel, samples: Sequence[Sample], batch_size: int
) -> dict[str, Any]:
    """What the cached model outputs depend on (its SHA-256 is the cache's fingerprint)."""
    return {
        "version": CACHE_VERSION,
        "edge": model_identity(edge),
        "server": model_identity(server),
        "data": data_identity(samples),
        "batch_size": batch_size,
        "device": [edge.device.type, server.device.type],
    }


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it over ``path``."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class Cache:
    """Per-chunk ``.npz`` files under ``root/<fingerprint>``; None root = memory only."""

    def __init__(self, root: Path | None, identity: dict[str, Any], chunk_batches: int) -> None:
        self.identity = identity
        text = json.dumps(identity, sort_keys=True)
        self.fingerprint = hashlib.sha256(text.encode()).hexdigest()
        self.chunk_batches = chunk_batches
        self.memory: dict[str, Arrays] = {}
        self.dir: Path | None = None
        if root is not None:
            self.dir = root / self.fingerprint[:24]
            self.dir.mkdir(parents=True, exist_ok=True)
            manifest = self.dir / "manifest.json"
            if manifest.is_file():
                try:
                    stored = json.loads(manifest.read_text())
                    self.chunk_batches = int(stored["chunk_batches"])
                except (OSError, ValueError, KeyError):
                    logger.warning("cache manifest %s unreadable: rewriting it", manifest)
                    self._write_manifest(manifest)
            else:
                self._write_manifest(manifest)

    def _write_manifest(self, path: Path) -> None:
        body = {
            "version": CACHE_VERSION,
            "fingerprint": self.fingerprint,
            "chunk_batches": self.chunk_batches,
            "identity": self.identity,
        }
        atomic_write(path, (json.dumps(body, indent=2) + "\n").encode())

    def load(self, name: str) -> Arrays | None:
        """The arrays of one chunk file, or None when absent or unreadable."""
        if self.dir is None:
            return self.memory.get(name)
        path = self.dir / f"{name}.npz"
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except Exception as exc:  # a torn or foreign file: recompute the chunk
            logger.warning("cache file %s unreadable (%s): recomputing", path, exc)
            return None

    def save(self, name: str, arrays: Arrays) -> None:
        """Replace one chunk file (atomically)."""
        if self.dir is None:
            self.memory[name] = arrays
            return
        path = self.dir / f"{name}.npz"
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)
