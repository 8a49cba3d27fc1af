#!/usr/bin/env python
"""bf16 against fp32 for TIPS: how much faster the vision tower gets, and how much the results move.

One run writes random weights with the B/14 shapes (width 768, 12 + 12 layers; ``--depth``
fewer) in the official npz layout (:func:`tipsomaly_lite.backbones.tips.tiny.random_tips_arrays`:
N(0, 0.02) weights, LayerNorm weights near 1, layer scales 0.1) and loads them twice with
:func:`tipsomaly_lite.backbones.tips.model.load_tips`, ``dtype="fp32"`` and ``dtype="bf16"``:
the same numbers, the vision tower cast to bf16 in the second (the text tower stays fp32).

(a) **Speed** of the vision tower (``model.encode_image``) on random images at ``--size`` px
    (448, the native size), batch 1 and 8, under ``torch.inference_mode()``: fp32; bf16 (the
    attention path this machine chooses, printed; ``backbones/tips/vision.py``, ``attention_choice``); and bf16
    with ``F.scaled_dot_product_attention`` forced, to show what the attention switch buys. One
    warm-up each, then ``--repeats`` rounds that call every variant once, in an order that rotates
    every round, so a busy machine slows all alike; the medians give the ratios, all from the same
    run. Achieved GFLOP/s (matmul FLOPs, ``benchmarks/roofline.py``) are set against the measured
    throughput of square matmuls in each dtype.
(b) **Agreement** on the toy dataset (``make_toy_dataset``; ``--classes`` classes, 4 normal + 4
    anomalous test images each, read at ``--eval-size`` px) for the tiny offline model and the
    B/14-shaped random model: :func:`tipsomaly_lite.eval.evaluation.evaluate` with a training-free
    :class:`~tipsomaly_lite.method.detector.Detector` in fp32 and in bf16. Reported: max |bf16 - fp32|
    of the anomaly maps (values in [0, 1]) and of the image scores, and the difference of every
    metric (in points, x100). Random weights give meaningless metrics, but how far bf16 moves
    them is what is measured.

Examples::

    python benchmarks/bench_dtype.py --quick                    # smoke test, under a minute
    python benchmarks/bench_dtype.py --json build/bench_dtype.json   # B/14, 448 px, batch 1 and 8

The targets: bf16 vision tower >= 3x fp32 (speed ratio = fp32 time / bf16 time).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # test-only helpers (tests/helpers) are not part of the package
sys.path.insert(0, str(REPO / "benchmarks"))  # roofline.py, when imported from elsewhere

from helpers.arch import with_depth  # noqa: E402
from roofline import matmul_throughput, vision_flops  # noqa: E402  (benchmarks/)

from tipsomaly_lite.backbones.tips import vision as vision_module  # noqa: E402
from tipsomaly_lite.backbones.tips.checkpoints import standard_architecture, write_npz  # noqa: E402
from tipsomaly_lite.backbones.tips.model import TIPS, load_tips  # noqa: E402
from tipsomaly_lite.backbones.tips.tiny import random_tips_arrays, tiny_files  # noqa: E402
from tipsomaly_lite.data.datasets import AnomalyDataset  # noqa: E402
from tipsomaly_lite.data.toy_data import TOY_CLASSES, make_toy_dataset  # noqa: E402
from tipsomaly_lite.eval.evaluation import EXTRA_METRICS, METRICS, evaluate  # noqa: E402
from tipsomaly_lite.method.detector import Detector  # noqa: E402
from tipsomaly_lite.offline import MeaninglessResultsWarning  # noqa: E402

TARGET = 3.0
VARIANTS = ("fp32", "bf16", "bf16 + SDPA")


# --------------------------------------------------------------------------------------------
# Models


def b14_files(folder: Path, depth: int | None, seed: int) -> dict[str, Path]:
    """Random B/14-shaped weights in the official npz layout, and the tiny tokenizer."""
    arch = standard_architecture("B/14")
    if depth is not None:
        arch = with_depth(arch, depth)
    vision, text = random_tips_arrays(arch, seed=seed)
    return {"vision": write_npz(folder / "vision.npz", vision), "text": write_npz(folder / "text.npz", text),
            "tokenizer": tiny_files()[2]}


def load_pair(files: dict[str, Path] | None, image_size: int) -> dict[str, TIPS]:
    """The same weights in fp32 and in bf16 (``files`` None: the tiny offline model)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MeaninglessResultsWarning)
        if files is None:
            return {d: load_tips("tiny", dtype=d, image_size=image_size) for d in ("fp32", "bf16")}
        return {d: load_tips(vision=files["vision"], text=files["text"], tokenizer=files["tokenizer"], dtype=d,
                             image_size=image_size) for d in ("fp32", "bf16")}


@contextlib.contextmanager
def sdpa_attention():
    """Every attention through ``F.scaled_dot_product_attention``, whatever the dtype (the switch off)."""
    saved = vision_module.attention
    vision_module.attention = lambda q, k, v: F.scaled_dot_product_attention(q, k, v)
    try:
        yield
    finally:
        vision_module.attention = saved


# --------------------------------------------------------------------------------------------
# (a) speed


def time_rotating(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """One warm-up each, then ``repeats`` rounds calling every function once, the order rotating."""
    names = list(fns)
    with torch.inference_mode():
        for name in names:
            fns[name]()
        times: dict[str, list[float]] = {name: [] for name in names}
        for r in range(repeats):
            for name in names[r % len(names):] + names[:r % len(names)]:
                start = time.perf_counter()
                fns[name]()
                times[name].append(time.perf_counter() - start)
    return times


def bench_speed(models: dict[str, TIPS], args, matmul: dict[str, float], log) -> list[dict]:
    arch = models["fp32"].arch
    rows = []
    for batch in args.batches:
        torch.manual_seed(1)
        images = torch.rand(batch, 3, args.size, args.size)

        def bf16_sdpa():
            with sdpa_attention():
                return models["bf16"].encode_image(images)

        fns = {"fp32": lambda: models["fp32"].encode_image(images),
               "bf16": lambda: models["bf16"].encode_image(images), "bf16 + SDPA": bf16_sdpa}
        log(f"  timing B/14-shaped vision tower, {args.size} px, batch {batch} ...")
        times = time_rotating(fns, args.repeats)
        flops = vision_flops(arch.width, arch.depth, arch.mlp_hidden, args.size, batch, arch.swiglu)
        medians = {name: statistics.median(t) for name, t in times.items()}
        row = {"depth": arch.depth, "size": args.size, "batch": batch, "gflop": flops / 1e9, "times_s": times}
        for name, t in medians.items():
            key = name.replace(" + ", "_").lower()
            row[f"{key}_img_per_s"] = batch / t
            row[f"{key}_gflops"] = flops / t / 1e9
            row[f"{key}_matmul_fraction"] = flops / t / 1e9 / matmul["bf16" if "bf16" in name else "fp32"]
        row["speed_ratio"] = medians["fp32"] / medians["bf16"]
        row["speed_ratio_sdpa"] = medians["fp32"] / medians["bf16 + SDPA"]
        log(f"    fp32 {row['fp32_img_per_s']:.2f} img/s, bf16 {row['bf16_img_per_s']:.2f} img/s "
            f"({row['speed_ratio']:.2f}x), bf16 + SDPA {row['bf16_sdpa_img_per_s']:.2f} img/s "
            f"({row['speed_ratio_sdpa']:.2f}x)")
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------
# (b) agreement


class RecordingDetector(Detector):
    """A :class:`Detector` that keeps every anomaly map it makes (the evaluation keeps only the scores)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.maps: list[torch.Tensor] = []

    def predict(self, images, class_words, maps: bool = True):
        pred = super().predict(images, class_words, maps)
        self.maps.append(pred.anomaly_map.detach().cpu())
        return pred


def bench_agreement(name: str, models: dict[str, TIPS], dataset: AnomalyDataset, args, log) -> dict:
    log(f"  evaluating {name} on {len(dataset)} toy images at {dataset.image_size} px, fp32 and bf16 ...")
    out = {}
    for dname, model in models.items():
        det = RecordingDetector(model)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MeaninglessResultsWarning)
            result = evaluate(det, dataset, batch_size=args.eval_batch, progress=False)
        out[dname] = {"maps": torch.cat(det.maps), "mean": result.mean,
                      "scores": torch.tensor([row["image_score"] for row in result.scores]),
                      "seconds": time.perf_counter() - start}
    a, b = out["fp32"], out["bf16"]
    row = {"model": name, "images": len(dataset), "image_size": dataset.image_size,
           "map_max_abs_diff": float((a["maps"] - b["maps"]).abs().max()),
           "map_range": [float(a["maps"].min()), float(a["maps"].max())],
           "score_max_abs_diff": float((a["scores"] - b["scores"]).abs().max()),
           "score_range": [float(a["scores"].min()), float(a["scores"].max())],
           "metrics_fp32": a["mean"], "metrics_bf16": b["mean"],
           "metric_diff": {k: b["mean"][k] - a["mean"][k] for k in (*METRICS, *EXTRA_METRICS)},
           "evaluate_s": {k: v["seconds"] for k, v in out.items()}}
    log(f"    max |map diff| {row['map_max_abs_diff']:.2e}, max |score diff| {row['score_max_abs_diff']:.2e}, "
        f"largest metric diff {max(abs(v) for v in row['metric_diff'].values()):.2f} points")
    return row


# --------------------------------------------------------------------------------------------
# Output


def speed_table(rows: list[dict], matmul: dict[str, float]) -> str:
    head = ("| vision tower | input | batch | fp32 | bf16 | bf16 + SDPA | speed ratio bf16/fp32 (target >= 3x) "
            "| ratio with SDPA | GFLOP/s fp32 / bf16 | of matmul throughput fp32 / bf16 |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| B/14 shapes, {r['depth']} layers | {r['size']} px | {r['batch']} | {r['fp32_img_per_s']:.2f} img/s "
            f"| {r['bf16_img_per_s']:.2f} img/s | {r['bf16_sdpa_img_per_s']:.2f} img/s | {r['speed_ratio']:.2f}x "
            f"({'met' if r['speed_ratio'] >= TARGET else 'not met'}) | {r['speed_ratio_sdpa']:.2f}x "
            f"| {r['fp32_gflops']:.0f} / {r['bf16_gflops']:.0f} "
            f"| {100 * r['fp32_matmul_fraction']:.0f}% / {100 * r['bf16_matmul_fraction']:.0f}% |")
    lines.append(f"\nmatmul throughput (square torch.mm, best): fp32 {matmul['fp32']:.0f} GFLOP/s, "
                 f"bf16 {matmul['bf16']:.0f} GFLOP/s")
    return "\n".join(lines)


def agreement_table(rows: list[dict]) -> str:
    keys = (*METRICS, *EXTRA_METRICS)
    head = ("| model | images | max abs map diff | max abs score diff | "
            + " | ".join(f"{k} diff" for k in keys) + " |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(f"| {r['model']} | {r['images']} @ {r['image_size']} px | {r['map_max_abs_diff']:.1e} "
                     f"| {r['score_max_abs_diff']:.1e} | "
                     + " | ".join(f"{r['metric_diff'][k]:+.2f}" for k in keys) + " |")
    return "\n".join(lines)


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


# --------------------------------------------------------------------------------------------
# CLI


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="TIPS vision tower in bf16 vs fp32: speed (same weights, same run) and how far the anomaly "
                    "maps, scores and metrics move on the toy dataset.",
        epilog="speed ratio = fp32 time / bf16 time (target >= 3x). --quick: 2 layers, batch 1 and 2, 1 repeat, "
               "small toy images.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--size", type=int, default=448, help="image side for the speed part (multiple of 14)")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="batch sizes (default 1 8)")
    p.add_argument("--depth", type=int, default=None, help="layers of both B/14 towers (default: the real 12)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds after the warm-up (default 3)")
    p.add_argument("--classes", type=int, default=None, help="toy classes for the agreement part (default 3)")
    p.add_argument("--eval-size", type=int, default=None, help="toy image side for the agreement part (default 448)")
    p.add_argument("--eval-batch", type=int, default=4, help="images per forward in the agreement part")
    p.add_argument("--skip-speed", action="store_true", help="only the agreement part")
    p.add_argument("--quick", action="store_true", help="smoke test: depth 2, batches 1 2, 1 repeat, 2 classes at 112 px")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="also save the results as JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.depth = args.depth or 2
        args.batches = args.batches or [1, 2]
        args.repeats = args.repeats or 1
        args.classes = args.classes or 2
        args.eval_size = args.eval_size or 112
    args.batches = args.batches or [1, 8]
    args.repeats = args.repeats or 3
    args.classes = args.classes or 3
    args.eval_size = args.eval_size or 448
    for s in (args.size, args.eval_size):
        if s % 14:
            p.error(f"image size {s} is not a multiple of 14")
    if not 1 <= args.classes <= len(TOY_CLASSES):
        p.error(f"--classes must be in 1..{len(TOY_CLASSES)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)

    def log(msg):
        print(msg, flush=True)

    env = {"python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
           "cpu_count": os.cpu_count(), "load_average_start": load_average()}
    log(f"bench_dtype: torch {env['torch']}, {env['torch_threads']} threads, load average {env['load_average_start']}")
    start = time.perf_counter()
    sizes = (512, 1024) if args.quick else (1024, 2048, 3072)
    matmul = {d: matmul_throughput(t, "cpu", sizes, 2 if args.quick else 5)["gflops"]
              for d, t in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    log(f"matmul throughput: fp32 {matmul['fp32']:.0f} GFLOP/s, bf16 {matmul['bf16']:.0f} GFLOP/s")
    with tempfile.TemporaryDirectory(prefix="bench_dtype_") as tmp:
        tmp = Path(tmp)
        log("writing random B/14-shaped weights ...")
        files = b14_files(tmp, args.depth, args.seed)
        speed = []
        if not args.skip_speed:
            pair = load_pair(files, args.size)
            env["bf16_attention"] = pair["bf16"].attention_path()  # the path this machine chose for "bf16"
            log(f"bf16 attention on this machine: {env['bf16_attention']}")
            speed = bench_speed(pair, args, matmul, log)
        env["load_average_after_speed"] = load_average()
        root = make_toy_dataset(tmp / "toy", classes=list(TOY_CLASSES[:args.classes]), n_train=0)
        dataset = AnomalyDataset(root, image_size=args.eval_size)
        agreement = [bench_agreement("tiny (offline)", load_pair(None, args.eval_size), dataset, args, log),
                     bench_agreement(f"B/14 shapes, {args.depth or 12} layers", load_pair(files, args.eval_size),
                                     dataset, args, log)]
    env["load_average_end"] = load_average()
    log("\n## Speed: vision tower, same weights, fp32 vs bf16 (medians of rotating repeats)\n")
    if speed:
        log(speed_table(speed, matmul))
    log("\n## Agreement: bf16 - fp32 on the toy dataset (training-free detector; metrics in points)\n")
    log(agreement_table(agreement))
    log(f"\nload average: start {env['load_average_start']}, after the speed part {env['load_average_after_speed']}, "
        f"end {env['load_average_end']}; total {time.perf_counter() - start:.0f}s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"environment": env, "settings": {k: (str(v) if isinstance(v, Path) else v)
                                                    for k, v in vars(args).items()},
                   "matmul_gflops": matmul, "target_speed_ratio": TARGET, "speed": speed, "agreement": agreement}
        args.json.write_text(json.dumps(payload, indent=2))
        log(f"saved {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
