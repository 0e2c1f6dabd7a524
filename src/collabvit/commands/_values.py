"""argparse ``type=`` checks of option values: a bad value is one usage line (status 2).

Used by the option definitions of every command, so ``--batch-size 0``,
``--limit -1``, ``--crop-pct nan`` or ``--server-url http://[::1`` stop the
command while its arguments are parsed, before anything is loaded.
"""

from __future__ import annotations

import argparse
import math
from urllib.parse import urlsplit

__all__ = ["count", "crop_ratio", "server_url"]


def count(text: str) -> int:
    """An integer >= 1 (``--limit``, ``--batch-size``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a whole number (give one >= 1)"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is too small: give a whole number >= 1")
    return value


def crop_ratio(text: str) -> float:
    """A crop ratio in (0, 1] (``--crop-pct``: the share of the resized image kept)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= 1):
        raise argparse.ArgumentTypeError(f"{text!r}: give a crop ratio in (0, 1], e.g. 0.875")
    return value


def server_url(text: str) -> str:
    """``http(s)://HOST[:PORT][/PATH]``, checked as a URL (``--server-url``)."""
    if not text.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"{text!r} must start with http:// or https://")
    try:
        parts = urlsplit(text)
        port = parts.port  # ValueError when out of range or not a number
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a URL ({exc})") from None
    if not parts.hostname:
        raise argparse.ArgumentTypeError(f"{text!r} has no host: give http://HOST:PORT")
    if port == 0:
        raise argparse.ArgumentTypeError(f"{text!r}: port 0 is not a server's port")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give the server's base URL, without user, query or fragment"
        )
    return text
