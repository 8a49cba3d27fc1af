"""Lazy package faces: ``from tipsomaly_lite.method import Detector`` imports only what it names.

Each package's ``__init__`` lists its public names by module; :func:`face` turns that table into the
module-level ``__getattr__``/``__dir__`` (PEP 562), so importing the package stays light and every
name is imported on first use, then cached.
"""

from __future__ import annotations

import importlib
import sys
from typing import Callable


def face(package: str, public: dict[str, tuple[str, ...]], modules: dict[str, str] | None = None,
         ) -> tuple[Callable[[str], object], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package`` from ``{module: names}`` and ``{name: module}``."""
    where = {name: module for module, names in public.items() for name in names}
    modules = modules or {}

    def __getattr__(name: str) -> object:
        if name in where:
            value = getattr(importlib.import_module(where[name]), name)
        elif name in modules:
            value = importlib.import_module(modules[name])
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(sys.modules[package], name, value)  # later look-ups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *where, *modules})

    return __getattr__, __dir__, list(where)
