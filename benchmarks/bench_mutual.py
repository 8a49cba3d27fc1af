#!/usr/bin/env python
"""Mutual scoring (docs/method.md §2.9): time and peak memory for a growing batch of test images.

Mutual scoring compares every test image of a class with every other one, so its cost grows with the
square of the batch: ``B (B - 1) / 2`` pair searches of ``N x N`` dot products of width ``D``. Its
memory is the features (``B N D`` floats) plus the table of per-image minima (``B^2 N`` floats) plus one
``chunk x chunk`` block. This script measures both for batch sizes ``--batches`` on the features of
the tiny offline model (random weights: the scores are meaningless, the cost is what is measured), or
on random unit features of any ``--patches`` and ``--width`` (e.g. ``--patches 1369 --width 1024``,
TIPS L/14 at 518 px).

Time: median of ``--repeats`` calls of :func:`tipsomaly_lite.method.mutual.mutual_scores` after one
warm-up. Peak memory: on the CPU, ``VmHWM - VmRSS`` around the call after resetting the kernel's peak
counter (``/proc/self/clear_refs``), beside the predicted size of the minima table; on CUDA,
``torch.cuda.max_memory_allocated() - memory_allocated()``.

    python benchmarks/bench_mutual.py                        # tiny model, 224 px (256 patches), B = 2..32
    python benchmarks/bench_mutual.py --patches 1369 --width 1024 --batches 2 4 8 --json build/bench_mutual.json
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

from tipsomaly_lite.method.mutual import mutual_scores


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _status_kib("VmHWM") is not None
    except OSError:
        return False


def peak_mib(fn, device: torch.device) -> float | None:
    """Extra peak memory of one call of ``fn`` in MiB (None when it cannot be measured here)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    if not _reset_peak():
        return None
    before = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - before) / 1024


def features(args: argparse.Namespace, batch: int, device: torch.device) -> torch.Tensor:
    """``(batch, N, D)`` patch tokens: the tiny model's on seeded random images, or random unit vectors."""
    g = torch.Generator().manual_seed(batch)
    if args.patches:
        x = torch.randn(batch, args.patches, args.width, generator=g)
        return (x / x.norm(dim=-1, keepdim=True)).to(device)
    from tipsomaly_lite.backbones.tips.model import load_tips

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_tips("tiny", device=device)
    with torch.no_grad():
        return model.encode_features(torch.rand(batch, 3, args.size, args.size, generator=g).to(device))["patch_tokens"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[2, 4, 8, 16, 32], help="batch sizes B")
    p.add_argument("--size", type=int, default=224, help="input side for the tiny model, a multiple of 14 (224)")
    p.add_argument("--patches", type=int, default=0, help="random features with N patches instead of the tiny model")
    p.add_argument("--width", type=int, default=1024, help="their width D (with --patches)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per batch size (median)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)
    if min(args.batches) < 2:
        p.error("--batches: mutual scoring needs at least 2 images")
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"mutual scoring, {'random features' if args.patches else f'tiny offline model at {args.size} px'}, "
          f"{device}, {torch.get_num_threads()} threads, load average {load[0]:.2f}")
    print("(the tiny model's scores are meaningless; only time and memory are measured)\n")
    print(f"{'B':>4} {'N':>6} {'D':>5} {'pairs':>7} {'GFLOP':>8} {'time s':>9} {'ms/pair':>8} "
          f"{'peak MiB':>9} {'table MiB':>9}")
    rows = []
    for b in args.batches:
        x = features(args, b, device)
        _, n, d = x.shape
        mutual_scores(x)  # warm-up
        sync()
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            mutual_scores(x)
            sync()
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        peak = peak_mib(lambda: mutual_scores(x), device)
        pairs = b * (b - 1) // 2
        row = {"batch": b, "patches": n, "width": d, "pairs": pairs, "gflop": 2 * pairs * n * n * d / 1e9,
               "seconds": seconds, "ms_per_pair": 1e3 * seconds / pairs, "peak_mib": peak,
               "table_mib": b * b * n * 4 / 2**20}
        rows.append(row)
        print(f"{b:>4} {n:>6} {d:>5} {pairs:>7} {row['gflop']:>8.3f} {seconds:>9.4f} {row['ms_per_pair']:>8.3f} "
              f"{'n/a' if peak is None else f'{peak:.1f}':>9} {row['table_mib']:>9.2f}")
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        print(f"\ntime grew {last['seconds'] / first['seconds']:.1f}x for {last['pairs'] / first['pairs']:.0f}x the "
              "pairs (the cost is quadratic in B; small batches are dominated by per-call overhead)")
    print(f"load average at the end {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"config": vars(args), "results": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
