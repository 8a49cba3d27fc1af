"""The metrics against slow, obviously-correct references written here (and against scikit-learn).

Every reference loops over thresholds / pairs / regions explicitly, shares no code with
``tipsomaly_lite.eval.metrics`` and is fed the maps' own values (float64 of what was passed in): the
accumulator must be exact on them, not on a rounded copy.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from tipsomaly_lite.eval import metrics as M
from tipsomaly_lite.eval.metrics import AUPRO_MODES, MetricWarning, PixelAccumulator
from tipsomaly_lite.eval.pixel_histogram import _E_MIN, _exponent_for

TOL = 1e-9


# ------------------------------------------------------------------------------------------ references

def ref_auroc(labels, scores) -> float:
    """Fraction of (anomalous, normal) pairs ranked right; ties count half."""
    labels, scores = np.asarray(labels).astype(bool).ravel(), np.asarray(scores, np.float64).ravel()
    pos, neg = scores[labels], scores[~labels]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def _counts(labels, scores, t):
    pred = scores >= t
    return int((pred & labels).sum()), int((pred & ~labels).sum()), int((~pred & labels).sum())


def ref_f1_max(labels, scores) -> float:
    labels, scores = np.asarray(labels).astype(bool).ravel(), np.asarray(scores, np.float64).ravel()
    best = 0.0
    for t in np.unique(scores):
        tp, fp, fn = _counts(labels, scores, t)
        if tp == 0:
            continue
        p, r = tp / (tp + fp), tp / (tp + fn)
        best = max(best, 2 * p * r / (p + r))
    return best


def ref_ap(labels, scores) -> float:
    """sum_n (R_n - R_{n-1}) P_n over the distinct thresholds, highest first."""
    labels, scores = np.asarray(labels).astype(bool).ravel(), np.asarray(scores, np.float64).ravel()
    ap, prev_r = 0.0, 0.0
    for t in np.unique(scores)[::-1]:
        tp, fp, _ = _counts(labels, scores, t)
        r = tp / labels.sum()
        ap += (r - prev_r) * tp / (tp + fp)
        prev_r = r
    return ap


def ref_regions(masks, connectivity=8):
    """[(image index, bool region mask)] for every connected region of every mask."""
    structure = np.ones((3, 3)) if connectivity == 8 else None
    out = []
    for i, m in enumerate(np.asarray(masks).astype(bool)):
        lab, n = ndimage.label(m, structure=structure)
        out += [(i, lab == r) for r in range(1, n + 1)]
    return out


def half(maps) -> np.ndarray:
    """The maps' values as float64 (bfloat16 widened): exactly what the metrics must be exact on."""
    if isinstance(maps, torch.Tensor):
        maps = maps.float().numpy() if maps.dtype == torch.bfloat16 else maps.numpy()
    return np.asarray(maps).astype(np.float64)


def ref_aupro_standard(maps, masks, max_fpr=0.3, connectivity=8) -> float:
    vals, masks = half(maps), np.asarray(masks).astype(bool)
    regions = ref_regions(masks, connectivity)
    xs, ys = [0.0], [0.0]
    for t in np.unique(vals)[::-1]:
        pred = vals >= t
        xs.append((pred & ~masks).sum() / (~masks).sum())
        ys.append(np.mean([pred[i][r].sum() / r.sum() for i, r in regions]))
    area = 0.0
    for k in range(1, len(xs)):
        x0, x1, y0, y1 = xs[k - 1], xs[k], ys[k - 1], ys[k]
        if x1 <= max_fpr:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            if x0 < max_fpr:
                y_at = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
                area += (max_fpr - x0) * (y0 + y_at) / 2
            break
    return area / max_fpr


def ref_aupro_compat(maps, masks, max_fpr=0.3, steps=200, connectivity=8) -> float:
    """The authors' ``cal_pro_score`` loop (docs/method.md §2.5), on float32 tensors.

    Thresholds as they build them: ``.item()`` of the float32 min and max (Python floats), a float64
    step, ``torch.arange`` (float32, torch's default dtype), and ``amaps > th`` in float32.
    """
    amaps = torch.from_numpy(half(maps).astype(np.float32))
    masks = np.asarray(masks).astype(bool)
    regions = ref_regions(masks, connectivity)
    mn, mx = amaps.min().item(), amaps.max().item()
    delta = (mx - mn) / steps
    fprs, pros = [], []
    for th in torch.arange(mn, mx, delta):
        binary = (amaps > th).numpy()
        fprs.append((binary & ~masks).sum() / (~masks).sum())
        pros.append(np.mean([binary[i][r].sum() / r.sum() for i, r in regions]))
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs < max_fpr
    fprs, pros = fprs[keep], pros[keep]
    fprs = (fprs - fprs.min()) / (fprs.max() - fprs.min())
    area = 0.0
    for k in range(1, len(fprs)):
        area += (fprs[k] - fprs[k - 1]) * (pros[k] + pros[k - 1]) / 2
    return abs(area)


def check_pixels(maps, masks, connectivity=8, compat=True):
    """Every pixel metric of the module against the references."""
    h, m = half(maps), np.asarray(masks).astype(bool)
    acc = PixelAccumulator(connectivity=connectivity)
    acc.add(maps, masks)
    assert acc.is_exact and acc.error_bounds() == dict.fromkeys(M.PIXEL_METRICS, 0.0)
    assert acc.pixel_auroc() == pytest.approx(ref_auroc(m, h), abs=TOL)
    assert acc.pixel_ap() == pytest.approx(ref_ap(m, h), abs=TOL)
    assert acc.pixel_f1_max() == pytest.approx(ref_f1_max(m, h), abs=TOL)
    for max_fpr in (0.3, 0.05, 1.0):
        assert acc.aupro("standard", max_fpr=max_fpr) == pytest.approx(
            ref_aupro_standard(h, m, max_fpr, connectivity), abs=TOL)
    if compat:
        assert acc.aupro("compat") == pytest.approx(ref_aupro_compat(h, m, connectivity=connectivity), abs=TOL)
        assert acc.aupro("compat", max_fpr=0.5, steps=37) == pytest.approx(
            ref_aupro_compat(h, m, 0.5, 37, connectivity), abs=TOL)
    assert acc.n_regions == len(ref_regions(m, connectivity))
    assert acc.n_anomalous_pixels == m.sum() and acc.n_normal_pixels == (~m).sum()
    return acc


# ------------------------------------------------------------------------------------------ fixtures

def random_case(seed, n=4, size=24, levels=4096, offset=0.0):
    """Maps = noise + a bump in random rectangles/dots; about half the images normal.

    Values are multiples of ``1/levels``: with ``4096`` each histogram bin holds one value, so every
    pixel metric must be exact (continuous maps are tested against their error bounds below).
    """
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), bool)
    for i in range(n):
        if rng.random() < 0.5 and i:  # image 0 always has a defect
            continue
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, size - 2, 2)
            h, w = rng.integers(1, size // 3, 2)
            masks[i, y:y + h, x:x + w] = True
    maps = rng.normal(size=masks.shape) * 0.6 + masks * rng.uniform(0.3, 1.5) + offset
    if levels:
        maps = np.round(maps * levels) / levels
    return maps.astype(np.float32), masks


# ------------------------------------------------------------------------------------------ image metrics

@pytest.mark.parametrize("seed", range(4))
def test_image_metrics_match_references_and_sklearn(seed):
    rng = np.random.default_rng(seed)
    k = 40
    labels = rng.random(k) < 0.4
    labels[:2] = [True, False]
    scores = rng.normal(size=k) + labels
    if seed % 2:  # heavy ties
        scores = np.round(scores)
    out = M.image_metrics(labels, scores, name="bottle")
    assert set(out) == {"image_auroc", "image_ap", "image_f1_max"}
    assert out["image_auroc"] == pytest.approx(ref_auroc(labels, scores), abs=TOL)
    assert out["image_ap"] == pytest.approx(ref_ap(labels, scores), abs=TOL)
    assert out["image_f1_max"] == pytest.approx(ref_f1_max(labels, scores), abs=TOL)
    assert out["image_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=TOL)
    assert out["image_ap"] == pytest.approx(average_precision_score(labels, scores), abs=TOL)
    assert M.image_auroc(labels, scores) == out["image_auroc"]
    assert M.image_ap(labels, scores) == out["image_ap"]
    assert M.f1_max(labels, scores) == out["image_f1_max"]
    assert M.f1_max(torch.tensor(labels), torch.tensor(scores)) == out["image_f1_max"]


def test_image_f1_max_matches_precision_recall_curve():
    labels = np.array([0, 1, 1, 0, 1, 0, 0, 1])
    scores = np.array([0.1, 0.9, 0.4, 0.4, 0.35, 0.8, 0.2, 0.7])
    p, r, _ = precision_recall_curve(labels, scores)
    assert M.f1_max(labels, scores) == pytest.approx(np.max(2 * p * r / (p + r)), abs=TOL)


@pytest.mark.parametrize("labels, why", [([0, 0, 0, 0, 0], "all 5 images are normal"),
                                         ([1, 1, 1], "all 3 images are anomalous"),
                                         ([], "there are no images")])
def test_image_metrics_undefined_are_nan_with_a_warning(labels, why):
    scores = np.linspace(0, 1, len(labels))
    for fn, what in ((M.image_auroc, "image AUROC"), (M.image_ap, "image AP"), (M.f1_max, "F1-max")):
        with pytest.warns(MetricWarning, match=f"class 'bottle': {what} is undefined: {why}"):
            assert math.isnan(fn(labels, scores, name="bottle"))
    with pytest.warns(MetricWarning, match=why) as record:
        out = M.image_metrics(labels, scores, name="bottle")
    assert len(record) == 1 and all(math.isnan(v) for v in out.values())


def test_image_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="scores"):
        M.image_auroc([0, 1], [0.5, float("nan")])
    with pytest.raises(ValueError, match="labels"):
        M.image_auroc([0, 2], [0.5, 0.1])
    with pytest.raises(ValueError, match="labels"):
        M.image_ap([[0, 1]], [[0.5, 0.1]])
    with pytest.raises(ValueError, match="same length"):
        M.f1_max([0, 1, 1], [0.5, 0.1])


# ------------------------------------------------------------------------------------------ pixel metrics

@pytest.mark.parametrize("seed", range(4))
def test_pixel_metrics_match_references(seed):
    maps, masks = random_case(seed, offset=-0.5 if seed % 2 else 0.0)
    acc = check_pixels(maps, masks)
    h = half(maps).ravel()
    assert acc.pixel_auroc() == pytest.approx(roc_auc_score(masks.ravel(), h), abs=TOL)
    assert acc.pixel_ap() == pytest.approx(average_precision_score(masks.ravel(), h), abs=TOL)
    p, r, _ = precision_recall_curve(masks.ravel(), h)
    with np.errstate(invalid="ignore"):
        assert acc.pixel_f1_max() == pytest.approx(np.nanmax(2 * p * r / (p + r)), abs=TOL)
    out = M.pixel_metrics(maps, masks, aupro_mode="compat")
    assert out == {"pixel_auroc": acc.pixel_auroc(), "pixel_ap": acc.pixel_ap(), "pixel_f1_max": acc.pixel_f1_max(),
                   "pixel_aupro": acc.aupro("compat")}
    assert M.aupro(maps, masks) == acc.aupro()
    assert M.pixel_auroc(maps, masks) == acc.pixel_auroc() and M.pixel_f1_max(maps, masks) == acc.pixel_f1_max()
    assert M.pixel_ap(maps, masks) == acc.pixel_ap()


def test_standard_and_compat_aupro_differ():
    maps, masks = random_case(7, n=6, size=32)
    assert abs(M.aupro(maps, masks, "standard") - M.aupro(maps, masks, "compat")) > 1e-3


@pytest.mark.parametrize("levels", [1, 2, 8])
def test_heavy_ties(levels):
    check_pixels(*random_case(11 + levels, levels=levels))


def test_constant_maps():
    _, masks = random_case(3)
    maps = np.full(masks.shape, 0.25, np.float32)
    acc = check_pixels(maps, masks, compat=False)
    assert acc.pixel_auroc() == pytest.approx(0.5)
    assert acc.aupro() == pytest.approx(0.15)  # PRO = FPR on [0, 0.3]: the diagonal
    with pytest.warns(MetricWarning, match="same value"):
        assert math.isnan(acc.aupro("compat"))


def test_tiny_regions_and_connectivity():
    masks = np.zeros((3, 8, 8), bool)
    masks[0, 0:2, 0:2] = True  # a 2x2 block ...
    masks[0, 2, 2] = True      # ... touching this pixel only diagonally
    masks[1, 5, 6] = True      # a lone pixel
    maps = np.zeros(masks.shape, np.float32) + np.linspace(0, 0.3, 64, dtype=np.float32).reshape(8, 8)
    maps[0, 0:2, 0:2] = 0.9
    maps[0, 2, 2] = 0.1
    maps[1, 5, 6] = 0.5
    acc8 = check_pixels(maps, masks, connectivity=8)
    acc4 = check_pixels(maps, masks, connectivity=4)
    assert (acc8.n_regions, acc4.n_regions) == (2, 3)
    assert abs(acc8.aupro() - acc4.aupro()) > 1e-3
    assert acc8.pixel_auroc() == acc4.pixel_auroc()


def test_many_normal_images():
    maps, masks = random_case(5, n=30, size=12)
    masks[2:] = False
    masks[0, 3:5, 3:6] = True
    check_pixels(maps, masks)


def test_all_normal_class_is_nan_with_a_warning():
    maps = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    acc = PixelAccumulator(name="bottle")
    acc.add(maps, np.zeros(maps.shape, bool))
    for fn in (acc.pixel_auroc, acc.pixel_f1_max, acc.aupro, lambda: acc.aupro("compat")):
        with pytest.warns(MetricWarning, match="class 'bottle': pixel .* is undefined: no anomalous pixel in 3"):
            assert math.isnan(fn())
    with pytest.warns(MetricWarning) as record:
        assert all(math.isnan(v) for v in acc.compute().values())
    assert len(record) == 1
    with pytest.warns(MetricWarning, match="every pixel .* is anomalous"):
        assert math.isnan(M.pixel_auroc(maps, np.ones(maps.shape), name="bottle"))
    with pytest.warns(MetricWarning, match="no images were added"):
        assert math.isnan(PixelAccumulator().pixel_f1_max())


def test_compat_undefined_cases_warn():
    masks = np.zeros((2, 6, 6), bool)
    masks[0, 1:3, 1:3] = True
    ramp = np.linspace(0, 1, 72, dtype=np.float32).reshape(masks.shape)
    # Every normal pixel at the minimum: FPR is 0 at every threshold, nothing to rescale.
    maps = np.where(masks, ramp + 0.1, 0.0).astype(np.float32)
    with pytest.warns(MetricWarning, match="same FPR"):
        assert math.isnan(M.aupro(maps, masks, "compat", name="bottle"))
    # Every normal pixel at the maximum: FPR is 1 below it, no point under max_fpr.
    maps = np.where(masks, ramp * 0.5, 1.0).astype(np.float32)
    with pytest.warns(MetricWarning, match="thresholds give FPR < 0.3"):
        assert math.isnan(M.aupro(maps, masks, "compat"))


def test_fpr_exactly_at_max_fpr():
    # 10 normal pixels on distinct values: some thresholds give FPR = 3/10 == 0.3 exactly, which
    # compat drops (FPR < max_fpr) and standard reaches without interpolating.
    masks = np.zeros((1, 4, 5), bool)
    masks[0, :2] = True
    maps = np.concatenate([np.arange(10) / 10 + 0.05, np.arange(10) / 10]).reshape(masks.shape).astype(np.float32)
    assert 0.3 in [np.sum(maps[~masks] > t) / 10 for t in maps.ravel()]
    check_pixels(maps, masks)


def test_negative_values_and_signed_zero():
    maps, masks = random_case(21, offset=-2.0)
    maps[0, :3] = -0.0
    maps[1, :3] = 0.0
    maps[0, 3, :5] = -1e-7  # tiny negatives next to the zeros
    check_pixels(maps, masks)
    # -0.0 and +0.0 are one value: a tie, AUROC 0.5.
    tie_maps = np.array([[[-0.0, 0.0], [-0.0, 0.0]]], np.float32)
    tie_masks = np.array([[[0, 1], [1, 0]]])
    assert M.pixel_auroc(tie_maps, tie_masks) == 0.5


def test_grid_exponent_is_the_smallest_that_covers_the_range():
    for lo, hi in ((0.0, 1.0), (0.49, 0.51), (1000.0, 1000.5), (-3.0, 2.5), (7.0, 7.0), (0.0, 0.0), (-1e300, 1e300)):
        e = _exponent_for(lo, hi, 64, _E_MIN)

        def ok(e):
            small = math.ldexp(max(abs(lo), abs(hi)), -e) < 2.0**53  # bin numbers are exact integers
            return small and math.floor(math.ldexp(hi, -e)) - math.floor(math.ldexp(lo, -e)) <= 63
        assert ok(e) and (e == _E_MIN or not ok(e - 1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_torch_inputs(dtype):
    maps, masks = random_case(2)
    t_maps = torch.from_numpy(maps).to(dtype)
    t_masks = torch.from_numpy(masks)[:, None]  # (B,1,H,W) bool, the dataset layout
    acc = check_pixels(t_maps, t_masks[:, 0])
    acc_t = PixelAccumulator()
    acc_t.add(t_maps, t_masks)
    assert acc_t.compute("compat") == acc.compute("compat")


def test_streaming_equals_one_batch():
    maps, masks = random_case(9, n=6)
    whole = PixelAccumulator()
    whole.add(maps, masks)
    streamed = PixelAccumulator()
    for m, g in zip(maps, masks):
        streamed.add(m, g)  # (H,W) each
    assert streamed.n_images == whole.n_images == 6
    for mode in AUPRO_MODES:
        assert streamed.compute(mode) == whole.compute(mode)


def test_memory_does_not_grow_with_images():
    maps, masks = random_case(4, n=20, size=32)

    def held(acc):
        return sum(v.nbytes for v in vars(acc).values() if isinstance(v, np.ndarray))

    acc = PixelAccumulator()
    acc.add(maps[:1], masks[:1])
    one = held(acc)
    for i in range(1, 20):
        acc.add(maps[i], masks[i])
    assert held(acc) == one == acc.nbytes
    assert acc.n_images == 20


def test_pixel_inputs_are_validated():
    maps, masks = random_case(0)
    acc = PixelAccumulator()
    with pytest.raises(ValueError, match="anomaly_maps .* and masks .* same shape"):
        acc.add(maps, masks[:, :-1])
    with pytest.raises(ValueError, match="anomaly_maps must have shape"):
        acc.add(maps[0, 0], masks[0, 0])
    bad = maps.copy()
    bad[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="anomaly_maps holds 1 NaN"):
        acc.add(bad, masks)
    bad[1, 2, 3] = np.inf
    with pytest.raises(ValueError, match="0 NaN and 1 infinite"):
        acc.add(bad, masks)
    with pytest.raises(ValueError, match="masks must hold only 0 and 1"):
        acc.add(maps, masks * 2)
    assert acc.n_images == 0  # a rejected batch changes nothing
    acc.add(maps, masks)
    with pytest.raises(ValueError, match=r"\('standard', 'compat'\)"):
        acc.aupro("mvtec")
    with pytest.raises(ValueError, match="AUPRO_MODES|standard"):
        M.pixel_metrics(maps, masks, aupro_mode="paper")
    with pytest.raises(ValueError, match="max_fpr"):
        acc.aupro(max_fpr=0.0)
    with pytest.raises(ValueError, match="connectivity"):
        PixelAccumulator(connectivity=6)
    assert "images=4" in repr(acc)


def test_no_warning_when_defined():
    maps, masks = random_case(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        M.pixel_metrics(maps, masks, aupro_mode="compat")
        M.image_metrics([0, 1, 1], [0.2, 0.3, 0.1])


# ------------------------------------------------------------------------------------------ the authors' thresholds

def issue_case():
    """The (1, 4, 8) map on which ``np.arange`` thresholds and the authors' ``torch.arange`` disagree."""
    maps = np.zeros((1, 4, 8), np.float32)
    maps[0, 0, :3] = [1, 0.125, 0.125]
    maps[0, 1, :2] = 0.125
    maps[0, 2, 0] = 0.126953125
    masks = np.zeros(maps.shape, bool)
    masks[0, 0, :4] = True
    return maps, masks


def test_compat_thresholds_are_torch_arange_in_float32():
    ths = M.compat_thresholds(0.0, 1.0, 200)
    assert ths.dtype == np.float32 and ths.size == 200
    assert ths[25] == 0.125  # np.arange on float32 bounds gives 0.12499999720603228
    assert np.arange(np.float32(0), np.float32(1), np.float32(1) / np.float32(200))[25] != 0.125
    for lo, hi, steps in ((0.0, 1.0, 200), (0.1, 0.7, 200), (-3.25, 17.0, 37), (1000.0, 1000.01, 200)):
        lo32, hi32 = float(np.float32(lo)), float(np.float32(hi))
        want = torch.arange(lo32, hi32, (hi32 - lo32) / steps).numpy()  # the authors' line, default dtype
        np.testing.assert_array_equal(M.compat_thresholds(lo32, hi32, steps), want)
    with pytest.raises(ValueError, match="max_value must be > min_value"):
        M.compat_thresholds(1.0, 1.0)


def test_compat_aupro_matches_the_authors_on_the_issue_case():
    maps, masks = issue_case()
    assert M.aupro(maps, masks, "compat") == pytest.approx(0.4166667, abs=1e-7)
    assert ref_aupro_compat(maps, masks) == pytest.approx(0.4166667, abs=1e-7)


@pytest.mark.parametrize("seed", range(6))
def test_compat_aupro_matches_the_authors_on_maps_from_zero(seed):
    # Maps whose minimum is exactly 0 and whose values sit on multiples of 1/256: many fall on a threshold.
    maps, masks = random_case(seed, n=3, size=16, levels=256)
    maps = np.clip(maps, 0, None) / maps.max()
    maps = np.round(maps * 256) / 256
    assert M.aupro(maps.astype(np.float32), masks, "compat") == pytest.approx(ref_aupro_compat(maps, masks), abs=TOL)


# ------------------------------------------------------------------------------------------ precision on any maps

def hard_case(kind, seed=0, n=4, size=96):
    """Float32 maps with (almost) every pixel distinct: ``narrow`` (packed near 0.5, as the authors'
    pipeline gives on random weights) or ``shifted`` (logits + 1000)."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), bool)
    for i in range(n):
        y, x = rng.integers(0, size - 30, 2)
        masks[i, y:y + 25, x:x + 20] = True
    logits = ndimage.gaussian_filter(rng.normal(size=masks.shape), (0, 1.5, 1.5)) * 4 + 0.8 * masks
    maps = 0.5 + 0.01 * logits if kind == "narrow" else logits + 1000
    return maps.astype(np.float32), masks


@pytest.mark.parametrize("kind", ["narrow", "shifted"])
def test_narrow_and_shifted_maps_agree_with_sklearn(kind):
    # The issue's tolerances: 1e-4 for AUROC and AUPRO, 1e-3 for F1-max (and AP); every difference is
    # also within the bound the accumulator proves, and no warning is raised.
    maps, masks = hard_case(kind)
    y, s = masks.ravel(), maps.astype(np.float64).ravel()
    p, r, _ = precision_recall_curve(y, s)
    with np.errstate(invalid="ignore"):
        exact = {"pixel_auroc": roc_auc_score(y, s), "pixel_ap": average_precision_score(y, s),
                 "pixel_f1_max": np.nanmax(2 * p * r / (p + r))}
    # float16 keys (the old accumulator) would have been off by far more than the tolerances.
    s16 = s.astype(np.float16).astype(np.float64)
    p16, r16, _ = precision_recall_curve(y, s16)
    with np.errstate(invalid="ignore"):
        assert abs(np.nanmax(2 * p16 * r16 / (p16 + r16)) - exact["pixel_f1_max"]) > 1e-3
    acc = PixelAccumulator()
    acc.add(maps, masks)
    assert np.unique(s).size > 20000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = acc.compute()
    exact["pixel_aupro"] = ref_aupro_standard(s.reshape(maps.shape), masks)
    bounds = acc.error_bounds()
    for key, value in exact.items():
        assert abs(out[key] - value) <= bounds[key] + 1e-12, key
        assert bounds[key] <= M.PIXEL_TOLERANCE[key], key
    if kind == "shifted":  # 1000 + logits: float32 spacing 6e-5 is coarser than the bins, one value each
        assert acc.is_exact and out == pytest.approx(exact, abs=1e-12)


@pytest.mark.parametrize("kind", ["narrow", "shifted"])
def test_shared_bins_stay_within_their_bounds_and_warn(kind):
    maps, masks = hard_case(kind, size=48)
    y, s = masks.ravel(), maps.astype(np.float64).ravel()
    acc = PixelAccumulator(bins=64)  # far too few: most bins hold many values
    acc.add(maps, masks)
    assert not acc.is_exact
    bounds = acc.error_bounds()
    p, r, _ = precision_recall_curve(y, s)
    with np.errstate(invalid="ignore"):
        exact = {"pixel_auroc": roc_auc_score(y, s), "pixel_ap": average_precision_score(y, s),
                 "pixel_f1_max": np.nanmax(2 * p * r / (p + r)),
                 "pixel_aupro": ref_aupro_standard(s.reshape(maps.shape), masks)}
    with pytest.warns(MetricWarning, match=r"class 'cls': pixel .* may be off by up to .* histogram bins"):
        acc.name = "cls"
        out = acc.compute()
    for key, value in exact.items():
        assert abs(out[key] - value) <= bounds[key] + 1e-12, key
    assert 0 < bounds["pixel_auroc"] < 0.05


# ------------------------------------------------------------------------------------------ merging

def test_merge_equals_one_accumulator_whatever_the_split():
    maps, masks = hard_case("narrow", n=6, size=32)
    maps[3:] *= 4.0  # the first share spans a wider range: the grids differ until merged
    whole = PixelAccumulator()
    whole.add(maps, masks)
    first, second = PixelAccumulator(), PixelAccumulator()
    first.add(maps[3:], masks[3:])
    second.add(maps[:3], masks[:3])
    assert first.bin_width != second.bin_width
    snapshot = second.state_dict()
    assert first.merge(second) is first
    for key in ("normal", "anomalous", "bin_min", "bin_max", "exponent", "origin", "n_images", "n_regions"):
        assert np.array_equal(first.state_dict()[key], whole.state_dict()[key]), key
    np.testing.assert_allclose(first.state_dict()["pro_weight"], whole.state_dict()["pro_weight"], rtol=1e-12)
    for mode in AUPRO_MODES:
        got, want = first.compute(mode), whole.compute(mode)
        assert got == pytest.approx(want, abs=1e-12)
    assert np.array_equal(second.state_dict()["normal"], snapshot["normal"])  # other is left as it was


def test_expand_to_puts_processes_on_one_grid_for_an_elementwise_reduce():
    maps, masks = hard_case("shifted", n=4, size=32)
    accs = [PixelAccumulator(), PixelAccumulator()]
    accs[0].add(maps[:2], masks[:2])
    accs[1].add(maps[2:] - 5.0, masks[2:])
    lo = min(a.state_dict()["range_lo"] for a in accs)  # what an all-reduce(MIN/MAX) would give
    hi = max(a.state_dict()["range_hi"] for a in accs)
    for a in accs:
        a.expand_to(lo, hi)
    states = [a.state_dict() for a in accs]
    assert states[0]["exponent"] == states[1]["exponent"] and states[0]["origin"] == states[1]["origin"]
    reduced = dict(states[0])
    for key in ("normal", "anomalous", "pro_weight", "n_images", "n_normal", "n_anomalous", "n_regions"):
        reduced[key] = states[0][key] + states[1][key]
    reduced["bin_min"] = np.minimum(states[0]["bin_min"], states[1]["bin_min"])
    reduced["bin_max"] = np.maximum(states[0]["bin_max"], states[1]["bin_max"])
    reduced["min"], reduced["max"] = min(s["min"] for s in states), max(s["max"] for s in states)
    whole = PixelAccumulator()
    whole.add(np.concatenate([maps[:2], maps[2:] - 5.0]), masks)
    assert PixelAccumulator.from_state_dict(reduced).compute("compat") == pytest.approx(whole.compute("compat"),
                                                                                         abs=1e-12)


def _thread_reduce(n: int):
    """``reduce(array, op)`` for ``n`` threads standing in for processes: a real rendezvous, no torch."""
    import threading

    barrier, slots = threading.Barrier(n), {}

    def reduce(array, op):
        me = threading.get_ident()
        slots[me] = array.copy()
        barrier.wait()
        combined = {"sum": np.sum, "min": np.min, "max": np.max}[op](np.stack(list(slots.values())), axis=0)
        barrier.wait()  # everyone has read every slot before anyone writes its next one
        array[...] = combined
    return reduce


def test_all_reduce_gives_every_process_the_whole_dataset_accumulator():
    import threading

    maps, masks = hard_case("narrow", n=6, size=32)
    maps[3:] *= 4.0  # the shares span different ranges: their grids differ until reduced
    whole = PixelAccumulator()
    whole.add(maps, masks)
    accs = [PixelAccumulator(), PixelAccumulator(), PixelAccumulator()]  # the third process saw no image
    accs[0].add(maps[3:], masks[3:])
    accs[1].add(maps[:3], masks[:3])
    reduce = _thread_reduce(3)
    threads = [threading.Thread(target=acc.all_reduce, args=(reduce,)) for acc in accs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    want = whole.state_dict()
    for acc in accs:
        got = acc.state_dict()
        for key in ("normal", "anomalous", "bin_min", "bin_max", "exponent", "origin", "range_lo", "range_hi",
                    "min", "max", "n_images", "n_normal", "n_anomalous", "n_regions"):
            assert np.array_equal(got[key], want[key]), key
        np.testing.assert_allclose(got["pro_weight"], want["pro_weight"], rtol=1e-12)
        for mode in AUPRO_MODES:
            assert acc.compute(mode) == pytest.approx(whole.compute(mode), abs=1e-12)


def test_state_dict_round_trip_and_hostile_states():
    maps, masks = random_case(3)
    acc = PixelAccumulator(name="bottle", connectivity=4)
    acc.add(maps, masks)
    back = PixelAccumulator.from_state_dict(acc.state_dict())
    assert back.compute("compat") == acc.compute("compat") and back.connectivity == 4 and back.name == "bottle"
    empty = PixelAccumulator.from_state_dict(PixelAccumulator(connectivity=4).state_dict())
    assert empty.merge(acc).compute() == acc.compute()
    with pytest.raises(ValueError, match="format"):
        PixelAccumulator.from_state_dict({"normal": []})
    bad = acc.state_dict()
    bad["normal"] = bad["normal"][:10]
    with pytest.raises(ValueError, match=r"state\['normal'\] must have shape"):
        PixelAccumulator.from_state_dict(bad)
    bad = acc.state_dict()
    del bad["n_regions"]
    with pytest.raises(ValueError, match="lacks"):
        PixelAccumulator.from_state_dict(bad)
    with pytest.raises(ValueError, match="same connectivity and bins"):
        PixelAccumulator().merge(acc)
    with pytest.raises(ValueError, match="bins"):
        PixelAccumulator(bins=1)
    with pytest.raises(ValueError, match="finite lo <= hi"):
        acc.expand_to(1.0, 0.0)


def test_the_grid_does_not_depend_on_the_order_of_the_images():
    maps, masks = hard_case("narrow", n=4, size=32)
    maps[1] *= 3.0
    one, other = PixelAccumulator(), PixelAccumulator()
    for i in (0, 1, 2, 3):
        one.add(maps[i], masks[i])
    for i in (1, 3, 0, 2):
        other.add(maps[i], masks[i])
    a, b = one.state_dict(), other.state_dict()
    for key in ("exponent", "origin", "normal", "anomalous", "bin_min", "bin_max"):
        assert np.array_equal(a[key], b[key]), key


def test_memory_is_bounded_for_a_large_dataset():
    # A 2,000-image, 518 px class: the state is what it is for one image (5 arrays of 2**18).
    assert PixelAccumulator().nbytes == 5 * 8 * M.DEFAULT_BINS <= 11 * 2**20


# ------------------------------------------------------------------------------------------ bool and int scores

def test_bool_and_int_scores_are_accepted():
    labels = np.array([0, 1, 1, 0, 1, 0])
    scores = np.array([False, True, False, False, True, True])
    assert M.image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    assert M.image_ap(labels.astype(bool), scores) == pytest.approx(average_precision_score(labels, scores))
    assert M.image_metrics(labels, scores.astype(int))["image_auroc"] == M.image_auroc(labels, scores)
    maps, masks = random_case(4)
    pred = maps > 0.5
    assert M.pixel_auroc(pred, masks) == pytest.approx(roc_auc_score(masks.ravel(), pred.ravel()), abs=TOL)
    assert M.pixel_ap(torch.from_numpy(pred), masks) == pytest.approx(
        average_precision_score(masks.ravel(), pred.ravel()), abs=TOL)
    assert M.pixel_f1_max(pred.astype(np.int64), masks) == M.pixel_f1_max(pred, masks)
    with pytest.raises(ValueError, match="float, int or bool"):
        M.image_auroc([0, 1], np.array(["a", "b"]))


def test_a_constant_first_image_then_a_wide_one_regrids_exactly():
    # The first image pins the grid to the finest exponent; later ones (negative, far away) coarsen it.
    maps, masks = random_case(6, n=3)
    maps[0] = 0.0
    maps[2] -= 1000.0
    streamed, whole = PixelAccumulator(), PixelAccumulator()
    for m, g in zip(maps, masks):
        streamed.add(m, g)
    whole.add(maps, masks)
    a, b = streamed.state_dict(), whole.state_dict()
    for key in ("exponent", "origin", "normal", "anomalous", "bin_min", "bin_max"):
        assert np.array_equal(a[key], b[key]), key
    # 1000 wide over 2**18 bins: bins of 1/256 hold several of these 1/4096 steps; within the bound.
    h = half(maps).ravel()
    bound = streamed.error_bounds()["pixel_auroc"]
    assert bound > 0
    assert abs(streamed._auroc()[0] - roc_auc_score(masks.ravel(), h)) <= bound + TOL


def test_error_bounds_are_silent_and_nan_when_undefined():
    maps = np.full((1, 6, 6), 0.5, np.float32)
    masks = np.zeros(maps.shape, bool)
    masks[0, :2, :2] = True
    acc = PixelAccumulator()
    acc.add(maps, masks)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert acc.error_bounds("compat")["pixel_aupro"] == 0.0  # constant maps: compat is nan, bound 0
    empty = PixelAccumulator()
    assert all(math.isnan(v) for v in empty.error_bounds().values())
