"""Shared by the course scripts: re-run a script with the project's virtual environment when needed."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def reexec_in_venv(script: str | os.PathLike, is_main: bool, needs: str = "tipsomaly_lite") -> None:
    """Run ``script`` again with the project's ``.venv/bin/python`` when the package is not importable here,
    so ``python3 notebooks/<script>`` works without activating the venv; with no venv, one clear line.

    Args:
        script: the calling script's path (``__file__``).
        is_main: whether the script runs as ``__main__`` (an imported module never re-executes).
        needs: what could not be imported, for the message.
    """
    script = Path(script).resolve()
    venv = script.parent.parent / ".venv" / "bin" / "python"
    if is_main and venv.is_file() and not os.environ.get("_TIPSOMALY_REEXEC"):
        os.environ["_TIPSOMALY_REEXEC"] = "1"  # never loop
        os.execv(str(venv), [str(venv), str(script), *sys.argv[1:]])
    sys.exit(f"{script.name}: {needs} is not importable by {sys.executable}; run `make install` first, "
             f"or use .venv/bin/python notebooks/{script.name}")
