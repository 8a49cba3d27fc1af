"""Optional dependencies: a missing pip extra is one line with the install command, not a traceback.

    require(("transformers",), extra="backbones", who="the clip backbone")
    # MissingExtraError: the clip backbone needs transformers, which is not installed:
    #                    pip install "tipsomaly_lite[backbones]"

The error is an ``ImportError`` (code that catches those keeps working) that the commands' error
boundary (:mod:`tipsomaly_lite.io.boundary`) treats as the user's to fix: one line, exit code 2.
"""

from __future__ import annotations

import importlib.util
from typing import Iterable

__all__ = ["MissingExtraError", "install_hint", "require"]


class MissingExtraError(ImportError):
    """A module of an optional pip extra is not installed; the message says what to install."""


def install_hint(extra: str) -> str:
    """The pip line that installs an extra of this package."""
    return f'pip install "tipsomaly_lite[{extra}]"'


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module set to None in sys.modules
        return False


def require(modules: Iterable[str], *, extra: str, who: str) -> None:
    """Raise :class:`MissingExtraError` unless every top-level module in ``modules`` can be imported.

    Args:
        modules: the modules the extra provides (``("transformers",)``).
        extra: the extra's name in ``pyproject.toml`` (``"backbones"``).
        who: what needs them, as the message starts (``"the clip backbone"``).
    """
    missing = [m for m in modules if not _installed(m)]
    if missing:
        raise MissingExtraError(f"{who} needs {', '.join(missing)}, which is not installed: {install_hint(extra)}")
