"""The offline mode's switch and its loud notices, and the package's one warning helper.

The offline mode runs everything on a tiny backbone (:mod:`tipsomaly_lite.backbones.tips.tiny`: a toy
TIPS trained for minutes on drawn toy defects; CLIP and SigLIP2 with random weights) and generated toy
data, in CI and on a laptop without downloads. Its numbers are meaningless; every use says so with
the texts below.

``TIPSOMALY_OFFLINE=1`` forces it: ``load_tips("l14-hr")`` then returns the tiny model.

Taught in notebooks/00_setup.ipynb.
"""

from __future__ import annotations

import os
import sys
import warnings

OFFLINE_ENV = "TIPSOMALY_OFFLINE"

#: The banner, shown once per process (the first time a tiny offline model is loaded).
MEANINGLESS = (
    "\n" + "!" * 78 + "\n"
    "OFFLINE MODE: a tiny TOY model (TIPS: trained for minutes on drawn toy defects; CLIP and\n"
    "SigLIP2: random weights). Every score, map and metric it produces is MEANINGLESS: it says\n"
    "nothing about TIPS or real images, it only shows that the code runs.\n" + "!" * 78)
#: Result tables say it in one line naming the family: tipsomaly_lite.eval.report.meaningless_line.
#: The same warning as a short tag, for figure titles (viz draws titles containing it in red).
MEANINGLESS_TAG = "OFFLINE TINY TOY MODEL: MEANINGLESS"


class MeaninglessResultsWarning(UserWarning):
    """Raised (as a warning) whenever a tiny offline model is used.

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


def how_to_get_real_weights() -> str:
    """One line on getting real numbers; it names ``TIPSOMALY_OFFLINE`` only when that is what forced the mode."""
    if offline_forced():
        return f"For real numbers: unset {OFFLINE_ENV} (it is set here) and fetch weights: tipsomaly fetch l14-hr"
    return "For real numbers: fetch real weights (tipsomaly fetch l14-hr) and load them instead of 'tiny'"


_announced = False


def warn_meaningless() -> None:
    """Warn, at the caller's line, that a tiny offline model is in use: the full banner once per
    process, a one-line reminder after that (always as a :class:`MeaninglessResultsWarning`)."""
    global _announced
    if _announced:
        warn_caller(f"{MEANINGLESS_TAG} (the tiny offline model again)", MeaninglessResultsWarning)
        return
    _announced = True
    warn_caller(f"{MEANINGLESS}\n{how_to_get_real_weights()}", MeaninglessResultsWarning)
