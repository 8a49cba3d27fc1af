#!/usr/bin/env python
"""Would bf16 autocast of the frozen text tower in cached prompt training pay, and keep the prompts?

For each model (the tiny offline TIPS; a TIPS with the real B/14 shapes and random N(0, 0.02)
weights) the toy dataset is trained on twice with :func:`train_prompts`, the paper's settings
(batch 8, Adam, seed 111), sharing one in-memory feature cache (filled once, beforehand): once as
shipped (text tower in float32) and once with the prompt learner's forward, i.e. the text tower,
under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (its output cast back to float32; the
backward pass follows autocast). Reported: median epoch time of each (all epochs use the cache),
their ratio, the largest |difference| of the trained prompts (absolute, and relative to the largest
|prompt| value), and the largest |difference| of the anomaly maps the two sets of prompts give on
the training images (the figure that matters; values in [0, 1]).

The tolerance this script judges by: trained prompts within 1 % of float32's (largest |difference| over
the largest |value|) and maps within 5e-3 (the agreement bf16 gives the vision tower, README
"Performance"). Nothing in the package uses autocast unless this says it may.

    python benchmarks/bench_text_autocast.py --quick                # tiny model, seconds
    python benchmarks/bench_text_autocast.py --models tiny b14 --epochs 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tipsomaly_lite.backbones.tips.checkpoints import standard_architecture, write_npz  # noqa: E402
from tipsomaly_lite.backbones.tips.model import load_tips  # noqa: E402
from tipsomaly_lite.backbones.tips.tiny import random_tips_arrays, tiny_files  # noqa: E402
from tipsomaly_lite.data.datasets import AnomalyDataset  # noqa: E402
from tipsomaly_lite.data.toy_data import TOY_CLASSES, make_toy_dataset  # noqa: E402
from tipsomaly_lite.method.feature_cache import FeatureCache  # noqa: E402
from tipsomaly_lite.method.maps import anomaly_map  # noqa: E402
from tipsomaly_lite.method.prompt_learner import PromptLearner  # noqa: E402
from tipsomaly_lite.method.scoring import patch_probabilities  # noqa: E402
from tipsomaly_lite.method.training import TrainConfig, train_prompts  # noqa: E402
from tipsomaly_lite.offline import MeaninglessResultsWarning  # noqa: E402

MAP_TOL = 5e-3
PROMPT_REL_TOL = 1e-2  # largest |prompt difference| / largest |prompt value|


@contextlib.contextmanager
def text_autocast():
    """The prompt learner's forward (the frozen text tower) under CPU bf16 autocast, float32 out."""
    original = PromptLearner.forward

    def forward(self):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = original(self)
        return out.float()
    PromptLearner.forward = forward
    try:
        yield
    finally:
        PromptLearner.forward = original


def maps_of(model, cache, dataset, prompts, learner_template) -> torch.Tensor:
    learner = learner_template
    with torch.no_grad():
        learner.normal.copy_(prompts[0])
        learner.anomalous.copy_(prompts[1])
        text = learner()
    batch = cache.get(dataset, list(range(len(dataset))))
    grid = model.patch_grid(dataset.image_size)
    probs = patch_probabilities(batch["patch_tokens"].float(), text, model.temperature)[..., 1]
    return anomaly_map(probs, grid, dataset.image_size)


def bench(name: str, model, dataset, epochs: int, log) -> dict:
    cache = FeatureCache(model, dataset.image_size, progress=False)
    t0 = time.perf_counter()
    cache.get(dataset, list(range(len(dataset))))  # fill once: both runs then use the same cached features
    log(f"  {name}: cache filled in {time.perf_counter() - t0:.1f}s; training {epochs} epochs x 2 ...")
    runs = {}
    for label, ctx in (("fp32", contextlib.nullcontext()), ("autocast bf16", text_autocast())):
        with ctx:
            runs[label] = train_prompts(model, dataset, TrainConfig(epochs=epochs, cache="memory"), cache=cache,
                                        progress=False)
    a, b = runs["fp32"].prompts(), runs["autocast bf16"].prompts()
    diff = max(float((x - y).abs().max()) for x, y in zip(a, b))
    scale = max(float(x.abs().max()) for x in a)
    template = PromptLearner(model, generator=torch.Generator().manual_seed(0))
    map_diff = float((maps_of(model, cache, dataset, a, template) - maps_of(model, cache, dataset, b, template))
                     .abs().max())
    med = {k: statistics.median(r.epoch_seconds) for k, r in runs.items()}
    row = {"model": name, "images": len(dataset), "epochs": epochs, "fp32_epoch_s": med["fp32"],
           "autocast_epoch_s": med["autocast bf16"], "speed_ratio": med["fp32"] / med["autocast bf16"],
           "prompt_max_abs_diff": diff, "prompt_rel_diff": diff / scale, "map_max_abs_diff": map_diff,
           "within_tolerance": map_diff <= MAP_TOL and diff / scale <= PROMPT_REL_TOL}
    log(f"  {name}: epoch fp32 {med['fp32']:.2f}s, autocast {med['autocast bf16']:.2f}s "
        f"({row['speed_ratio']:.2f}x); prompts differ by {diff:.2e} ({row['prompt_rel_diff']:.1e} of the largest); "
        f"maps by {map_diff:.2e}; tolerance prompts {PROMPT_REL_TOL:g} relative and maps {MAP_TOL:g}: "
        f"{'within' if row['within_tolerance'] else 'NOT within'}")
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["tiny", "b14"], choices=["tiny", "b14"])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--image-size", type=int, default=518)
    p.add_argument("--quick", action="store_true", help="tiny model, 2 epochs, 112 px")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.epochs, args.image_size = ["tiny"], 2, 112
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    log(f"bench_text_autocast: torch {torch.__version__}, {torch.get_num_threads()} threads; load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_autocast_") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", MeaninglessResultsWarning)
        root = make_toy_dataset(Path(tmp) / "toy", classes=list(TOY_CLASSES[:args.classes]), n_train=0)
        dataset = AnomalyDataset(root, image_size=args.image_size)
        for name in args.models:
            if name == "tiny":
                model = load_tips("tiny", image_size=args.image_size)
            else:
                vision, text = random_tips_arrays(standard_architecture("B/14"))
                v, t = write_npz(Path(tmp) / "v.npz", vision), write_npz(Path(tmp) / "t.npz", text)
                del vision, text
                model = load_tips(vision=v, text=t, tokenizer=tiny_files()[2], image_size=args.image_size)
            rows.append(bench(name, model, dataset, args.epochs, log))
    log(f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
