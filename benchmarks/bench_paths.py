#!/usr/bin/env python
"""The per-machine fast paths, timed against the readable ones, and what loading costs in memory.

(a) **map**: the anomaly map of ``--maps`` patch grids 37 x 37 -> 518 x 518 px, σ = 4: upsampling then
    :func:`~tipsomaly_lite.method.maps.gaussian_blur` (the readable steps) against
    :func:`~tipsomaly_lite.method.maps.anomaly_map` (two cached matrix products per map).
(b) **attention**: one B/14 attention call at 448 px (1 image, 12 heads, 1,026 tokens, head width 64):
    fp32 SDPA, bf16 SDPA and bf16 chunked, and the path this machine chooses for bf16
    (:func:`tipsomaly_lite.backbones.tips.vision.bf16_attention`).
(c) **load**: in a fresh process per run, load random ``--arch``-shaped weights (official npz layout) with
    ``dtype`` fp32 or bf16, then encode ``--images`` images at 448 px; reported: seconds to load and the
    peak resident memory of the process (``ru_maxrss``) after loading and after encoding.
    ``--pythonpath DIR`` runs the children against another checkout of the package (an older commit,
    for a before/after).

Timings (a, b): one warm-up each, then ``--repeats`` rounds calling every variant once in a rotating
order; min / median / max per variant and the ratio of medians, all from the same run. The load
average is printed at the start and the end: on a shared machine, compare ratios, not single times.

Examples::

    python benchmarks/bench_paths.py --quick                     # seconds: small maps, tiny load
    python benchmarks/bench_paths.py --arch B/14 --load-rounds 3  # the B/14 load, fp32 and bf16 alternating
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path and not os.environ.get("PYTHONPATH"):  # a given PYTHONPATH (--pythonpath) wins
    sys.path.insert(0, str(REPO))


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def rotating(fns: dict, repeats: int) -> dict[str, list[float]]:
    names = list(fns)
    with torch.inference_mode():
        for fn in fns.values():
            fn()
        times = {n: [] for n in names}
        for r in range(repeats):
            for n in names[r % len(names):] + names[:r % len(names)]:
                start = time.perf_counter()
                fns[n]()
                times[n].append(time.perf_counter() - start)
    return times


def spread(ts: list[float], scale: float = 1e3) -> str:
    return f"{min(ts) * scale:.2f} / {statistics.median(ts) * scale:.2f} / {max(ts) * scale:.2f}"


def bench_map(args, log) -> dict:
    from tipsomaly_lite.method.maps import anomaly_map, gaussian_blur, upsample_map

    grid, size = (37, 37), (518, 518)
    scores = torch.rand(args.maps, grid[0] * grid[1], generator=torch.Generator().manual_seed(0))
    fns = {"upsample + blur": lambda: gaussian_blur(upsample_map(scores.reshape(-1, *grid), size), sigma=4.0),
           "matrix products": lambda: anomaly_map(scores, grid, size, sigma=4.0)}
    diff = (fns["upsample + blur"]() - fns["matrix products"]()).abs().max().item()
    times = rotating(fns, args.repeats)
    per_map = {n: [t / args.maps for t in ts] for n, ts in times.items()}
    ratio = statistics.median(per_map["upsample + blur"]) / statistics.median(per_map["matrix products"])
    for n, ts in per_map.items():
        log(f"  map {n:16s} {spread(ts)} ms per 518 px map (min / median / max)")
    log(f"  map: matrix products {ratio:.1f}x faster (medians); max |difference| {diff:.1e}")
    return {"ms_per_map": {n: [1e3 * t for t in ts] for n, ts in per_map.items()}, "speedup": ratio, "max_diff": diff}


def bench_attention(args, log) -> dict:
    from tipsomaly_lite.backbones.tips.vision import bf16_attention, chunked_attention

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 12, 1026, 64, generator=gen) for _ in range(3))
    qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()
    fns = {"fp32 sdpa": lambda: F.scaled_dot_product_attention(q, k, v),
           "bf16 sdpa": lambda: F.scaled_dot_product_attention(qb, kb, vb),
           "bf16 chunked": lambda: chunked_attention(qb, kb, vb)}
    times = rotating(fns, args.repeats)
    for n, ts in times.items():
        log(f"  attention {n:13s} {spread(ts)} ms per call (min / median / max)")
    choice = bf16_attention()
    log(f"  bf16 attention chosen here: {choice}")
    return {"ms_per_call": {n: [1e3 * t for t in ts] for n, ts in times.items()}, "chosen": str(choice)}


def load_child(spec: dict) -> dict:
    """In a fresh process: load with the asked dtype, encode one image, report time and peak RSS."""
    import warnings

    start = time.perf_counter()
    from tipsomaly_lite.backbones.tips.model import load_tips

    imported = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if spec["files"] is None:
            model = load_tips("tiny", dtype=spec["dtype"])
        else:
            model = load_tips(vision=spec["files"]["vision"], text=spec["files"]["text"],
                              tokenizer=spec["files"]["tokenizer"], dtype=spec["dtype"])
    loaded = time.perf_counter()
    load_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    model.encode_features(torch.rand(spec["images"], 3, 448, 448))
    return {"package": str(Path(sys.modules["tipsomaly_lite"].__file__).parent), "import_s": imported - start,
            "load_s": loaded - imported, "load_peak_mib": load_rss,
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "dynamo_imported": "torch._dynamo" in sys.modules}


def bench_load(args, log) -> dict:
    from tipsomaly_lite.backbones.tips.checkpoints import standard_architecture, write_npz
    from tipsomaly_lite.backbones.tips.tiny import random_tips_arrays, tiny_files

    env = dict(os.environ)
    if args.pythonpath:
        env["PYTHONPATH"] = args.pythonpath
    results: dict[str, list[dict]] = {"fp32": [], "bf16": []}
    with tempfile.TemporaryDirectory(prefix="bench_paths_") as tmp:
        files = None
        if args.arch != "tiny":
            vision, text = random_tips_arrays(standard_architecture(args.arch))
            files = {"vision": str(write_npz(Path(tmp) / "v.npz", vision)),
                     "text": str(write_npz(Path(tmp) / "t.npz", text)), "tokenizer": str(tiny_files()[2])}
            del vision, text
        for _ in range(args.load_rounds):
            for dtype in ("fp32", "bf16"):
                cmd = [sys.executable, str(Path(__file__).resolve()), "--load-child",
                       json.dumps({"files": files, "dtype": dtype, "images": args.images})]
                done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
                line = [ln for ln in done.stdout.splitlines() if ln.startswith("LOAD_RESULT ")]
                if done.returncode or not line:
                    raise RuntimeError(f"load child failed: {done.stderr[-2000:]}")
                results[dtype].append(json.loads(line[-1][len("LOAD_RESULT "):]))
    for dtype, runs in results.items():
        log(f"  load {args.arch} {dtype}: load {spread([r['load_s'] for r in runs], 1)} s, peak RSS after load "
            f"{spread([r['load_peak_mib'] for r in runs], 1)} MiB, after {args.images} image(s) at 448 px "
            f"{spread([r['peak_mib'] for r in runs], 1)} MiB (min / median / max); torch._dynamo imported: "
            f"{sorted({r['dynamo_imported'] for r in runs})}; package {runs[0]['package']}")
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--maps", type=int, default=8, help="maps per call in (a)")
    p.add_argument("--repeats", type=int, default=7, help="timed rounds in (a) and (b)")
    p.add_argument("--arch", default="B/14", help="tiny, or a standard TIPS architecture (B/14, L/14...) for (c)")
    p.add_argument("--load-rounds", type=int, default=2, help="fresh processes per dtype in (c), alternating")
    p.add_argument("--images", type=int, default=1, help="images encoded in one call after loading in (c)")
    p.add_argument("--pythonpath", default=None, help="run the load children against this checkout instead")
    p.add_argument("--skip", nargs="*", default=[], choices=["map", "attention", "load"])
    p.add_argument("--quick", action="store_true", help="2 maps, 3 rounds, the tiny model, 1 load round")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--load-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.load_child:
        print("LOAD_RESULT " + json.dumps(load_child(json.loads(args.load_child))), flush=True)
        return 0
    if args.quick:
        args.maps, args.repeats, args.arch, args.load_rounds = 2, 3, "tiny", 1
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    cpu = "?"
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    log(f"bench_paths: torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu}, {os.cpu_count()} cpus; "
        f"load average {load_average()} at the start")
    out = {"cpu": cpu, "load_start": load_average()}
    if "map" not in args.skip:
        out["map"] = bench_map(args, log)
    if "attention" not in args.skip:
        out["attention"] = bench_attention(args, log)
    if "load" not in args.skip:
        out["load"] = bench_load(args, log)
    out["load_end"] = load_average()
    log(f"load average {out['load_end']} at the end")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
