"""The one error hierarchy of collabvit.

Every error a user can hit derives from :class:`CollabViTError` and carries a
message that says what was wrong and what to do about it. The CLI prints that
message on one line and exits non-zero; it never shows a traceback for these.

::

    CollabViTError
    ├── ConfigError          invalid option values (thresholds, rules, measures)
    ├── ModelError           unknown model name, unsupported architecture
    │   └── CheckpointError  missing, corrupt or incompatible checkpoint file
    ├── DataError            empty or unreadable data folder, bad labels file
    ├── WireError            malformed payload on the wire (collabvit.wire)
    │   └── PayloadTooLarge  a request body or image over the server's limits (413)
    ├── ServerBusy           the server cannot queue a request now (503 + Retry-After)
    ├── OutputError          an output file could not be written while working (exit 1)
    └── ServerError          the server answered with an error (collabvit.client);
                             carries ``status_code`` and ``attempts``

Each class carries the command line's exit status (:func:`exit_status`): 2 for
a usage error, something wrong with what the user gave (options, model names,
checkpoints, data, labels), found before the work; 1 for a failure while
working (the server, the wire, I/O), which a rerun may not repeat.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "CollabViTError",
    "ConfigError",
    "DataError",
    "ModelError",
    "OutputError",
    "PayloadTooLarge",
    "ServerBusy",
    "ServerError",
    "WireError",
    "exit_status",
]

USAGE = 2
"""Exit status of a usage error: a bad option, model, checkpoint, data or labels file."""
RUNTIME = 1
"""Exit status of a failure during the work: server, wire, I/O."""


class CollabViTError(Exception):
    """Base class of every error collabvit raises on purpose."""

    exit_status: int = USAGE


class ConfigError(CollabViTError, ValueError):
    """An option has a value the method cannot use."""


class ModelError(CollabViTError):
    """A model cannot be built: unknown name, unsupported architecture."""


class CheckpointError(ModelError):
    """A checkpoint file is missing, corrupt, or made for another architecture."""


class DataError(CollabViTError):
    """The data cannot be read: empty folder, bad labels file, missing files."""


class WireError(CollabViTError, ValueError):
    """A payload on the wire is malformed; the message says which check failed."""

    exit_status = RUNTIME


class PayloadTooLarge(WireError):
    """A request body or an image exceeds the server's size limits (HTTP 413)."""


class ServerBusy(CollabViTError):
    """The server is not accepting requests now: queue full, starting or draining (HTTP 503)."""

    exit_status = RUNTIME


class OutputError(CollabViTError):
    """An output could not be written during the work (disk full, folder gone): exit 1.

    Output paths are checked before the work (a usage error then); this is
    what is left, and its message names the option and the file.
    """

    exit_status = RUNTIME


class ServerError(CollabViTError):
    """The collaborative server answered with an error, or could not be reached.

    Attributes:
        status_code: the HTTP status of the last answer (None: no answer, e.g. refused).
        attempts: how many requests were made before giving up.
    """

    exit_status = RUNTIME

    def __init__(self, message: str, status_code: int | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.attempts = attempts


def exit_status(exc: BaseException) -> int:
    """The command line's exit status for ``exc``: 2 usage error, 1 runtime failure.

    A :class:`CollabViTError` says which it is; an ``OSError`` (a disk full or
    a file that vanished while working) is a runtime failure.
    """
    if isinstance(exc, CollabViTError):
        return exc.exit_status
    return RUNTIME
