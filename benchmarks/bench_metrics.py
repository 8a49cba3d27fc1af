#!/usr/bin/env python
"""Speed and memory of our histogram pixel metrics against the straightforward computations.

One run builds ``--images`` seeded anomaly maps of ``--size`` px (about half the images normal; the
anomalous ones hold 1-3 ellipses, blobs or thin scratches of varied sizes; maps = smoothed noise plus
higher values inside the defects, squashed to (0, 1), float32) and measures:

* **AUPRO, compat** (the ZSAD papers' recipe, docs/method.md §2.5): ours,
  ``tipsomaly_lite.eval.metrics.aupro(maps, masks, mode="compat")``, against the straightforward loop the
  papers' code runs: 200 thresholds; for each, binarise all maps, loop over every region of every
  image (``scipy.ndimage.label`` once per mask, the region's pixel coordinates once per region) and
  count its predicted pixels, count the false positives; keep FPR < 0.3, min-max rescale the FPRs,
  ``sklearn.metrics.auc``. The loop gets the same fp16-rounded maps (as float32), so the two values
  must agree to rounding. AUPRO ``standard`` (every distinct value) is timed too; it has no reference.
* **Pixel AUROC and F1-max**: ours against ``sklearn.metrics.roc_auc_score`` and
  ``precision_recall_curve`` (F1-max = max 2PR/(P+R)) on all pixels, fp16-rounded as ours sees them.
  ``fp32_value`` is sklearn on the *unrounded* float32 maps; ``fp16_cost_points`` = |ours - that| x 100
  is what rounding the maps to float16 costs, in table points.

Ours includes the float16 rounding, histogramming and region labelling of every map; the references
get their inputs prepared (rounded, flattened views) before the clock starts.

Timing: ``--repeats`` calls each, alternating ours/reference (and which goes first); the median is
reported. Peak memory: one extra call each under ``tracemalloc`` (numpy reports its buffers to it), the
peak above what was allocated before the call; the input maps themselves are not counted.

Examples::

    python benchmarks/bench_metrics.py --quick                   # smoke test, a few seconds
    python benchmarks/bench_metrics.py --json build/metrics.json # 100 maps of 518 px (a few minutes)

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
from sklearn.metrics import auc, precision_recall_curve, roc_auc_score  # noqa: E402

from tipsomaly_lite.eval import metrics  # noqa: E402

TARGET = 20.0
MIB = 1024 * 1024


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
    """``(n, size, size)`` float32 maps in (0, 1) and bool masks; image 0 anomalous, image 1 normal."""
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
        maps[i] = 1 / (1 + np.exp(-(noise + 3 * signal - 2.5)))
    return maps, masks


# --------------------------------------------------------------------------------------------
# References (the straightforward computations)


def reference_aupro_compat(maps: np.ndarray, masks: np.ndarray, max_fpr: float = 0.3, steps: int = 200) -> float:
    """The ZSAD papers' 200-threshold loop on ``(B,H,W)`` float32 maps and bool masks."""
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
    mn, mx = maps.min(), maps.max()
    delta = (mx - mn) / steps
    fprs, pros = [], []
    binary = np.empty(maps.shape, bool)
    for th in np.arange(mn, mx, delta):
        np.greater(maps, th, out=binary)
        pro = [binary[i][ys, xs].sum() / ys.size for i, regions in enumerate(coords) for ys, xs in regions]
        fprs.append(np.logical_and(inverse, binary).sum() / n_normal)
        pros.append(np.mean(pro))
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs < max_fpr
    fprs, pros = fprs[keep], pros[keep]
    fprs = (fprs - fprs.min()) / (fprs.max() - fprs.min())
    return float(auc(fprs, pros))


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
    if "fp32_value" in row:
        row["fp16_cost_points"] = abs(v_o - row["fp32_value"]) * 100
    log("   " + row_summary(row))
    return row


# --------------------------------------------------------------------------------------------
# Output


def _fmt(x, spec=".3g", none="n/a"):
    return none if x is None else format(x, spec)


def row_summary(r: dict) -> str:
    ref = (f"reference {r['reference_s']:.3f} s -> {r['speed_ratio']:.1f}x" if r["reference_s"] is not None
           else "no reference")
    return (f"{r['task']:15s} ours {r['ours_s']:.3f} s, {ref} | values {_fmt(r['ours_value'], '.10f')} vs "
            f"{_fmt(r['reference_value'], '.10f')} (|diff| {_fmt(r['abs_diff'], '.1e')}) | peak "
            f"{_fmt(r['ours_peak_mib'], '.1f')} vs {_fmt(r['reference_peak_mib'], '.1f')} MiB")


def markdown_table(rows: list[dict]) -> str:
    head = ("| task | ours s | reference s | speed ratio (ref/ours) | ours value | reference value | abs diff "
            "| ours peak MiB | reference peak MiB | fp16 cost (points) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['task']} | {_fmt(r['ours_s'], '.3f')} | {_fmt(r['reference_s'], '.3f')} "
            f"| {_fmt(r['speed_ratio'], '.1f')}{'x' if r['speed_ratio'] else ''} | {_fmt(r['ours_value'], '.6f')} "
            f"| {_fmt(r['reference_value'], '.6f')} | {_fmt(r['abs_diff'], '.1e')} | {_fmt(r['ours_peak_mib'], '.1f')} "
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
        description="Benchmark tipsomaly_lite.eval.metrics' histogram pixel metrics (AUPRO compat/standard, pixel "
                    "AUROC, pixel F1-max) against the straightforward loop / scikit-learn: time, peak memory, "
                    "values.",
        epilog="Speed ratio = reference time / ours: > 1 means ours is faster (target >= 20x for compat AUPRO). "
               "--quick is a smoke test of a few seconds (8 maps of 128 px, 1 repeat).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--images", type=int, default=None, help="number of maps (default 100; --quick: 8)")
    p.add_argument("--size", type=int, default=None, help="map side in px (default 518; --quick: 128)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls of each (default 3; --quick: 1)")
    p.add_argument("--steps", type=int, default=200, help="thresholds of compat AUPRO")
    p.add_argument("--seed", type=int, default=0, help="seed of the maps and masks")
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

    # What ours sees: the maps rounded to float16. The references get exactly those values.
    maps16 = maps.astype(np.float16).astype(np.float32)
    flat16, flat32, labels = maps16.ravel(), maps.ravel(), masks.ravel()

    rows = [
        measure("aupro_compat", lambda: metrics.aupro(maps, masks, mode="compat", steps=args.steps),
                lambda: reference_aupro_compat(maps16, masks, steps=args.steps), args.repeats, log),
        measure("aupro_standard", lambda: metrics.aupro(maps, masks, mode="standard"), None, args.repeats, log),
        measure("pixel_auroc", lambda: metrics.pixel_auroc(maps, masks),
                lambda: float(roc_auc_score(labels, flat16)), args.repeats, log,
                fp32_value=float(roc_auc_score(labels, flat32))),
        measure("pixel_f1_max", lambda: metrics.pixel_f1_max(maps, masks),
                lambda: sklearn_f1_max(labels, flat16), args.repeats, log,
                fp32_value=sklearn_f1_max(labels, flat32)),
    ]
    elapsed = time.perf_counter() - start

    log("\n## Results (ours = tipsomaly_lite.eval.metrics; speed ratio = reference time / ours)\n")
    log(markdown_table(rows))
    compat = rows[0]
    log(f"\ncompat AUPRO: {compat['speed_ratio']:.1f}x faster than the loop (target >= {TARGET:.0f}x: "
        f"{'met' if compat['speed_ratio'] >= TARGET else 'NOT met'}), |difference| {compat['abs_diff']:.1e}")
    for r in rows[2:]:
        log(f"{r['task']}: fp16 rounding moves it by {r['fp16_cost_points']:.1e} points "
            f"(sklearn on the unrounded float32 maps: {r['fp32_value']:.8f})")
    log(f"total benchmark time: {elapsed:.0f}s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        config.update(n_pixels=n_pixels, anomalous_pixel_fraction=float(masks.mean()),
                      n_anomalous_images=int(masks.any(axis=(1, 2)).sum()), environment=env,
                      target_speed_ratio=TARGET)
        args.json.write_text(json.dumps({"config": config, "results": rows}, indent=2))
        log(f"saved {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
