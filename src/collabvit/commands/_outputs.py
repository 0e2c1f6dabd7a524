"""Output paths checked before the work: one line now, not a traceback after it.

Every command checks each of its output options first (``--records``,
``--json``, ``--out``, ``--cache``, ...), before a model is loaded or an
image read. The rules:

- a file output (``--json FILE``) must not be a folder, and its folder must
  already exist and be writable: a missing parent is refused (a typo in a
  path should not silently create a tree);
- a folder output (``--out DIR``, ``--cache DIR``) must be a folder if it
  exists; if it does not, it is created with its parents when the command
  writes, so its nearest existing ancestor must be a writable folder.

Writability is probed by creating (and removing) a temporary file, which
also holds for root, read-only mounts and immutable folders, where
``os.access`` says yes.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import ConfigError, OutputError

__all__ = ["check_output_dir", "check_output_file", "check_outputs", "writing"]


@contextmanager
def writing(option: str, path: str | Path) -> Iterator[None]:
    """Turn an ``OSError`` while writing ``path`` into one :class:`OutputError` line (exit 1)."""
    try:
        yield
    except OSError as exc:
        raise OutputError(
            f"{option} {path}: could not be written ({exc.strerror or exc})"
        ) from None


def _probe(folder: Path, option: str, path: str | Path) -> None:
    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".collabvit-probe-")
    except OSError as exc:
        raise ConfigError(
            f"{option} {path}: the folder {folder} is not writable ({exc.strerror or exc})"
        ) from None
    os.close(fd)
    os.unlink(name)


def check_output_file(path: str | Path | None, option: str) -> None:
    """ConfigError unless ``path`` can be written as a file (None: the option is not given)."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{option} {path}: is a folder; give a file name")
    parent = p.parent
    if not parent.exists():
        raise ConfigError(f"{option} {path}: the folder {parent} does not exist (create it first)")
    if not parent.is_dir():
        raise ConfigError(f"{option} {path}: {parent} is not a folder")
    if p.exists():
        try:
            with open(p, "ab"):  # opened for appending, nothing written: content unchanged
                pass
        except OSError as exc:
            raise ConfigError(f"{option} {path}: not writable ({exc.strerror or exc})") from None
    else:
        _probe(parent, option, path)


def check_output_dir(path: str | Path | None, option: str) -> None:
    """ConfigError unless ``path`` is, or can be created as, a writable folder."""
    if path is None:
        return
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{option} {path}: is not a folder")
    existing = p
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{option} {path}: {existing} is not a folder")
    _probe(existing, option, path)


def check_outputs(
    files: dict[str, str | Path | None] | None = None,
    dirs: dict[str, str | Path | None] | None = None,
) -> None:
    """:func:`check_output_file` and :func:`check_output_dir` of ``{option: path}`` maps."""
    for option, path in (dirs or {}).items():
        check_output_dir(path, option)
    for option, path in (files or {}).items():
        check_output_file(path, option)
