"""Self-checks for the exercises of notebooks/09_few_normal_images.ipynb."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from tipsomaly_lite.course.checks.core import check_function, exercise, random_inputs

__all__: list[str] = ["nearest_patch_distance", "interval_mean"]


@exercise("normalise both sets first; the NEAREST reference is the one with the LARGEST cosine; turn that cosine "
          "into a distance that is 0 for the same direction and 1 for the opposite one",
          reference="tipsomaly_lite.method.few_shot.nearest_distances")
def nearest_patch_distance(fn: Callable[[Tensor, Tensor], Tensor]) -> bool:
    """Exercise: Eq. 13, ``fn(queries (M, D), memory (R, D)) -> (M,)``, each query's ``(1 - cos) / 2`` to its nearest row.

    Compared with :func:`tipsomaly_lite.method.few_shot.nearest_distances` on seeded features that are
    *not* unit length (so a forgotten normalisation shows) and on a memory holding a copy of a query
    (distance 0).

    Args:
        fn: the student's function.
    Returns:
        True when it agrees with the package on every input.
    """
    from tipsomaly_lite.method.few_shot import nearest_distances

    inputs = []
    for seed, (m, r, d) in enumerate(((6, 9, 8), (40, 25, 16), (3, 1, 5))):
        q, mem = random_inputs(seed, (m, d), (r, d))
        inputs.append((3 * q, mem * torch.linspace(0.5, 4.0, r)[:, None]))
    q, mem = random_inputs(9, (5, 12), (7, 12))
    inputs.append((q, torch.cat([mem, 2 * q[:2]])))  # two queries have an exact look-alike
    return check_function("nearest-neighbour distance (Eq. 13)", fn, lambda a, b: nearest_distances(a, b), inputs)


@exercise("sort the distances to the other images from small to large, keep the smallest share of them (round the "
          "count UP, and keep at least one) and average what you kept",
          reference="tipsomaly_lite.method.mutual.interval_average")
def interval_mean(fn: Callable[[Tensor, float], Tensor]) -> bool:
    """Exercise: MuSc's interval average, ``fn(distances (B, C, N), fraction) -> (B, N)``.

    The mean over dim 1 of the ``ceil(fraction * C)`` smallest values, compared with
    :func:`tipsomaly_lite.method.mutual.interval_average` for shares where rounding up and down differ
    and where a plain mean or minimum gives another answer.

    Args:
        fn: the student's function.
    Returns:
        True when it agrees with the package on every input.
    """
    from tipsomaly_lite.method.mutual import interval_average

    inputs = []
    for seed, (b, c, n, fraction) in enumerate(((2, 7, 5, 0.3), (3, 10, 4, 0.25), (1, 4, 6, 0.5), (2, 3, 3, 0.1))):
        (x,) = random_inputs(seed, (b, c, n))
        inputs.append((x.abs(), fraction))
    return check_function("interval average over the other images", fn, interval_average, inputs)
