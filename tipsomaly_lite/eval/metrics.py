"""Image- and pixel-level metrics of zero-shot anomaly detection, computed per class.

Image metrics (one score per image) are scikit-learn's: AUROC, average precision and F1-max (the
largest ``2PR/(P+R)`` over the precision-recall curve, as the ZSAD papers report it).

Pixel metrics (pixel AUROC, pixel AP, pixel F1-max, AUPRO) look at every pixel of every test image
of a class: at 518 px and a few hundred images that is ~10^8 pixels, too many to concatenate and
sort. :class:`PixelAccumulator` streams them instead and keeps only fixed-size histograms, so its
memory does not depend on the number of images (10 MiB per class):

1. **Bins on the maps' own range.** The bins are ``2**18`` intervals of width ``2**e`` laid on the
   range of the values seen so far (bin ``k`` holds ``k * 2**e <= x < (k + 1) * 2**e``). ``e`` is the
   smallest exponent whose bins cover that range, so narrow maps (probabilities packed near 0.5)
   and shifted ones (logits + 1000) get bins as fine as wide ones. When a later image widens the
   range, neighbouring bins are merged in pairs (``e`` grows by one); the final grid depends only
   on the overall minimum and maximum, not on the order of the images.
2. **Per bin**: the normal and anomalous pixel counts, the PRO weight (sum of ``1/|R|`` over its
   anomalous pixels, ``R`` the pixel's connected ground-truth region, ``scipy.ndimage.label``) and
   the smallest and largest value that fell into it.
3. **Exact when every bin holds one value.** Bins are disjoint and ordered, so when each non-empty
   bin holds a single distinct value (its min equals its max), walking the bins from the top gives
   the counts at every distinct threshold: ROC, precision-recall and PRO curves with one point per
   distinct value, *exactly* as if all pixels had been sorted (scikit-learn's AUROC / AP /
   precision-recall, the MVTec AD AUPRO). Values are compared as float64 (float32 maps exactly).
4. **Otherwise, a proven bound.** A bin holding several values is treated as one tie. The error that
   can cause is bounded from the histograms alone (:meth:`PixelAccumulator.error_bounds`: pairs in
   a shared bin for AUROC, the best F1 a split bin could reach, ...), and a :class:`MetricWarning`
   names it when it exceeds :data:`PIXEL_TOLERANCE` (1e-4 for AUROC/AUPRO, 1e-3 for AP/F1-max).
   On 518 px maps the bounds are around 1e-6 (``benchmarks/bench_metrics.py``); maps with fewer
   distinct values than bins (shifted ones, maps on a grid) are exact.

The state is fixed-size arrays plus scalars: :meth:`PixelAccumulator.merge` adds another
accumulator (e.g. another process's), :meth:`~PixelAccumulator.state_dict` /
:meth:`~PixelAccumulator.from_state_dict` move it, and :meth:`~PixelAccumulator.expand_to` puts
several on one grid so that their arrays can be summed element-wise (min/max for the value arrays).

AUPRO comes in two flavours (``AUPRO_MODES``), because published tables use both (docs/method.md §2.5):

* ``"standard"`` (MVTec AD): the PRO curve at every distinct value, integrated by the trapezoid
  rule over FPR in ``[0, max_fpr]`` (interpolated at ``max_fpr``) and divided by ``max_fpr``.
* ``"compat"`` (the ZSAD papers' code): ``steps`` thresholds built exactly as the authors'
  ``torch.arange(min, max, (max - min) / steps)`` (float32 values, float64 step, the same count),
  prediction ``value > th``, points with ``FPR < max_fpr`` kept, their FPRs min-max rescaled to
  [0, 1], ``sklearn.metrics.auc``. Each threshold's counts are read from the histograms instead of
  re-binarising every map 200 times.

Undefined metrics (a class with one label value, no anomalous pixel, ...) are ``nan`` with a
:class:`MetricWarning` that says which class and why, never a silent 0.

Taught in notebooks/06_benchmark.ipynb.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import numpy as np
import torch
from scipy import ndimage
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

from tipsomaly_lite.offline import warn_caller

__all__ = [
    "AUPRO_MODES", "DEFAULT_BINS", "PIXEL_TOLERANCE", "MetricWarning", "PixelAccumulator", "aupro",
    "compat_thresholds", "f1_max", "image_ap", "image_auroc", "image_metrics", "pixel_ap", "pixel_auroc",
    "pixel_f1_max", "pixel_metrics",
]

#: The two AUPRO definitions: the MVTec AD one and the ZSAD papers' 200-threshold recipe.
AUPRO_MODES = ("standard", "compat")
#: Histogram bins of a :class:`PixelAccumulator` (5 arrays of 8 bytes per bin: 10 MiB).
DEFAULT_BINS = 1 << 18
#: The largest proven error a pixel metric may carry without a :class:`MetricWarning`.
PIXEL_TOLERANCE = {"pixel_auroc": 1e-4, "pixel_ap": 1e-3, "pixel_f1_max": 1e-3, "pixel_aupro": 1e-4}
#: The pixel metrics :meth:`PixelAccumulator.compute` returns.
PIXEL_METRICS = ("pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro")
_STRUCTURES = {8: np.ones((3, 3), dtype=bool), 4: None}  # None = scipy's default cross (4-connectivity)
_STATE_FORMAT = "tipsomaly_lite.pixel_accumulator/1"
_E_MIN = -1074  # float64 values are multiples of 2**-1074: finer bins would be pointless


class MetricWarning(UserWarning):
    """A metric is undefined (``nan``) for this class, or may be off by more than :data:`PIXEL_TOLERANCE`."""


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    """Trapezoid rule (``np.trapezoid`` is numpy >= 2 only)."""
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1])) / 2)


def compat_thresholds(min_value: float, max_value: float, steps: int = 200) -> np.ndarray:
    """The ZSAD papers' AUPRO thresholds: ``torch.arange(min, max, (max - min) / steps)`` in float32.

    The step is a Python float (float64), each threshold ``min + i * step`` is rounded to float32, and
    the count is ``ceil((max - min) / step)`` (usually ``steps``, sometimes one more): exactly the
    authors' ``cal_pro_score``. ``np.arange`` on float32 bounds gives other values (threshold 25 of
    [0, 1] is 0.12499999720603228 instead of 0.125), which moves AUPRO on maps with values on them.

    Args:
        min_value: smallest map value.
        max_value: largest map value, ``> min_value``.
        steps: the number of steps (200 in the papers).
    Returns:
        ``(T,)`` float32 thresholds, ascending (docs/method.md §2.5).
    """
    lo, hi = float(min_value), float(max_value)
    if not hi > lo:
        raise ValueError(f"max_value must be > min_value, got {min_value!r} and {max_value!r}")
    return torch.arange(lo, hi, (hi - lo) / int(steps), dtype=torch.float32).numpy()


def _exponent_for(lo: float, hi: float, bins: int, e_min: int) -> int:
    """The smallest ``e >= e_min`` whose bins ``[k 2**e, (k+1) 2**e)`` cover ``[lo, hi]`` with ``bins`` bins.

    Also ``|x| / 2**e < 2**53``, so that bin numbers are exact integers. The condition is monotone in
    ``e``, so the result depends only on ``lo`` and ``hi`` (not on how the range was reached).
    """
    e = e_min
    big = max(abs(lo), abs(hi))
    if big > 0:
        e = max(e, math.frexp(big)[1] - 53)
    if hi > lo:
        e = max(e, math.frexp((hi - lo) / bins)[1] - 1)  # a lower bound: coarser is needed at least
    while math.floor(math.ldexp(hi, -e)) - math.floor(math.ldexp(lo, -e)) > bins - 1:
        e += 1
    return e


# ----------------------------------------------------------------------------------------- helpers

def _who(name: str) -> str:
    return f"class {name!r}: " if name else ""


def _warn_undefined(name: str, what: str, why: str) -> float:
    """Warn that ``what`` is undefined for class ``name`` because ``why``; returns ``nan``."""
    verb = "are" if " and " in what else "is"
    warn_caller(f"{_who(name)}{what} {verb} undefined: {why}", MetricWarning)
    return float("nan")


def _to_numpy(x: Any, arg: str) -> np.ndarray:
    """An ndarray view of a tensor / array / sequence (bfloat16 has no numpy dtype: widened to float32)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:
            x = x.float()
        return x.numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{arg} must be an array or tensor ({err})") from err


def _check_real(a: np.ndarray, arg: str) -> None:
    """Raise unless ``a`` holds real numbers (bool counts as 0/1, as in scikit-learn and anomalib)."""
    if not (a.dtype == bool or np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"{arg} must hold real numbers (float, int or bool), got dtype {a.dtype}")


def _check_binary(a: np.ndarray, arg: str) -> np.ndarray:
    """``a`` as bool; raises unless every value is 0 or 1."""
    if a.dtype == bool:
        return a
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"{arg} must hold 0/1 or bool values, got dtype {a.dtype}")
    out = a != 0
    if not np.array_equal(out, a == 1):  # anything other than 0 and 1 (NaN included)
        bad = np.unique(a[(a != 0) & (a != 1)])[:5]
        raise ValueError(f"{arg} must hold only 0 and 1 (or bool); found {bad.tolist()}")
    return out


def _image_inputs(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(K,)`` bool labels and ``(K,)`` float64 scores."""
    labels, scores = _to_numpy(labels, "labels"), _to_numpy(scores, "scores")
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape (K,), got {labels.shape}")
    if scores.ndim != 1:
        raise ValueError(f"scores must have shape (K,), got {scores.shape}")
    if labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} must have the same length")
    labels = _check_binary(labels, "labels")
    _check_real(scores, "scores")
    scores = scores.astype(np.float64)
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"scores holds {int(np.sum(~np.isfinite(scores)))} NaN or infinite values")
    return labels, scores


def _image_undefined_reason(labels: np.ndarray) -> str | None:
    k, n_anomalous = labels.size, int(labels.sum())
    if k == 0:
        return "there are no images"
    if n_anomalous == 0:
        return f"all {k} images are normal"
    if n_anomalous == k:
        return f"all {k} images are anomalous"
    return None


# ---------------------------------------------------------------------------------- image metrics

def image_auroc(labels: Any, scores: Any, name: str = "") -> float:
    """Area under the ROC curve of image scores (``sklearn.metrics.roc_auc_score``).

    Args:
        labels: ``(K,)`` in {0, 1}, 1 = anomalous image.
        scores: ``(K,)`` image scores, higher = more anomalous.
        name: class name, used in warnings.
    Returns:
        AUROC in [0, 1], or ``nan`` with a :class:`MetricWarning` when the labels hold one value.
    Raises:
        ValueError: bad shapes, labels other than 0/1, NaN or infinite scores.
    Taught in notebooks/03_fixed_prompts.ipynb.
    """
    labels, scores = _image_inputs(labels, scores)
    reason = _image_undefined_reason(labels)
    if reason:
        return _warn_undefined(name, "image AUROC", reason)
    return float(roc_auc_score(labels, scores))


def image_ap(labels: Any, scores: Any, name: str = "") -> float:
    """Average precision of image scores (``sklearn.metrics.average_precision_score``).

    ``AP = sum_n (R_n - R_{n-1}) P_n`` over the distinct thresholds, highest first.

    Args:
        labels: ``(K,)`` in {0, 1}, 1 = anomalous image.
        scores: ``(K,)`` image scores, higher = more anomalous.
        name: class name, used in warnings.
    Returns:
        AP in [0, 1], or ``nan`` with a :class:`MetricWarning` when the labels hold one value.
    Taught in notebooks/03_fixed_prompts.ipynb.
    """
    labels, scores = _image_inputs(labels, scores)
    reason = _image_undefined_reason(labels)
    if reason:
        return _warn_undefined(name, "image AP", reason)
    return float(average_precision_score(labels, scores))


def _f1_max_sklearn(labels: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    return float(np.nanmax(f1))  # the (P=1, R=0) end point gives 0, never all-NaN when positives exist


def f1_max(labels: Any, scores: Any, name: str = "") -> float:
    """F1-max: the best ``2PR/(P+R)`` over the points of ``sklearn.metrics.precision_recall_curve``.

    Points where ``P + R = 0`` (0/0) are dropped. This is the F1-max of the ZSAD papers: the F1 of
    the best threshold, chosen on the test set itself (an optimistic, threshold-free summary).

    Args:
        labels: ``(K,)`` in {0, 1}, 1 = anomalous.
        scores: ``(K,)`` scores, higher = more anomalous.
        name: class name, used in warnings.
    Returns:
        F1-max in [0, 1], or ``nan`` with a :class:`MetricWarning` when the labels hold one value.
    Taught in notebooks/03_fixed_prompts.ipynb.
    """
    labels, scores = _image_inputs(labels, scores)
    reason = _image_undefined_reason(labels)
    if reason:
        return _warn_undefined(name, "F1-max", reason)
    return _f1_max_sklearn(labels, scores)


def image_metrics(labels: Any, scores: Any, name: str = "") -> dict[str, float]:
    """All three image metrics of one class; one warning (not three) when they are undefined.

    Args:
        labels: ``(K,)`` in {0, 1}, 1 = anomalous image.
        scores: ``(K,)`` image scores.
        name: class name, used in warnings.
    Returns:
        ``{"image_auroc", "image_ap", "image_f1_max"}``, each in [0, 1] or ``nan``.
    Taught in notebooks/03_fixed_prompts.ipynb.
    """
    labels, scores = _image_inputs(labels, scores)
    reason = _image_undefined_reason(labels)
    if reason:
        nan = _warn_undefined(name, "image AUROC, AP and F1-max", reason)
        return {"image_auroc": nan, "image_ap": nan, "image_f1_max": nan}
    return {"image_auroc": float(roc_auc_score(labels, scores)),
            "image_ap": float(average_precision_score(labels, scores)),
            "image_f1_max": _f1_max_sklearn(labels, scores)}


# ---------------------------------------------------------------------------------- pixel metrics

def _as_stack(x: Any, arg: str) -> np.ndarray:
    """``(B,H,W)`` from ``(B,H,W)``, ``(H,W)`` or ``(B,1,H,W)``."""
    a = _to_numpy(x, arg)
    if a.ndim == 2:
        a = a[None]
    elif a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 3:
        raise ValueError(f"{arg} must have shape (B,H,W), (H,W) or (B,1,H,W), got {tuple(a.shape)}")
    return a


_LABELS = {"pixel_auroc": "pixel AUROC", "pixel_ap": "pixel AP", "pixel_f1_max": "pixel F1-max",
           "pixel_aupro": "pixel AUPRO"}
_ARRAYS = ("normal", "anomalous", "pro_weight", "bin_min", "bin_max")
_SCALARS = ("exponent", "origin", "range_lo", "range_hi", "min", "max", "n_images", "n_normal", "n_anomalous",
            "n_regions")


class PixelAccumulator:
    """Streams anomaly maps and masks image by image; holds only fixed-size histograms.

    Memory is independent of the number of images: five arrays of ``bins`` float64/int64 values
    (10 MiB at the default ``2**18`` bins) and a few scalars; see the module docstring for the bins
    and why every pixel metric read off them is exact whenever each bin holds one distinct value
    (and otherwise within a bound that :meth:`error_bounds` gives and a warning names).

    Args:
        connectivity: 8 (default, diagonal neighbours join a region, as skimage's ``label``) or 4,
            for the ground-truth regions of AUPRO.
        name: class name, used in warnings.
        bins: histogram bins (accumulators merge only with the same number).

    Example::

        acc = PixelAccumulator(name="bottle")
        for batch in loader:
            acc.add(anomaly_maps, batch["mask"])       # (B,H,W), (B,1,H,W)
        acc.compute()   # {"pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro"}
        acc.merge(other_process_acc)                  # same class, other images
    Taught in notebooks/04_learnable_pixel_prompts.ipynb.
    """

    def __init__(self, connectivity: int = 8, name: str = "", bins: int = DEFAULT_BINS) -> None:
        if connectivity not in _STRUCTURES:
            raise ValueError(f"connectivity must be 8 or 4, got {connectivity!r}")
        if int(bins) != bins or bins < 2:
            raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
        self.connectivity = connectivity
        self.name = name
        self.bins = int(bins)
        self._normal = np.zeros(self.bins, dtype=np.int64)
        self._anomalous = np.zeros(self.bins, dtype=np.int64)
        self._pro_weight = np.zeros(self.bins, dtype=np.float64)
        self._bin_min = np.full(self.bins, np.inf)
        self._bin_max = np.full(self.bins, -np.inf)
        self._exponent: int | None = None  # bin width 2**exponent; None until a grid is laid
        self._origin = 0  # bin 0 is [origin * 2**exponent, (origin + 1) * 2**exponent)
        self._range = (math.inf, -math.inf)  # what the grid covers (>= the data's range)
        self._min, self._max = math.inf, -math.inf  # the data's smallest and largest value
        self._n_images = 0
        self._n_normal = 0
        self._n_anomalous = 0
        self._n_regions = 0

    # -- read-only counters
    @property
    def n_images(self) -> int:
        """Images added so far."""
        return self._n_images

    @property
    def n_normal_pixels(self) -> int:
        """Pixels with mask 0 added so far."""
        return self._n_normal

    @property
    def n_anomalous_pixels(self) -> int:
        """Pixels with mask 1 added so far."""
        return self._n_anomalous

    @property
    def n_regions(self) -> int:
        """Connected ground-truth regions over all images added so far."""
        return self._n_regions

    @property
    def nbytes(self) -> int:
        """Bytes held by the histograms (constant: does not grow with the images)."""
        return sum(a.nbytes for a in (self._normal, self._anomalous, self._pro_weight, self._bin_min,
                                      self._bin_max))

    @property
    def bin_width(self) -> float:
        """The width ``2**e`` of a bin (``nan`` before any value was added)."""
        return math.nan if self._exponent is None else math.ldexp(1.0, self._exponent)

    @property
    def is_exact(self) -> bool:
        """True when every non-empty bin holds one distinct value: then every pixel metric is exact."""
        return self._n_shared_bins() == 0

    def _n_shared_bins(self) -> int:
        present = (self._normal > 0) | (self._anomalous > 0)
        return int(np.count_nonzero(present & (self._bin_min < self._bin_max)))

    def __repr__(self) -> str:
        return (f"PixelAccumulator(name={self.name!r}, images={self._n_images}, normal_pixels={self._n_normal}, "
                f"anomalous_pixels={self._n_anomalous}, regions={self._n_regions}, "
                f"connectivity={self.connectivity}, bins={self.bins}, bin_width={self.bin_width:.3g}, "
                f"exact={self.is_exact})")

    # -- the grid
    def expand_to(self, lo: float, hi: float) -> None:
        """Widen the grid to cover ``[lo, hi]`` (merging neighbouring bins in pairs as needed).

        The grid is a function of the covered range alone, so accumulators that all call
        ``expand_to`` with the same range (e.g. the all-reduced min and max of several processes)
        end up with identical grids, and their arrays can be summed element-wise.

        Args:
            lo: smallest value to cover (finite).
            hi: largest value to cover (finite, ``>= lo``).
        Raises:
            ValueError: ``lo`` or ``hi`` not finite, or ``lo > hi``.
        """
        lo, hi = float(lo), float(hi)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise ValueError(f"expand_to needs finite lo <= hi, got {lo!r} and {hi!r}")
        lo, hi = min(lo, self._range[0]), max(hi, self._range[1])
        e = _exponent_for(lo, hi, self.bins, _E_MIN if self._exponent is None else self._exponent)
        origin = math.floor(math.ldexp(lo, -e))
        if self._exponent is not None and (e, origin) != (self._exponent, self._origin):
            self._regrid(e, origin)
        self._exponent, self._origin, self._range = e, origin, (lo, hi)

    def _regrid(self, e: int, origin: int) -> None:
        """Move the non-empty bins onto the (coarser or shifted) grid ``(e, origin)``."""
        nz = np.flatnonzero((self._normal > 0) | (self._anomalous > 0))
        shift = min(e - self._exponent, 63)  # |bin numbers| < 2**53: shifting further changes nothing
        new = (((np.int64(self._origin) + nz.astype(np.int64)) >> np.int64(shift)) - np.int64(origin))
        n = self.bins
        self._normal = np.bincount(new, weights=self._normal[nz], minlength=n).astype(np.int64)
        self._anomalous = np.bincount(new, weights=self._anomalous[nz], minlength=n).astype(np.int64)
        self._pro_weight = np.bincount(new, weights=self._pro_weight[nz], minlength=n)
        bin_min, bin_max = np.full(n, np.inf), np.full(n, -np.inf)
        np.minimum.at(bin_min, new, self._bin_min[nz])
        np.maximum.at(bin_max, new, self._bin_max[nz])
        self._bin_min, self._bin_max = bin_min, bin_max

    def _bin_of(self, values: np.ndarray) -> np.ndarray:
        """Bin numbers of float64 ``values`` (all inside the grid's range)."""
        if -1022 <= -self._exponent <= 1023:  # x * 2**-e is exact and 5x faster than np.ldexp
            scaled = values * math.ldexp(1.0, -self._exponent)
        else:
            scaled = np.ldexp(values, -self._exponent)
        return np.floor(scaled, out=scaled).astype(np.int64) - np.int64(self._origin)

    # -- streaming
    def add(self, anomaly_maps: Any, masks: Any) -> None:
        """Add a batch of anomaly maps and their ground-truth masks.

        Args:
            anomaly_maps: ``(B,H,W)`` or ``(H,W)`` (``(B,1,H,W)`` too), torch Tensor or ndarray, any
                real dtype (bool counts as 0/1); compared as float64, so float32 maps exactly.
            masks: the same shape, values in {0, 1} or bool.
        Raises:
            ValueError: shapes differ, masks hold other values than 0/1, or a map holds NaN or infinity.
        """
        maps, gts = _as_stack(anomaly_maps, "anomaly_maps"), _as_stack(masks, "masks")
        if maps.shape != gts.shape:
            raise ValueError(f"anomaly_maps {tuple(maps.shape)} and masks {tuple(gts.shape)} must have the "
                             "same shape")
        _check_real(maps, "anomaly_maps")
        gts = _check_binary(gts, "masks")
        if maps.size == 0:
            self._n_images += len(maps)
            return
        lo, hi = float(np.min(maps)), float(np.max(maps))  # NaN propagates; inf shows
        if not (math.isfinite(lo) and math.isfinite(hi)):
            values = np.asarray(maps, dtype=np.float64)
            n_nan, n_inf = int(np.isnan(values).sum()), int(np.isinf(values).sum())
            raise ValueError(f"anomaly_maps holds {n_nan} NaN and {n_inf} infinite values; metrics need "
                             "finite maps")
        # Validated: from here on nothing can reject the batch, so the state changes only now.
        self.expand_to(lo, hi)
        self._min, self._max = min(self._min, lo), max(self._max, hi)
        structure = _STRUCTURES[self.connectivity]
        n_bins = self.bins
        for anomaly_map, gt in zip(maps, gts):  # one image at a time: temporaries stay ~30 bytes/pixel
            values = np.asarray(anomaly_map, dtype=np.float64).ravel()
            keys = self._bin_of(values)
            np.minimum.at(self._bin_min, keys, values)
            np.maximum.at(self._bin_max, keys, values)
            counts = np.bincount(keys, minlength=n_bins)
            gt_flat = gt.ravel()
            n_anom = int(np.count_nonzero(gt_flat))
            if n_anom == 0:
                self._normal += counts
                continue
            anom_keys = keys[gt_flat]
            anom_counts = np.bincount(anom_keys, minlength=n_bins)
            self._anomalous += anom_counts
            self._normal += counts - anom_counts
            regions, n = ndimage.label(gt, structure=structure)
            inv_area = 1.0 / np.bincount(regions.ravel())[1:]  # 1/|R| for region labels 1..n
            self._pro_weight += np.bincount(anom_keys, weights=inv_area[regions.ravel()[gt_flat] - 1],
                                            minlength=n_bins)
            self._n_regions += n
            self._n_anomalous += n_anom
        self._n_images += len(maps)
        self._n_normal += maps.size - int(np.count_nonzero(gts))

    # -- merging and moving the state
    def state_dict(self) -> dict[str, Any]:
        """The whole state: five ``(bins,)`` arrays (copies) and scalars; see :meth:`from_state_dict`.

        ``normal``/``anomalous`` (int64) and ``pro_weight`` add up across processes, ``bin_min`` /
        ``bin_max`` reduce by min / max, once :meth:`expand_to` has put every process on one grid.
        """
        return {"format": _STATE_FORMAT, "bins": self.bins, "connectivity": self.connectivity, "name": self.name,
                "exponent": self._exponent, "origin": self._origin, "range_lo": self._range[0],
                "range_hi": self._range[1], "min": self._min, "max": self._max, "n_images": self._n_images,
                "n_normal": self._n_normal, "n_anomalous": self._n_anomalous, "n_regions": self._n_regions,
                "normal": self._normal.copy(), "anomalous": self._anomalous.copy(),
                "pro_weight": self._pro_weight.copy(), "bin_min": self._bin_min.copy(),
                "bin_max": self._bin_max.copy()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "PixelAccumulator":
        """An accumulator from :meth:`state_dict` (arrays may be numpy arrays or tensors).

        Raises:
            ValueError: not a state of this format, or arrays of the wrong size.
        """
        if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
            raise ValueError(f"state must be a PixelAccumulator.state_dict() of format {_STATE_FORMAT!r}")
        missing = [k for k in (*_ARRAYS, *_SCALARS, "bins", "connectivity") if k not in state]
        if missing:
            raise ValueError(f"state lacks {missing}")
        acc = cls(connectivity=int(state["connectivity"]), name=str(state.get("name", "")), bins=int(state["bins"]))
        dtypes = {"normal": np.int64, "anomalous": np.int64}
        for key in _ARRAYS:
            arr = np.array(_to_numpy(state[key], key), dtype=dtypes.get(key, np.float64))
            if arr.shape != (acc.bins,):
                raise ValueError(f"state[{key!r}] must have shape ({acc.bins},), got {arr.shape}")
            setattr(acc, f"_{key}", arr)
        e = state["exponent"]
        if e is not None and int(e) < _E_MIN:
            raise ValueError(f"state['exponent'] must be >= {_E_MIN}, got {e!r}")
        acc._exponent = None if e is None else int(e)
        acc._origin = int(state["origin"])
        acc._range = (float(state["range_lo"]), float(state["range_hi"]))
        acc._min, acc._max = float(state["min"]), float(state["max"])
        acc._n_images, acc._n_normal = int(state["n_images"]), int(state["n_normal"])
        acc._n_anomalous, acc._n_regions = int(state["n_anomalous"]), int(state["n_regions"])
        return acc

    def merge(self, other: "PixelAccumulator") -> "PixelAccumulator":
        """Add another accumulator's pixels (e.g. another process's share of the class) to this one.

        Both are put on the grid of their joint range first, so the result equals one accumulator
        that saw all the images (counts exactly; PRO weights up to float64 summation order).

        Args:
            other: an accumulator with the same ``connectivity`` and ``bins``; left unchanged.
        Returns:
            ``self``.
        Raises:
            ValueError: different ``connectivity`` or ``bins``.
        """
        if (other.connectivity, other.bins) != (self.connectivity, self.bins):
            raise ValueError(f"merge needs the same connectivity and bins, got {(self.connectivity, self.bins)} "
                             f"and {(other.connectivity, other.bins)}")
        if other._exponent is not None:
            other = PixelAccumulator.from_state_dict(other.state_dict())  # a copy: other stays as it is
            lo, hi = min(self._range[0], other._range[0]), max(self._range[1], other._range[1])
            self.expand_to(lo, hi)
            other.expand_to(lo, hi)
            self._normal += other._normal
            self._anomalous += other._anomalous
            self._pro_weight += other._pro_weight
            np.minimum(self._bin_min, other._bin_min, out=self._bin_min)
            np.maximum(self._bin_max, other._bin_max, out=self._bin_max)
            self._min, self._max = min(self._min, other._min), max(self._max, other._max)
        self._n_images += other._n_images
        self._n_normal += other._n_normal
        self._n_anomalous += other._n_anomalous
        self._n_regions += other._n_regions
        return self

    def all_reduce(self, reduce: Callable[[np.ndarray, str], Any]) -> "PixelAccumulator":
        """Combine, in place, with the accumulators of the same class in other processes (all call this).

        Afterwards every process holds what one accumulator that saw all their images would hold:
        first the grid is widened to the range all processes saw (the grid is a function of the
        range alone, see :meth:`expand_to`), then the counts and PRO weights are summed and the bins'
        smallest / largest values reduced by min / max. An accumulator that saw no image takes part
        with zeros.

        Args:
            reduce: ``reduce(array, op)`` combines a numpy array element-wise over the processes in
                place, ``op`` in ``sum`` / ``min`` / ``max``
                (:func:`tipsomaly_lite.distributed.all_reduce`).
        Returns:
            ``self``.
        """
        lo, hi = np.array([self._range[0], self._min]), np.array([self._range[1], self._max])
        reduce(lo, "min")
        reduce(hi, "max")
        if math.isfinite(lo[0]):  # some process saw pixels
            self.expand_to(lo[0], hi[0])
        for name, op in (("_normal", "sum"), ("_anomalous", "sum"), ("_pro_weight", "sum"), ("_bin_min", "min"),
                         ("_bin_max", "max")):
            reduce(getattr(self, name), op)
        counts = np.array([self._n_images, self._n_normal, self._n_anomalous, self._n_regions], dtype=np.int64)
        reduce(counts, "sum")
        self._n_images, self._n_normal, self._n_anomalous, self._n_regions = (int(c) for c in counts)
        self._min, self._max = float(lo[1]), float(hi[1])
        return self

    # -- curves
    def _undefined_reason(self) -> str | None:
        if self._n_anomalous == 0:
            return (f"no anomalous pixel in {self._n_images} images" if self._n_images
                    else "no images were added")
        if self._n_normal == 0:
            return f"every pixel of the {self._n_images} images is anomalous"
        return None

    def _present(self) -> np.ndarray:
        """Non-empty bins, ascending values."""
        return np.flatnonzero((self._normal > 0) | (self._anomalous > 0))

    def _descending(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cumulative (FP, TP, PRO numerator) at every non-empty bin, highest first (value >= its min)."""
        present = self._present()[::-1]
        return (np.cumsum(self._normal[present]).astype(np.float64),
                np.cumsum(self._anomalous[present]).astype(np.float64), np.cumsum(self._pro_weight[present]))

    def _shared_descending(self) -> np.ndarray:
        """Bool per bin of :meth:`_descending`: the bin holds several distinct values."""
        present = self._present()[::-1]
        return self._bin_min[present] < self._bin_max[present]

    def _warn_inexact(self, metric: str, bound: float, what: str = "") -> None:
        tol = PIXEL_TOLERANCE[metric]
        if bound > tol:
            warn_caller(f"{_who(self.name)}{what or _LABELS[metric]} may be off by up to {bound:.2g} (more than "
                        f"{tol:g}): {self._n_shared_bins()} of its {self.bins} histogram bins hold several "
                        f"distinct values (bin width {self.bin_width:.3g}); pass more bins=", MetricWarning)

    def pixel_auroc(self) -> float:
        """Pixel AUROC: trapezoid over (FPR, TPR) from (0,0) to (1,1), one point per distinct value.

        Equals ``sklearn.metrics.roc_auc_score`` on the pixels (ties count half) when :attr:`is_exact`.

        Returns:
            AUROC in [0, 1], or ``nan`` with a :class:`MetricWarning` (no anomalous or no normal pixel).
        """
        reason = self._undefined_reason()
        if reason:
            return _warn_undefined(self.name, "pixel AUROC", reason)
        return self._checked("pixel_auroc", self._auroc())

    def _checked(self, metric: str, value_bound: tuple[float, float], what: str = "") -> float:
        self._warn_inexact(metric, value_bound[1], what)
        return value_bound[0]

    def _auroc(self) -> tuple[float, float]:
        fp, tp, _ = self._descending()
        fpr = np.concatenate([[0.0], fp / self._n_normal])
        tpr = np.concatenate([[0.0], tp / self._n_anomalous])
        shared = self._shared_descending()
        present = self._present()[::-1][shared]
        # Pairs in one bin count half; in truth between none and all of them are ranked right.
        bound = 0.5 * float(np.sum(self._normal[present].astype(np.float64) * self._anomalous[present]))
        return float(_trapezoid(tpr, fpr)), bound / self._n_normal / self._n_anomalous

    def pixel_ap(self) -> float:
        """Pixel average precision ``sum_n (R_n - R_{n-1}) P_n`` over the distinct values, highest first.

        Equals ``sklearn.metrics.average_precision_score`` on the pixels when :attr:`is_exact`.

        Returns:
            AP in [0, 1], or ``nan`` with a :class:`MetricWarning` (no anomalous or no normal pixel).
        """
        reason = self._undefined_reason()
        if reason:
            return _warn_undefined(self.name, "pixel AP", reason)
        return self._checked("pixel_ap", self._ap())

    def _ap(self) -> tuple[float, float]:
        fp, tp, _ = self._descending()
        present = self._present()[::-1]
        a, n = self._anomalous[present].astype(np.float64), self._normal[present].astype(np.float64)
        ap = float(np.sum(a * tp / (tp + fp)) / self._n_anomalous)  # tp + fp >= 1: every bin is non-empty
        shared = self._shared_descending() & (a > 0)
        # Inside a shared bin precision lies between its worst (normals first) and best (anomalous first).
        tp0, fp0 = tp[shared] - a[shared], fp[shared] - n[shared]
        best = tp[shared] / (tp[shared] + fp0)
        worst = (tp0 + 1) / (tp0 + 1 + fp[shared])
        bound = float(np.sum(a[shared] * (best - worst)) / self._n_anomalous)
        return ap, bound

    def pixel_f1_max(self) -> float:
        """Pixel F1-max: the best ``2PR/(P+R) = 2TP/(2TP+FP+FN)`` over every distinct threshold.

        Equals the maximum over ``sklearn.metrics.precision_recall_curve`` when :attr:`is_exact`.

        Returns:
            F1-max in [0, 1], or ``nan`` with a :class:`MetricWarning` (no anomalous or no normal pixel).
        """
        reason = self._undefined_reason()
        if reason:
            return _warn_undefined(self.name, "pixel F1-max", reason)
        return self._checked("pixel_f1_max", self._f1_max())

    def _f1_max(self) -> tuple[float, float]:
        fp, tp, _ = self._descending()
        # TP + FN = all anomalous pixels, so the denominator is never 0.
        best = float(np.max(2 * tp / (tp + fp + self._n_anomalous)))
        shared = self._shared_descending()
        if not shared.any():
            return best, 0.0
        # A threshold inside a shared bin has at most all its anomalous and at least none of its normal pixels.
        present = self._present()[::-1][shared]
        fp0 = fp[shared] - self._normal[present]
        upper = float(np.max(2 * tp[shared] / (tp[shared] + fp0 + self._n_anomalous)))
        return best, max(0.0, upper - best)

    def aupro(self, mode: str = "standard", max_fpr: float = 0.3, steps: int = 200) -> float:
        """Area under the per-region-overlap (PRO) curve up to ``max_fpr``, divided by ``max_fpr``.

        ``PRO(t)`` = mean over all ground-truth regions ``R`` (of all images) of ``|pred ∩ R| / |R|``.

        Args:
            mode: ``"standard"`` (MVTec AD: every distinct value, trapezoid over FPR in ``[0, max_fpr]``
                interpolated at ``max_fpr``) or ``"compat"`` (the ZSAD papers' ``steps`` thresholds of
                :func:`compat_thresholds`, ``FPR < max_fpr`` kept and min-max rescaled,
                ``sklearn.metrics.auc``); see the module docstring. The two give different numbers:
                say which one a table uses.
            max_fpr: integration limit, in (0, 1].
            steps: number of thresholds of ``"compat"`` (ignored by ``"standard"``).
        Returns:
            AUPRO in [0, 1], or ``nan`` with a :class:`MetricWarning` (no anomalous / normal pixel;
            in ``"compat"`` also constant maps or fewer than 2 points below ``max_fpr``).
        Raises:
            ValueError: unknown mode, ``max_fpr`` outside (0, 1], ``steps < 1``.
        Taught in notebooks/06_benchmark.ipynb.
        """
        self._check_aupro_args(mode, max_fpr, steps)
        reason = self._undefined_reason()
        if reason:
            return _warn_undefined(self.name, f"pixel AUPRO ({mode})", reason)
        return self._aupro(mode, max_fpr, steps)

    @staticmethod
    def _check_aupro_args(mode: str, max_fpr: float, steps: int) -> None:
        if mode not in AUPRO_MODES:
            raise ValueError(f"mode must be one of {AUPRO_MODES}, got {mode!r}")
        if not 0 < max_fpr <= 1:
            raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr!r}")
        if int(steps) != steps or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")

    def _aupro(self, mode: str, max_fpr: float, steps: int) -> float:
        if mode == "standard":
            value_bound = self._aupro_standard(max_fpr)
        else:
            value_bound = self._aupro_compat(max_fpr, int(steps))
        return self._checked("pixel_aupro", value_bound, f"pixel AUPRO ({mode})")

    def _aupro_standard(self, max_fpr: float) -> tuple[float, float]:
        fp, _, pro = self._descending()
        fpr = np.concatenate([[0.0], fp / self._n_normal])
        pro = np.concatenate([[0.0], pro / self._n_regions])
        # The last point is FPR = 1 >= max_fpr, so j exists, and fpr[j-1] < max_fpr <= fpr[j].
        j = int(np.searchsorted(fpr, max_fpr, side="left"))
        x0, x1, y0, y1 = fpr[j - 1], fpr[j], pro[j - 1], pro[j]
        y_at = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
        area = _trapezoid(pro[:j], fpr[:j]) + (max_fpr - x0) * (y0 + y_at) / 2
        # Inside a shared bin the true curve is a staircase in its (FPR, PRO) box: at most half the box off.
        shared = self._shared_descending()[:j]  # segment s joins points s and s + 1: bin s
        boxes = np.diff(fpr[:j + 1]) * np.diff(pro[:j + 1])
        return float(area / max_fpr), float(np.sum(boxes[shared]) / 2 / max_fpr)

    def _compat_value(self, fps: np.ndarray, pros: np.ndarray, n_ths: int, max_fpr: float) -> float | str:
        """The papers' area from FP counts and PRO numerators per threshold, or why it is undefined."""
        fprs, pros = fps / self._n_normal, pros / self._n_regions
        keep = fprs < max_fpr
        fprs, pros = fprs[keep], pros[keep]
        if fprs.size < 2:
            return f"only {fprs.size} of {n_ths} thresholds give FPR < {max_fpr}"
        span = fprs.max() - fprs.min()
        if span == 0:
            return (f"all {fprs.size} thresholds with FPR < {max_fpr} have the same FPR ({fprs[0]:.3g}), so it "
                    "cannot be rescaled")
        return float(auc((fprs - fprs.min()) / span, pros))

    def _aupro_compat(self, max_fpr: float, steps: int) -> tuple[float, float]:
        what = "pixel AUPRO (compat)"
        if self._max == self._min:
            return _warn_undefined(self.name, what, f"every pixel of the {self._n_images} images has the same "
                                                    f"value ({self._min!r}), so there are no thresholds"), 0.0
        ths = compat_thresholds(self._min, self._max, steps).astype(np.float64)
        present = self._present()  # ascending values
        # Pixels with value > th: a suffix of the ascending bins.
        above_fp = np.concatenate([np.cumsum(self._normal[present][::-1])[::-1], [0]]).astype(np.float64)
        above_pro = np.concatenate([np.cumsum(self._pro_weight[present][::-1])[::-1], [0.0]])
        sure = np.searchsorted(self._bin_min[present], ths, side="right")  # bins entirely above th
        maybe = np.searchsorted(self._bin_max[present], ths, side="right")  # bins with a value above th
        value = self._compat_value(above_fp[sure], above_pro[sure], ths.size, max_fpr)
        if isinstance(value, str):
            return _warn_undefined(self.name, what, value), 0.0
        if np.array_equal(sure, maybe):
            return value, 0.0
        # A threshold falls inside a shared bin: the other extreme shows how far that can move the area.
        other = self._compat_value(above_fp[maybe], above_pro[maybe], ths.size, max_fpr)
        return value, (math.inf if isinstance(other, str) else abs(other - value))

    def error_bounds(self, aupro_mode: str = "standard") -> dict[str, float]:
        """How far each pixel metric can be from the exact one (0.0 everywhere when :attr:`is_exact`).

        Proven bounds for AUROC, AP, F1-max and standard AUPRO; for compat AUPRO the spread between
        counting the bins a threshold falls inside as above or below it (an estimate).

        Args:
            aupro_mode: which AUPRO (``max_fpr`` 0.3, 200 steps).
        Returns:
            ``{"pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro"}`` (``nan`` when undefined).
        """
        self._check_aupro_args(aupro_mode, 0.3, 200)
        if self._undefined_reason():
            return {k: math.nan for k in PIXEL_METRICS}
        with warnings.catch_warnings():  # an undefined compat AUPRO was already reported by compute()
            warnings.simplefilter("ignore", MetricWarning)
            aupro = self._aupro_standard(0.3) if aupro_mode == "standard" else self._aupro_compat(0.3, 200)
        return {"pixel_auroc": self._auroc()[1], "pixel_ap": self._ap()[1], "pixel_f1_max": self._f1_max()[1],
                "pixel_aupro": aupro[1]}

    def compute(self, aupro_mode: str = "standard") -> dict[str, float]:
        """All pixel metrics; one warning (not four) when the class has no anomalous or no normal pixel.

        Args:
            aupro_mode: one of ``AUPRO_MODES`` (``max_fpr`` 0.3, 200 steps).
        Returns:
            ``{"pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro"}``, each in [0, 1] or ``nan``.
        """
        self._check_aupro_args(aupro_mode, 0.3, 200)
        reason = self._undefined_reason()
        if reason:
            nan = _warn_undefined(self.name, "pixel AUROC, AP, F1-max and AUPRO", reason)
            return {k: nan for k in PIXEL_METRICS}
        return {"pixel_auroc": self._checked("pixel_auroc", self._auroc()),
                "pixel_ap": self._checked("pixel_ap", self._ap()),
                "pixel_f1_max": self._checked("pixel_f1_max", self._f1_max()),
                "pixel_aupro": self._aupro(aupro_mode, 0.3, 200)}


def _accumulate(anomaly_maps: Any, masks: Any, connectivity: int, name: str) -> PixelAccumulator:
    acc = PixelAccumulator(connectivity=connectivity, name=name)
    acc.add(anomaly_maps, masks)
    return acc


def pixel_auroc(anomaly_maps: Any, masks: Any, name: str = "") -> float:
    """Pixel AUROC of ``(B,H,W)`` maps against ``(B,H,W)`` masks; see :meth:`PixelAccumulator.pixel_auroc`.

    Taught in notebooks/04_learnable_pixel_prompts.ipynb.
    """
    return _accumulate(anomaly_maps, masks, 8, name).pixel_auroc()


def pixel_ap(anomaly_maps: Any, masks: Any, name: str = "") -> float:
    """Pixel average precision of ``(B,H,W)`` maps against ``(B,H,W)`` masks; see :meth:`PixelAccumulator.pixel_ap`.

    The authors' code reports it (docs/method.md §2.5); it is not in the paper's table.
    """
    return _accumulate(anomaly_maps, masks, 8, name).pixel_ap()


def pixel_f1_max(anomaly_maps: Any, masks: Any, name: str = "") -> float:
    """Pixel F1-max of ``(B,H,W)`` maps against ``(B,H,W)`` masks; see :meth:`PixelAccumulator.pixel_f1_max`.

    Taught in notebooks/04_learnable_pixel_prompts.ipynb.
    """
    return _accumulate(anomaly_maps, masks, 8, name).pixel_f1_max()


def aupro(anomaly_maps: Any, masks: Any, mode: str = "standard", max_fpr: float = 0.3, steps: int = 200,
          connectivity: int = 8, name: str = "") -> float:
    """AUPRO of ``(B,H,W)`` maps against ``(B,H,W)`` masks; see :meth:`PixelAccumulator.aupro`.

    ``mode`` is one of ``AUPRO_MODES``: ``"standard"`` (exact integral over FPR in [0, 0.3], / 0.3) or
    ``"compat"`` (the ZSAD papers' 200-threshold recipe, the one in the paper's table).

    Taught in notebooks/06_benchmark.ipynb.
    """
    PixelAccumulator._check_aupro_args(mode, max_fpr, steps)
    return _accumulate(anomaly_maps, masks, connectivity, name).aupro(mode, max_fpr, steps)


def pixel_metrics(anomaly_maps: Any, masks: Any, aupro_mode: str = "standard", connectivity: int = 8,
                  name: str = "") -> dict[str, float]:
    """All pixel metrics of ``(B,H,W)`` maps against ``(B,H,W)`` masks; see :meth:`PixelAccumulator.compute`.

    Taught in notebooks/04_learnable_pixel_prompts.ipynb.
    """
    PixelAccumulator._check_aupro_args(aupro_mode, 0.3, 200)
    return _accumulate(anomaly_maps, masks, connectivity, name).compute(aupro_mode)
