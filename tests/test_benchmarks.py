"""The benchmark scripts still run (a smoke run on a tiny configuration; timings are not checked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

#: The full lane only (`make test-all`): slow rehearsals.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def test_bench_tips_smoke(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_tips.py"), "--quick", "--depth", "1", "--sizes", "56",
           "--batches", "1", "--prompts", "4", "--repeats", "1", "--no-memory", "--json", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "speed ratio" in done.stdout and "ours GFLOP/s" in done.stdout and "roofline target" in done.stdout
    payload = json.loads(out.read_text())
    rows = payload["results"]
    assert {r["task"] for r in rows} == {"vision", "text"}
    assert all(r["speed_ratio"] > 0 for r in rows)
    assert set(payload["roofline"]["matmul_gflops"]) == {"fp32", "bf16"}
    assert all(r["gflop"] > 0 and r["ours_gflops"] > 0 and r["ours_matmul_fraction"] > 0 for r in rows)
    assert all(r["ours_peak_fraction"] is None for r in rows)  # no GPU peak on the CPU


def test_bench_metrics_smoke(tmp_path):
    out = tmp_path / "metrics.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_metrics.py"), "--quick", "--json", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "speed ratio" in done.stdout
    payload = json.loads(out.read_text())
    assert payload["config"]["quick"] is True
    rows = {r["task"]: r for r in payload["results"]}
    metrics = ("aupro_compat", "aupro_standard", "pixel_auroc", "pixel_ap", "pixel_f1_max")
    assert set(rows) == {f"{kind}/{m}" for kind in ("spread", "narrow", "shifted") for m in metrics}
    for task, r in rows.items():  # every metric agrees with its exact reference within the targets
        assert r["ok"] is True, task
        assert r["speed_ratio"] > 0 and r["reference_peak_mib"] >= 0
        if not task.endswith("compat"):  # a proven bound (compat's is an estimate)
            assert r["abs_diff"] <= r["bound"] + 1e-12, task
        if task.startswith("shifted"):  # fewer distinct values than bins: exact
            assert r["abs_diff"] < 1e-9 and r["bound"] == 0, task
    assert all(0 <= r["ours_value"] <= 1 and r["ours_s"] > 0 and r["ours_peak_mib"] >= 0 for r in rows.values())


def test_bench_training_smoke(tmp_path):
    out = tmp_path / "training.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_training.py"), "--quick", "--json", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TIPSOMALY_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "speed ratio" in done.stdout
    (row,) = json.loads(out.read_text())["results"]
    assert row["model"] == "tiny" and row["epochs"] == 2
    assert row["uncached_epoch_s"] > 0 and row["cached_epoch_s"] > 0
    assert row["prompt_max_abs_diff"] < 1e-2  # the two runs train the same prompts (fp16 cache)


def test_bench_backbones_smoke(tmp_path):
    out = tmp_path / "backbones.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_backbones.py"), "--quick", "--repeats", "1",
           "--json", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TIPSOMALY_OFFLINE": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert [r["family"] for r in rows] == ["tips", "clip", "siglip2"]
    assert all(r["images_per_s"] > 0 and r["peak_mib"] >= 0 for r in rows)
    assert "| backbone | input |" in done.stdout


def test_bench_dtype_smoke(tmp_path):
    out = tmp_path / "dtype.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_dtype.py"), "--quick", "--depth", "1", "--size", "56",
           "--batches", "1", "--classes", "1", "--eval-size", "56", "--json", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TIPSOMALY_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "speed ratio bf16/fp32" in done.stdout and "max abs map diff" in done.stdout
    payload = json.loads(out.read_text())
    (row,) = payload["speed"]
    assert row["speed_ratio"] > 0 and row["speed_ratio_sdpa"] > 0 and row["fp32_gflops"] > 0
    assert [r["model"] for r in payload["agreement"]] == ["tiny (offline)", "B/14 shapes, 1 layers"]
    for r in payload["agreement"]:  # bf16 moves the maps and scores a little, not a lot
        assert 0 < r["map_max_abs_diff"] < 5e-2 and r["score_max_abs_diff"] < 5e-2


# --- the roofline's pure parts ------------------------------------------------------------------

def _roofline():
    import importlib.util

    spec = importlib.util.spec_from_file_location("roofline", REPO / "benchmarks" / "roofline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _written_attention(q, k, v, attn_mask=None, **_):
    """Attention as two visible matmuls, so that torch's FLOP counter sees them (it skips CPU SDPA)."""
    import torch

    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    return scores.softmax(-1) @ v


def test_flop_counts_equal_torchs_flop_counter(monkeypatch):
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from tipsomaly_lite.backbones.tips import text as text_module, vision as vision_module
    from tipsomaly_lite.backbones.tips.tiny import TINY_ARCH as a

    roofline = _roofline()
    monkeypatch.setattr(vision_module, "attention", _written_attention)
    monkeypatch.setattr(text_module.F, "scaled_dot_product_attention", _written_attention)
    torch.manual_seed(0)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        vision_module.VisionTower(a).eval()(torch.rand(3, 3, 112, 112))
    assert counter.get_total_flops() == roofline.vision_flops(a.width, a.depth, a.mlp_hidden, 112, 3)
    ids = torch.randint(1, 100, (5, 64))
    padding = torch.arange(64).expand(5, 64) >= torch.tensor([9, 7, 9, 3, 1])[:, None]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        text_module.TextTower(a).eval()(ids, padding)
    # Padding is cut to the longest sentence (9 tokens) before the blocks run.
    assert counter.get_total_flops() == roofline.text_flops(a.text_width, a.text_depth, a.text_mlp, [9] * 5)


def test_b14_at_448_is_about_215_gflop_per_image():
    roofline = _roofline()
    flops = roofline.vision_flops(768, 12, 3072, 448, 1)
    assert 210e9 < flops < 220e9
    assert roofline.vision_flops(768, 12, 3072, 448, 8) == 8 * flops
    assert roofline.vision_flops(768, 1, 3072, 448, 1, swiglu=True) > roofline.vision_flops(768, 1, 3072, 448, 1)


def test_gpu_peaks_are_looked_up_by_name_and_can_be_overridden():
    roofline = _roofline()
    assert roofline.gpu_peak_tflops("NVIDIA H200") == 989
    assert roofline.gpu_peak_tflops("NVIDIA H100 80GB HBM3") == 989
    assert roofline.gpu_peak_tflops("NVIDIA H100 PCIe") == 756
    assert roofline.gpu_peak_tflops("NVIDIA A100-SXM4-80GB") == 312
    assert roofline.gpu_peak_tflops("NVIDIA L4") == 121
    assert roofline.gpu_peak_tflops("NVIDIA L40S") == 362
    assert roofline.gpu_peak_tflops("Some Future GPU") is None
    assert roofline.gpu_peak_tflops("Some Future GPU", override=500.0) == 500.0
    assert roofline.gpu_peak_tflops("NVIDIA H200", override=900) == 900


def test_matmul_throughput_is_measured_per_size():
    import torch

    roofline = _roofline()
    for dtype in (torch.float32, torch.bfloat16):
        measured = roofline.matmul_throughput(dtype, "cpu", sizes=(64, 128), repeats=1)
        assert set(measured["by_size"]) == {64, 128} and measured["gflops"] == max(measured["by_size"].values()) > 0


def test_bench_tips_gpu_columns_from_a_measured_roofline():
    """The CUDA-only columns (fraction of the GPU's nominal peak), exercised without a GPU."""
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_tips", REPO / "benchmarks" / "bench_tips.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = argparse.Namespace(roofline={"matmul_gflops": {"fp32": 50_000.0, "bf16": 800_000.0},
                                        "gpu": "NVIDIA H200", "gpu_bf16_peak_tflops": 989.0})
    flops = bench.vision_flops(1024, 24, 4096, 518, 8)
    row = {"model": "L/14", "dtype": "bf16", "task": "vision", "size": 518, "batch": 8, "unit": "img/s",
           "ours_per_s": 8 / 0.02, "theirs_per_s": 8 / 0.03, "speed_ratio": 1.5, "check": "ok",
           "ours_mib": None, "theirs_mib": None, "mem_ratio": None}
    row.update(bench.roofline_columns(flops, 0.02, 0.03, "bf16", args))
    assert row["ours_gflops"] == pytest.approx(flops / 0.02 / 1e9)
    assert row["ours_matmul_fraction"] == pytest.approx(row["ours_gflops"] / 800_000)
    assert row["ours_peak_fraction"] == pytest.approx(row["ours_gflops"] / 989_000)
    table = bench.markdown_table([row])
    assert "ours / nominal GPU peak" in table and f"{100 * row['ours_peak_fraction']:.1f}%" in table
    line = bench.gpu_summary([row])
    assert "400.0 images/s" in line and "of the nominal dense bf16 peak" in line
    fp32 = dict(row, dtype="fp32", **bench.roofline_columns(flops, 0.02, 0.03, "fp32", args))
    assert fp32["ours_peak_fraction"] is None  # the nominal peak is a bf16 figure
    met = fp32["ours_matmul_fraction"] >= bench.ROOFLINE_TARGET
    assert (": met;" if met else ": NOT met;") in bench.roofline_verdict([fp32])


def test_bench_mutual_smoke(tmp_path):
    out = tmp_path / "mutual.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_mutual.py"), "--batches", "2", "3", "--size", "28",
           "--repeats", "1", "--json", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TIPSOMALY_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "peak MiB" in done.stdout and "meaningless" in done.stdout
    rows = json.loads(out.read_text())["results"]
    assert [r["batch"] for r in rows] == [2, 3] and [r["pairs"] for r in rows] == [1, 3]
    assert all(r["seconds"] > 0 and r["table_mib"] > 0 for r in rows)


def test_bench_export_smoke(tmp_path):
    pytest.importorskip("onnxruntime", reason="the export extra")
    out = tmp_path / "export.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_export.py"), "--quick", "--json", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TIPSOMALY_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "speed ratio" in done.stdout and "load average" in done.stdout and "machine:" in done.stdout
    payload = json.loads(out.read_text())
    assert payload["max_error"] <= 1e-4 and payload["machine"]["cpus"] >= 1
    assert all(r["speed_ratio"] > 0 and r["onnxruntime_s"] > 0 for r in payload["results"])


def _bench_tips():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_tips", REPO / "benchmarks" / "bench_tips.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_bench_tips_takes_the_fraction_round_by_round():
    """Each round's tower time is set against the matmul timed in that round: min / median / max."""
    import argparse

    bench = _bench_tips()
    args = argparse.Namespace(roofline={"matmul_gflops": {"fp32": 1000.0, "bf16": 4000.0}})
    flops = 100e9  # 100 GFLOP: 1 s = 100 GFLOP/s
    cols = bench.roofline_columns(flops, 1.0, 2.0, "fp32", args, ours_times=[1.0, 2.0, 0.5],
                                  matmul_rounds=[200.0, 100.0, 400.0])
    # Rounds: 100/200 = 50 %, 50/100 = 50 %, 200/400 = 50 %: a machine slowing both alike leaves the fraction alone.
    assert cols["ours_matmul_fraction_min"] == cols["ours_matmul_fraction"] == cols["ours_matmul_fraction_max"] == 0.5
    assert cols["matmul_gflops"] == 200.0 and cols["matmul_rounds_gflops"] == [200.0, 100.0, 400.0]
    cols = bench.roofline_columns(flops, 1.0, 2.0, "fp32", args, ours_times=[1.0, 1.0, 1.0],
                                  matmul_rounds=[125.0, 100.0, 200.0])
    assert (cols["ours_matmul_fraction_min"], cols["ours_matmul_fraction"], cols["ours_matmul_fraction_max"]) == (
        0.5, 0.8, 1.0)
    row = {"model": "B/14", "dtype": "fp32", "task": "text", "size": None, "batch": 64, **cols}
    assert bench._fractions(row) == "50 / 80 / 100%"
    assert "met; lowest median 80% (B/14 text, 64 prompts)" in bench.roofline_verdict([row])


def test_bench_tips_round_matmul_returns_gflops():
    import torch

    bench = _bench_tips()
    run = bench.round_matmul(torch.float32, torch.device("cpu"), 64, lambda: None)
    assert run() > 0


def test_bench_tips_on_cuda_without_a_gpu_says_so_in_one_message():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the message is for machines without one")
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_tips.py"), "--device", "cuda"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "--device cuda: no CUDA device here" in done.stderr and "Nothing was measured" in done.stderr
    assert done.stdout == ""
