"""``collabvit serve --config serve.toml``: every option has a key, and options given win.

The file is flat TOML whose keys are the long option names without the
dashes (``max-batch-size = 16``; ``max_batch_size`` works too). The command
records each option's default (as ``real_default`` on its action) and parses
with the defaults suppressed, so an option is in the namespace only when it
was given; :func:`fill_in` then takes each missing value from the file, else
the default. A key that is no option, a value of the wrong type or outside
the option's choices, or a file that is not TOML is one
:class:`~collabvit.errors.ConfigError` naming the file and the key.
:func:`is_loopback` decides the public-address warning and
:func:`check_tls` checks ``--ssl-certfile/--ssl-keyfile`` before any model loads.
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import os
import ssl
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["check_tls", "fill_in", "is_loopback", "read_config"]


def read_config(path: str | Path, actions: dict[str, argparse.Action]) -> dict[str, Any]:
    """The options in a TOML file: dest -> value, each checked against its option."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read it ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path}: not TOML: {exc}") from None
    out: dict[str, Any] = {}
    for key, value in data.items():
        dest = key.replace("-", "_")
        action = actions.get(dest)
        if action is None:
            near = difflib.get_close_matches(dest, list(actions), n=1)
            hint = f" (did you mean {near[0].replace('_', '-')}?)" if near else ""
            raise ConfigError(f"--config {path}: {key!r} is not an option of serve{hint}")
        out[dest] = _checked(path, key, value, action)
    return out


def _checked(path: Path, key: str, value: Any, action: argparse.Action) -> Any:
    flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
    if flag:
        if not isinstance(value, bool):
            raise ConfigError(f"--config {path}: {key} must be true or false, got {value!r}")
        return value
    if isinstance(value, (dict, list, bool)):
        raise ConfigError(f"--config {path}: {key} takes one value, got {value!r}")
    convert = action.type if callable(action.type) else str
    names: dict[Any, str] = {int: "an integer", float: "a number", str: "a string"}
    name = names.get(convert, "a value")
    try:
        if convert is int and isinstance(value, int):
            pass
        elif convert is float and isinstance(value, (int, float)):
            value = float(value)
        elif convert is str and isinstance(value, str):
            pass
        elif convert in (int, float, str):
            raise ValueError
        else:  # the option's own parser (e.g. MIN:MAX) takes the text
            value = convert(str(value))
    except argparse.ArgumentTypeError as exc:  # the option's own parser says what is wrong
        raise ConfigError(f"--config {path}: {key}: {exc}") from None
    except (TypeError, ValueError):
        raise ConfigError(f"--config {path}: {key} must be {name}, got {value!r}") from None
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise ConfigError(f"--config {path}: {key} must be one of {choices}, got {value!r}")
    return value


def fill_in(
    args: argparse.Namespace, actions: dict[str, argparse.Action], from_file: dict[str, Any]
) -> list[str]:
    """Complete ``args``: given options stay, then the file's, then the defaults.

    Returns the dests that were given on the command line or in the file.
    """
    given = [dest for dest in actions if hasattr(args, dest)]
    for dest, action in actions.items():
        if hasattr(args, dest):
            continue
        if dest in from_file:
            setattr(args, dest, from_file[dest])
            given.append(dest)
        else:
            setattr(args, dest, action.__dict__.get("real_default"))
    return given


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (a host name other than localhost: no)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_tls(cert: str | None, key: str | None) -> None:
    """Both files or neither; they load as a certificate and its key (one line if not)."""
    if cert is None and key is None:
        return
    if cert is None or key is None:
        raise ConfigError("HTTPS needs both --ssl-certfile and --ssl-keyfile")
    for flag, path in (("--ssl-certfile", cert), ("--ssl-keyfile", key)):
        if not os.path.isfile(path):
            raise ConfigError(f"{flag} {path} does not exist")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"--ssl-certfile {cert} / --ssl-keyfile {key} are not a PEM certificate and its "
            f"key ({getattr(exc, 'reason', None) or exc})"
        ) from None
