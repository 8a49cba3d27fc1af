"""The one gate every JSON file passes, whoever wrote it: meta.json, config.json, prompt sets, markers.

A JSON file may come from a download, a user or an earlier run. Before its contents are used it is
checked here, in one place: a regular file (a FIFO would block the read forever), at most
:data:`MAX_BYTES`, UTF-8, nested at most :data:`MAX_DEPTH` deep, finite numbers only (``NaN`` and
``Infinity`` are not JSON), and the top-level type the caller expects. Every failure is one
:class:`JSONFileError` naming the file and what was expected.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

__all__ = ["JSONFileError", "MAX_BYTES", "MAX_DEPTH", "read_json", "check_depth"]

#: Largest JSON file read: a prepared dataset's meta.json with 100,000 images is about 20 MB.
MAX_BYTES = 64 * 2**20
#: Deepest nesting accepted: our files nest four levels; Python's parser recurses per level.
MAX_DEPTH = 32


class JSONFileError(ValueError):
    """A JSON file is missing, not a regular file, too large, malformed or of the wrong shape."""


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def check_depth(value: Any, where: str, limit: int = MAX_DEPTH) -> None:
    """Raise :class:`JSONFileError` naming ``where`` when ``value`` nests deeper than ``limit``.

    Iterative, so a hostile value cannot exhaust the recursion limit while it is being checked.
    """
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            raise JSONFileError(f"{where}: nested more than {limit} levels deep; expected a flat settings file")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


def read_json(path: str | os.PathLike, *, expect: type | tuple[type, ...] = dict, what: str = "JSON file",
              max_bytes: int = MAX_BYTES) -> Any:
    """Read a JSON file through the gate.

    Args:
        path: the file.
        expect: the top-level type(s) required (``dict`` for every settings file we read).
        what: what the file is, for messages (``"meta.json"``, ``"prompt set"``).
        max_bytes: size cap, checked from the file's metadata before reading.
    Returns:
        The parsed value.
    Raises:
        FileNotFoundError: nothing there (names the file).
        JSONFileError: not a regular file, too large, not UTF-8, not JSON, ``NaN``/``Infinity``,
            nested too deep or of another top-level type; the message names the file.
    """
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist") from None
    if not stat.S_ISREG(info.st_mode):
        raise JSONFileError(f"{what} {path} is not a regular file; refusing to read it")
    if info.st_size > max_bytes:
        raise JSONFileError(f"{what} {path} is {info.st_size} bytes, over the {max_bytes}-byte limit for a "
                            "settings file")
    try:
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise JSONFileError(f"{what} {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise JSONFileError(f"{what} {path} cannot be read ({err.strerror or err})") from None
    if len(raw) > max_bytes:  # it grew after the stat
        raise JSONFileError(f"{what} {path} is over the {max_bytes}-byte limit for a settings file")
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:  # nested deeper than the parser recurses: far past MAX_DEPTH
        raise JSONFileError(f"{what} {path}: nested more than {MAX_DEPTH} levels deep; expected a flat settings "
                            "file") from None
    except json.JSONDecodeError as err:
        raise JSONFileError(f"{what} {path} is not valid JSON ({err.msg} at line {err.lineno}, column "
                            f"{err.colno})") from None
    except ValueError as err:  # NaN / Infinity
        raise JSONFileError(f"{what} {path}: {err}; expected finite numbers") from None
    check_depth(value, f"{what} {path}")
    expected = expect if isinstance(expect, tuple) else (expect,)
    if not isinstance(value, expected):
        names = " or ".join({dict: "an object {...}", list: "a list [...]"}.get(t, t.__name__) for t in expected)
        raise JSONFileError(f"{what} {path} holds {type(value).__name__}; expected {names}")
    return value
