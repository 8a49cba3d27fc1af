"""Evaluation: streamed per-class metrics, the written table and config, bounded memory."""

from __future__ import annotations

import csv
import json
import math
import tracemalloc

import numpy as np
import pytest
import torch

from tipsomaly_lite.data.datasets import AnomalyDataset
from tipsomaly_lite.method.detector import Detector, Prediction
from tipsomaly_lite.eval.evaluation import (EXTRA_METRICS, METRICS, PAPER_RESULTS, EvaluationResult, benchmark_table,
                                            evaluate, paper_table)
from tipsomaly_lite.eval.metrics import MetricWarning, image_metrics, pixel_metrics
from tipsomaly_lite.data.toy_data import make_toy_dataset

SIZE = 112


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = make_toy_dataset(tmp_path_factory.mktemp("data") / "toy", classes=["pill", "wood_grain"], n_train=0,
                            n_normal=3, n_anomalous=3)
    return AnomalyDataset(root, image_size=SIZE)


def test_evaluate_equals_metrics_on_all_maps_at_once(tiny, toy):
    det = Detector(tiny)
    result = evaluate(det, toy, batch_size=4, aupro_mode="compat", progress=False)
    assert list(result.per_class) == ["pill", "wood_grain"] and len(result.scores) == len(toy)
    for cls in result.per_class:
        idx = [i for i in range(len(toy)) if toy.samples[i]["cls_name"] == cls]
        items = [toy[i] for i in idx]
        pred = det.predict(torch.stack([it["image"] for it in items]), [it["class_word"] for it in items])
        want = image_metrics([it["label"] for it in items], pred.image_score.numpy(), name=cls)
        want.update(pixel_metrics(pred.anomaly_map.numpy(), torch.stack([it["mask"][0] for it in items]).numpy(),
                                  aupro_mode="compat", name=cls))
        for key in METRICS + EXTRA_METRICS:
            assert result.per_class[cls][key] == pytest.approx(100 * want[key], abs=1e-6), key
        assert set(result.config["pixel_error_bounds"][cls]) == {"pixel_auroc", "pixel_ap", "pixel_f1_max",
                                                                  "pixel_aupro"}
    for key in METRICS + EXTRA_METRICS:
        assert result.mean[key] == pytest.approx(np.mean([m[key] for m in result.per_class.values()]))
    assert result.config["aupro_mode"] == "compat" and result.config["variant"] == "tiny"
    assert result.config["mode"] == "training_free" and result.config["image_size"] == SIZE


def test_result_files_and_paper_table(tiny, toy, tmp_path):
    result = evaluate(Detector(tiny), toy, progress=False, dataset_name="mvtec")
    paths = result.save(tmp_path, paper=True)
    assert set(paths) == {"results.md", "results.csv", "results.json", "config.json", "scores.csv"}
    md = paths["results.md"].read_text()
    assert "MEANINGLESS" in md and "| paper |" in md and "93.4" in md and "| **mean** |" in md
    rows = list(csv.reader(paths["results.csv"].open()))
    # The paper's six columns in their order, then pixel AP (the paper's table itself stays six).
    assert rows[0] == ["dataset", "class"] + list(METRICS) + ["pixel_ap"] and rows[-1][1] == "mean" and len(rows) == 4
    assert "| P-AP |" in md and md.split("| paper |")[1].split("\n")[0].rstrip().endswith("| – |")
    assert "P-AP" not in paper_table()
    data = json.loads(paths["results.json"].read_text())
    assert data["meaningless"] is True and set(data["per_class"]) == {"pill", "wood_grain"}
    assert "pixel_ap" in data["mean"] and all("pixel_ap" in m for m in data["per_class"].values())
    config = json.loads(paths["config.json"].read_text())
    for key in ("variant", "image_size", "prompt_set", "aupro_mode", "tipsomaly_lite", "torch", "protocol",
                "global_token", "pixel_prompts"):
        assert key in config
    assert len(list(csv.DictReader(paths["scores.csv"].open()))) == len(toy)
    table = paper_table()
    assert table.count("\n") == 2 + len(PAPER_RESULTS) and "industrial_mean" in table
    # What save wrote reads back as the same result.
    back = EvaluationResult.load(tmp_path)
    assert (back.dataset, back.per_class, back.mean, back.config) == (result.dataset, result.per_class,
                                                                      result.mean, result.config)
    assert [r["path"] for r in back.scores] == [r["path"] for r in result.scores]
    again = back.image_metrics_by_score()
    for kind, metrics in result.image_metrics_by_score().items():
        assert again[kind] == pytest.approx(metrics, nan_ok=True)
    assert back.to_markdown(paper=True) == result.to_markdown(paper=True)


def test_loading_a_result_names_what_is_missing_or_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="results.json is missing"):
        EvaluationResult.load(tmp_path)
    (tmp_path / "results.json").write_text("{}")
    (tmp_path / "scores.csv").write_text("path,label\nx,1\n")
    with pytest.raises(ValueError, match="not what EvaluationResult.save writes"):
        EvaluationResult.load(tmp_path)


def test_fusion_ablation_scores(tiny, toy):
    result = evaluate(Detector(tiny), toy, progress=False)
    ablation = result.image_metrics_by_score()
    assert set(ablation) == {"image_score", "global_score", "local_score", "global_cls1", "global_cls2"}
    for key in ("image_auroc", "image_ap", "image_f1_max"):
        assert ablation["image_score"][key] == pytest.approx(result.mean[key])
        assert ablation["global_score"][key] == pytest.approx(ablation["global_cls1"][key])  # cls1 is the default
    assert any(r["global_cls1"] != r["global_cls2"] for r in result.scores)


def test_all_normal_class_is_nan_with_a_warning(tiny, tmp_path):
    root = make_toy_dataset(tmp_path / "toy", classes=["pill", "carpet"], n_train=0, n_normal=2, n_anomalous=2)
    meta = json.loads((root / "meta.json").read_text())
    meta["test"]["pill"] = [r for r in meta["test"]["pill"] if r["anomaly"] == 0]
    (root / "meta.json").write_text(json.dumps(meta))
    ds = AnomalyDataset(root, image_size=56)
    with pytest.warns(MetricWarning, match="pill"):
        result = evaluate(Detector(tiny), ds, progress=False)
    assert all(math.isnan(v) for v in result.per_class["pill"].values())
    assert not math.isnan(result.mean["image_auroc"])
    assert result.mean["image_auroc"] == pytest.approx(result.per_class["carpet"]["image_auroc"])
    assert "nan" in result.to_markdown()


class _StubDetector:
    """Random float32 maps made by numpy (so tracemalloc sees them), at 518 px."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)

    def predict(self, images, words):
        b = len(images)
        maps = torch.from_numpy(self.rng.random((b, 518, 518), dtype=np.float32))
        scores = torch.from_numpy(self.rng.random(b))
        return Prediction(scores, scores, scores, torch.zeros(b, 1), maps, {"cls1": scores, "cls2": scores})

    def config(self):
        return {"variant": "stub"}


class _StubDataset(torch.utils.data.Dataset):
    image_size = 518

    def __len__(self):
        return 240

    def __getitem__(self, i):
        mask = np.zeros((1, 518, 518), dtype=np.float32)
        if i % 2:
            mask[0, 100:140, 200:260] = 1
        return {"image": torch.zeros(1), "mask": torch.from_numpy(mask), "label": i % 2,
                "class_name": "abc"[i % 3], "class_word": "x", "path": f"{i}.png"}


def test_evaluation_memory_does_not_grow_with_the_dataset():
    # 240 maps of 518 x 518 in float32 would be 246 MiB; streaming keeps about one batch.
    tracemalloc.start()
    try:
        result = evaluate(_StubDetector(), _StubDataset(), batch_size=8, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(result.scores) == 240
    assert peak < 80 * 2**20, f"peak {peak / 2**20:.0f} MiB"


def test_evaluate_rejects_unknown_aupro_mode(tiny, toy):
    with pytest.raises(ValueError, match="aupro_mode"):
        evaluate(Detector(tiny), toy, aupro_mode="fast", progress=False)


def test_benchmark_table_keeps_the_six_columns_and_adds_pixel_ap_last(tiny, toy):
    result = evaluate(Detector(tiny), toy, progress=False, dataset_name="mvtec")
    table = benchmark_table({"mvtec": result})
    head = [line for line in table.splitlines() if line.startswith("| dataset")][0]
    assert head == "| dataset | I-AUROC | I-AP | I-F1max | P-AUROC | P-AUPRO | P-F1max | P-AP |"
    assert "| mvtec (paper) |" in table and table.split("| mvtec (paper) |")[1].split("\n")[0].endswith("| – |")
    # A result saved before pixel AP existed still prints, with the six columns only.
    old = EvaluationResult(result.dataset, {c: {k: m[k] for k in METRICS} for c, m in result.per_class.items()},
                           {k: result.mean[k] for k in METRICS}, result.config, result.scores)
    assert "P-AP" not in old.to_markdown() and "P-AP" not in benchmark_table({"mvtec": old})
