#!/usr/bin/env python
"""Agreement, speed and memory of our streamed pixel metrics against the exact computations.

One run builds ``--images`` seeded maps of ``--size`` px (about half the images normal; the anomalous
ones hold 1-3 ellipses, blobs or thin scratches of varied sizes; logits = smoothed noise plus higher
values inside the defects) in three ``--kinds``, all float32:

* ``spread``: ``sigmoid(logits)``, values spread over (0, 1) (a trained model's maps);
* ``narrow``: ``0.5 + 0.01 * logits``, every value in a narrow band (what the authors' pipeline gives
  on random weights: hundreds of thousands of distinct values that float16 collapses to a few hundred);
* ``shifted``: ``logits + 1000`` (a constant offset; float16 keeps only multiples of 0.5 there).

For each kind it measures ours (``tipsomaly_lite.eval.metrics``) against:

* **AUPRO, compat** (the ZSAD papers' recipe, docs/method.md §2.5): the authors' straightforward loop:
  thresholds ``torch.arange(min, max, (max - min) / 200)`` (float32, as their ``cal_pro_score``); for
  each, binarise all maps, count every region's predicted pixels and the false positives; keep
  FPR < 0.3, min-max rescale the FPRs, ``sklearn.metrics.auc``.
* **AUPRO, standard** (MVTec AD): an exact reference that sorts all pixels (PRO and FPR at every
  distinct value, trapezoid to FPR 0.3, interpolated there, / 0.3).
* **Pixel AUROC, AP and F1-max**: ``sklearn.metrics.roc_auc_score``, ``average_precision_score`` and
  ``precision_recall_curve`` (F1-max = max 2PR/(P+R)) on all pixels.

All references get the float32 maps themselves. ``abs diff`` is |ours - reference|; ``bound`` is
the error bound ours proves from its histograms (0 = exact; compat: an estimate); ``ok`` checks the
issue's tolerances (1e-4 AUROC/AUPRO, 1e-3 AP/F1-max). ``fp16 cost`` = |sklearn on the float16-rounded
maps - sklearn on the maps| x 100: what the former float16 histogram keys lost, in table points.

Ours includes the histogramming and region labelling of every map; the references get their inputs
prepared (flattened views) before the clock starts.

Timing: ``--repeats`` calls each, alternating ours/reference (and which goes first); the median is
reported. Peak memory: one extra call each under ``tracemalloc`` (numpy reports its buffers to it), the
peak above what was allocated before the call; the input maps themselves are not counted.

Examples::

    python benchmarks/bench_metrics.py --quick                   # smoke test, well under a minute
    python benchmarks/bench_metrics.py --json build/metrics.json # 100 maps of 518 px, 3 kinds (many minutes)
    python benchmarks/bench_metrics.py --kinds spread            # the speed comparison only

Ratios are reference/ours time: speed ratio > 1 means ours is faster (target >= 20x for compat AUPRO).
Timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score  # noqa: E402

from tipsomaly_lite.eval import metrics  # noqa: E402

TARGET = 20.0
MIB = 1024 * 1024
KINDS = ("spread", "narrow", "shifted")
#: The issue's agreement targets (pixel AP: as F1-max).
TOLERANCE = {"aupro_compat": 1e-4, "aupro_standard": 1e-4, "pixel_auroc": 1e-4, "pixel_ap": 1e-3,
             "pixel_f1_max": 1e-3}


# --------------------------------------------------------------------------------------------
# Data


def _defect(rng: np.random.Generator, size: int) -> np.ndarray:
    """One ellipse, blob or thin scratch, ``(size, size)`` bool."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = rng.uniform(0.1, 0.9, 2) * size
    kind = rng.choice(["ellipse", "blob", "scratch"])
    if kind == "scratch":
        length, width = rng.uniform(0.1, 0.5) * size, rng.uniform(0.6, 2.0)
        angle = rng.uniform(0, np.pi)
        dy, dx = np.sin(angle), np.cos(angle)
        along = (yy - cy) * dy + (xx - cx) * dx
        across = np.abs(-(yy - cy) * dx + (xx - cx) * dy)
        return (np.abs(along) <= length / 2) & (across <= width / 2)
    radius = np.exp(rng.uniform(np.log(1.5), np.log(size / 6)))  # small defects are common
    angle = rng.uniform(0, np.pi)
    ry, rx = radius * rng.uniform(0.4, 1.0), radius
    v = ((yy - cy) * np.cos(angle) - (xx - cx) * np.sin(angle)) / ry
    u = ((yy - cy) * np.sin(angle) + (xx - cx) * np.cos(angle)) / rx
    if kind == "ellipse":
        return u * u + v * v <= 1
    theta, lobes = np.arctan2(v, u), rng.integers(2, 6)  # a star-shaped blob: a wavy radius
    wave = 1 + 0.35 * np.sin(lobes * theta + rng.uniform(0, 2 * np.pi))
    return np.sqrt(u * u + v * v) <= wave


def make_data(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(n, size, size)`` float32 logits and bool masks; image 0 anomalous, image 1 normal."""
    rng = np.random.default_rng(seed)
    maps = np.empty((n, size, size), np.float32)
    masks = np.zeros((n, size, size), bool)
    sigma = max(1.0, 4.0 * size / 518)
    for i in range(n):
        if i == 0 or (i != 1 and rng.random() < 0.5):
            for _ in range(rng.integers(1, 4)):
                masks[i] |= _defect(rng, size)
        noise = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma)
        noise /= noise.std()
        # Defects of varied contrast, some barely above the noise (pixel AUROC ~0.95, like real maps).
        signal = ndimage.gaussian_filter(masks[i].astype(np.float64), sigma / 2) * rng.uniform(0.3, 2.0)
        maps[i] = noise + 3 * signal - 2.5
    return maps, masks


def maps_of_kind(logits: np.ndarray, kind: str) -> np.ndarray:
    """The float32 maps of one of :data:`KINDS` from the logits."""
    x = logits.astype(np.float64)
    out = {"spread": lambda: 1 / (1 + np.exp(-x)), "narrow": lambda: 0.5 + 0.01 * x, "shifted": lambda: x + 1000}
    return out[kind]().astype(np.float32)


# --------------------------------------------------------------------------------------------
# References (the straightforward computations)


def reference_aupro_compat(maps: np.ndarray, masks: np.ndarray, max_fpr: float = 0.3, steps: int = 200) -> float:
    """The authors' 200-threshold loop on ``(B,H,W)`` float32 maps and bool masks (their thresholds)."""
    structure = np.ones((3, 3), bool)
    coords = []  # per image, the (y, x) pixel coordinates of each of its regions
    for mask in masks:
        labels, _ = ndimage.label(mask, structure=structure)
        image_regions = []
        for r, box in enumerate(ndimage.find_objects(labels), start=1):
            ys, xs = np.nonzero(labels[box] == r)
            image_regions.append((ys + box[0].start, xs + box[1].start))
        coords.append(image_regions)
    inverse = ~masks
    n_normal = inverse.sum()
    mn, mx = float(maps.min()), float(maps.max())  # .item() of float32 tensors: Python floats
    delta = (mx - mn) / steps
    fprs, pros = [], []
    binary = np.empty(maps.shape, bool)
    for th in torch.arange(mn, mx, delta).numpy():  # float32 thresholds, compared in float32
        np.greater(maps, th, out=binary)
        pro = [binary[i][ys, xs].sum() / ys.size for i, regions in enumerate(coords) for ys, xs in regions]
        fprs.append(np.logical_and(inverse, binary).sum() / n_normal)
        pros.append(np.mean(pro))
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs < max_fpr
    fprs, pros = fprs[keep], pros[keep]
    fprs = (fprs - fprs.min()) / (fprs.max() - fprs.min())
    return float(auc(fprs, pros))


def reference_aupro_standard(maps: np.ndarray, masks: np.ndarray, max_fpr: float = 0.3) -> float:
    """MVTec AD's exact AUPRO: sort every pixel, PRO and FPR at each distinct value, trapezoid to ``max_fpr``."""
    structure = np.ones((3, 3), bool)
    weight = np.zeros(maps.shape)
    n_regions = 0
    for i, mask in enumerate(masks):
        labels, n = ndimage.label(mask, structure=structure)
        if n:
            area = np.bincount(labels.ravel())
            weight[i][mask] = 1.0 / area[labels[mask]]
            n_regions += n
    values = maps.ravel().astype(np.float64)
    order = np.argsort(-values, kind="stable")
    v, w, normal = values[order], weight.ravel()[order], ~masks.ravel()[order]
    last = np.flatnonzero(np.r_[v[1:] != v[:-1], True])  # the last pixel of each distinct value
    fpr = np.r_[0.0, np.cumsum(normal)[last] / normal.sum()]
    pro = np.r_[0.0, np.cumsum(w)[last] / n_regions]
    j = int(np.searchsorted(fpr, max_fpr, side="left"))
    y_at = pro[j - 1] + (pro[j] - pro[j - 1]) * (max_fpr - fpr[j - 1]) / (fpr[j] - fpr[j - 1])
    area = np.sum(np.diff(fpr[:j]) * (pro[1:j] + pro[:j - 1]) / 2) + (max_fpr - fpr[j - 1]) * (pro[j - 1] + y_at) / 2
    return float(area / max_fpr)


def sklearn_f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore"):
        return float(np.nanmax(2 * precision * recall / (precision + recall)))


# --------------------------------------------------------------------------------------------
# Measuring


def time_pair(ours_fn, ref_fn, repeats: int) -> tuple[float, float, float, float]:
    """Median seconds of ``repeats`` alternating calls each, and the last values."""
    times: dict[str, list[float]] = {"ours": [], "ref": []}
    values = {}
    fns = {"ours": ours_fn, "ref": ref_fn}
    for r in range(repeats):
        for who in (("ours", "ref") if r % 2 == 0 else ("ref", "ours")):
            if fns[who] is None:
                continue
            start = time.perf_counter()
            values[who] = fns[who]()
            times[who].append(time.perf_counter() - start)
    med = {k: statistics.median(v) if v else None for k, v in times.items()}
    return med["ours"], med["ref"], values.get("ours"), values.get("ref")


def peak_mib(fn) -> float:
    """Peak traced allocation of one call, above what was allocated before it."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fn()
        return (tracemalloc.get_traced_memory()[1] - base) / MIB
    finally:
        tracemalloc.stop()


def measure(task: str, ours_fn, ref_fn, repeats: int, log, **extra) -> dict:
    t_o, t_r, v_o, v_r = time_pair(ours_fn, ref_fn, repeats)
    row = {"task": task, "ours_s": t_o, "reference_s": t_r,
           "speed_ratio": t_r / t_o if t_r is not None else None,
           "ours_value": v_o, "reference_value": v_r,
           "abs_diff": abs(v_o - v_r) if v_r is not None else None,
           "ours_peak_mib": peak_mib(ours_fn), "reference_peak_mib": peak_mib(ref_fn) if ref_fn else None}
    row.update(extra)
    if row.get("fp16_value") is not None and v_r is not None:
        row["fp16_cost_points"] = abs(row["fp16_value"] - v_r) * 100
    metric = task.split("/")[-1]
    row["ok"] = None if row["abs_diff"] is None else bool(row["abs_diff"] <= TOLERANCE[metric])
    log("   " + row_summary(row))
    return row


# --------------------------------------------------------------------------------------------
# Output


def _fmt(x, spec=".3g", none="n/a"):
    return none if x is None else format(x, spec)


def row_summary(r: dict) -> str:
    ref = (f"reference {r['reference_s']:.3f} s -> {r['speed_ratio']:.1f}x" if r["reference_s"] is not None
           else "no reference")
    return (f"{r['task']:22s} ours {r['ours_s']:.3f} s, {ref} | values {_fmt(r['ours_value'], '.10f')} vs "
            f"{_fmt(r['reference_value'], '.10f')} (|diff| {_fmt(r['abs_diff'], '.1e')}, bound "
            f"{_fmt(r.get('bound'), '.1e')}) | peak "
            f"{_fmt(r['ours_peak_mib'], '.1f')} vs {_fmt(r['reference_peak_mib'], '.1f')} MiB")


def markdown_table(rows: list[dict]) -> str:
    head = ("| task | ours s | reference s | speed ratio (ref/ours) | ours value | reference value | abs diff "
            "| bound | ok | ours peak MiB | reference peak MiB | fp16 cost (points) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['task']} | {_fmt(r['ours_s'], '.3f')} | {_fmt(r['reference_s'], '.3f')} "
            f"| {_fmt(r['speed_ratio'], '.1f')}{'x' if r['speed_ratio'] else ''} | {_fmt(r['ours_value'], '.6f')} "
            f"| {_fmt(r['reference_value'], '.6f')} | {_fmt(r['abs_diff'], '.1e')} | {_fmt(r.get('bound'), '.1e')} "
            f"| {'' if r['ok'] is None else ('yes' if r['ok'] else 'NO')} | {_fmt(r['ours_peak_mib'], '.1f')} "
            f"| {_fmt(r['reference_peak_mib'], '.1f')} | {_fmt(r.get('fp16_cost_points'), '.1e', '')} |")
    return "\n".join(lines)


def environment() -> dict:
    import scipy
    import sklearn

    env = {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
           "sklearn": sklearn.__version__, "cpu_count": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as fh:
            env["cpu"] = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "?")
    except OSError:
        env["cpu"] = platform.processor() or "?"
    return env


# --------------------------------------------------------------------------------------------
# CLI


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Benchmark tipsomaly_lite.eval.metrics' streamed pixel metrics (AUPRO compat/standard, pixel "
                    "AUROC, AP, F1-max) against the authors' loop / exact references / scikit-learn on spread, "
                    "narrow and shifted maps: agreement, time, peak memory.",
        epilog="Speed ratio = reference time / ours: > 1 means ours is faster (target >= 20x for compat AUPRO). "
               "--quick is a smoke test of a few seconds (8 maps of 128 px, 1 repeat).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--images", type=int, default=None, help="number of maps (default 100; --quick: 8)")
    p.add_argument("--size", type=int, default=None, help="map side in px (default 518; --quick: 128)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls of each (default 3; --quick: 1)")
    p.add_argument("--steps", type=int, default=200, help="thresholds of compat AUPRO")
    p.add_argument("--seed", type=int, default=0, help="seed of the maps and masks")
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS, help="which maps")
    p.add_argument("--quick", action="store_true", help="smoke test: 8 maps of 128 px, 1 repeat")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="also save the results as JSON")
    args = p.parse_args(argv)
    args.images = args.images or (8 if args.quick else 100)
    args.size = args.size or (128 if args.quick else 518)
    args.repeats = args.repeats or (1 if args.quick else 3)
    if args.images < 2 or args.size < 16 or args.repeats < 1:
        p.error("need --images >= 2, --size >= 16 and --repeats >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    env = environment()

    def log(msg):
        print(msg, flush=True)

    log(f"bench_metrics: numpy {env['numpy']}, scipy {env['scipy']}, scikit-learn {env['sklearn']}, "
        f"python {env['python']}; {env['cpu']}, {env['cpu_count']} cpus")
    start = time.perf_counter()
    maps, masks = make_data(args.images, args.size, args.seed)
    n_pixels = maps.size
    log(f"data: {args.images} maps of {args.size}x{args.size} ({n_pixels / 1e6:.1f} M pixels, "
        f"{int(masks.any(axis=(1, 2)).sum())} anomalous images, {100 * masks.mean():.2f}% anomalous pixels), "
        f"built in {time.perf_counter() - start:.1f}s")
    log(f"timing: median of {args.repeats} alternating calls; peak memory: tracemalloc, one more call each")

    logits, masks = maps, masks
    labels = masks.ravel()
    rows, bounds_by_kind = [], {}
    for kind in args.kinds:
        maps = maps_of_kind(logits, kind)
        flat, flat16 = maps.ravel(), maps.astype(np.float16).astype(np.float32).ravel()
        log(f"\n{kind}: {np.unique(flat).size:,} distinct values, {np.unique(flat16).size:,} in float16")
        acc = metrics.PixelAccumulator()
        acc.add(maps, masks)
        bounds = acc.error_bounds()
        bounds["aupro_standard"] = bounds.pop("pixel_aupro")
        bounds["aupro_compat"] = acc.error_bounds("compat")["pixel_aupro"]
        bounds_by_kind[kind] = {"exact": acc.is_exact, "bin_width": acc.bin_width, **bounds}

        def sk(fn, values):
            return lambda: float(fn(labels, values))

        rows += [
            measure(f"{kind}/aupro_compat", lambda: metrics.aupro(maps, masks, mode="compat", steps=args.steps),
                    lambda: reference_aupro_compat(maps, masks, steps=args.steps), args.repeats, log,
                    bound=bounds["aupro_compat"]),
            measure(f"{kind}/aupro_standard", lambda: metrics.aupro(maps, masks, mode="standard"),
                    lambda: reference_aupro_standard(maps, masks), args.repeats, log,
                    bound=bounds["aupro_standard"],
                    fp16_value=reference_aupro_standard(flat16.reshape(maps.shape), masks)),
            measure(f"{kind}/pixel_auroc", lambda: metrics.pixel_auroc(maps, masks), sk(roc_auc_score, flat),
                    args.repeats, log, bound=bounds["pixel_auroc"], fp16_value=sk(roc_auc_score, flat16)()),
            measure(f"{kind}/pixel_ap", lambda: metrics.pixel_ap(maps, masks), sk(average_precision_score, flat),
                    args.repeats, log, bound=bounds["pixel_ap"], fp16_value=sk(average_precision_score, flat16)()),
            measure(f"{kind}/pixel_f1_max", lambda: metrics.pixel_f1_max(maps, masks), sk(sklearn_f1_max, flat),
                    args.repeats, log, bound=bounds["pixel_f1_max"], fp16_value=sk(sklearn_f1_max, flat16)()),
        ]
    elapsed = time.perf_counter() - start

    log("\n## Results (ours = tipsomaly_lite.eval.metrics; speed ratio = reference time / ours)\n")
    log(markdown_table(rows))
    for r in rows:
        if r["task"].endswith("aupro_compat") and r["task"].startswith("spread"):
            log(f"\ncompat AUPRO: {r['speed_ratio']:.1f}x faster than the loop (target >= {TARGET:.0f}x: "
                f"{'met' if r['speed_ratio'] >= TARGET else 'NOT met'}), |difference| {r['abs_diff']:.1e}")
    bad = [r["task"] for r in rows if r["ok"] is False]
    log(f"agreement with the exact references within the tolerances: {'all' if not bad else 'NOT ' + ', '.join(bad)}")
    for r in rows:
        if r.get("fp16_cost_points") is not None:
            log(f"{r['task']}: float16 keys would move it by {r['fp16_cost_points']:.1e} points")
    log(f"total benchmark time: {elapsed:.0f}s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        config.update(n_pixels=n_pixels, anomalous_pixel_fraction=float(masks.mean()), bounds=bounds_by_kind,
                      n_anomalous_images=int(masks.any(axis=(1, 2)).sum()), environment=env,
                      target_speed_ratio=TARGET)
        args.json.write_text(json.dumps({"config": config, "results": rows}, indent=2))
        log(f"saved {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
