"""The metrics against slow, obviously-correct references written here (and against scikit-learn).

Every reference loops over thresholds / pairs / regions explicitly, shares no code with
``tipsomaly_lite.eval.metrics`` and is fed the same fp16-rounded values the accumulator sees.
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
    """The fp16-rounded maps as float64, exactly what the accumulator bins."""
    if isinstance(maps, torch.Tensor):
        maps = maps.float().numpy() if maps.dtype == torch.bfloat16 else maps.numpy()
    return np.asarray(maps).astype(np.float16).astype(np.float64)


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
    """The ZSAD papers' loop (docs/method.md §2.5), on float32 maps."""
    amaps, masks = half(maps).astype(np.float32), np.asarray(masks).astype(bool)
    regions = ref_regions(masks, connectivity)
    mn, mx = amaps.min(), amaps.max()
    delta = (mx - mn) / steps
    fprs, pros = [], []
    for th in np.arange(mn, mx, delta):
        binary = amaps > th
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
    assert acc.pixel_auroc() == pytest.approx(ref_auroc(m, h), abs=TOL)
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

def random_case(seed, n=4, size=24, levels=None, offset=0.0):
    """Maps = noise + a bump in random rectangles/dots; about half the images normal."""
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
    p, r, _ = precision_recall_curve(masks.ravel(), h)
    with np.errstate(invalid="ignore"):
        assert acc.pixel_f1_max() == pytest.approx(np.nanmax(2 * p * r / (p + r)), abs=TOL)
    out = M.pixel_metrics(maps, masks, aupro_mode="compat")
    assert out == {"pixel_auroc": acc.pixel_auroc(), "pixel_f1_max": acc.pixel_f1_max(),
                   "pixel_aupro": acc.aupro("compat")}
    assert M.aupro(maps, masks) == acc.aupro()
    assert M.pixel_auroc(maps, masks) == acc.pixel_auroc() and M.pixel_f1_max(maps, masks) == acc.pixel_f1_max()


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
    maps[0, 3, :5] = -1e-7  # float16 subnormals, negative
    check_pixels(maps, masks)
    # -0.0 and +0.0 are one value: a tie, AUROC 0.5.
    tie_maps = np.array([[[-0.0, 0.0], [-0.0, 0.0]]], np.float32)
    tie_masks = np.array([[[0, 1], [1, 0]]])
    assert M.pixel_auroc(tie_maps, tie_masks) == 0.5


def test_keys_sort_like_float16_values():
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    values = bits.view(np.float16).astype(np.float64)
    ok = ~np.isnan(values) & (bits != 0x8000)  # -0.0 is mapped to +0.0 before keying
    keys = M._bits_to_keys(bits)[ok].astype(np.int64)
    assert np.unique(keys).size == ok.sum()
    assert np.all(np.diff(values[ok][np.argsort(keys)]) > 0)


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
    bad[1, 2, 3] = 1e6  # infinite in float16
    with pytest.raises(ValueError, match="infinite in float16"):
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
