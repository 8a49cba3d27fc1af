"""Image- and pixel-level metrics of zero-shot anomaly detection, computed per class.

Image metrics (one score per image) are scikit-learn's: AUROC, average precision and F1-max (the
largest ``2PR/(P+R)`` over the precision-recall curve, as the ZSAD papers report it).

Pixel metrics (pixel AUROC, pixel F1-max, AUPRO) look at every pixel of every test image of a
class: at 518 px and a few hundred images that is ~10^8 pixels, too many to concatenate and sort.
:class:`PixelAccumulator` streams them instead and keeps only histograms, so its memory does not
depend on the number of images:

1. **Round to float16.** Each anomaly map is rounded to float16 when it is added. The evaluation
   keeps maps in fp16 anyway, so nothing is lost there; all pixel metrics are the *exact* metrics of
   the fp16-rounded maps. Against the unrounded fp32 maps the difference is tiny (in
   ``benchmarks/bench_metrics.py``: 1e-5 points of pixel AUROC, 4e-3 points of pixel F1-max).
2. **One bin per float16 value.** A float16 has 65,536 bit patterns. Flipping the bits of negative
   numbers (and the sign bit of positive ones) turns each pattern into an integer key that sorts
   like the value. ``-0.0`` counts as ``+0.0`` (its bin is folded into that of ``+0.0``); NaN, and
   values beyond the float16 range (``|x| > 65504``, which would round to infinity), raise ValueError.
3. **Three histograms**, accumulated image by image with ``np.bincount`` over the keys:
   ``normal[k]`` (normal pixels with key ``k``), ``anomalous[k]`` (anomalous pixels) and
   ``pro_weight[k]`` = sum over the anomalous pixels with key ``k`` of ``1/|R|``, where ``R`` is
   the pixel's connected ground-truth region (``scipy.ndimage.label`` of each image's mask).
4. **Every threshold at once.** Walking the non-empty bins from the highest value down, cumulative
   sums give, for every distinct value ``t``, the pixels predicted anomalous (``value >= t``):
   true positives, false positives and ``sum_R |pred ∩ R| / |R|``, i.e. the PRO numerator.
   ROC, PR and PRO curves follow with one point per distinct value, exactly as if the pixels had
   been sorted.

AUPRO comes in two flavours (``AUPRO_MODES``), because published tables use both (docs/method.md §2.5):

* ``"standard"`` (MVTec AD): the PRO curve at every distinct value, integrated by the trapezoid
  rule over FPR in ``[0, max_fpr]`` (interpolated at ``max_fpr``) and divided by ``max_fpr``.
* ``"compat"`` (the ZSAD papers' code): ``steps`` thresholds ``np.arange(min, max, (max-min)/steps)``
  in float32, prediction ``value > th``, points with ``FPR < max_fpr`` kept, their FPRs min-max
  rescaled to [0, 1], ``sklearn.metrics.auc``. Each threshold's counts are read from the histograms,
  exactly (every value is a bin), instead of re-binarising every map 200 times.

Undefined metrics (a class with one label value, no anomalous pixel, ...) are ``nan`` with a
:class:`MetricWarning` that says which class and why, never a silent 0.

Taught in notebooks/06_benchmark.ipynb.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import ndimage
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

from tipsomaly_lite.offline import warn_caller

__all__ = [
    "AUPRO_MODES", "MetricWarning", "PixelAccumulator", "aupro", "f1_max", "image_ap", "image_auroc",
    "image_metrics", "pixel_auroc", "pixel_f1_max", "pixel_metrics",
]

#: The two AUPRO definitions: the MVTec AD one and the ZSAD papers' 200-threshold recipe.
AUPRO_MODES = ("standard", "compat")
#: One histogram bin per float16 bit pattern.
N_BINS = 1 << 16
_STRUCTURES = {8: np.ones((3, 3), dtype=bool), 4: None}  # None = scipy's default cross (4-connectivity)


class MetricWarning(UserWarning):
    """A metric is undefined for this class (one label value, no anomalous pixel, ...) and is ``nan``."""


def _bits_to_keys(bits: np.ndarray) -> np.ndarray:
    """Order-preserving keys of float16 bit patterns (uint16 in, uint16 out).

    Negative floats sort backwards as integers, so all their bits are flipped; positive ones only get
    the sign bit set, which puts them above every negative one.
    """
    flip = (bits >> 15) * np.uint16(0x7FFF) | np.uint16(0x8000)
    return bits ^ flip


def _key_values() -> np.ndarray:
    """``values[key]``: the float16 value of every key, as float64 (NaN for the NaN patterns)."""
    bits = np.arange(N_BINS, dtype=np.uint32).astype(np.uint16)
    values = np.empty(N_BINS, dtype=np.float64)
    values[_bits_to_keys(bits)] = bits.view(np.float16).astype(np.float64)
    return values


_KEY_VALUES = _key_values()
# Keys of the special float16 patterns; NaNs sort beyond the infinities (below -inf, above +inf).
_KEY_NEG_INF, _KEY_NEG_ZERO, _KEY_POS_ZERO, _KEY_POS_INF = (
    int(k) for k in _bits_to_keys(np.array([0xFC00, 0x8000, 0x0000, 0x7C00], dtype=np.uint16)))


def _fp16_keys(anomaly_map: np.ndarray) -> np.ndarray:
    """Flat uint16 order-preserving keys of one ``(H,W)`` map rounded to float16."""
    with np.errstate(over="ignore"):  # overflow to inf is reported by _check_finite, with a reason
        half = np.ascontiguousarray(anomaly_map, dtype=np.float16).ravel()
    return _bits_to_keys(half.view(np.uint16))


def _check_finite(counts: np.ndarray) -> None:
    """Raise if a histogram of keys counts NaN or infinite float16 values."""
    n_nan = int(counts[:_KEY_NEG_INF].sum() + counts[_KEY_POS_INF + 1:].sum())
    n_inf = int(counts[_KEY_NEG_INF] + counts[_KEY_POS_INF])
    if n_nan or n_inf:
        raise ValueError(f"anomaly_maps holds {n_nan} NaN and {n_inf} values that are infinite in float16 "
                         "(|x| > 65504); metrics need finite maps (rescale them)")


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    """Trapezoid rule (``np.trapezoid`` is numpy >= 2 only)."""
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1])) / 2)


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
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"{arg} must hold real numbers, got dtype {a.dtype}")


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


class PixelAccumulator:
    """Streams anomaly maps and masks image by image; holds only histograms.

    Memory is independent of the number of images.

    Three float64 histograms of 65,536 bins (one per float16 value, 1.5 MiB in all) are the whole
    state; see the module docstring for how every pixel metric is read off them, exactly, for the
    fp16-rounded maps.

    Args:
        connectivity: 8 (default, diagonal neighbours join a region, as skimage's ``label``) or 4,
            for the ground-truth regions of AUPRO.
        name: class name, used in warnings.

    Example::

        acc = PixelAccumulator(name="bottle")
        for batch in loader:
            acc.add(anomaly_maps, batch["mask"])       # (B,H,W), (B,1,H,W)
        acc.compute()   # {"pixel_auroc": ..., "pixel_f1_max": ..., "pixel_aupro": ...}
    Taught in notebooks/04_learnable_pixel_prompts.ipynb.
    """

    def __init__(self, connectivity: int = 8, name: str = "") -> None:
        if connectivity not in _STRUCTURES:
            raise ValueError(f"connectivity must be 8 or 4, got {connectivity!r}")
        self.connectivity = connectivity
        self.name = name
        self._normal = np.zeros(N_BINS, dtype=np.float64)
        self._anomalous = np.zeros(N_BINS, dtype=np.float64)
        self._pro_weight = np.zeros(N_BINS, dtype=np.float64)
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
        return self._normal.nbytes + self._anomalous.nbytes + self._pro_weight.nbytes

    def __repr__(self) -> str:
        return (f"PixelAccumulator(name={self.name!r}, images={self._n_images}, normal_pixels={self._n_normal}, "
                f"anomalous_pixels={self._n_anomalous}, regions={self._n_regions}, "
                f"connectivity={self.connectivity})")

    # -- streaming
    def add(self, anomaly_maps: Any, masks: Any) -> None:
        """Add a batch of anomaly maps and their ground-truth masks.

        Args:
            anomaly_maps: ``(B,H,W)`` or ``(H,W)`` (``(B,1,H,W)`` too), torch Tensor or ndarray, any
                real dtype; rounded to float16 here.
            masks: the same shape, values in {0, 1} or bool.
        Raises:
            ValueError: shapes differ, masks hold other values than 0/1, or a map holds NaN or a value
                that is infinite in float16 (``|x| > 65504``).
        """
        maps, gts = _as_stack(anomaly_maps, "anomaly_maps"), _as_stack(masks, "masks")
        if maps.shape != gts.shape:
            raise ValueError(f"anomaly_maps {tuple(maps.shape)} and masks {tuple(gts.shape)} must have the "
                             "same shape")
        _check_real(maps, "anomaly_maps")
        gts = _check_binary(gts, "masks")
        structure = _STRUCTURES[self.connectivity]
        # Count into batch histograms first, so that a rejected batch leaves the accumulator unchanged.
        normal, anomalous, pro_weight = np.zeros((3, N_BINS), dtype=np.float64)
        n_regions = n_anomalous = 0
        for anomaly_map, gt in zip(maps, gts):  # one image at a time: temporaries stay ~20 bytes/pixel
            keys = _fp16_keys(anomaly_map)
            counts = np.bincount(keys, minlength=N_BINS)
            _check_finite(counts)
            gt_flat = gt.ravel()
            n_anom = int(np.count_nonzero(gt_flat))
            if n_anom == 0:
                normal += counts
                continue
            anom_keys = keys[gt_flat]
            anom_counts = np.bincount(anom_keys, minlength=N_BINS)
            anomalous += anom_counts
            normal += counts - anom_counts
            regions, n = ndimage.label(gt, structure=structure)
            inv_area = 1.0 / np.bincount(regions.ravel())[1:]  # 1/|R| for region labels 1..n
            pro_weight += np.bincount(anom_keys, weights=inv_area[regions.ravel()[gt_flat] - 1], minlength=N_BINS)
            n_regions += n
            n_anomalous += n_anom
        # -0.0 and +0.0 are one value: fold the -0.0 bin into +0.0 here rather than pixel by pixel.
        for hist in (normal, anomalous, pro_weight):
            hist[_KEY_POS_ZERO] += hist[_KEY_NEG_ZERO]
            hist[_KEY_NEG_ZERO] = 0.0
        self._normal += normal
        self._anomalous += anomalous
        self._pro_weight += pro_weight
        self._n_images += len(maps)
        self._n_regions += n_regions
        self._n_anomalous += n_anomalous
        self._n_normal += maps.size - n_anomalous

    # -- curves
    def _undefined_reason(self) -> str | None:
        if self._n_anomalous == 0:
            return (f"no anomalous pixel in {self._n_images} images" if self._n_images
                    else "no images were added")
        if self._n_normal == 0:
            return f"every pixel of the {self._n_images} images is anomalous"
        return None

    def _descending(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cumulative (FP, TP, PRO numerator) at every distinct value, highest value first (value >= t)."""
        present = np.flatnonzero((self._normal > 0) | (self._anomalous > 0))[::-1]
        return (np.cumsum(self._normal[present]), np.cumsum(self._anomalous[present]),
                np.cumsum(self._pro_weight[present]))

    def pixel_auroc(self) -> float:
        """Pixel AUROC: trapezoid over (FPR, TPR) from (0,0) to (1,1), one point per distinct value.

        Equals ``sklearn.metrics.roc_auc_score`` on the fp16-rounded pixels (ties count half).

        Returns:
            AUROC in [0, 1], or ``nan`` with a :class:`MetricWarning` (no anomalous or no normal pixel).
        """
        reason = self._undefined_reason()
        if reason:
            return _warn_undefined(self.name, "pixel AUROC", reason)
        return self._auroc()

    def _auroc(self) -> float:
        fp, tp, _ = self._descending()
        fpr = np.concatenate([[0.0], fp / self._n_normal])
        tpr = np.concatenate([[0.0], tp / self._n_anomalous])
        return float(_trapezoid(tpr, fpr))

    def pixel_f1_max(self) -> float:
        """Pixel F1-max: the best ``2PR/(P+R) = 2TP/(2TP+FP+FN)`` over every distinct threshold.

        Equals the maximum over ``sklearn.metrics.precision_recall_curve`` on the fp16-rounded pixels.

        Returns:
            F1-max in [0, 1], or ``nan`` with a :class:`MetricWarning` (no anomalous or no normal pixel).
        """
        reason = self._undefined_reason()
        if reason:
            return _warn_undefined(self.name, "pixel F1-max", reason)
        return self._f1_max()

    def _f1_max(self) -> float:
        fp, tp, _ = self._descending()
        # TP + FN = all anomalous pixels, so the denominator is never 0.
        return float(np.max(2 * tp / (tp + fp + self._n_anomalous)))

    def aupro(self, mode: str = "standard", max_fpr: float = 0.3, steps: int = 200) -> float:
        """Area under the per-region-overlap (PRO) curve up to ``max_fpr``, divided by ``max_fpr``.

        ``PRO(t)`` = mean over all ground-truth regions ``R`` (of all images) of ``|pred ∩ R| / |R|``.

        Args:
            mode: ``"standard"`` (MVTec AD: every distinct value, trapezoid over FPR in ``[0, max_fpr]``
                interpolated at ``max_fpr``) or ``"compat"`` (the ZSAD papers' ``steps`` thresholds,
                ``FPR < max_fpr`` kept and min-max rescaled, ``sklearn.metrics.auc``); see the module
                docstring. The two give different numbers: say which one a table uses.
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
            return self._aupro_standard(max_fpr)
        return self._aupro_compat(max_fpr, int(steps))

    def _aupro_standard(self, max_fpr: float) -> float:
        fp, _, pro = self._descending()
        fpr = np.concatenate([[0.0], fp / self._n_normal])
        pro = np.concatenate([[0.0], pro / self._n_regions])
        # The last point is FPR = 1 >= max_fpr, so j exists, and fpr[j-1] < max_fpr <= fpr[j].
        j = int(np.searchsorted(fpr, max_fpr, side="left"))
        x0, x1, y0, y1 = fpr[j - 1], fpr[j], pro[j - 1], pro[j]
        y_at = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
        area = _trapezoid(pro[:j], fpr[:j]) + (max_fpr - x0) * (y0 + y_at) / 2
        return float(area / max_fpr)

    def _aupro_compat(self, max_fpr: float, steps: int) -> float:
        what = "pixel AUPRO (compat)"
        present = np.flatnonzero((self._normal > 0) | (self._anomalous > 0))  # ascending values
        values = _KEY_VALUES[present]
        # The papers' thresholds, built in float32 from the float32 min and max of the maps.
        mn, mx = np.float32(values[0]), np.float32(values[-1])
        if mx == mn:
            return _warn_undefined(self.name, what, f"every pixel of the {self._n_images} images has the same "
                                                    f"value ({float(mn)!r}), so there are no thresholds")
        delta = (mx - mn) / np.float32(steps)
        ths = np.arange(mn, mx, delta)
        # Pixels with value > th: the bins above th, i.e. a suffix of the ascending bins.
        above_fp = np.concatenate([np.cumsum(self._normal[present][::-1])[::-1], [0.0]])
        above_pro = np.concatenate([np.cumsum(self._pro_weight[present][::-1])[::-1], [0.0]])
        first = np.searchsorted(values, ths.astype(np.float64), side="right")
        fprs = above_fp[first] / self._n_normal
        pros = above_pro[first] / self._n_regions
        keep = fprs < max_fpr
        fprs, pros = fprs[keep], pros[keep]
        if fprs.size < 2:
            return _warn_undefined(self.name, what, f"only {fprs.size} of {ths.size} thresholds give "
                                                    f"FPR < {max_fpr}")
        span = fprs.max() - fprs.min()
        if span == 0:
            return _warn_undefined(self.name, what, f"all {fprs.size} thresholds with FPR < {max_fpr} have the "
                                                    f"same FPR ({fprs[0]:.3g}), so it cannot be rescaled")
        return float(auc((fprs - fprs.min()) / span, pros))

    def compute(self, aupro_mode: str = "standard") -> dict[str, float]:
        """All pixel metrics; one warning (not three) when the class has no anomalous or no normal pixel.

        Args:
            aupro_mode: one of ``AUPRO_MODES`` (``max_fpr`` 0.3, 200 steps).
        Returns:
            ``{"pixel_auroc", "pixel_f1_max", "pixel_aupro"}``, each in [0, 1] or ``nan``.
        """
        self._check_aupro_args(aupro_mode, 0.3, 200)
        reason = self._undefined_reason()
        if reason:
            nan = _warn_undefined(self.name, "pixel AUROC, F1-max and AUPRO", reason)
            return {"pixel_auroc": nan, "pixel_f1_max": nan, "pixel_aupro": nan}
        return {"pixel_auroc": self._auroc(), "pixel_f1_max": self._f1_max(),
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
