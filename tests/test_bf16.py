"""bf16 inference: the vision tower in bf16, everything after it in fp32, close to the fp32 results."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from tipsomaly_lite.backbones import load_backbone
from tipsomaly_lite.backbones.tips.model import load_tips
from tipsomaly_lite.backbones.tips.vision import attention, chunked_attention
from tipsomaly_lite.cli import main
from tipsomaly_lite.data.datasets import AnomalyDataset
from tipsomaly_lite.data.toy_data import make_toy_dataset
from tipsomaly_lite.eval.evaluation import METRICS, evaluate
from tipsomaly_lite.method.detector import Detector
from tipsomaly_lite.method.feature_cache import FeatureCache
from tipsomaly_lite.offline import MeaninglessResultsWarning

SIZE = 112
# bf16 keeps 8 mantissa bits (relative rounding 2^-9 = 2e-3 per operation). On the tiny model
# the maps and scores move by ~3e-3 and the metrics by < 1 point; these bounds leave room.
MAP_TOL = 2e-2
SCORE_TOL = 2e-2
METRIC_TOL = 3.0  # points of a metric in percent


def _quiet_load(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MeaninglessResultsWarning)
        return load_tips(*args, **kwargs)


@pytest.fixture(scope="module")
def tiny32(_isolated_home):
    return _quiet_load("tiny")


@pytest.fixture(scope="module")
def tiny16(_isolated_home):
    return _quiet_load("tiny", dtype="bf16")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = make_toy_dataset(tmp_path_factory.mktemp("data") / "toy", classes=["pill", "wood_grain"], n_train=0,
                            n_normal=3, n_anomalous=3)
    return AnomalyDataset(root, image_size=SIZE)


def _batch(dataset):
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([it["image"] for it in items]), [it["class_word"] for it in items]


# --- loading --------------------------------------------------------------------------------

def test_bf16_casts_the_vision_tower_and_keeps_the_text_tower_fp32(tiny16):
    assert tiny16.dtype == torch.bfloat16
    assert {p.dtype for p in tiny16.vision.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in tiny16.text.parameters()} == {torch.float32}
    assert "dtype=bfloat16 (vision; text float32)" in repr(tiny16)
    assert tiny16.encode_text(["a photo of a pill"]).dtype == torch.float32


@pytest.mark.parametrize("name,want", [("bf16", torch.bfloat16), ("bfloat16", torch.bfloat16),
                                       (torch.bfloat16, torch.bfloat16), ("fp32", torch.float32),
                                       ("float32", torch.float32), (torch.float32, torch.float32)])
def test_every_dtype_name_is_understood(name, want, _isolated_home):
    assert _quiet_load("tiny", dtype=name).dtype == want


@pytest.mark.parametrize("bad", ["fp16", "half", torch.float16, torch.float64, 16, None])
def test_an_unknown_dtype_is_refused_naming_the_argument_and_the_choices(bad, _isolated_home):
    with pytest.raises(ValueError, match=r"dtype must be one of .*bf16.*fp32"):
        _quiet_load("tiny", dtype=bad)
    with pytest.raises(ValueError, match="dtype must be one of"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MeaninglessResultsWarning)
            load_backbone("tiny", family="clip", dtype=bad)


@pytest.mark.parametrize("family", ["tips", "clip"])
def test_bf16_on_a_cpu_without_bf16_instructions_is_said_to_be_slow(family, monkeypatch, _isolated_home):
    import tipsomaly_lite.backbones.base as base

    monkeypatch.setattr(base, "cpu_has_bf16", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MeaninglessResultsWarning)
        with pytest.warns(UserWarning, match="without bf16 matrix instructions.*slower than float32"):
            load_backbone("tiny", family=family, dtype="bf16")
        warnings.simplefilter("error", UserWarning)  # fp32 there, or bf16 where the CPU has it: no warning
        warnings.simplefilter("ignore", MeaninglessResultsWarning)
        load_backbone("tiny", family=family)
        monkeypatch.setattr(base, "cpu_has_bf16", lambda: True)
        load_backbone("tiny", family=family, dtype="bf16")


@pytest.mark.parametrize("family", ["tips", "clip", "siglip2"])
def test_load_backbone_passes_the_dtype_to_every_family(family, _isolated_home):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MeaninglessResultsWarning)
        model32 = load_backbone("tiny", family=family)
        model16 = load_backbone("tiny", family=family, dtype="bf16")
    assert model32.dtype == torch.float32 and model16.dtype == torch.bfloat16
    torch.manual_seed(0)
    images = torch.rand(2, 3, SIZE, SIZE)
    f32, f16 = model32.encode_features(images), model16.encode_features(images)
    assert f32.keys() == f16.keys()
    for name in f16:
        assert f16[name].dtype == torch.float32, name
        torch.testing.assert_close(f16[name], f32[name], atol=MAP_TOL, rtol=0)
    assert model16.encode_text(["a photo"]).dtype == torch.float32
    assert model32.fingerprint() != model16.fingerprint()


# --- outputs --------------------------------------------------------------------------------

def test_features_are_fp32_and_close_to_fp32(tiny32, tiny16):
    torch.manual_seed(0)
    images = torch.rand(2, 3, SIZE, SIZE)
    f32, f16 = tiny32.encode_features(images), tiny16.encode_features(images)
    for name in ("patch_tokens", "cls1", "cls2"):
        assert f16[name].dtype == torch.float32
        torch.testing.assert_close(f16[name].norm(dim=-1), torch.ones(f16[name].shape[:-1]))
        torch.testing.assert_close(f16[name], f32[name], atol=MAP_TOL, rtol=0)


def test_maps_and_scores_agree_with_fp32(tiny32, tiny16, toy):
    images, words = _batch(toy)
    p32, p16 = Detector(tiny32).predict(images, words), Detector(tiny16).predict(images, words)
    assert p16.anomaly_map.dtype == p16.image_score.dtype == torch.float32
    assert (p16.anomaly_map - p32.anomaly_map).abs().max() <= MAP_TOL
    assert (p16.image_score - p32.image_score).abs().max() <= SCORE_TOL


def test_evaluate_in_bf16_gives_metrics_close_to_fp32(tiny32, tiny16, toy):
    r32 = evaluate(Detector(tiny32), toy, batch_size=4, progress=False)
    r16 = evaluate(Detector(tiny16), toy, batch_size=4, progress=False)
    assert r32.config["dtype"] == "float32" and r16.config["dtype"] == "bfloat16"
    for key in METRICS:
        assert r16.mean[key] == pytest.approx(r32.mean[key], abs=METRIC_TOL), key


def test_feature_cache_keys_differ_between_fp32_and_bf16(tiny32, tiny16, toy):
    path = toy[len(toy) - 1]["path"]
    k32 = FeatureCache(tiny32, SIZE, progress=False).key(path, None, 1)
    k16 = FeatureCache(tiny16, SIZE, progress=False).key(path, None, 1)
    assert tiny32.fingerprint() != tiny16.fingerprint() and k32 != k16


# --- attention: the one fast path ------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 4, 1026, 16), (3, 2, 300, 8), (2, 3, 66, 16)])
@pytest.mark.parametrize("rows", [512, 128, 7])
def test_chunked_attention_equals_sdpa(shape, rows):
    torch.manual_seed(0)
    q, k, v = (torch.randn(shape) for _ in range(3))
    reference = F.scaled_dot_product_attention(q.double(), k.double(), v.double()).float()
    torch.testing.assert_close(chunked_attention(q, k, v, rows=rows), reference, atol=1e-5, rtol=1e-5)
    qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()
    fast = chunked_attention(qb, kb, vb, rows=rows)
    sdpa = F.scaled_dot_product_attention(qb, kb, vb)
    assert fast.dtype == torch.bfloat16 and fast.shape == q.shape
    # Both bf16 paths are as close to the fp32 reference as bf16 allows, hence to each other.
    torch.testing.assert_close(fast.float(), reference, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(sdpa.float(), reference, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(fast, sdpa, atol=3e-2, rtol=3e-2)


def test_gradients_flow_through_the_chunked_path():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 40, 8, requires_grad=True) for _ in range(3))
    weights = torch.randn(2, 3, 40, 8)
    (chunked_attention(q, k, v, rows=16) * weights).sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    (F.scaled_dot_product_attention(q, k, v) * weights).sum().backward()
    for got, t in zip(grads, (q, k, v)):
        torch.testing.assert_close(got, t.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("path", ["chunked", "sdpa"])
def test_attention_takes_the_path_it_is_told_and_sdpa_in_fp32(path, monkeypatch):
    monkeypatch.setenv("TIPSOMALY_ATTENTION", path)
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 40, 8) for _ in range(3))
    assert torch.equal(attention(q, k, v), F.scaled_dot_product_attention(q, k, v))  # fp32: always SDPA
    qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()
    want = chunked_attention(qb, kb, vb) if path == "chunked" else F.scaled_dot_product_attention(qb, kb, vb)
    assert torch.equal(attention(qb, kb, vb), want)
    # Non-contiguous inputs, as the packed qkv projection makes them.
    qkv = torch.randn(2, 40, 3, 3, 8).bfloat16().permute(2, 0, 3, 1, 4)
    torch.testing.assert_close(attention(*qkv), F.scaled_dot_product_attention(*qkv), atol=3e-2, rtol=3e-2)


# --- CLI ------------------------------------------------------------------------------------

def test_cli_dtype_bf16_evaluates_and_records_it(tmp_path, monkeypatch, capsys):
    import json

    monkeypatch.setenv("TIPSOMALY_OFFLINE", "1")
    make_toy_dataset(tmp_path / "data" / "toy", classes=["pill"], n_train=0, n_normal=2, n_anomalous=2)
    out = tmp_path / "eval"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MeaninglessResultsWarning)
        rc = main(["evaluate", "--dataset", "toy", "--data-root", str(tmp_path / "data"), "--image-size", "84",
                   "--quiet", "--dtype", "bf16", "--out", str(out)])
    assert rc == 0
    assert "dtype=bfloat16" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_cli_refuses_an_unknown_dtype_in_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--dataset", "toy", "--dtype", "fp16"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--dtype" in err[0] and "fp16" in err[0]


@pytest.mark.parametrize("dtype, tol", [("fp32", 1e-5), ("bf16", 2e-2)])
def test_a_batch_split_into_cpu_passes_gives_the_whole_batch_features(dtype, tol, _isolated_home, monkeypatch):
    import tipsomaly_lite.backbones.tips.model as model_module

    model = _quiet_load("tiny", dtype=dtype)
    torch.manual_seed(0)
    images = torch.rand(5, 3, 56, 84)  # 5 = 2 + 2 + 1 images per pass
    calls = []
    original = model.vision.forward
    monkeypatch.setattr(model.vision, "forward", lambda x: calls.append(len(x)) or original(x))
    split = model.encode_image(images)
    assert calls == [2, 2, 1]
    monkeypatch.setattr(model_module, "CPU_IMAGES_PER_PASS", 8)
    calls.clear()
    whole = model.encode_image(images)
    assert calls == [5]
    for a, b in zip(split, whole):
        torch.testing.assert_close(a.float(), b.float(), atol=tol, rtol=0)
