"""The benchmark scripts still run (a smoke run on a tiny configuration; timings are not checked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_tips_smoke(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_tips.py"), "--quick", "--depth", "1", "--sizes", "56",
           "--batches", "1", "--prompts", "4", "--repeats", "1", "--no-memory", "--json", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "speed ratio" in done.stdout
    rows = json.loads(out.read_text())
    rows = rows["results"]
    assert {r["task"] for r in rows} == {"vision", "text"}
    assert all(r["speed_ratio"] > 0 for r in rows)


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
