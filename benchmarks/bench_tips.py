#!/usr/bin/env python
"""Speed and memory of our TIPS towers against transformers' ``Tipsv2Model``, same weights.

One run builds a random transformers ``Tipsv2Model`` (every parameter random, as in
``tests/test_tips_equivalence.py``), maps its state dict onto the official npz names with
:func:`tipsomaly_lite.backbones.tips.checkpoints.hf_to_npz_names`, writes real npz files and loads them with
:func:`tipsomaly_lite.backbones.tips.model.load_tips`. Both models therefore hold the same numbers. Then, under
``torch.inference_mode()``:

* vision tower, ours ``model.encode_image(images)`` vs theirs
  ``ref.vision_model(pixel_values=images).last_hidden_state``, at each image size and batch;
* text tower, ours ``model.encode_text(prompts)`` vs theirs
  ``ref.text_model(input_ids=ids, attention_mask=(~padding).long()).pooler_output`` with
  ``ids, padding = model.tokenizer(prompts)`` (tokenisation is timed on both sides).

Every timed configuration is checked first: the warm-up outputs of the two models must agree
(max |ours - theirs| / max |theirs| <= 1e-4 in fp32), so a wrong model is never timed. In
bf16 both are compared with the fp32 reference instead, and ours may not be more than twice as
far from it as theirs (plus 1e-3).

Timing: 1 warm-up call each, then ``--repeats`` calls each, alternating ours/theirs (and which
goes first) so that drifts of the machine hit both; the median is reported. The torch thread
count is left at its default and printed.

Peak memory:
* CPU: for every configuration and implementation a fresh Python process loads the model (from
  the same npz / state-dict files) and touches every weight. Then, twice: ``gc.collect()`` and
  glibc ``malloc_trim(0)``, reset the kernel's peak-RSS counter (``echo 5 > /proc/self/clear_refs``),
  record the RSS, run one forward, report ``VmHWM - RSS before the forward``, i.e. the peak extra
  resident memory of that forward. The second forward (steady state) gives the table's numbers
  and the ratio; the first one of the process (one-off allocator / oneDNN / OpenMP set-up
  included, for both sides alike) is shown in brackets. Without ``clear_refs`` it falls back to
  ``ru_maxrss`` (which cannot go below the load peak). Small values are noisy (+-20 MiB).
* CUDA: ``torch.cuda.max_memory_allocated() - memory_allocated()`` around one forward, in process.

``--device cuda`` adds L/14 (1024 wide, 24 layers, 16 heads) at 518 px in bf16 (both models cast
with ``.to(torch.bfloat16)``, bf16 inputs), with ``torch.cuda.synchronize()`` around every timing.

Roofline: first, the best GFLOP/s of square ``torch.mm`` in fp32 and in bf16 on the same device
(CPU sides 1024/2048/3072, best of 5; ``--quick`` 512/1024, best of 2; CUDA 4096/8192, TF32 off).
Every timed configuration's matmul FLOPs are counted (``benchmarks/roofline.py``: 2 FLOPs per
multiply-add; vision: patch embedding, qkv, output projection, MLP, attention's two matmuls at
that size and batch; text: the same at the padding-cut length, credited to both sides). The
table adds GFLOP, each side's achieved GFLOP/s and ours as a fraction of the measured matmul
throughput of its dtype; the target is fp32 vision tower >= 80 % of it, and the script prints
whether it is met. On CUDA it also prints images/s and ours as a fraction of the GPU's nominal
dense bf16 peak (known GPUs by name, or ``--peak-tflops``).

Examples::

    python benchmarks/bench_tips.py --quick                 # smoke test, ~1 minute on 2 cores
    python benchmarks/bench_tips.py --json build/bench.json # B/14, 448/518 px, batch 1/8 (minutes)
    python benchmarks/bench_tips.py --device cuda           # + L/14 bf16 at 518 px

Ratios are ours/theirs: speed ratio > 1 means ours is faster (target >= 1.2x); memory ratio
< 1 means ours needs less.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))
# The transformers reference is test-only code (tests/helpers), not part of the package.
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))  # roofline.py, when imported from elsewhere

from helpers.reference import random_reference  # noqa: E402
from roofline import gpu_peak_tflops, matmul_throughput, text_flops, vision_flops  # noqa: E402  (benchmarks/)

TARGET = 1.2
ROOFLINE_TARGET = 0.8  # fp32 vision tower: fraction of the measured fp32 matmul throughput
FP32_TOL = 1e-4
MIB = 1024 * 1024

# name -> (vision width, vision depth, heads, text depth, text mlp)
FAMILIES = {
    "b14": ("B/14", 768, 12, 12, 12, 3072),
    "l14": ("L/14", 1024, 24, 16, 12, 4096),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# --------------------------------------------------------------------------------------------
# Models


def make_config(family: str, depth: int | None):
    from helpers.reference import reference_config

    _, width, vdepth, heads, tdepth, tmlp = FAMILIES[family]
    return reference_config(width, depth or vdepth, heads, text_depth=depth or tdepth, text_mlp=tmlp)


def write_weights(ref, folder: Path) -> dict[str, str]:
    """npz pair + tokenizer for ours, config + state dict for theirs; returns the file paths."""
    from tipsomaly_lite.backbones.tips.tiny import train_tiny_tokenizer
    from helpers.reference import write_reference_npz

    vision, text = write_reference_npz(ref, folder)
    files = {"vision": vision, "text": text, "tokenizer": train_tiny_tokenizer(folder / "tok.model"),
             "ref_config": folder / "ref_config.json", "ref_state": folder / "ref_state.pt"}
    ref.config.to_json_file(str(files["ref_config"]))
    torch.save(ref.state_dict(), files["ref_state"])
    return {k: str(v) for k, v in files.items()}


def load_ours(files: dict[str, str], device="cpu"):
    from tipsomaly_lite.backbones.tips.model import load_tips

    return load_tips(vision=files["vision"], text=files["text"], tokenizer=files["tokenizer"], device=device)


def load_theirs(files: dict[str, str]):
    """Rebuild the reference from its config and state dict (weights fully in RAM, no mmap)."""
    from transformers import Tipsv2Config, Tipsv2Model

    model = Tipsv2Model(Tipsv2Config.from_json_file(files["ref_config"])).eval()
    model.load_state_dict(torch.load(files["ref_state"], map_location="cpu", weights_only=True))
    return model.requires_grad_(False)


def make_prompts(n: int) -> list[str]:
    """``n`` deterministic anomaly-detection prompts of varied length."""
    states = ["", "damaged ", "flawless ", "scratched ", "perfect ", "broken ", "cracked ", "clean "]
    objects = ["bottle", "metal nut", "carpet", "screw", "pill", "wood grain", "zipper", "cable",
               "transistor", "toothbrush", "capsule", "hazelnut", "leather", "tile", "grid"]
    templates = ["a photo of a {}{}.", "a cropped photo of the {}{}.", "a close-up photo of a {}{} with a defect.",
                 "{}{}", "a bad photo of the {}{}, seen from above on a textured surface."]
    out = []
    for i in range(n):
        t = templates[i % len(templates)]
        out.append(t.format(states[(i // len(templates)) % len(states)], objects[(i * 7) % len(objects)]))
    return out


# --------------------------------------------------------------------------------------------
# Helpers


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    ours, ref = ours.float(), ref.float()
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def vision_err(ours_out, ref_seq) -> float:
    cls1, cls2, patches = ours_out
    return max(rel_err(cls1, ref_seq[:, 0]), rel_err(cls2, ref_seq[:, 1]), rel_err(patches, ref_seq[:, 2:]))


def synchronizer(device: torch.device):
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def timed(fn, sync):
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - start, out


def time_pair(ours_fn, theirs_fn, repeats: int, sync, matmul_fn=None) -> tuple[list[float], list[float], list[float]]:
    """``repeats`` timings of each, alternating, with the first one switching every round.

    ``matmul_fn`` (optional, returns GFLOP/s) is timed at the start of every round, so that each
    round's tower time has the machine's matmul throughput *of that moment* beside it.
    Returns:
        ours seconds, theirs seconds, matmul GFLOP/s (empty without ``matmul_fn``), one entry per round.
    """
    times = {"ours": [], "theirs": []}
    fns = {"ours": ours_fn, "theirs": theirs_fn}
    matmul = []
    for r in range(repeats):
        if matmul_fn is not None:
            matmul.append(matmul_fn())
        for who in (("ours", "theirs") if r % 2 == 0 else ("theirs", "ours")):
            t, out = timed(fns[who], sync)
            del out
            times[who].append(t)
    return times["ours"], times["theirs"], matmul


def round_matmul(dtype: torch.dtype, device: torch.device, side: int, sync):
    """A function timing one square ``side x side`` matmul in ``dtype`` (after a warm-up), returning GFLOP/s."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(side, side, generator=gen).to(device, dtype) for _ in range(2))
    out = torch.empty(side, side, device=device, dtype=dtype)

    def run() -> float:
        with torch.inference_mode(), exact_fp32_cuda():
            t, _ = timed(lambda: torch.mm(a, b, out=out), sync)
        return 2 * side ** 3 / t / 1e9
    run()
    return run


@contextlib.contextmanager
def exact_fp32_cuda():
    """TF32 off (cuDNN convolutions use it by default) while checking fp32 agreement."""
    if not torch.cuda.is_available():
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class MismatchError(RuntimeError):
    pass


def check_agreement(what: str, err: float, dtype: torch.dtype, err_theirs: float | None = None) -> str:
    """Raise unless the outputs agree; return a short description of the check."""
    if dtype == torch.float32:
        if not err <= FP32_TOL:
            raise MismatchError(f"{what}: ours and transformers disagree, rel err {err:.2e} > {FP32_TOL:g}; "
                                "refusing to time a wrong model")
        return f"fp32 rel err {err:.1e}"
    bound = 2 * err_theirs + 1e-3
    if not err <= bound:
        raise MismatchError(f"{what}: ours is {err:.2e} from the fp32 reference, theirs {err_theirs:.2e} "
                            f"(bound {bound:.2e}); refusing to time a wrong model")
    return f"vs fp32 ref: ours {err:.1e}, theirs {err_theirs:.1e}"


# --------------------------------------------------------------------------------------------
# Peak memory


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def memory_child(spec: dict) -> dict:
    """Runs in a fresh process: load, touch weights, reset peak RSS, one forward, report."""
    dtype = DTYPES[spec["dtype"]]
    if spec["impl"] == "ours":
        model = load_ours(spec["files"]).to(dtype)
    else:
        model = load_theirs(spec["files"]).to(dtype)
    with torch.no_grad():  # fault every weight page in, so the forward only pays for activations
        touched = sum(float(p.float().sum()) for p in model.parameters())
    if spec["task"] == "vision":
        torch.manual_seed(1)
        images = torch.rand(spec["batch"], 3, spec["size"], spec["size"]).to(dtype)
        if spec["impl"] == "ours":
            fn = lambda: model.encode_image(images)  # noqa: E731
        else:
            fn = lambda: model.vision_model(pixel_values=images).last_hidden_state  # noqa: E731
    else:
        from tipsomaly_lite.backbones.tips.text import Tokenizer

        prompts = make_prompts(spec["batch"])
        if spec["impl"] == "ours":
            fn = lambda: model.encode_text(prompts)  # noqa: E731
        else:
            ids, padding = Tokenizer(spec["files"]["tokenizer"])(prompts)
            mask = (~padding).long()
            fn = lambda: model.text_model(input_ids=ids, attention_mask=mask).pooler_output  # noqa: E731
    def trim():
        gc.collect()
        with contextlib.suppress(OSError, AttributeError):  # give freed heap pages back (glibc)
            ctypes.CDLL("libc.so.6").malloc_trim(0)

    def one_forward() -> tuple[float, str]:
        trim()
        method = "VmHWM" if _reset_peak_rss() and _status_kib("VmHWM") is not None else "ru_maxrss"
        before = _status_kib("VmRSS")
        if before is None:
            before, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss(no /proc)"
        with torch.inference_mode():
            out = fn()
        peak = _status_kib("VmHWM") if method == "VmHWM" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        del out
        return (peak - before) / 1024, method

    first, method = one_forward()
    steady, _ = one_forward()
    return {"first_mib": first, "steady_mib": steady, "method": method, "threads": torch.get_num_threads(),
            "touched": touched != 0}


def measure_cpu_memory(spec: dict, timeout: float = 1800) -> dict | None:
    """Peak extra RSS (MiB) of the first and of a second forward, in a fresh interpreter."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(REPO))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("MEMORY_RESULT ")]
    if proc.returncode != 0 or not lines:
        print(f"  !! memory child failed ({spec['impl']} {spec['task']} {spec.get('size')} b{spec['batch']}): "
              f"{proc.stderr.strip()[-2000:]}", file=sys.stderr)
        return None
    result = json.loads(lines[-1][len("MEMORY_RESULT "):])
    if result["method"] != "VmHWM":
        print(f"  !! memory measured with {result['method']} (peak RSS could not be reset)", file=sys.stderr)
    return result


def measure_cuda_memory(fn, sync) -> float:
    gc.collect()
    torch.cuda.empty_cache()
    sync()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.inference_mode():
        out = fn()
    sync()
    peak = torch.cuda.max_memory_allocated()
    del out
    return (peak - base) / MIB


# --------------------------------------------------------------------------------------------
# Benchmark


def bench_family(family: str, dtype: torch.dtype, sizes: list[int], batches: list[int], args,
                 device: torch.device, log) -> list[dict]:
    name = FAMILIES[family][0] + (f" (depth {args.depth})" if args.depth else "")
    _, width, vdepth, _, tdepth, tmlp = FAMILIES[family]
    vdepth, tdepth = args.depth or vdepth, args.depth or tdepth
    dname = "bf16" if dtype == torch.bfloat16 else "fp32"
    sync = synchronizer(device)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_tips_") as tmp:
        log(f"\n== {name}, {dname}, {device}: building the random reference and writing npz files ...")
        t0 = time.perf_counter()
        config = make_config(family, args.depth)
        ref32 = random_reference(config, args.seed)
        files = write_weights(ref32, Path(tmp))
        ours = load_ours(files, device)
        ref32 = ref32.to(device)
        if dtype == torch.float32:
            theirs, ours_t, ref_fp32 = ref32, ours, None
        else:  # keep the fp32 reference to judge the bf16 outputs of both
            theirs, ours_t, ref_fp32 = copy.deepcopy(ref32).to(dtype), ours.to(dtype), ref32
            ours = None
        log(f"   built in {time.perf_counter() - t0:.1f}s (attention: ours "
            f"{ours_t.attention_path()}; theirs {theirs.vision_model.config._attn_implementation})")
        # Every round times this matmul beside the towers: the fraction is taken round by round.
        matmul_fn = round_matmul(dtype, device, args.round_matmul, sync)

        def measure(task, size, n, unit, flops, ours_fn, theirs_fn, ref32_fn, err):
            """Warm-up doubles as the agreement check; then alternating timings, memory, one row."""
            what = f"{name} {task} {size or ''}{'px ' if size else ''}batch {n} {dname}"
            with torch.inference_mode():
                with exact_fp32_cuda() if dtype == torch.float32 else contextlib.nullcontext():
                    _, out_o = timed(ours_fn, sync)
                    _, out_t = timed(theirs_fn, sync)
                if ref_fp32 is None:
                    check = check_agreement(what, err(out_o, out_t), dtype)
                else:  # bf16: both sides against the fp32 reference
                    with exact_fp32_cuda():
                        ref = ref32_fn()
                    check = check_agreement(what, err(out_o, ref), dtype, err(out_t, ref))
                    del ref
                del out_o, out_t
                t_o, t_t, mm = time_pair(ours_fn, theirs_fn, args.repeats, sync, matmul_fn)
            row = dict(model=name, dtype=dname, task=task, size=size, batch=n, unit=unit, ours_s=t_o,
                       theirs_s=t_t, ours_per_s=n / statistics.median(t_o),
                       theirs_per_s=n / statistics.median(t_t), check=check)
            row["speed_ratio"] = row["ours_per_s"] / row["theirs_per_s"]
            row.update(roofline_columns(flops, statistics.median(t_o), statistics.median(t_t), dname, args,
                                        ours_times=t_o, matmul_rounds=mm))
            row.update(memory_pair(args, device, sync, files, dname, task, size, n, ours_fn, theirs_fn))
            log("   " + row_summary(row))
            rows.append(row)

        for size in sizes:
            for batch in batches:
                torch.manual_seed(1)
                images32 = torch.rand(batch, 3, size, size, device=device)
                images = images32.to(dtype)
                flops = vision_flops(width, vdepth, 4 * width, size, batch)
                measure("vision", size, batch, "img/s", flops,
                        lambda: ours_t.encode_image(images),
                        lambda: theirs.vision_model(pixel_values=images).last_hidden_state,
                        lambda: ref_fp32.vision_model(pixel_values=images32).last_hidden_state,
                        lambda out, seq: vision_err(out if isinstance(out, tuple) else
                                                    (out[:, 0], out[:, 1], out[:, 2:]), seq))
                del images, images32

        prompts = make_prompts(args.prompts)
        tokenizer = ours_t.tokenizer

        def text_model(model):
            ids, padding = tokenizer(prompts)
            return model.text_model(input_ids=ids.to(device), attention_mask=(~padding).long().to(device)).pooler_output

        # Both sides are credited with the FLOPs of the padding-cut batch (the work the answer needs).
        _, padding = tokenizer(prompts)
        longest = int((~padding).sum(dim=1).max())
        flops = text_flops(width, tdepth, tmlp, [longest] * len(prompts))
        measure("text", None, len(prompts), "sent/s", flops, lambda: ours_t.encode_text(prompts),
                lambda: text_model(theirs), lambda: text_model(ref_fp32), rel_err)
        del ours, ours_t, theirs, ref32, ref_fp32
        gc.collect()
    return rows


# --------------------------------------------------------------------------------------------
# Roofline


def measure_roofline(args, device: torch.device, log) -> dict:
    """The machine's best square-matmul GFLOP/s in fp32 and bf16, and the GPU's nominal bf16 peak."""
    sizes = tuple(args.matmul_sizes or ((4096, 8192) if device.type == "cuda" else
                                        (512, 1024) if args.quick else (1024, 2048, 3072)))
    repeats = 2 if args.quick else 5
    roof = {"matmul_sizes": list(sizes), "matmul_repeats": repeats, "matmul_gflops": {}, "matmul_by_size": {}}
    for dname, dtype in DTYPES.items():
        with exact_fp32_cuda():  # fp32 means fp32: no TF32 behind it
            measured = matmul_throughput(dtype, device, sizes, repeats)
        roof["matmul_gflops"][dname] = measured["gflops"]
        roof["matmul_by_size"][dname] = measured["by_size"]
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        roof["gpu"], roof["gpu_bf16_peak_tflops"] = name, gpu_peak_tflops(name, args.peak_tflops)
    log("matmul throughput (torch.mm, square, best of " + f"{repeats}): " + ", ".join(
        f"{d} {g:.0f} GFLOP/s" for d, g in roof["matmul_gflops"].items())
        + f" (sizes {', '.join(map(str, sizes))})")
    if device.type == "cuda":
        peak = roof["gpu_bf16_peak_tflops"]
        log(f"nominal dense bf16 peak of {roof['gpu']}: " + (f"{peak:.0f} TFLOP/s" if peak else
            "unknown (pass --peak-tflops)"))
    return roof


def roofline_columns(flops: int, ours_s: float, theirs_s: float, dname: str, args, ours_times=None,
                     matmul_rounds=None) -> dict:
    """Achieved GFLOP/s of both sides and ours as a fraction of the matmul throughput (and GPU peak).

    With ``ours_times`` and ``matmul_rounds`` (one per round), the fraction is taken round by round
    (ours in that round / the matmul timed at the start of that round): min, median and max.
    Without them, against the best throughput measured before the models.
    """
    roof = args.roofline
    ours = flops / ours_s / 1e9
    if ours_times and matmul_rounds:
        fractions = sorted(flops / t / 1e9 / mm for t, mm in zip(ours_times, matmul_rounds))
        matmul = statistics.median(matmul_rounds)
    else:
        matmul = roof["matmul_gflops"][dname]
        fractions = [ours / matmul]
    cols = {"gflop": flops / 1e9, "ours_gflops": ours, "theirs_gflops": flops / theirs_s / 1e9,
            "matmul_gflops": matmul, "matmul_rounds_gflops": list(matmul_rounds or []),
            "ours_matmul_fraction": statistics.median(fractions), "ours_matmul_fraction_min": fractions[0],
            "ours_matmul_fraction_max": fractions[-1], "ours_peak_fraction": None}
    peak = roof.get("gpu_bf16_peak_tflops")
    if peak and dname == "bf16":
        cols["ours_peak_fraction"] = ours / (peak * 1e3)
    return cols


def memory_pair(args, device, sync, files, dname, task, size, batch, ours_fn, theirs_fn) -> dict:
    if args.no_memory or (task == "vision" and args.memory_batches and batch not in args.memory_batches):
        return {"ours_mib": None, "theirs_mib": None, "mem_ratio": None, "ours_first_mib": None,
                "theirs_first_mib": None}
    if device.type == "cuda":
        m_o, m_t = measure_cuda_memory(ours_fn, sync), measure_cuda_memory(theirs_fn, sync)
        first_o = first_t = None
    else:
        spec = dict(files=files, dtype=dname, task=task, size=size, batch=batch)
        r_o = measure_cpu_memory({**spec, "impl": "ours"})
        r_t = measure_cpu_memory({**spec, "impl": "theirs"})
        m_o, first_o = (r_o["steady_mib"], r_o["first_mib"]) if r_o else (None, None)
        m_t, first_t = (r_t["steady_mib"], r_t["first_mib"]) if r_t else (None, None)
    ratio = m_o / m_t if m_o is not None and m_t else None
    return {"ours_mib": m_o, "theirs_mib": m_t, "mem_ratio": ratio,
            "ours_first_mib": first_o, "theirs_first_mib": first_t}


# --------------------------------------------------------------------------------------------
# Output


def _fmt(x, spec=".1f", none="n/a"):
    return none if x is None else format(x, spec)


def row_summary(r: dict) -> str:
    where = f"{r['size']}px b{r['batch']}" if r["task"] == "vision" else f"{r['batch']} prompts"
    peak = f", {_percent(r['ours_peak_fraction'])} of the GPU's peak" if r.get("ours_peak_fraction") else ""
    return (f"{r['task']:6s} {where:14s} ours {r['ours_per_s']:8.2f} {r['unit']}, theirs {r['theirs_per_s']:8.2f} "
            f"-> {r['speed_ratio']:.2f}x | ours {r['ours_gflops']:.0f} GFLOP/s = {_fractions(r)} "
            f"of {r['dtype']} matmul{peak} | mem ours {_mem(r, 'ours')} MiB, theirs {_mem(r, 'theirs')} MiB "
            f"| {r['check']}")


def _fractions(r: dict) -> str:
    """Ours / matmul throughput: min / median / max over the rounds (one figure when there was one round)."""
    lo, mid, hi = (r.get("ours_matmul_fraction_min"), r["ours_matmul_fraction"], r.get("ours_matmul_fraction_max"))
    if lo is None or hi is None or lo == hi:
        return f"{100 * mid:.0f}%"
    return f"{100 * lo:.0f} / {100 * mid:.0f} / {100 * hi:.0f}%"


def _mem(r: dict, who: str) -> str:
    """Steady-state peak, with the first-forward peak in brackets where there is one."""
    text = _fmt(r[f"{who}_mib"])
    if r.get(f"{who}_first_mib") is not None:
        text += f" ({_fmt(r[f'{who}_first_mib'], '.0f')})"
    return text


def markdown_table(rows: list[dict]) -> str:
    gpu = any(r.get("ours_peak_fraction") is not None for r in rows)
    head = ("| model | dtype | tower | input | batch | ours | theirs | speed ratio (ours/theirs) | target >= 1.2x "
            "| GFLOP | ours GFLOP/s | theirs GFLOP/s | ours / matmul throughput (min / median / max over rounds) "
            + ("| ours / nominal GPU peak " if gpu else "")
            + "| ours peak MiB | theirs peak MiB | memory ratio (ours/theirs) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        inp = f"{r['size']} px" if r["task"] == "vision" else "prompts"
        lines.append(
            f"| {r['model']} | {r['dtype']} | {r['task']} | {inp} | {r['batch']} "
            f"| {r['ours_per_s']:.2f} {r['unit']} | {r['theirs_per_s']:.2f} {r['unit']} | {r['speed_ratio']:.2f}x "
            f"| {'yes' if r['speed_ratio'] >= TARGET else 'NO'} | {r['gflop']:.1f} | {r['ours_gflops']:.0f} "
            f"| {r['theirs_gflops']:.0f} | {_fractions(r)} of {r['matmul_gflops']:.0f} "
            + (f"| {_percent(r['ours_peak_fraction'])} " if gpu else "")
            + f"| {_mem(r, 'ours')} | {_mem(r, 'theirs')} | {_fmt(r['mem_ratio'], '.2f')} |")
    return "\n".join(lines)


def gpu_summary(rows: list[dict]) -> str:
    """One line per vision configuration: images/s, fraction of the matmul throughput and of the GPU's peak."""
    return "\n".join(
        f"{r['model']} {r['dtype']} {r['size']} px batch {r['batch']}: {r['ours_per_s']:.1f} images/s, "
        f"{_percent(r['ours_matmul_fraction'])} of the measured {r['dtype']} matmul throughput, "
        f"{_percent(r['ours_peak_fraction'])} of the nominal dense bf16 peak"
        for r in rows if r["task"] == "vision")


def _percent(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{100 * fraction:.1f}%"


def roofline_verdict(rows: list[dict]) -> str:
    """Whether every fp32 configuration (both towers) reaches :data:`ROOFLINE_TARGET` of the fp32 matmul
    throughput, judged on the median of the per-round fractions."""
    fp32 = [r for r in rows if r["dtype"] == "fp32"]
    if not fp32:
        return "roofline target: no fp32 configuration was run"
    worst = min(fp32, key=lambda r: r["ours_matmul_fraction"])
    met = worst["ours_matmul_fraction"] >= ROOFLINE_TARGET
    where = f"{worst['size']} px, batch {worst['batch']}" if worst["task"] == "vision" else f"{worst['batch']} prompts"
    return (f"roofline target (fp32 towers >= {ROOFLINE_TARGET:.0%} of the fp32 matmul throughput timed in the same "
            f"rounds): {'met' if met else 'NOT met'}; lowest median {worst['ours_matmul_fraction']:.0%} "
            f"({worst['model']} {worst['task']}, {where})")


def environment(device: torch.device) -> dict:
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "device": str(device), "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as fh:
            env["cpu"] = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "?")
    except OSError:
        env["cpu"] = platform.processor() or "?"
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def memory_method(device: torch.device) -> str:
    if device.type == "cuda":
        return ("peak memory = torch.cuda.max_memory_allocated() - memory_allocated() around one forward "
                "(after warm-up, in this process; weights and inputs excluded)")
    return ("peak memory = peak RSS increase of a forward, in a fresh subprocess per configuration and "
            "implementation: load the model from the files, touch every weight, then for each of 2 forwards: "
            "gc + malloc_trim, reset VmHWM (/proc/self/clear_refs), VmHWM - VmRSS before the forward (weights and "
            "inputs excluded). Reported: 2nd forward (steady state; used for the ratio), and in brackets the "
            "1st forward of the process (includes one-off oneDNN/OpenMP set-up). Expect +-20 MiB noise")


# --------------------------------------------------------------------------------------------
# CLI


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Benchmark our TIPS vision/text towers against transformers' Tipsv2Model with the same "
                    "random weights: throughput (median of alternating repeats) and peak memory, ours/theirs.",
        epilog="Ratios are ours/theirs: speed > 1 means ours is faster (target >= 1.2x); memory < 1 means ours "
               "uses less. --quick is a ~1 minute smoke test (2 layers, batch 1/2, 1 repeat).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run")
    p.add_argument("--models", nargs="+", choices=sorted(FAMILIES), default=None,
                   help="families to benchmark (default: b14 and l14; b14 only with --quick)")
    p.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto: B/14 in fp32; L/14 in bf16 on cuda, fp32 on cpu")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="B/14 image sizes (default 448 518)")
    p.add_argument("--l14-sizes", type=int, nargs="+", default=None, help="L/14 image sizes (default 448 518)")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="image batch sizes (default 1 8)")
    p.add_argument("--prompts", type=int, default=None, help="number of text prompts (default 64)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per model, after 1 warm-up (default 3)")
    p.add_argument("--depth", type=int, default=None,
                   help="override the number of layers of both towers (default: the real depth)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    p.add_argument("--memory-batches", type=int, nargs="+", default=None,
                   help="measure vision memory only at these batch sizes (default: all)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 2 layers, batches 1 2, 16 prompts, 1 repeat, memory at batch 1 only")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--matmul-sizes", type=int, nargs="+", default=None,
                   help="sides of the square matmuls that measure the machine's throughput "
                        "(default: 1024 2048 3072 on cpu, 512 1024 with --quick, 4096 8192 on cuda)")
    p.add_argument("--round-matmul", type=int, default=None,
                   help="side of the square matmul timed at the start of every round beside the towers "
                        "(default: 2048 on cpu, 512 with --quick, 8192 on cuda)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the GPU's dense bf16 peak in TFLOP/s, when it is not in the table of known GPUs")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="also save the results as JSON")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.depth = args.depth or 2
        args.batches = args.batches or [1, 2]
        args.prompts = args.prompts or 16
        args.repeats = args.repeats or 1
        args.memory_batches = args.memory_batches or [1]
    args.sizes = args.sizes or [448, 518]
    args.l14_sizes = args.l14_sizes or [448, 518]
    args.round_matmul = args.round_matmul or (8192 if args.device == "cuda" else 512 if args.quick else 2048)
    args.batches = args.batches or [1, 8]
    args.prompts = args.prompts or 64
    args.repeats = args.repeats or 3
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    for s in args.sizes + args.l14_sizes:
        if s % 14:
            p.error(f"image size {s} is not a multiple of 14")
    if args.models is None:
        args.models = ["b14"] if args.quick else ["b14", "l14"]
    return args


def cuda_missing_message() -> str:
    """What ``--device cuda`` says on a machine without a usable GPU (this script stays ready for one)."""
    build = (f"this torch ({torch.__version__}) is built without CUDA" if torch.version.cuda is None
             else f"this torch (CUDA {torch.version.cuda}) sees no GPU")
    return (f"--device cuda: no CUDA device here: {build}. The GPU figures need a machine with an NVIDIA GPU and a "
            "CUDA build of torch; run the same command there (python benchmarks/bench_tips.py --device cuda). "
            "Nothing was measured.")


def load_average() -> str:
    try:
        return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "load average unknown"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.memory_child is not None:
        result = memory_child(json.loads(args.memory_child))
        print("MEMORY_RESULT " + json.dumps(result), flush=True)
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print(cuda_missing_message(), file=sys.stderr)
        return 2
    device = torch.device(args.device)
    env = environment(device)

    def log(msg):
        print(msg, flush=True)

    log(f"bench_tips: torch {env['torch']}, transformers {env['transformers']}, python {env['python']}")
    log(f"device {device}" + (f" ({env['gpu']})" if "gpu" in env else f" ({env['cpu']}, {env['cpu_count']} cpus)")
        + f"; torch threads: {env['torch_threads']} (default, not changed)")
    log(f"{load_average()} (1, 5, 15 min) on {env['cpu_count']} cpus at the start")
    log(f"timing: 1 warm-up + median of {args.repeats} alternating repeats, torch.inference_mode(); a "
        f"{args.round_matmul}x{args.round_matmul} matmul timed at the start of every round"
        + (", torch.cuda.synchronize() around each call" if device.type == "cuda" else ""))
    log(memory_method(device) if not args.no_memory else "peak memory: skipped (--no-memory)")

    args.roofline = measure_roofline(args, device, log)
    rows = []
    start = time.perf_counter()
    for family in args.models:
        if args.dtype != "auto":
            dtype = DTYPES[args.dtype]
        else:
            dtype = torch.bfloat16 if (family == "l14" and device.type == "cuda") else torch.float32
        sizes = args.l14_sizes if family == "l14" else args.sizes
        try:
            rows += bench_family(family, dtype, sizes, args.batches, args, device, log)
        except MismatchError as exc:
            print(f"\nFAILED: {exc}", file=sys.stderr)
            return 1
    elapsed = time.perf_counter() - start

    log("\n## Results (ours = tipsomaly_lite, theirs = transformers Tipsv2Model; ratios ours/theirs)\n")
    log(markdown_table(rows))
    log(f"\ntorch threads: {env['torch_threads']}; repeats: {args.repeats}; {memory_method(device)}.")
    slow = [r for r in rows if r["speed_ratio"] < TARGET]
    if slow:
        log(f"below the {TARGET}x target: " + ", ".join(
            f"{r['model']} {r['task']} {r['size'] or ''} b{r['batch']} ({r['speed_ratio']:.2f}x)".replace("  ", " ")
            for r in slow))
    else:
        log(f"every configuration meets the {TARGET}x target")
    log(roofline_verdict(rows))
    if device.type == "cuda":
        log(gpu_summary(rows))
    log(f"total benchmark time: {elapsed:.0f}s; {load_average()} at the end")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"environment": {**env, "load_at_end": load_average()},
                   "settings": {k: (str(v) if isinstance(v, Path) else v)
                                for k, v in vars(args).items() if k not in ("memory_child", "roofline")},
                   "memory_method": memory_method(device), "target_speed_ratio": TARGET,
                   "roofline": {**args.roofline, "target_fp32_vision_fraction": ROOFLINE_TARGET,
                                "verdict": roofline_verdict(rows)},
                   "results": rows}
        args.json.write_text(json.dumps(payload, indent=2))
        log(f"saved {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
