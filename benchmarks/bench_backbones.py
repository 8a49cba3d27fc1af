"""TIPS, CLIP and SigLIP2 side by side: vision-tower images/s and peak memory at each one's native size.

Each backbone is built with its real architecture and random weights (nothing is downloaded: the
speed of a forward does not depend on the values of the weights) and measured through the same
:class:`~tipsomaly_lite.backbones.base.Backbone` call the method uses, ``encode_features``, in a
fresh process per backbone so that one's memory does not hide in another's peak.

    .venv/bin/python benchmarks/bench_backbones.py            # L-sized models, ~5 min on 2 cores
    .venv/bin/python benchmarks/bench_backbones.py --quick    # tiny models, seconds (the smoke test)
    .venv/bin/python benchmarks/bench_backbones.py --json build/backbones.json

Printed: one row per backbone with its input size, patch grid, parameters, images/s (median of
``--repeats`` timed batches after one warm-up) and the peak resident memory of the process above
its baseline before the model was built.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

# name -> (family, what is built)
BACKBONES = {
    "TIPS L/14 (l14-hr)": ("tips", "L/14"),
    "CLIP L/14-336": ("clip", "openai/clip-vit-large-patch14-336"),
    "SigLIP2 So400m/16-256": ("siglip2", "google/siglip2-so400m-patch16-256"),
}
QUICK = {"TIPS tiny": ("tips", "tiny"), "CLIP tiny": ("clip", "tiny"), "SigLIP2 tiny": ("siglip2", "tiny")}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _build(family: str, what: str):
    """A frozen backbone with the real architecture of ``what`` and random weights (or the tiny one)."""
    from tipsomaly_lite.backbones import load_backbone

    if what == "tiny":
        return load_backbone("tiny", family=family)
    import torch

    torch.manual_seed(0)
    if family == "tips":
        from tipsomaly_lite.backbones.tips.checkpoints import standard_architecture
        from tipsomaly_lite.backbones.tips.model import TIPS
        from tipsomaly_lite.backbones.tips.tiny import tiny_files
        from tipsomaly_lite.backbones.tips.text import Tokenizer

        model = TIPS(standard_architecture(what), Tokenizer(tiny_files()[2]), temperature=0.01,
                     variant="l14-shaped-random", source="random init")
        return model.eval().requires_grad_(False)
    import transformers

    from tipsomaly_lite.backbones.hf import CLIPBackbone, SigLIP2Backbone, _STATS, _TinyTokenizer

    if family == "clip":
        config = transformers.CLIPConfig(
            text_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
            vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                               image_size=336, patch_size=14), projection_dim=768)
        model, cls = transformers.CLIPModel(config), CLIPBackbone
    else:
        common = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16)
        config = transformers.SiglipConfig(text_config=dict(common, projection_size=1152),
                                           vision_config=dict(common, image_size=256, patch_size=16))
        model, cls = transformers.SiglipModel(config), SigLIP2Backbone
    mean, std = _STATS[family]
    return cls(model, _TinyTokenizer(family, 64), variant=what + " (random weights)", source="random init",
               image_size=None, image_mean=mean, image_std=std)


def measure_one(family: str, what: str, batch: int, repeats: int) -> dict:
    """Images/s and peak memory of one backbone, in this process."""
    import torch

    torch.set_num_threads(torch.get_num_threads())
    base = _rss_mib()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _build(family, what)
    size = model.image_size
    images = torch.rand(batch, 3, size, size)
    times = []
    with torch.inference_mode():
        model.encode_features(images)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            model.encode_features(images)
            times.append(time.perf_counter() - start)
    params = sum(p.numel() for p in model.parameters())
    return {"family": family, "built": what, "image_size": size, "grid": list(model.patch_grid()),
            "params_m": params / 1e6, "images_per_s": batch / statistics.median(times),
            "peak_mib": _rss_mib() - base}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny models (smoke test)")
    ap.add_argument("--batch", type=int, default=1, help="images per forward (default 1)")
    ap.add_argument("--repeats", type=int, default=3, help="timed forwards per backbone (default 3)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    ap.add_argument("--one", nargs=2, metavar=("FAMILY", "WHAT"), help=argparse.SUPPRESS)  # the child process
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(*args.one, batch=args.batch, repeats=args.repeats)))
        return 0
    rows = []
    for name, (family, what) in (QUICK if args.quick else BACKBONES).items():
        done = subprocess.run([sys.executable, __file__, "--one", family, what, "--batch", str(args.batch),
                               "--repeats", str(args.repeats)], capture_output=True, text=True, check=True)
        rows.append({"name": name, **json.loads(done.stdout.strip().splitlines()[-1])})
    print(f"Vision towers through Backbone.encode_features, fp32, batch {args.batch}, median of {args.repeats}, "
          f"random weights ({platform.processor() or platform.machine()}, torch threads default)")
    print("| backbone | input | patches | params (M, both towers) | images/s | peak MiB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['image_size']} px | {r['grid'][0]}x{r['grid'][1]} | {r['params_m']:.1f} | "
              f"{r['images_per_s']:.2f} | {r['peak_mib']:.0f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
