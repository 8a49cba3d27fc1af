#!/usr/bin/env python
"""Time per epoch of prompt training with and without the frozen-feature cache, same data, same model.

For each model (the tiny offline TIPS, and a randomly initialised TIPS with the B/14 shapes:
width 768, 12 + 12 layers) one toy dataset is trained on twice with :func:`train_prompts` and
the paper's settings (batch 8, Adam), once with ``cache="none"`` (every epoch decodes every
image and runs the vision tower) and once with ``cache="memory"`` (epoch 1 fills the cache,
later epochs only run the text tower with the prompts and the loss). Reported per model: the
median time of epochs >= 2 for both, their ratio (target >= 10x), the first (filling) epoch, and
the largest difference between the two runs' final prompts (float16 storage).

Second, per model, the loss's gradient: the hand-derived one (``fused_segmentation_loss``, what
training uses while ``tipsomaly_lite.method.training.FUSED_GRADIENT`` is True, the default) against
autograd through the readable ``segmentation_loss`` (``FUSED_GRADIENT = False``). Both run on the
same cached batch of 8 images; every round times each once, in alternating order, and the
ratio fused / autograd (below 1: fused is faster) is taken per round and reported as
min / median / max, for the loss and its gradient alone (the part the switch changes) and for a
whole training step (:func:`backward_step`: text tower, probabilities, upsampling, loss).

The toy images are written at ``--source-size`` px (default 768, like MVTec/VisA photos, so
decoding costs what it costs on real data) and read at ``--image-size`` (518, the paper's).

    python benchmarks/bench_training.py --quick     # smoke test, tiny model only, seconds
    python benchmarks/bench_training.py --json build/bench_training.json
    python benchmarks/bench_training.py --models tiny --gradient-only --rounds 15   # the switch alone

Timings are single measurements on a shared machine; the ratios are what the script is for.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch


# Test-only helpers (tests/helpers) are not part of the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.arch import with_depth  # noqa: E402

from tipsomaly_lite.backbones.tips.checkpoints import standard_architecture
from tipsomaly_lite.data.datasets import AnomalyDataset
from tipsomaly_lite.offline import MeaninglessResultsWarning
from tipsomaly_lite.backbones.tips.tiny import tiny_files
from tipsomaly_lite.backbones.tips.model import TIPS, load_tips
from tipsomaly_lite.backbones.tips.text import Tokenizer
from tipsomaly_lite.data.toy_data import TOY_CLASSES, make_toy_dataset
from tipsomaly_lite.method import training
from tipsomaly_lite.method.feature_cache import FeatureCache
from tipsomaly_lite.method.losses import fused_segmentation_loss, segmentation_loss
from tipsomaly_lite.method.prompt_learner import PromptLearner
from tipsomaly_lite.method.scoring import patch_probabilities
from tipsomaly_lite.method.training import TrainConfig, backward_step, bilinear_matrix, flush_denormals, train_prompts

TARGET = 10.0


def random_b14(depth: int | None, seed: int = 0) -> TIPS:
    """A TIPS with B/14 shapes and small random weights (speed does not depend on the values)."""
    arch = standard_architecture("B/14")
    if depth is not None:
        arch = with_depth(arch, depth)
    torch.manual_seed(seed)
    model = TIPS(arch, Tokenizer(tiny_files()[2]), temperature=0.01, variant="b14-shaped-random",
                 source="random init")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model.eval().requires_grad_(False)


def bench_model(name: str, model: TIPS, dataset: AnomalyDataset, epochs: int, log) -> dict:
    runs = {}
    for cache in ("none", "memory"):
        config = TrainConfig(epochs=epochs, cache=cache)
        log(f"  {name}: training {epochs} epochs on {len(dataset)} images, cache={cache} ...")
        runs[cache] = train_prompts(model, dataset, config, progress=False)
    # Median over epochs >= 2: one slow epoch on a shared machine should not decide the ratio.
    later = {k: statistics.median(r.epoch_seconds[1:]) for k, r in runs.items()}
    diff = max(float((a - b).abs().max()) for a, b in zip(runs["none"].prompts(), runs["memory"].prompts()))
    return {"model": name, "images": len(dataset), "epochs": epochs, "image_size": dataset.image_size,
            "uncached_epoch_s": later["none"], "cached_epoch_s": later["memory"],
            "speed_ratio": later["none"] / later["memory"], "cached_first_epoch_s": runs["memory"].epoch_seconds[0],
            "uncached_first_epoch_s": runs["none"].epoch_seconds[0], "prompt_max_abs_diff": diff,
            "final_loss_uncached": runs["none"].epoch_losses[-1], "final_loss_cached": runs["memory"].epoch_losses[-1]}


def _ratios(fused: list[float], autograd: list[float]) -> dict:
    """Per-round ratios fused / autograd: min, median, max; and each side's median seconds."""
    ratios = [f / a for f, a in zip(fused, autograd)]
    return {"fused_s": statistics.median(fused), "autograd_s": statistics.median(autograd),
            "ratio_min": min(ratios), "ratio_median": statistics.median(ratios), "ratio_max": max(ratios)}


def bench_gradient(name: str, model: TIPS, dataset: AnomalyDataset, rounds: int, log) -> dict:
    """Fused (hand-derived) vs autograd gradient of the loss, on one cached batch of 8 images."""
    size = dataset.image_size
    grid = model.patch_grid(size)
    batch = FeatureCache(model, size, progress=False).get(dataset, list(range(min(8, len(dataset)))))
    tokens, masks = batch["patch_tokens"], batch["mask"]
    learner = PromptLearner(model, generator=torch.Generator().manual_seed(111))
    # The loss's input as training makes it: each image's upsampled anomalous probability (1, S, S).
    rows, cols = (bilinear_matrix(g, s).to(tokens) for g, s in zip(grid, masks.shape[-2:]))
    with torch.no_grad():
        probs = patch_probabilities(tokens, learner(), model.scoring_rule)[..., 1]
        maps = [rows @ probs[i].reshape(1, *grid) @ cols.T for i in range(len(tokens))]

    def loss_only(fused: bool) -> None:
        for u, mask in zip(maps, masks):
            u = u.clone().requires_grad_()
            if fused:
                loss = fused_segmentation_loss(u, mask[None])
            else:
                loss = segmentation_loss(torch.stack([1 - u, u], dim=1), mask[None])
            loss.backward()

    def whole_step(fused: bool) -> None:
        training.FUSED_GRADIENT = fused
        learner.zero_grad(set_to_none=True)
        backward_step(learner, tokens, masks, model.scoring_rule, grid)

    times = {(task, fused): [] for task in ("loss", "step") for fused in (True, False)}
    log(f"  {name}: fused vs autograd gradient, {rounds} rounds on {len(tokens)} images at {size} px ...")
    try:
        with flush_denormals():  # as in training: denormal probabilities would slow both sides
            for r in range(rounds + 1):  # round 0 warms up and is dropped
                for fused in ((True, False) if r % 2 else (False, True)):  # alternate who goes first
                    for task, run in (("loss", loss_only), ("step", whole_step)):
                        start = time.perf_counter()
                        run(fused)
                        if r:
                            times[task, fused].append(time.perf_counter() - start)
    finally:
        training.FUSED_GRADIENT = True  # the default
    return {"model": name, "image_size": size, "images": len(tokens), "rounds": rounds,
            "loss": _ratios(times["loss", True], times["loss", False]),
            "step": _ratios(times["step", True], times["step", False])}


def gradient_table(rows: list[dict]) -> str:
    lines = ["| model | px | images | part | fused | autograd | fused / autograd min | median | max |",
             "|" + "---|" * 9]
    for r in rows:
        for part, label in (("loss", "loss + gradient"), ("step", "training step")):
            t = r[part]
            lines.append(f"| {r['model']} | {r['image_size']} | {r['images']} | {label} | {t['fused_s'] * 1e3:.1f} ms "
                         f"| {t['autograd_s'] * 1e3:.1f} ms | {t['ratio_min']:.3f} | {t['ratio_median']:.3f} "
                         f"| {t['ratio_max']:.3f} |")
    return "\n".join(lines)


def markdown_table(rows: list[dict]) -> str:
    lines = ["| model | images | px | epoch >= 2 without cache | with cache | ratio | target >= 10x "
             "| epoch 1 with cache (fills it) | max prompt diff |", "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['model']} | {r['images']} | {r['image_size']} | {r['uncached_epoch_s']:.2f} s "
                     f"| {r['cached_epoch_s']:.3f} s | {r['speed_ratio']:.1f}x "
                     f"| {'yes' if r['speed_ratio'] >= TARGET else 'NO'} | {r['cached_first_epoch_s']:.2f} s "
                     f"| {r['prompt_max_abs_diff']:.1e} |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", nargs="+", choices=["tiny", "b14"], default=["tiny", "b14"])
    p.add_argument("--per-class", type=int, default=8, help="toy test images per class (half anomalous)")
    p.add_argument("--b14-per-class", type=int, default=4, help="images per class for the slower B/14 model")
    p.add_argument("--epochs", type=int, default=6, help="epochs per run for the tiny model (>= 2)")
    p.add_argument("--b14-epochs", type=int, default=3, help="epochs per run for the B/14 model (>= 2)")
    p.add_argument("--image-size", type=int, default=518)
    p.add_argument("--source-size", type=int, default=768, help="side of the toy image files")
    p.add_argument("--depth", type=int, default=None, help="B/14 layers per tower (default: 12)")
    p.add_argument("--rounds", type=int, default=9, help="rounds of the fused vs autograd gradient timing")
    p.add_argument("--gradient-only", action="store_true", help="only the fused vs autograd gradient timing")
    p.add_argument("--quick", action="store_true", help="smoke test: tiny only, 2 epochs, small images")
    p.add_argument("--json", type=Path, default=None, metavar="PATH")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.per_class, args.epochs = ["tiny"], 2, 2
        args.image_size, args.source_size, args.rounds = 112, 128, 3
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    if min(args.epochs, args.b14_epochs) < 2:
        p.error("--epochs and --b14-epochs must be >= 2 (epoch 1 fills the cache)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    warnings.simplefilter("ignore", MeaninglessResultsWarning)  # the numbers here are timings, not results
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    env = {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads()}
    log(f"environment: {env}")
    rows, gradient_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        def toy(per_class: int) -> AnomalyDataset:
            n_anom = per_class // 2
            root = make_toy_dataset(Path(tmp) / f"toy{per_class}", image_size=args.source_size, n_train=0,
                                    n_normal=per_class - n_anom, n_anomalous=n_anom, classes=TOY_CLASSES)
            return AnomalyDataset(root, image_size=args.image_size)

        for name in args.models:
            if name == "tiny":
                model, ds, epochs = load_tips("tiny"), toy(args.per_class), args.epochs
            else:
                model, ds, epochs = random_b14(args.depth), toy(args.b14_per_class), args.b14_epochs
            start = time.perf_counter()
            if not args.gradient_only:
                rows.append(bench_model(name, model, ds, epochs, log))
                log(f"  {name}: done in {time.perf_counter() - start:.0f} s, ratio {rows[-1]['speed_ratio']:.1f}x")
            gradient_rows.append(bench_gradient(name, model, ds, args.rounds, log))
    if rows:
        log("\n" + markdown_table(rows))
        log("\nspeed ratio = median epoch time (epochs >= 2) without cache / with cache; target >= 10x.")
    log("\n" + gradient_table(gradient_rows))
    log("\nfused / autograd = time with the hand-derived gradient (FUSED_GRADIENT = True, the default) / time "
        "with autograd through segmentation_loss, per round (below 1: fused is faster); fused and autograd are "
        "median times.")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"environment": env, "config": vars(args) | {"json": str(args.json)},
                                         "results": rows, "gradient": gradient_rows}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
