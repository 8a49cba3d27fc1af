"""``tipsomaly train / evaluate / predict`` end to end, offline: tiny model, toy dataset."""

from __future__ import annotations

import csv
import json
import warnings
import subprocess
import sys

import pytest
import torch
from PIL import Image

from tipsomaly_lite.cli import main
from tipsomaly_lite.offline import MeaninglessResultsWarning
from tipsomaly_lite.backbones.tips.tiny import TINY_ARCH
from tipsomaly_lite.data.toy_data import make_toy_dataset

SIZE = ["--image-size", "84", "--quiet"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_toy_dataset(root / "toy", classes=["hex_nut", "carpet"], n_train=0, n_normal=2, n_anomalous=3)
    return root


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("TIPSOMALY_OFFLINE", "1")


def test_train_resume_evaluate(data_root, tmp_path, capsys):
    run = tmp_path / "run"
    common = ["--dataset", "toy", "--data-root", str(data_root)] + SIZE
    with pytest.warns(MeaninglessResultsWarning):
        assert main(["train", *common, "--epochs", "1", "--out", str(run), "--batch-size", "4",
                     "--prompt-set", "industrial_v0"]) == 0
        assert main(["train", *common, "--epochs", "2", "--out", str(run), "--batch-size", "4",
                     "--prompt-set", "industrial_v0"]) == 0
    out = capsys.readouterr().out
    assert "MEANINGLESS" in out and "resumed after epoch 1" in out and "epoch_002.safetensors" in out
    assert json.loads((run / "config.json").read_text())["train"]["epochs"] == 2
    with Image.open(run / "loss.png") as im:
        assert im.size[0] > 300

    ev = tmp_path / "eval"
    with pytest.warns(MeaninglessResultsWarning):
        assert main(["evaluate", *common, "--prompts", str(run), "--out", str(ev), "--paper",
                     "--aupro-mode", "compat", "--token", "cls2"]) == 0
    out = capsys.readouterr().out
    assert "| **mean** |" in out and "MEANINGLESS" in out
    config = json.loads((ev / "config.json").read_text())
    assert config["pixel_prompts"] == str(run) and config["mode"] == "decoupled"
    assert config["aupro_mode"] == "compat" and config["global_token"] == "cls2" and config["image_size"] == 84
    assert config["seed"] == 111 and config["prompts_training"]["epochs"] == 2
    assert config["prompt_set"]["name"] == "industrial_v0"  # follows the run's sentences
    rows = list(csv.reader((ev / "results.csv").open()))
    assert [r[1] for r in rows[1:]] == ["carpet", "hex_nut", "mean"]

    # The run's provenance is compared by content: other sentences, or another backbone, are one line in words.
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["evaluate", *common, "--prompts", str(run), "--prompt-set", "industrial",
                     "--out", str(tmp_path / "other_set")]) == 2
        err = capsys.readouterr().err.strip()
        assert "the prompt set's sentences differ" in err and len(err.splitlines()) == 1 and "sha256" not in err
        assert main(["evaluate", *common, "--prompts", str(run), "--backbone", "clip", "--variant", "tiny",
                     "--out", str(tmp_path / "other_backbone")]) == 2
        err = capsys.readouterr().err.strip()
        assert "the backbone family: 'tips' then, 'clip' now" in err and len(err.splitlines()) == 1


def test_evaluate_training_free_and_authors_format_prompts(data_root, tmp_path, capsys):
    common = ["--dataset", "toy", "--data-root", str(data_root)] + SIZE
    with pytest.warns(MeaninglessResultsWarning):
        assert main(["evaluate", *common, "--out", str(tmp_path / "free")]) == 0
    assert json.loads((tmp_path / "free" / "config.json").read_text())["mode"] == "training_free"
    # The authors' file format (a pickled ParameterList) at the tiny model's width.
    pth = tmp_path / "learnable_params_2.pth"
    torch.save(torch.nn.ParameterList([torch.nn.Parameter(torch.randn(8, TINY_ARCH.width)) for _ in range(2)]), pth)
    with pytest.warns(MeaninglessResultsWarning):
        assert main(["evaluate", *common, "--prompts", str(pth), "--mode", "coupled",
                     "--out", str(tmp_path / "pth")]) == 0
    assert json.loads((tmp_path / "pth" / "config.json").read_text())["mode"] == "coupled"


def test_predict_writes_overlays_and_scores(data_root, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (90, 60), (120, 80, 40)).save(photos / "a.jpg")
    Image.new("L", (50, 70), 200).save(photos / "b.png")
    out = tmp_path / "pred"
    with pytest.warns(MeaninglessResultsWarning):
        assert main(["predict", "--images", str(photos), str(data_root / "toy" / "carpet" / "test" / "good"),
                     "--class-name", "metal nut", "--out", str(out), *SIZE]) == 0
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert [r["path"].rsplit("/", 1)[-1] for r in rows[:2]] == ["a.jpg", "b.png"] and len(rows) == 4
    assert all(0 <= float(r["image_score"]) <= 2 for r in rows)
    with Image.open(out / "a_overlay.png") as im:
        assert im.size[0] > 200
    assert "MEANINGLESS" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore::tipsomaly_lite.offline.MeaninglessResultsWarning")
def test_user_errors_are_one_clear_line(data_root, tmp_path, capsys):
    assert main(["evaluate", "--dataset", "visa", "--data-root", str(tmp_path), *SIZE]) == 2
    assert "no prepared dataset" in capsys.readouterr().err
    assert main(["evaluate", "--dataset", "toy", "--data-root", str(data_root), "--prompts", "x", "--released",
                 "mvtec", *SIZE]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["predict", "--images", str(tmp_path / "none"), "--class-name", "x", "--out", str(tmp_path)]) == 2
    assert "not an image file" in capsys.readouterr().err
    assert main(["evaluate", "--dataset", "toy", "--data-root", str(data_root), "--prompts",
                 str(tmp_path / "missing_run"), *SIZE]) == 2
    assert "missing_run" in capsys.readouterr().err


def test_module_entry_point_lists_the_commands():
    done = subprocess.run([sys.executable, "-m", "tipsomaly_lite", "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    for command in ("train", "evaluate", "predict", "demo", "fetch"):
        assert command in done.stdout


def test_benchmark_runs_the_cross_dataset_protocol(tmp_path, capsys):
    data = tmp_path / "data"
    make_toy_dataset(data / "mvtec", classes=["pill"], n_train=0, n_normal=2, n_anomalous=2)
    make_toy_dataset(data / "btad", classes=["carpet"], n_train=0, n_normal=2, n_anomalous=2)
    run = tmp_path / "run"
    with pytest.warns(MeaninglessResultsWarning):
        assert main(["train", "--dataset", "mvtec", "--data-root", str(data), "--epochs", "1", "--out", str(run),
                     *SIZE]) == 0
        assert main(["benchmark", "--data-root", str(data), "--mvtec-prompts", str(run), "--visa-prompts",
                     str(run), "--out", str(tmp_path / "bench"), *SIZE]) == 0
    out = capsys.readouterr().out
    assert "**mvtec**" in out and "**btad**" in out and "mvtec (paper)" in out and "mean of 2" in out
    table = (tmp_path / "bench" / "benchmark.md").read_text()
    assert "MEANINGLESS" in table and "AUPRO: compat" in table
    for key, source in (("mvtec", "visa"), ("btad", "mvtec")):
        config = json.loads((tmp_path / "bench" / key / "config.json").read_text())
        assert config["pixel_prompts"] == f"{run} (trained on {source})" and config["mode"] == "decoupled"
    with pytest.warns(MeaninglessResultsWarning):
        assert main(["benchmark", "--data-root", str(data), "--datasets", "btad", "--training-free",
                     "--out", str(tmp_path / "free"), *SIZE]) == 0
    assert json.loads((tmp_path / "free" / "btad" / "config.json").read_text())["mode"] == "training_free"
    assert main(["benchmark", "--data-root", str(data), "--datasets", "visa", *SIZE]) == 2
    assert "no prepared dataset for ['visa']" in capsys.readouterr().err


def test_prepared_native_datasets_run_through_the_benchmark(tmp_path, capsys):
    """Prepared native layouts feed evaluation: fake VisA (class-id masks) and KSDD (strips)."""
    import warnings

    from helpers import native as nf
    from tipsomaly_lite.data.prepare import prepare_dataset

    data = tmp_path / "data"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # fake data: counts differ from the paper's
        prepare_dataset("visa", nf.fake_visa(tmp_path / "raw_visa"), data, verbose=False)
        prepare_dataset("sdd", nf.fake_ksdd(tmp_path / "raw_sdd"), data, verbose=False)
    with pytest.warns(MeaninglessResultsWarning):
        assert main(["benchmark", "--data-root", str(data), "--training-free", "--out", str(tmp_path / "b"),
                     *SIZE]) == 0
    table = (tmp_path / "b" / "benchmark.md").read_text()
    assert "**visa**" in table and "**sdd**" in table
    config = json.loads((tmp_path / "b" / "sdd" / "config.json").read_text())
    assert config["protocol"] is not None  # protocol.json of the prepared dataset is recorded
    scores = list(csv.DictReader((tmp_path / "b" / "sdd" / "scores.csv").open()))
    assert {r["label"] for r in scores} == {"0", "1"}
