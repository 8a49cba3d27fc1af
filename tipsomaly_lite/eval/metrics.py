"""Image- and pixel-level metrics of zero-shot anomaly detection, computed per class: the public API.

Image metrics (one score per image) are scikit-learn's: AUROC, average precision and F1-max (the
largest ``2PR/(P+R)`` over the precision-recall curve, as the ZSAD papers report it).

Pixel metrics (pixel AUROC, pixel AP, pixel F1-max, AUPRO) look at every pixel of every test image
of a class: at 518 px and a few hundred images that is ~10^8 pixels, too many to concatenate and
sort. :class:`PixelAccumulator` streams them instead and keeps only fixed-size histograms, so its
memory does not depend on the number of images (10 MiB per class). It is built from two parts:

1. **The histogram** (:class:`~tipsomaly_lite.eval.pixel_histogram.PixelHistogram`, which it
   extends): ``2**18`` bins of width ``2**e`` laid on the maps' own range, per bin the normal and
   anomalous pixel counts, the PRO weight (sum of ``1/|R|`` over its anomalous pixels, ``R`` the
   pixel's connected ground-truth region) and the smallest and largest value that fell into it.
   The grid depends only on the overall minimum and maximum, so histograms merge:
   :meth:`PixelAccumulator.merge` adds another accumulator (e.g. another process's),
   :meth:`~PixelAccumulator.all_reduce` combines across processes, :meth:`~PixelAccumulator.state_dict`
   / :meth:`~PixelAccumulator.from_state_dict` move it, :meth:`~PixelAccumulator.expand_to` puts
   several on one grid so that their arrays can be summed element-wise.
2. **The curves** (:mod:`tipsomaly_lite.eval.curves`, pure functions of the histogram's arrays).
   Bins are disjoint and ordered, so when each non-empty bin holds a single distinct value (its min
   equals its max), walking the bins from the top gives the counts at every distinct threshold:
   ROC, precision-recall and PRO curves with one point per distinct value, *exactly* as if all
   pixels had been sorted (scikit-learn's AUROC / AP / precision-recall, the MVTec AD AUPRO).
   Values are compared as float64 (float32 maps exactly).

**Otherwise, a proven bound.** A bin holding several values is treated as one tie. The error that
can cause is bounded from the histograms alone (:meth:`PixelAccumulator.error_bounds`: pairs in a
shared bin for AUROC, the best F1 a split bin could reach, ...), and a :class:`MetricWarning` names it
when it exceeds :data:`PIXEL_TOLERANCE` (1e-4 for AUROC/AUPRO, 1e-3 for AP/F1-max). On 518 px maps
the bounds are around 1e-6 (``benchmarks/bench_metrics.py``); maps with fewer distinct values than
bins (shifted ones, maps on a grid) are exact.

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
from typing import Any

import numpy as np
import torch
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from tipsomaly_lite.eval import curves
from tipsomaly_lite.eval.curves import Estimate, compat_thresholds
from tipsomaly_lite.eval.pixel_histogram import DEFAULT_BINS, PixelHistogram
from tipsomaly_lite.offline import warn_caller

__all__ = [
    "AUPRO_MODES", "DEFAULT_BINS", "PIXEL_TOLERANCE", "MetricWarning", "PixelAccumulator", "aupro",
    "compat_thresholds", "f1_max", "image_ap", "image_auroc", "image_metrics", "pixel_ap", "pixel_auroc",
    "pixel_f1_max", "pixel_metrics",
]

#: The two AUPRO definitions: the MVTec AD one and the ZSAD papers' 200-threshold recipe.
AUPRO_MODES = ("standard", "compat")
#: The largest proven error a pixel metric may carry without a :class:`MetricWarning`.
PIXEL_TOLERANCE = {"pixel_auroc": 1e-4, "pixel_ap": 1e-3, "pixel_f1_max": 1e-3, "pixel_aupro": 1e-4}
#: The pixel metrics :meth:`PixelAccumulator.compute` returns.
PIXEL_METRICS = ("pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro")


class MetricWarning(UserWarning):
    """A metric is undefined (``nan``) for this class, or may be off by more than :data:`PIXEL_TOLERANCE`."""


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


def _check_aupro_args(mode: str, max_fpr: float, steps: int) -> None:
    """Raise ``ValueError`` on an unknown AUPRO mode, ``max_fpr`` outside (0, 1] or ``steps < 1``."""
    if mode not in AUPRO_MODES:
        raise ValueError(f"mode must be one of {AUPRO_MODES}, got {mode!r}")
    if not 0 < max_fpr <= 1:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr!r}")
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")


class PixelAccumulator(PixelHistogram):
    """Streams anomaly maps and masks image by image; holds only fixed-size histograms.

    A :class:`~tipsomaly_lite.eval.pixel_histogram.PixelHistogram` (``expand_to``, ``merge``,
    ``all_reduce``, ``state_dict`` and the counters come from there) that also validates its inputs,
    carries the class name for warnings, and reads the metrics off its arrays with the functions of
    :mod:`tipsomaly_lite.eval.curves`. Memory is independent of the number of images: five arrays of
    ``bins`` float64/int64 values (10 MiB at the default ``2**18`` bins) and a few scalars; see the
    module docstring for why every pixel metric is exact whenever each bin holds one distinct value
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
        super().__init__(connectivity=connectivity, bins=bins)
        self.name = name

    def __repr__(self) -> str:
        return (f"PixelAccumulator(name={self.name!r}, images={self._n_images}, normal_pixels={self._n_normal}, "
                f"anomalous_pixels={self._n_anomalous}, regions={self._n_regions}, "
                f"connectivity={self.connectivity}, bins={self.bins}, bin_width={self.bin_width:.3g}, "
                f"exact={self.is_exact})")

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
        super().add(maps, _check_binary(gts, "masks"))

    def state_dict(self) -> dict[str, Any]:
        """The histogram's state (:meth:`PixelHistogram.state_dict`) and the class name."""
        return {**super().state_dict(), "name": self.name}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> PixelAccumulator:
        """An accumulator from :meth:`state_dict` (arrays may be numpy arrays or tensors, on any device).

        Raises:
            ValueError: not a state of this format, or arrays of the wrong size.
        """
        if isinstance(state, dict):  # tensors (CUDA, bfloat16 too) become numpy arrays for the histogram
            state = {k: _to_numpy(v, k) if isinstance(v, torch.Tensor) else v for k, v in state.items()}
        acc = super().from_state_dict(state)
        acc.name = str(state.get("name", ""))
        return acc

    # -- curves: the histogram's arrays through the pure functions of tipsomaly_lite.eval.curves
    def _undefined_reason(self) -> str | None:
        if self._n_anomalous == 0:
            return (f"no anomalous pixel in {self._n_images} images" if self._n_images
                    else "no images were added")
        if self._n_normal == 0:
            return f"every pixel of the {self._n_images} images is anomalous"
        return None

    def undefined_reason(self) -> str | None:
        """Why the pixel metrics of this class are undefined (no anomalous or no normal pixel), or None."""
        return self._undefined_reason()

    def _descending(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cumulative (FP, TP, PRO numerator) at every non-empty bin, highest first (value >= its min)."""
        return curves.cumulative_from_top(self._normal, self._anomalous, self._pro_weight)

    def _checked(self, metric: str, estimate: Estimate, what: str = "") -> float:
        """The value of ``estimate``, with a :class:`MetricWarning` when its bound exceeds the tolerance."""
        tol = PIXEL_TOLERANCE[metric]
        if estimate.bound > tol:
            warn_caller(f"{_who(self.name)}{what or _LABELS[metric]} may be off by up to {estimate.bound:.2g} "
                        f"(more than {tol:g}): {self.n_shared_bins} of its {self.bins} histogram bins hold "
                        f"several distinct values (bin width {self.bin_width:.3g}); pass more bins=",
                        MetricWarning)
        return estimate.value

    def _auroc(self) -> Estimate:
        return curves.auroc(self._normal, self._anomalous, self.shared_bins)

    def _ap(self) -> Estimate:
        return curves.average_precision(self._normal, self._anomalous, self.shared_bins)

    def _f1_max(self) -> Estimate:
        return curves.f1_max(self._normal, self._anomalous, self.shared_bins)

    def _aupro_standard(self, max_fpr: float) -> Estimate:
        return curves.aupro_standard(self._normal, self._anomalous, self._pro_weight, self.shared_bins,
                                     self._n_regions, max_fpr)

    def _aupro_compat(self, max_fpr: float, steps: int) -> Estimate:
        """Compat AUPRO; ``nan`` (bound 0) with a :class:`MetricWarning` when it is undefined."""
        what = "pixel AUPRO (compat)"
        if self._max == self._min:
            return Estimate(_warn_undefined(self.name, what, f"every pixel of the {self._n_images} images has the "
                                            f"same value ({self._min!r}), so there are no thresholds"), 0.0)
        result = curves.aupro_compat(self._normal, self._anomalous, self._pro_weight, self._bin_min,
                                     self._bin_max, self._n_regions, compat_thresholds(self._min, self._max, steps),
                                     max_fpr)
        if isinstance(result, str):
            return Estimate(_warn_undefined(self.name, what, result), 0.0)
        return result

    def _aupro(self, mode: str, max_fpr: float, steps: int) -> float:
        if mode == "standard":
            estimate = self._aupro_standard(max_fpr)
        else:
            estimate = self._aupro_compat(max_fpr, int(steps))
        return self._checked("pixel_aupro", estimate, f"pixel AUPRO ({mode})")

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
        _check_aupro_args(mode, max_fpr, steps)
        reason = self._undefined_reason()
        if reason:
            return _warn_undefined(self.name, f"pixel AUPRO ({mode})", reason)
        return self._aupro(mode, max_fpr, steps)

    def error_bounds(self, aupro_mode: str = "standard") -> dict[str, float]:
        """How far each pixel metric can be from the exact one (0.0 everywhere when :attr:`is_exact`).

        Proven bounds for AUROC, AP, F1-max and standard AUPRO; for compat AUPRO the spread between
        counting the bins a threshold falls inside as above or below it (an estimate).

        Args:
            aupro_mode: which AUPRO (``max_fpr`` 0.3, 200 steps).
        Returns:
            ``{"pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro"}`` (``nan`` when undefined).
        """
        _check_aupro_args(aupro_mode, 0.3, 200)
        if self._undefined_reason():
            return {k: math.nan for k in PIXEL_METRICS}
        with warnings.catch_warnings():  # an undefined compat AUPRO was already reported by compute()
            warnings.simplefilter("ignore", MetricWarning)
            aupro = self._aupro_standard(0.3) if aupro_mode == "standard" else self._aupro_compat(0.3, 200)
        return {"pixel_auroc": self._auroc().bound, "pixel_ap": self._ap().bound,
                "pixel_f1_max": self._f1_max().bound, "pixel_aupro": aupro.bound}

    def compute(self, aupro_mode: str = "standard") -> dict[str, float]:
        """All pixel metrics; one warning (not four) when the class has no anomalous or no normal pixel.

        Args:
            aupro_mode: one of ``AUPRO_MODES`` (``max_fpr`` 0.3, 200 steps).
        Returns:
            ``{"pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro"}``, each in [0, 1] or ``nan``.
        """
        _check_aupro_args(aupro_mode, 0.3, 200)
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
    _check_aupro_args(mode, max_fpr, steps)
    return _accumulate(anomaly_maps, masks, connectivity, name).aupro(mode, max_fpr, steps)


def pixel_metrics(anomaly_maps: Any, masks: Any, aupro_mode: str = "standard", connectivity: int = 8,
                  name: str = "") -> dict[str, float]:
    """All pixel metrics of ``(B,H,W)`` maps against ``(B,H,W)`` masks; see :meth:`PixelAccumulator.compute`.

    Taught in notebooks/04_learnable_pixel_prompts.ipynb.
    """
    _check_aupro_args(aupro_mode, 0.3, 200)
    return _accumulate(anomaly_maps, masks, connectivity, name).compute(aupro_mode)
