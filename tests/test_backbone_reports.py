"""Reports name what ran (family, variant, dtype, scoring rule); the paper's numbers stand only beside TIPS."""

from __future__ import annotations

import json
import warnings

import pytest

from tipsomaly_lite.cli import main
from tipsomaly_lite.eval.evaluation import EvaluationResult, benchmark_table
from tipsomaly_lite.eval.report import backbone_line, meaningless_line, paper_applies, rule_text
from tipsomaly_lite.offline import MeaninglessResultsWarning

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    from tipsomaly_lite.data.toy_data import make_toy_dataset

    root = tmp_path_factory.mktemp("data")
    make_toy_dataset(root / "toy", classes=["hex_nut"], n_train=0, n_normal=2, n_anomalous=2)
    return root


def _result(config: dict, dataset: str = "mvtec") -> EvaluationResult:
    row = dict.fromkeys(("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_aupro", "pixel_f1_max"), 50.0)
    return EvaluationResult(dataset, {"bottle": dict(row)}, dict(row), {"aupro_mode": "compat", **config})


SIGLIP2 = {"backbone": "siglip2", "variant": "so400m-256", "model_source": "google/siglip2-so400m-patch16-256",
           "dtype": "bfloat16", "offline_model": False,
           "scoring_rule": {"kind": "sigmoid", "logit_scale": 2.302585, "logit_bias": -16.5}}
TIPS = {"backbone": "tips", "variant": "l14-hr", "model_source": "l14-hr", "dtype": "float32", "offline_model": False,
        "scoring_rule": {"kind": "softmax", "temperature": 0.005}}


def test_the_paper_numbers_stand_only_beside_a_backbone_the_paper_reports():
    assert paper_applies(TIPS) and not paper_applies(SIGLIP2) and not paper_applies({"backbone": "clip"})
    md = _result(SIGLIP2).to_markdown(paper=True)
    assert "**Backbone:** SigLIP2 `so400m-256` (google/siglip2-so400m-patch16-256), vision tower bfloat16, " \
           "scoring sigmoid(cos * 10 -16.5)" in md
    assert "| paper |" not in md and "ours - paper" not in md and "93.4" not in md
    assert "No paper numbers here: the paper reports TIPS, and this is a SigLIP2 run" in md
    tips = _result(TIPS).to_markdown(paper=True)
    assert "**Backbone:** TIPS `l14-hr`, vision tower float32, scoring softmax(cos / 0.005)" in tips
    assert "| paper |" in tips and "| ours - paper |" in tips and "93.4" in tips
    table = benchmark_table({"mvtec": _result(SIGLIP2)})
    assert "(paper)" not in table and "No paper numbers here" in table and "SigLIP2 `so400m-256`" in table
    assert "mvtec (paper)" in benchmark_table({"mvtec": _result(TIPS)})
    mixed = benchmark_table({"mvtec": _result(TIPS), "visa": _result(SIGLIP2, "visa")})
    assert "(paper)" not in mixed and "TIPS `l14-hr`" in mixed and "SigLIP2 `so400m-256`" in mixed


def test_the_offline_banner_names_the_tiny_models_family_and_old_results_still_read():
    assert "tiny CLIP with random weights" in meaningless_line({"backbone": "clip"})
    assert "tiny TIPS a toy model" in meaningless_line({"backbone": "tips"})  # the offline TIPS is the toy one
    offline_clip = _result({**SIGLIP2, "backbone": "clip", "offline_model": True, "variant": "tiny"})
    md = offline_clip.to_markdown(paper=True)
    assert "tiny CLIP with random weights" in md and "tiny TIPS" not in md and "MEANINGLESS" in md
    assert rule_text(None) == "not recorded" and "scoring not recorded" in backbone_line({"backbone": "tips"})


def test_a_clip_run_names_itself_in_results_config_and_banner(toy_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TIPSOMALY_OFFLINE", "1")
    out = tmp_path / "eval"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MeaninglessResultsWarning)
        assert main(["evaluate", "--dataset", "toy", "--data-root", str(toy_root), "--backbone", "clip",
                     "--variant", "tiny", "--paper", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "Backbone: CLIP `tiny` (random init (tiny, offline)), vision tower float32, scoring softmax(cos /" in printed
    md = (out / "results.md").read_text()
    assert "tiny CLIP with random weights" in md and "**Backbone:** CLIP `tiny`" in md and "| paper |" not in md
    config = json.loads((out / "config.json").read_text())
    assert config["backbone"] == "clip" and config["variant"] == "tiny" and config["dtype"] == "float32"
    assert config["scoring_rule"]["kind"] == "softmax"
    assert config["scoring_rule"]["temperature"] == pytest.approx(config["temperature"])


def test_a_siglip2_training_run_records_its_sigmoid_rule(toy_root, tmp_path, monkeypatch):
    monkeypatch.setenv("TIPSOMALY_OFFLINE", "1")
    run = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MeaninglessResultsWarning)
        assert main(["train", "--dataset", "toy", "--data-root", str(toy_root), "--backbone", "siglip2",
                     "--epochs", "1", "--batch-size", "4", "--out", str(run), "--quiet"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["backbone"] == "siglip2" and config["scoring_rule"]["kind"] == "sigmoid"
    assert set(config["scoring_rule"]) == {"kind", "logit_scale", "logit_bias"}


def test_prompts_trained_under_another_scoring_rule_are_refused(toy_root, tmp_path, monkeypatch, capsys):
    """A SigLIP2 run recorded before the sigmoid rule (no scoring_rule: the softmax) is neither resumed nor used."""
    monkeypatch.setenv("TIPSOMALY_OFFLINE", "1")
    run = tmp_path / "run"
    common = ["--dataset", "toy", "--data-root", str(toy_root), "--backbone", "siglip2", "--quiet"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MeaninglessResultsWarning)
        assert main(["train", *common, "--epochs", "1", "--batch-size", "4", "--out", str(run)]) == 0
        config = json.loads((run / "config.json").read_text())
        del config["scoring_rule"]  # as a run written before scoring rules were recorded
        (run / "config.json").write_text(json.dumps(config))
        capsys.readouterr()
        assert main(["train", *common, "--epochs", "2", "--batch-size", "4", "--out", str(run)]) == 2
        assert "the scoring rule: 'softmax' then, 'sigmoid' now" in capsys.readouterr().err
        assert main(["evaluate", *common, "--prompts", str(run), "--out", str(tmp_path / "ev")]) == 2
        assert "the scoring rule: 'softmax' then, 'sigmoid' now" in capsys.readouterr().err


def test_the_few_shot_table_names_the_backbone_and_the_offline_model_as_every_table_does():
    from tipsomaly_lite.eval.seeds import seeds_table

    offline_clip = {**SIGLIP2, "backbone": "clip", "offline_model": True, "variant": "tiny"}
    table = seeds_table({"mvtec": [_result(offline_clip), _result(offline_clip)]}, 2, [0, 1])
    assert "**Backbone:** CLIP `tiny`" in table and "tiny CLIP with random weights" in table
    assert "2-shot: mean ± std over 2 draws" in table
