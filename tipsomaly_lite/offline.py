"""The offline mode's switch and its loud notices, and the package's one warning helper.

The offline mode runs everything on a tiny backbone with random weights
(:mod:`tipsomaly_lite.backbones.tips.tiny`) and generated toy data, in CI and on a laptop
without downloads. Its numbers are meaningless; every use says so with the texts below.

``TIPSOMALY_OFFLINE=1`` forces it: ``load_tips("l14-hr")`` then returns the tiny model.

Taught in notebooks/00_setup.ipynb.
"""

from __future__ import annotations

import os
import sys
import warnings

OFFLINE_ENV = "TIPSOMALY_OFFLINE"

#: The banner printed, logged and warned whenever the tiny random model is used.
MEANINGLESS = (
    "\n" + "!" * 78 + "\n"
    "OFFLINE MODE: tiny TIPS with RANDOM weights. Every score, map and metric it produces is\n"
    "MEANINGLESS; it only shows that the code runs. Download real weights for real numbers\n"
    "(tipsomaly fetch l14-hr) and unset TIPSOMALY_OFFLINE.\n" + "!" * 78)
#: The same warning as one Markdown line, for result tables.
MEANINGLESS_MARKDOWN = ("**OFFLINE MODE: tiny TIPS with random weights. These numbers are MEANINGLESS; they only "
                        "show that the pipeline runs.**")
#: The same warning as a short tag, for figure titles (viz draws titles containing it in red).
MEANINGLESS_TAG = "OFFLINE TINY RANDOM MODEL: MEANINGLESS"


class MeaninglessResultsWarning(UserWarning):
    """Raised (as a warning) whenever the tiny random model is used.

    Taught in notebooks/00_setup.ipynb.
    """


def offline_forced() -> bool:
    """True when ``TIPSOMALY_OFFLINE`` is set to something other than 0/false/empty.

    Taught in notebooks/00_setup.ipynb.
    """
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def warn_caller(message: str, category: type[Warning] = UserWarning) -> None:
    """Warn, attributed to the first caller outside this package (the user's line, not ours)."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def warn_meaningless() -> None:
    """Emit the loud offline-mode warning at the caller's line."""
    warn_caller(MEANINGLESS, MeaninglessResultsWarning)
