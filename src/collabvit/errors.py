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
    └── ServerError          the server answered with an error (collabvit.client);
                             carries ``status_code`` and ``attempts``
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "CollabViTError",
    "ConfigError",
    "DataError",
    "ModelError",
    "PayloadTooLarge",
    "ServerBusy",
    "ServerError",
    "WireError",
]


class CollabViTError(Exception):
    """Base class of every error collabvit raises on purpose."""


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


class PayloadTooLarge(WireError):
    """A request body or an image exceeds the server's size limits (HTTP 413)."""


class ServerBusy(CollabViTError):
    """The server is not accepting requests now: queue full, starting or draining (HTTP 503)."""


class ServerError(CollabViTError):
    """The collaborative server answered with an error, or could not be reached.

    Attributes:
        status_code: the HTTP status of the last answer (None: no answer, e.g. refused).
        attempts: how many requests were made before giving up.
    """

    def __init__(self, message: str, status_code: int | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.attempts = attempts
