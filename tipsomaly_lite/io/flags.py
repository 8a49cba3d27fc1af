"""The gate for numeric command-line flags: a type, a range, and an upper bound on every one.

Each value below is an argparse ``type``: it turns the text of a flag into a number or raises
:class:`argparse.ArgumentTypeError`, which argparse prints as one line naming the flag (exit code 2).
Every numeric flag is bounded above, so no flag can ask for unbounded memory or time.
"""

from __future__ import annotations

import math
from argparse import ArgumentTypeError
from typing import Any, Callable

def number(kind: type, low: float, high: float, what: str, low_open: bool = False) -> Callable[[str], Any]:
    """An argparse ``type``: a finite ``kind`` in [low, high] (``(low, high]`` if ``low_open``); every
    numeric flag has an upper bound, so no flag can ask for unbounded memory or time."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if (isinstance(value, float) and not math.isfinite(value)) or value < low or value > high or (
                low_open and value == low):
            raise ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


batch = number(int, 1, 1024, "a batch size between 1 and 1024")
epochs = number(int, 1, 10_000, "a number of epochs between 1 and 10000")
tokens = number(int, 1, 64, "a number of prompt vectors between 1 and 64")
image_size = number(int, 14, 2048, "an input side in px between 14 and 2048")
toy_size = number(int, 32, 2048, "an image side in px between 32 and 2048")
toy_count = number(int, 0, 10_000, "a count between 0 and 10000")
workers = number(int, 0, 64, "a number of workers between 0 and 64")
seed = number(int, 0, 2**32 - 1, "a seed between 0 and 2**32-1")
#: Smoothing in pixels of the maps: 0 (none) up to a quarter of the largest input anyone uses.
sigma = number(float, 0.0, 256.0, "a smoothing width in px between 0 and 256")
learning_rate = number(float, 0.0, 10.0, "a positive finite learning rate up to 10", low_open=True)
#: Most normal reference images per class (few-shot, docs/method.md §2.8): a bound on the memory of their
#: patch tokens (64 x 1369 patches x 1024 floats is 342 MiB for L/14 at 518 px) and on the search over it.
MAX_SHOTS = 64
shots = number(int, 0, MAX_SHOTS, f"a number of normal reference images per class between 0 and {MAX_SHOTS}")
#: Seeds a few-shot benchmark averages over (mean ± std).
shot_runs = number(int, 1, 20, "a number of reference draws (seeds) between 1 and 20")
#: Seconds one graded notebook may run (a course notebook takes 10-30 s offline on 2 cores).
grade_timeout = number(float, 0.0, 3600.0, "a number of seconds above 0, up to 3600", low_open=True)
#: A decision threshold on the fused image score, which lies in [0, 2] with the paper's weights.
threshold = number(float, 0.0, 2.0, "a finite image-score threshold between 0 and 2")
#: A TCP port for the demo app (0: any free one).
port = number(int, 0, 65535, "a TCP port between 0 and 65535")
