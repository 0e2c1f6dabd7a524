"""The one error hierarchy of collabvit.

Every error a user can hit derives from :class:`CollabViTError` and carries a
message that says what was wrong and what to do about it. The CLI prints that
message on one line and exits non-zero; it never shows a traceback for these.

::

    CollabViTError
    ├── ConfigError          invalid option values (thresholds, rules, measures)
    ├── ModelError           unknown model name, architecture mismatch
    │   └── CheckpointError  missing, corrupt or incompatible checkpoint file
    ├── DataError            empty or unreadable data folder, bad labels file
    ├── WireError            malformed payload on the wire (collabvit.wire)
    └── ServerError          the server answered with an error (collabvit.client)
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "CollabViTError",
    "ConfigError",
    "DataError",
    "ModelError",
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


class ServerError(CollabViTError):
    """The collaborative server answered with an error status."""
