"""The mergeable, fixed-size histogram that pixel metrics are read from: :class:`PixelHistogram`.

Its one job is to hold every pixel of a class in memory that does not grow with the number of
images, in a form that several processes can combine. The curves read off it are in
:mod:`.curves`, and :class:`~tipsomaly_lite.eval.metrics.PixelAccumulator` puts the two together.

1. **Bins on the maps' own range.** There are ``bins`` intervals of width ``2**e`` laid on the
   range of the values seen so far (bin ``k`` holds ``(origin + k) * 2**e <= x < (origin + k + 1) * 2**e``).
   ``e`` is the smallest exponent whose bins cover that range, so narrow maps (probabilities
   packed near 0.5) and shifted ones (logits + 1000) get bins as fine as wide ones. When a later
   image widens the range, neighbouring bins are merged in pairs (``e`` grows by one): the final
   grid depends only on the overall minimum and maximum, not on the order of the images.
2. **Per bin**: the normal and anomalous pixel counts, the PRO weight (sum of ``1/|R|`` over its
   anomalous pixels, ``R`` the pixel's connected ground-truth region, ``scipy.ndimage.label``) and
   the smallest and largest value that fell into it. A bin whose smallest value equals its
   largest holds one distinct value; :attr:`PixelHistogram.is_exact` says when all of them do.
3. **Mergeable.** The state is five ``(bins,)`` arrays and a few scalars. :meth:`~PixelHistogram.expand_to`
   puts several histograms on one grid, after which counts and PRO weights add up and the bins'
   smallest / largest values reduce by min / max: :meth:`~PixelHistogram.merge` (in one process),
   :meth:`~PixelHistogram.all_reduce` (across processes), :meth:`~PixelHistogram.state_dict` /
   :meth:`~PixelHistogram.from_state_dict` (to move it).
"""

from __future__ import annotations

import math
from typing import Any, Callable, TypeVar

import numpy as np
from scipy import ndimage

__all__ = ["DEFAULT_BINS", "PixelHistogram"]

#: Histogram bins of a :class:`PixelHistogram` (5 arrays of 8 bytes per bin: 10 MiB).
DEFAULT_BINS = 1 << 18
_STRUCTURES = {8: np.ones((3, 3), dtype=bool), 4: None}  # None = scipy's default cross (4-connectivity)
# The name predates this module; it stays so that states saved by earlier versions still load.
_STATE_FORMAT = "tipsomaly_lite.pixel_accumulator/1"
_E_MIN = -1074  # float64 values are multiples of 2**-1074: finer bins would be pointless
_ARRAYS = ("normal", "anomalous", "pro_weight", "bin_min", "bin_max")
_SCALARS = ("exponent", "origin", "range_lo", "range_hi", "min", "max", "n_images", "n_normal", "n_anomalous",
            "n_regions")

_H = TypeVar("_H", bound="PixelHistogram")


def _exponent_for(lo: float, hi: float, bins: int, e_min: int) -> int:
    """The smallest ``e >= e_min`` whose bins ``[k 2**e, (k+1) 2**e)`` cover ``[lo, hi]`` with ``bins`` bins.

    Also ``|x| / 2**e < 2**53``, so that bin numbers are exact integers. The condition is monotone in
    ``e``, so the result depends only on ``lo`` and ``hi`` (not on how the range was reached).

    Args:
        lo: smallest value to cover (finite).
        hi: largest value to cover (finite, ``>= lo``).
        bins: the number of bins.
        e_min: the smallest exponent allowed (the current one: a grid never gets finer).
    Returns:
        The exponent ``e``.
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


class PixelHistogram:
    """Per-bin pixel counts, PRO weights and value ranges over a grid laid on the maps' own range.

    Memory is independent of the number of images: five ``(bins,)`` arrays of float64/int64 values
    (10 MiB at the default ``2**18`` bins) and a few scalars; see the module docstring.

    Args:
        connectivity: 8 (default, diagonal neighbours join a region, as skimage's ``label``) or 4,
            for the ground-truth regions whose ``1/|R|`` the PRO weights sum.
        bins: histogram bins (histograms merge only with the same number).
    Raises:
        ValueError: ``connectivity`` not 4 or 8, ``bins`` not an integer >= 2.
    """

    def __init__(self, connectivity: int = 8, bins: int = DEFAULT_BINS) -> None:
        if connectivity not in _STRUCTURES:
            raise ValueError(f"connectivity must be 8 or 4, got {connectivity!r}")
        if int(bins) != bins or bins < 2:
            raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
        self.connectivity = connectivity
        self.bins = int(bins)
        self._normal = np.zeros(self.bins, dtype=np.int64)  # (bins,) pixels with mask 0
        self._anomalous = np.zeros(self.bins, dtype=np.int64)  # (bins,) pixels with mask 1
        self._pro_weight = np.zeros(self.bins, dtype=np.float64)  # (bins,) sum of 1/|R| of its anomalous pixels
        self._bin_min = np.full(self.bins, np.inf)  # (bins,) smallest value seen; inf while empty
        self._bin_max = np.full(self.bins, -np.inf)  # (bins,) largest value seen; -inf while empty
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
    def shared_bins(self) -> np.ndarray:
        """``(bins,)`` bool: the bin holds several distinct values (always False for an empty bin)."""
        return self._bin_min < self._bin_max

    @property
    def n_shared_bins(self) -> int:
        """Non-empty bins that hold several distinct values."""
        present = (self._normal > 0) | (self._anomalous > 0)
        return int(np.count_nonzero(present & self.shared_bins))

    @property
    def is_exact(self) -> bool:
        """True when every non-empty bin holds one distinct value: then every pixel metric is exact."""
        return self.n_shared_bins == 0

    # -- the grid
    def expand_to(self, lo: float, hi: float) -> None:
        """Widen the grid to cover ``[lo, hi]`` (merging neighbouring bins in pairs as needed).

        The grid is a function of the covered range alone, so histograms that all call
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
        """Bin numbers (int64) of float64 ``values`` (any shape, all inside the grid's range)."""
        if -1022 <= -self._exponent <= 1023:  # x * 2**-e is exact and 5x faster than np.ldexp
            scaled = values * math.ldexp(1.0, -self._exponent)
        else:
            scaled = np.ldexp(values, -self._exponent)
        return np.floor(scaled, out=scaled).astype(np.int64) - np.int64(self._origin)

    # -- streaming
    def add(self, maps: np.ndarray, masks: np.ndarray) -> None:
        """Add a batch of anomaly maps and their ground-truth masks, already validated.

        :meth:`PixelAccumulator.add <tipsomaly_lite.eval.metrics.PixelAccumulator.add>` checks
        shapes and dtypes and accepts tensors; this only rejects what cannot be binned.

        Args:
            maps: ``(B,H,W)`` ndarray of real numbers; compared as float64, so float32 maps exactly.
            masks: ``(B,H,W)`` bool ndarray, True = anomalous pixel.
        Raises:
            ValueError: a map holds NaN or infinity (the histogram is left unchanged).
        """
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
        for anomaly_map, gt in zip(maps, masks):  # one image at a time: temporaries stay ~30 bytes/pixel
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
        self._n_normal += maps.size - int(np.count_nonzero(masks))

    # -- merging and moving the state
    def state_dict(self) -> dict[str, Any]:
        """The whole state: five ``(bins,)`` arrays (copies) and scalars; see :meth:`from_state_dict`.

        ``normal``/``anomalous`` (int64) and ``pro_weight`` add up across processes, ``bin_min`` /
        ``bin_max`` reduce by min / max, once :meth:`expand_to` has put every process on one grid.
        """
        return {"format": _STATE_FORMAT, "bins": self.bins, "connectivity": self.connectivity,
                "exponent": self._exponent, "origin": self._origin, "range_lo": self._range[0],
                "range_hi": self._range[1], "min": self._min, "max": self._max, "n_images": self._n_images,
                "n_normal": self._n_normal, "n_anomalous": self._n_anomalous, "n_regions": self._n_regions,
                "normal": self._normal.copy(), "anomalous": self._anomalous.copy(),
                "pro_weight": self._pro_weight.copy(), "bin_min": self._bin_min.copy(),
                "bin_max": self._bin_max.copy()}

    @classmethod
    def from_state_dict(cls: type[_H], state: dict[str, Any]) -> _H:
        """A histogram from :meth:`state_dict` (arrays as anything ``np.asarray`` takes).

        Raises:
            ValueError: not a state of this format, or arrays of the wrong size.
        """
        if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
            raise ValueError(f"state must be a PixelAccumulator.state_dict() of format {_STATE_FORMAT!r}")
        missing = [k for k in (*_ARRAYS, *_SCALARS, "bins", "connectivity") if k not in state]
        if missing:
            raise ValueError(f"state lacks {missing}")
        hist = cls(connectivity=int(state["connectivity"]), bins=int(state["bins"]))
        dtypes = {"normal": np.int64, "anomalous": np.int64}
        for key in _ARRAYS:
            try:
                arr = np.asarray(state[key])
            except (TypeError, ValueError) as err:
                raise ValueError(f"{key} must be an array or tensor ({err})") from err
            arr = np.array(arr, dtype=dtypes.get(key, np.float64))  # a copy: the state stays the caller's
            if arr.shape != (hist.bins,):
                raise ValueError(f"state[{key!r}] must have shape ({hist.bins},), got {arr.shape}")
            setattr(hist, f"_{key}", arr)
        e = state["exponent"]
        if e is not None and int(e) < _E_MIN:
            raise ValueError(f"state['exponent'] must be >= {_E_MIN}, got {e!r}")
        hist._exponent = None if e is None else int(e)
        hist._origin = int(state["origin"])
        hist._range = (float(state["range_lo"]), float(state["range_hi"]))
        hist._min, hist._max = float(state["min"]), float(state["max"])
        hist._n_images, hist._n_normal = int(state["n_images"]), int(state["n_normal"])
        hist._n_anomalous, hist._n_regions = int(state["n_anomalous"]), int(state["n_regions"])
        return hist

    def merge(self: _H, other: PixelHistogram) -> _H:
        """Add another histogram's pixels (e.g. another process's share of the class) to this one.

        Both are put on the grid of their joint range first, so the result equals one histogram
        that saw all the images (counts exactly; PRO weights up to float64 summation order).

        Args:
            other: a histogram with the same ``connectivity`` and ``bins``; left unchanged.
        Returns:
            ``self``.
        Raises:
            ValueError: different ``connectivity`` or ``bins``.
        """
        if (other.connectivity, other.bins) != (self.connectivity, self.bins):
            raise ValueError(f"merge needs the same connectivity and bins, got {(self.connectivity, self.bins)} "
                             f"and {(other.connectivity, other.bins)}")
        if other._exponent is not None:
            other = PixelHistogram.from_state_dict(other.state_dict())  # a copy: other stays as it is
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

    def all_reduce(self: _H, reduce: Callable[[np.ndarray, str], Any]) -> _H:
        """Combine, in place, with the histograms of the same class in other processes (all call this).

        Afterwards every process holds what one histogram that saw all their images would hold:
        first the grid is widened to the range all processes saw (the grid is a function of the
        range alone, see :meth:`expand_to`), then the counts and PRO weights are summed and the bins'
        smallest / largest values reduced by min / max. A histogram that saw no image takes part
        with zeros.

        Args:
            reduce: ``reduce(array, op)`` combines a numpy array element-wise over the processes in
                place, ``op`` in ``sum`` / ``min`` / ``max``
                (:func:`tipsomaly_lite.distributed.all_reduce`).
        Returns:
            ``self``.
        """
        # Every process must make the same reduce calls in the same order: keep this sequence fixed.
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
