#!/usr/bin/env python
"""onnxruntime against PyTorch on the CPU: the exported detector (``tipsomaly export``) at a real size.

One run writes random weights with a public TIPS shape (``--arch``, default B/14; L/14 is the paper's) in the
official npz layout (``random_tips_arrays``) and loads them with ``load_tips`` at ``--size`` px (518, the
paper's), builds a decoupled :class:`~tipsomaly_lite.method.detector.Detector` with random learned prompts,
exports it for one class word with :func:`tipsomaly_lite.deploy.export_onnx` (which first checks the file
against ``Detector.predict``) and times, on the same random images, ``Detector.predict`` (PyTorch, fp32,
``torch.inference_mode``) against ``onnxruntime`` (CPU provider, default graph optimisations) running the file:
one warm-up each, then ``--repeats`` rounds calling both, the order alternating, so a busy machine slows
both alike. The ratio is PyTorch's median time over onnxruntime's (above 1: onnxruntime is faster), all from
this one run; the machine and its load (before and after) are printed with it. Random weights: the timing is
what is measured, not the scores.

Examples::

    python benchmarks/bench_export.py --quick              # smoke test: 1 block, 112 px (~30 s)
    python benchmarks/bench_export.py                      # B/14, 518 px, batch 1 and 2 (minutes on 2 cores)
    python benchmarks/bench_export.py --arch L/14 --json build/bench_export.json
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

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # test-only helpers (tests/helpers) are not part of the package

from helpers.arch import with_depth  # noqa: E402

from tipsomaly_lite.backbones.tips.checkpoints import standard_architecture, write_npz  # noqa: E402
from tipsomaly_lite.backbones.tips.model import load_tips  # noqa: E402
from tipsomaly_lite.backbones.tips.tiny import random_tips_arrays, tiny_files  # noqa: E402
from tipsomaly_lite.deploy.export import export_onnx  # noqa: E402
from tipsomaly_lite.method.detector import Detector  # noqa: E402
from tipsomaly_lite.offline import MeaninglessResultsWarning  # noqa: E402


def machine() -> dict[str, object]:
    """What the numbers were measured on."""
    import onnxruntime

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on every OS
        return []


def build_detector(arch_name: str, depth: int | None, size: int, folder: Path, seed: int = 0) -> Detector:
    arch = standard_architecture(arch_name)
    if depth is not None:
        arch = with_depth(arch, depth)
    vision, text = random_tips_arrays(arch, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MeaninglessResultsWarning)
        model = load_tips(vision=write_npz(folder / "vision.npz", vision), text=write_npz(folder / "text.npz", text),
                          tokenizer=tiny_files()[2], image_size=size)
    g = torch.Generator().manual_seed(seed)
    prompts = tuple(0.02 * torch.randn(2, model.text_width, generator=g) for _ in range(2))
    return Detector(model, prompts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="B/14", help="TIPS shape: S/14, B/14 (default), L/14 (the paper's), ...")
    p.add_argument("--depth", type=int, default=None, help="fewer vision and text blocks (default: the shape's)")
    p.add_argument("--size", type=int, default=518, help="input side in px (default 518, the paper's)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2], help="batch sizes (default 1 2)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds per batch size (default 3)")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 block, 112 px, batch 1, 2 rounds")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    if args.quick:
        args.depth, args.size, args.batches, args.repeats = 1, 112, [1], 2
    import onnxruntime as ort

    print("machine:", json.dumps(machine()))
    load_before = load_average()
    print(f"load average (1, 5, 15 min) before: {load_before}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        detector = build_detector(args.arch, args.depth, args.size, folder)
        print(detector.model)
        t0 = time.perf_counter()
        result = export_onnx(detector, "metal nut", folder / "detector.onnx")
        export_s = time.perf_counter() - t0
        size_mib = result.path.stat().st_size / 2**20
        print(f"exported in {export_s:.1f} s: {size_mib:.0f} MiB, max |onnxruntime - PyTorch| {result.max_error:.1e}")
        session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
        g = torch.Generator().manual_seed(1)
        for batch in args.batches:
            images = torch.rand(batch, 3, args.size, args.size, generator=g)
            feed = {"image": images.numpy()}

            def run_torch():
                with torch.inference_mode():
                    return detector.predict(images, "metal nut")

            def run_ort():
                return session.run(["image_score", "anomaly_map"], feed)

            fns = {"pytorch": run_torch, "onnxruntime": run_ort}
            for fn in fns.values():  # warm-up
                fn()
            times: dict[str, list[float]] = {name: [] for name in fns}
            for r in range(args.repeats):
                for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
                    t = time.perf_counter()
                    fns[name]()
                    times[name].append(time.perf_counter() - t)
            med = {name: statistics.median(v) for name, v in times.items()}
            rows.append({"batch": batch, "pytorch_s": med["pytorch"], "onnxruntime_s": med["onnxruntime"],
                         "speed_ratio": med["pytorch"] / med["onnxruntime"], "times": times})
    load_after = load_average()
    print(f"\n{args.arch} (depth {args.depth or 'full'}), {args.size} px, fp32, CPU; median of {args.repeats} rounds")
    print("| batch | PyTorch s | onnxruntime s | speed ratio (PyTorch / onnxruntime) | onnxruntime img/s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['pytorch_s']:.3f} | {r['onnxruntime_s']:.3f} | {r['speed_ratio']:.2f}x | "
              f"{r['batch'] / r['onnxruntime_s']:.2f} |")
    print(f"load average (1, 5, 15 min) after: {load_after} on {os.cpu_count()} CPUs (a busy machine slows both sides)")
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"config": vars(args), "machine": machine(), "load_before": load_before,
                                   "load_after": load_after, "export_s": export_s, "onnx_mib": size_mib,
                                   "max_error": result.max_error, "results": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
