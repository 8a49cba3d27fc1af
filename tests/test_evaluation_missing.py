"""Undefined is missing, not zero: image metrics on a set whose every image is anomalous, pixel metrics on a
set without masks. ``–`` in results.md with one line saying why, ``null`` in JSON, an empty CSV cell, left
out of every mean; the industrial tables are unchanged. And the medical protocol's choices."""

from __future__ import annotations

import csv
import json
import math
import warnings

import pytest

from helpers import native as nf
from tipsomaly_lite.data import prepare
from tipsomaly_lite.data.datasets import AnomalyDataset
from tipsomaly_lite.data.registry import MEDICAL_KEYS
from tipsomaly_lite.eval.evaluation import (EXTRA_METRICS, METRICS, PAPER_RESULTS, EvaluationResult, benchmark_table,
                                            evaluate, paper_table)
from tipsomaly_lite.eval.metrics import MetricWarning
from tipsomaly_lite.eval.protocol import fixed_prompt_set, prompts_trained_on
from tipsomaly_lite.method.detector import Detector

IMAGE, PIXEL = METRICS[:3], METRICS[3:] + EXTRA_METRICS


def _prepared(key, tmp_path):
    src = nf.FAKE_WRITERS[key](tmp_path / "raw" / key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        root = prepare.prepare_dataset(key, src, tmp_path / "data", verbose=False)
    return AnomalyDataset(root, image_size=56, key=key)


def _evaluate(tiny, dataset):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = evaluate(Detector(tiny), dataset, progress=False)
    said = [str(w.message) for w in caught if issubclass(w.category, MetricWarning)]
    return result, said


def test_a_set_whose_every_image_is_anomalous_has_image_metrics_missing(tiny, tmp_path):
    result, said = _evaluate(tiny, _prepared("isic", tmp_path))
    assert said == ["class 'isic': image AUROC, AP and F1-max are undefined: all 3 images are anomalous"]
    m = result.per_class["isic"]
    assert all(math.isnan(m[k]) and math.isnan(result.mean[k]) for k in IMAGE)
    assert all(0 <= m[k] <= 100 and result.mean[k] == m[k] for k in PIXEL)
    md = result.to_markdown(paper=True)
    row = next(line for line in md.splitlines() if line.startswith("| isic |"))
    assert row.split(" | ")[1:4] == ["–", "–", "–"] and "0.0" not in row.split(" | ")[1]
    assert "isic: I-AUROC, I-AP, I-F1max (image: all 3 images are anomalous)" in md
    paper_row = next(line for line in md.splitlines() if line.startswith("| paper |"))
    assert paper_row.startswith("| paper | – | – | – | 94.0 | 87.0 | 80.2 |")
    diff = next(line for line in md.splitlines() if line.startswith("| ours - paper |"))
    assert diff.split(" | ")[1:4] == ["–", "–", "–"] and "nan" not in diff


def test_a_set_without_masks_has_pixel_metrics_missing_with_one_line(tiny, tmp_path):
    dataset = _prepared("headct", tmp_path)
    assert dataset.pixel_level is False
    result, said = _evaluate(tiny, dataset)
    assert said == ["headct: pixel AUROC, AP, F1-max and AUPRO are undefined: the set has no masks (image level "
                    "only); they are reported as missing"]
    m = result.per_class["headct"]
    assert all(0 <= m[k] <= 100 for k in IMAGE) and all(math.isnan(m[k]) for k in PIXEL)
    assert result.config["undefined_metrics"] == {"headct": "pixel: the set has no masks"}


def test_missing_is_null_in_json_empty_in_csv_and_reads_back(tiny, tmp_path):
    result, _ = _evaluate(tiny, _prepared("tn3k", tmp_path))
    paths = result.save(tmp_path / "out", paper=True)
    text = paths["results.json"].read_text()
    assert "NaN" not in text and "NaN" not in paths["config.json"].read_text()
    data = json.loads(text)
    assert data["mean"]["image_auroc"] is None and data["per_class"]["tn3k"]["image_ap"] is None
    assert isinstance(data["mean"]["pixel_auroc"], float)
    rows = list(csv.DictReader(paths["results.csv"].open()))
    assert [r["image_auroc"] for r in rows] == ["", ""] and all(r["pixel_auroc"] for r in rows)
    assert "| – | – | – |" in paths["results.md"].read_text()
    back = EvaluationResult.load(tmp_path / "out")
    assert math.isnan(back.mean["image_auroc"]) and back.mean["pixel_auroc"] == result.mean["pixel_auroc"]
    assert back.to_markdown(paper=True) == result.to_markdown(paper=True)


def _result(name, mean, offline=False):
    return EvaluationResult(name, {name: dict(mean)}, dict(mean), {"aupro_mode": "compat", "offline_model": offline})


def _full(value):
    return {k: value for k in METRICS + EXTRA_METRICS}


def test_the_mean_over_datasets_leaves_missing_out_and_says_over_how_many():
    nan = math.nan
    results = {"headct": _result("headct", {**_full(80.0), **{k: nan for k in PIXEL}}),
               "isic": _result("isic", {**_full(60.0), **{k: nan for k in IMAGE}}),
               "tn3k": _result("tn3k", {**_full(70.0), **{k: nan for k in IMAGE}})}
    table = benchmark_table(results)
    mean_row = next(line for line in table.splitlines() if line.startswith("| **mean of 3** |"))
    assert mean_row.split(" | ")[1:7] == ["80.0", "80.0", "80.0", "65.0", "65.0", "65.0"]
    assert "| medical mean of 7 (paper) | 92.8 | 92.7 | 87.1 | 87.2 | 71.4 | 54.8 |" in table
    assert "industrial mean" not in table and "nan" not in table
    assert "left out of the mean of 3: I-AUROC over 1, I-AP over 1, I-F1max over 1, P-AUROC over 2" in table
    assert "| headct (paper) | 92.7 | 89.4 | 87.4 | – | – | – |" in table


def test_industrial_tables_are_unchanged_when_nothing_is_missing():
    results = {"mvtec": _result("mvtec", _full(90.0)), "visa": _result("visa", _full(70.0))}
    table = benchmark_table(results)
    assert "left out" not in table and "–" not in table.split("| **mean of 2** |")[1].splitlines()[0]
    assert "| **mean of 2** | 80.0 | 80.0 | 80.0 | 80.0 | 80.0 | 80.0 | 80.0 |" in table
    assert "| industrial mean of 7 (paper) | 92.5 |" in table and "medical mean" not in table
    md = results["mvtec"].to_markdown(paper=True)
    assert "undefined" not in md and "| ours - paper | -3.4 |" in md
    assert results["mvtec"].to_csv().splitlines()[-1] == "mvtec,mean," + ",".join(["90.0000"] * 7)


def test_the_paper_table_holds_the_medical_part_with_missing_cells():
    table = paper_table()
    assert "| isic | – | – | – | 94.0 | 87.0 | 80.2 |" in table
    assert "| brainmri | 92.4 | 95.2 | 88.3 | – | – | – |" in table
    assert "| medical_mean | 92.8 | 92.7 | 87.1 | 87.2 | 71.4 | 54.8 |" in table
    # the paper's medical means are the means of its rows, each over the sets that define the metric
    for k in METRICS:
        values = [PAPER_RESULTS[d][k] for d in MEDICAL_KEYS if k in PAPER_RESULTS[d]]
        assert len(values) == (3 if k in IMAGE else 4)
        assert PAPER_RESULTS["medical_mean"][k] == pytest.approx(sum(values) / len(values), abs=0.051)


def test_the_protocol_picks_the_authors_prompts_per_dataset():
    assert {k: fixed_prompt_set(k) for k in MEDICAL_KEYS} == {
        "headct": "medical", "brainmri": "medical", "br35h": "medical", "isic": "industrial",
        "colondb": "industrial", "clinicdb": "industrial", "tn3k": "industrial"}
    assert fixed_prompt_set("mvtec") == fixed_prompt_set("visa") == "industrial"
    assert {prompts_trained_on(k) for k in MEDICAL_KEYS} == {"mvtec"} and prompts_trained_on("mvtec") == "visa"


# ------------------------------------------------------------------ the CLI: benchmark --suite medical, evaluate

SIZE = ["--image-size", "56", "--quiet"]


def test_benchmark_suite_medical_uses_the_authors_prompts_and_mvtec_trained_ones(tmp_path, capsys, monkeypatch):
    from tipsomaly_lite.cli import main
    from tipsomaly_lite.data.toy_data import make_toy_dataset
    from tipsomaly_lite.offline import MeaninglessResultsWarning

    monkeypatch.setenv("TIPSOMALY_OFFLINE", "1")
    data = tmp_path / "data"
    for key in ("headct", "isic", "colondb"):
        _prepared(key, tmp_path)
    make_toy_dataset(tmp_path / "aux" / "mvtec", classes=["pill"], n_train=0, n_normal=2, n_anomalous=2)
    run = tmp_path / "run"
    with pytest.warns(MeaninglessResultsWarning):
        assert main(["train", "--dataset", "mvtec", "--data-root", str(tmp_path / "aux"), "--epochs", "1", "--out",
                     str(run), *SIZE]) == 0
    assert main(["benchmark", "--data-root", str(data), "--out", str(tmp_path / "none"), *SIZE]) == 2
    assert "no prepared dataset for ['mvtec', 'visa'" in capsys.readouterr().err  # the industrial suite is the default
    with pytest.warns(MeaninglessResultsWarning):
        assert main(["benchmark", "--suite", "medical", "--data-root", str(data), "--mvtec-prompts", str(run),
                     "--out", str(tmp_path / "bench"), *SIZE]) == 0
    out = capsys.readouterr().out
    assert "headct: fixed prompts 'medical' (the authors' protocol)" in out
    table = (tmp_path / "bench" / "benchmark.md").read_text()
    assert "**headct**" in table and "**isic**" in table and "**colondb**" in table and "nan" not in table
    assert "medical mean of 7 (paper)" in table and "industrial mean" not in table and "left out of the mean" in table
    for key, prompt_set in (("headct", "medical"), ("isic", "industrial"), ("colondb", "industrial")):
        config = json.loads((tmp_path / "bench" / key / "config.json").read_text())
        assert config["prompt_set"]["name"] == prompt_set, key
        assert config["pixel_prompts"] == f"{run} (trained on mvtec)" and config["mode"] == "decoupled"
    assert "–" in (tmp_path / "bench" / "isic" / "results.md").read_text()
    # evaluate: the alias names the prepared key; --prompt-set still wins over the protocol's choice
    with pytest.warns(MeaninglessResultsWarning):
        assert main(["evaluate", "--dataset", "cvc-colondb", "--data-root", str(data), "--out", str(tmp_path / "ev"),
                     "--paper", *SIZE]) == 0
        assert main(["evaluate", "--dataset", "headct", "--data-root", str(data), "--prompt-set", "industrial",
                     "--out", str(tmp_path / "ev2"), *SIZE]) == 0
    assert json.loads((tmp_path / "ev" / "results.json").read_text())["dataset"] == "colondb"
    assert json.loads((tmp_path / "ev2" / "config.json").read_text())["prompt_set"]["name"] == "industrial"
