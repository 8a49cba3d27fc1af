"""ONNX export: onnxruntime's scores and maps equal Detector.predict on TIPS, CLIP and SigLIP2 (tiny models),
for another batch size than the trace (SigLIP2 under its sigmoid rule); fails closed."""

from __future__ import annotations

import warnings

import pytest
import torch

from tipsomaly_lite.backbones import load_backbone
from tipsomaly_lite.cli import main
from tipsomaly_lite.deploy import ExportedDetector, export_onnx, run_onnx
from tipsomaly_lite.deploy.export import check_class_word
from tipsomaly_lite.method.detector import Detector
from tipsomaly_lite.offline import MeaninglessResultsWarning

pytest.importorskip("onnxruntime", reason="the export extra: pip install 'tipsomaly_lite[export]'")


def _tiny(family, size=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MeaninglessResultsWarning)
        return load_backbone("tiny", family=family, image_size=size)


@pytest.mark.parametrize("family", ["tips", pytest.param("clip", marks=pytest.mark.slow),
                                    pytest.param("siglip2", marks=pytest.mark.slow)])  # ~15 s each on 2 cores
def test_onnxruntime_equals_detector_predict(family, tmp_path):
    model = _tiny(family, 112 if family == "tips" else None)
    g = torch.Generator().manual_seed(0)
    prompts = tuple(0.05 * torch.randn(2, model.text_width, generator=g) for _ in range(2))
    detector = Detector(model, prompts)  # decoupled: fixed prompts with the word, learned ones for the maps
    result = export_onnx(detector, "metal nut", tmp_path / "d.onnx")
    assert result.path.is_file() and result.max_error <= 1e-4
    s = model.image_size
    for batch in (1, 4):  # neither is the trace's batch of two
        images = torch.rand(batch, 3, s, s, generator=g)
        score, amap = run_onnx(tmp_path / "d.onnx", images)
        expected = detector.predict(images, "metal nut")
        assert score.shape == (batch,) and amap.shape == (batch, s, s)
        torch.testing.assert_close(score, expected.image_score, atol=1e-4, rtol=0)
        torch.testing.assert_close(amap, expected.anomaly_map, atol=1e-4, rtol=0)
    import onnx

    graph = onnx.load(str(tmp_path / "d.onnx")).graph
    assert [i.name for i in graph.input] == ["image"] and [o.name for o in graph.output] == ["image_score",
                                                                                           "anomaly_map"]
    assert not graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")  # a dynamic batch


def test_the_class_word_is_baked_in():
    model = _tiny("tips", 56)
    detector = Detector(model)
    a, b = ExportedDetector(detector, "pill"), ExportedDetector(detector, "metal nut")
    assert not torch.equal(a.image_text, b.image_text)
    torch.testing.assert_close(a.image_text, detector.text_features(["pill"])[0][0])


@pytest.mark.parametrize("word", ["", "   ", None, "a{}b", "x" * 500, "tab\there"])
def test_a_class_word_that_makes_no_prompts_is_refused(word):
    with pytest.raises(ValueError, match="class"):
        check_class_word(word)


def _export(args, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MeaninglessResultsWarning)
        code = main(["export", *args, "--variant", "tiny", "--image-size", "56", "--quiet"])
    return code, capsys.readouterr()


def test_the_export_command_writes_a_checked_file_and_keeps_what_exists(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TIPSOMALY_OFFLINE", "1")
    out = tmp_path / "pill.onnx"
    code, captured = _export(["--format", "onnx", "--class-name", "pill", "--out", str(out)], capsys)
    assert code == 0, captured.err
    assert out.is_file() and "onnxruntime equals Detector.predict" in captured.out and "MEANINGLESS" in captured.out
    before = out.read_bytes()
    code, captured = _export(["--class-name", "pill", "--out", str(out)], capsys)
    assert code == 2 and "already exists" in captured.err and len(captured.err.strip().splitlines()) == 1
    assert out.read_bytes() == before
    code, _ = _export(["--class-name", "metal nut", "--out", str(out), "--overwrite"], capsys)
    assert code == 0 and out.read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pill.onnx"]  # no temporary file left behind


@pytest.mark.parametrize("args, needle", [(["--class-name", "  "], "no prompts can be made"),
                                          (["--class-name", "pill", "--dtype", "bf16"], "--dtype"),
                                          (["--class-name", "pill", "--released", "mvtec", "--prompts", "x"],
                                           "not both")])
def test_export_errors_are_one_line_and_write_nothing(args, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TIPSOMALY_OFFLINE", "1")
    code, captured = _export([*args, "--out", str(tmp_path / "x.onnx")], capsys)
    err = captured.err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], captured.err
    assert not (tmp_path / "x.onnx").exists()


def test_a_missing_export_extra_is_one_line(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    code, captured = _export(["--class-name", "pill", "--out", str(tmp_path / "x.onnx")], capsys)
    err = captured.err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "onnxruntime" in err[0] and "[export]" in err[0]


def test_export_out_must_be_an_onnx_file_name(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TIPSOMALY_OFFLINE", "1")
    (tmp_path / "folder.onnx").mkdir()
    for out, needle in [(tmp_path / "x.txt", "ending in .onnx"), (tmp_path / "folder.onnx", "not a regular file")]:
        code, captured = _export(["--class-name", "pill", "--out", str(out)], capsys)
        assert code == 2 and needle in captured.err and len(captured.err.strip().splitlines()) == 1
