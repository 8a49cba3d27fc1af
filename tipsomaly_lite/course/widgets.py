"""Interactive cells that never block: live controls in Jupyter and Colab, a static preview elsewhere.

A notebook executed without a live frontend (nbval, nbconvert, the HTML course, the real-mode
rehearsal) has nobody to move a slider, and a widget there can leave the executing client waiting
for comm messages that never come. :func:`interact` therefore draws the cell once with the
controls' default values when no live frontend is attached, and hands over to
``ipywidgets.interact`` otherwise.

``TIPSOMALY_WIDGETS=static`` or ``=live`` overrides the detection.

Taught in notebooks/00_setup.ipynb.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

__all__ = ["WIDGETS_ENV", "live_frontend", "interact"]

WIDGETS_ENV = "TIPSOMALY_WIDGETS"
# A kernel whose parent process is one of these executes a notebook headless.
_HEADLESS_PARENTS = ("pytest", "nbconvert", "nbclient", "papermill", "run_course", "nbval")


def _parent_command() -> str:
    """The command line of this process's parent (Linux; empty elsewhere)."""
    try:
        return Path(f"/proc/{os.getppid()}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def live_frontend() -> bool:
    """True when a person can use widgets here: Colab, or a kernel of Jupyter/VS Code.

    False in plain Python, under CI (``CI`` set), and in a kernel started by a headless executor
    (nbval, nbconvert, papermill, the course's HTML run). ``TIPSOMALY_WIDGETS`` overrides.
    """
    forced = os.environ.get(WIDGETS_ENV, "").strip().lower()
    if forced in ("static", "live"):
        return forced == "live"
    from tipsomaly_lite.course.session import in_colab

    if in_colab():
        return True
    if os.environ.get("CI"):
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None or not hasattr(shell, "kernel"):
        return False  # a terminal IPython or plain Python: no widget frontend
    parent = _parent_command()
    return not any(name in parent for name in _HEADLESS_PARENTS)


def _default_values(fn: Callable[..., Any], controls: dict[str, Any]) -> dict[str, Any]:
    """The values ``ipywidgets.interact`` would call ``fn`` with first, without displaying anything."""
    import ipywidgets

    # manual=True builds the widgets without running fn.
    built = ipywidgets.interactive(fn, {"manual": True}, **controls)
    return {w._kwarg: w.get_interact_value() for w in built.kwargs_widgets}


def interact(fn: Callable[..., Any], **controls: Any) -> Any:
    """``ipywidgets.interact(fn, **controls)`` with a live frontend; else ``fn`` once with the defaults.

    Args:
        fn: draws or prints something for one choice of its arguments.
        **controls: widgets or interact abbreviations (a list of options, a ``(min, max)`` tuple...).
    Returns:
        The interact widget (live) or ``fn``'s return value (static).
    Taught in notebooks/00_setup.ipynb.
    """
    if live_frontend():
        import ipywidgets

        return ipywidgets.interact(fn, **controls)
    values = _default_values(fn, controls)
    shown = ", ".join(f"{k}={v!r}" for k, v in values.items())
    print(f"(static preview with {shown}: open the notebook in Jupyter or Colab to move the controls)")
    return fn(**values)
