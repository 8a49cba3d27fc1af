"""The fast paths chosen per machine give the same results as the readable ones.

- the attention path for bf16 on the CPU (``backbones/tips/vision.py``; CPU flags from
  ``backbones/machine.py``): chosen from the flags or a measurement, overridable, recorded; both
  paths agree on a whole model;
- ``dtype="auto"``: bf16 exactly where the CPU or GPU has fast bf16;
- the anomaly map as two cached matrix products: equal to upsampling then ``gaussian_blur``;
- construction without throw-away initialisation: the same outputs, and a missing weight still refused.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tipsomaly_lite.backbones import load_backbone, machine
from tipsomaly_lite.backbones.tips import vision
from tipsomaly_lite.backbones.tips.checkpoints import CheckpointError, write_npz
from tipsomaly_lite.backbones.tips.model import load_tips, load_tips_files
from tipsomaly_lite.backbones.tips.tiny import TINY_ARCH, random_tips_arrays, tiny_files
from tipsomaly_lite.method.maps import anomaly_map, gaussian_blur, map_matrices, upsample_map
from tipsomaly_lite.offline import MeaninglessResultsWarning

AMX = frozenset({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
AVX512_BF16 = frozenset({"avx512f", "avx512_bf16"})
AVX2 = frozenset({"avx2", "fma"})


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MeaninglessResultsWarning)
        return fn(*args, **kwargs)


@pytest.fixture
def flags(monkeypatch):
    """Pretend the CPU has the given flags (None: unreadable), with no forced attention."""
    monkeypatch.delenv(vision.ATTENTION_ENV, raising=False)

    def set_flags(value):
        monkeypatch.setattr(machine, "cpu_flags", lambda path="/proc/cpuinfo": value)
    return set_flags


# --- reading the machine ----------------------------------------------------------------------

def test_cpu_flags_are_read_from_the_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some Xeon\nflags\t\t: fpu avx512f amx_bf16 avx512_bf16\n")
    assert machine.cpu_flags(str(info)) == {"fpu", "avx512f", "amx_bf16", "avx512_bf16"}
    assert machine.cpu_flags(str(tmp_path / "missing")) is None
    (tmp_path / "noflags").write_text("processor\t: 0\n")
    assert machine.cpu_flags(str(tmp_path / "noflags")) is None


@pytest.mark.parametrize("cpu, want", [(AMX, "bf16"), (AVX512_BF16, "bf16"), (AVX2, "fp32")])
def test_dtype_auto_is_bf16_exactly_where_the_cpu_has_bf16_instructions(cpu, want, flags):
    flags(cpu)
    dtype, why = machine.resolve_dtype("auto", "cpu")
    assert dtype == want and why.startswith("auto: ")
    assert ("amx_bf16" in why or "avx512_bf16" in why) if want == "bf16" else "no bf16" in why
    assert machine.resolve_dtype("fp32", "cpu") == ("fp32", "asked")
    assert machine.resolve_dtype(torch.bfloat16, "cpu") == (torch.bfloat16, "asked")


def test_dtype_auto_asks_onednn_when_the_flags_are_unreadable(flags, monkeypatch):
    import tipsomaly_lite.backbones.base as base

    flags(None)
    monkeypatch.setattr(base, "cpu_has_bf16", lambda: True)
    assert machine.resolve_dtype("auto", "cpu")[0] == "bf16"
    monkeypatch.setattr(base, "cpu_has_bf16", lambda: False)
    assert machine.resolve_dtype("auto", "cpu")[0] == "fp32"


def test_dtype_auto_on_cuda_follows_bf16_support(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert machine.resolve_dtype("auto", "cuda") == ("bf16", "auto: the GPU supports bf16")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert machine.resolve_dtype("auto", "cuda")[0] == "fp32"


@pytest.mark.parametrize("cpu, want", [(AVX2, torch.float32), (AMX, torch.bfloat16)])
def test_load_backbone_resolves_auto_and_says_why(cpu, want, flags, _isolated_home):
    flags(cpu)
    model = _quiet(load_backbone, "tiny", dtype="auto")
    assert model.dtype == want
    described = model.describe()
    assert described["dtype"] == str(want).removeprefix("torch.")
    assert described["dtype_choice"].startswith("auto: ")
    assert _quiet(load_backbone, "tiny").describe()["dtype_choice"] == "asked"


def test_cli_dtype_auto_records_the_resolved_dtype_and_the_attention(tmp_path, monkeypatch, capsys, flags):
    from tipsomaly_lite.cli import main
    from tipsomaly_lite.data.toy_data import make_toy_dataset

    flags(AMX)
    monkeypatch.setenv("TIPSOMALY_OFFLINE", "1")
    make_toy_dataset(tmp_path / "data" / "toy", classes=["pill"], n_train=0, n_normal=1, n_anomalous=1)
    out = tmp_path / "eval"
    rc = _quiet(main, ["evaluate", "--dataset", "toy", "--data-root", str(tmp_path / "data"), "--image-size", "56",
                       "--quiet", "--dtype", "auto", "--out", str(out)])
    assert rc == 0
    assert "--dtype auto -> bfloat16" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    assert config["attention"].startswith("sdpa (amx_bf16")


# --- the attention path ---------------------------------------------------------------------

def test_amx_chooses_sdpa_and_the_choice_can_be_forced(flags, monkeypatch):
    flags(AMX)
    assert vision.bf16_attention().path == "sdpa"
    assert "amx_bf16" in vision.bf16_attention().reason
    monkeypatch.setenv(vision.ATTENTION_ENV, "chunked")
    assert vision.attention_choice("cpu", torch.bfloat16) == vision.AttentionChoice(
        "chunked", f"forced by {vision.ATTENTION_ENV}")
    monkeypatch.setenv(vision.ATTENTION_ENV, "flash")
    with pytest.raises(ValueError, match=r"TIPSOMALY_ATTENTION='flash': expected one of sdpa, chunked or auto"):
        vision.bf16_attention()


def test_without_amx_a_measurement_chooses_once(flags, monkeypatch):
    flags(AVX512_BF16)
    vision._measured_choice.cache_clear()
    first = vision.bf16_attention()
    assert first.path in vision.ATTENTION_PATHS and first.reason.startswith("measured")
    assert "sdpa" in first.reason and "chunked" in first.reason
    assert vision.bf16_attention() is first  # measured once per process


def test_fp32_and_cuda_always_take_sdpa(flags, monkeypatch):
    flags(AVX2)
    monkeypatch.setenv(vision.ATTENTION_ENV, "chunked")  # the override is for bf16 on the CPU only
    assert vision.attention_choice("cpu", torch.float32).path == "sdpa"
    assert vision.attention_choice("cuda", torch.bfloat16).path == "sdpa"


def test_both_attention_paths_give_the_same_model_outputs(monkeypatch, _isolated_home):
    """A whole bf16 model under each path: within the bf16 tolerance of each other and of fp32."""
    model16 = _quiet(load_tips, "tiny", dtype="bf16")
    model32 = _quiet(load_tips, "tiny")
    images = torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    features = {}
    for path in vision.ATTENTION_PATHS:
        monkeypatch.setenv(vision.ATTENTION_ENV, path)
        assert model16.attention_path().startswith(path)
        assert f"attention={path}" in repr(model16) and model16.describe()["attention"].startswith(path)
        features[path] = model16.encode_features(images)
    monkeypatch.delenv(vision.ATTENTION_ENV)
    reference = model32.encode_features(images)
    for name in reference:
        torch.testing.assert_close(features["chunked"][name], features["sdpa"][name], atol=2e-2, rtol=0)
        torch.testing.assert_close(features["chunked"][name], reference[name], atol=2e-2, rtol=0)
    maps = {path: anomaly_map(f["patch_tokens"][..., 0].sigmoid(), (8, 8), 112) for path, f in features.items()}
    torch.testing.assert_close(maps["chunked"], maps["sdpa"], atol=2e-2, rtol=0)


def test_hf_families_say_they_run_their_own_attention(_isolated_home):
    model = _quiet(load_backbone, "tiny", family="clip")
    assert model.describe()["attention"] == "the family's own (transformers)"


# --- the map as two matrix products ---------------------------------------------------------

def _old_map(p: torch.Tensor, grid, size, sigma):
    """Today's readable pipeline: bilinear upsampling, then the separable Gaussian."""
    up = upsample_map(p.reshape(len(p), *grid), size)
    return gaussian_blur(up, sigma=sigma) if sigma else up


@pytest.mark.parametrize("grid, size, sigma", [
    ((37, 37), (518, 518), 4.0),   # TIPS at 518 px, the paper's setting
    ((32, 32), (448, 448), 4.0),   # TIPS at its native 448 px
    ((24, 24), (336, 336), 4.0),   # CLIP L/14-336
    ((37, 37), (518, 448), 2.5),   # non-square output, fractional sigma
    ((5, 9), (70, 30), 1.0),       # downsampling along one axis
    ((2, 3), (5, 7), 4.0),         # radius 16 > side: the reflection wraps
    ((1, 1), (1, 1), 2.0),         # a single pixel
    ((4, 4), (8, 8), 0.0),         # no smoothing
])
def test_the_matrix_map_equals_upsampling_then_the_blur(grid, size, sigma):
    gen = torch.Generator().manual_seed(sum(grid) + sum(size))
    p = torch.rand(3, grid[0] * grid[1], generator=gen)
    # float64 end to end: the two computations agree to 1e-6 (the blur's float32 kernel is the gap).
    exact = _old_map(p.double(), grid, size, sigma)
    got64 = anomaly_map(p.double(), grid, size, sigma=sigma)
    assert got64.dtype == torch.float64 and got64.shape == (3, *size)
    torch.testing.assert_close(got64, exact, atol=1e-6, rtol=0)
    # float32: the matrix form stays within 1e-6 of the exact map; today's float32 path is itself off by up
    # to ~5e-6 (F.interpolate computes its source positions in float32), so the two float32 maps agree to 1e-5.
    got32 = anomaly_map(p, grid, size, sigma=sigma)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), exact, atol=1e-6, rtol=0)
    torch.testing.assert_close(got32, _old_map(p, grid, size, sigma), atol=1e-5, rtol=0)


def test_map_matrices_are_cached_and_keyed_by_dtype():
    a = map_matrices((37, 37), (518, 518), 4.0)
    assert map_matrices((37, 37), (518, 518), 4.0)[0] is a[0]
    assert map_matrices((37, 37), (518, 518), 4.0, dtype=torch.float64)[0].dtype == torch.float64
    assert map_matrices((37, 37), (518, 518), 2.0)[0] is not a[0]
    # Rows are convex combinations: a constant grid stays that constant.
    torch.testing.assert_close(a[0].sum(dim=1), torch.ones(518), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="sigma"):
        map_matrices((4, 4), (8, 8), -1.0)


def test_the_map_keeps_half_precision_and_takes_integers():
    p = torch.rand(2, 16)
    assert anomaly_map(p.bfloat16(), (4, 4), 8).dtype == torch.bfloat16
    assert anomaly_map((p > 0.5).long(), (4, 4), 8).dtype == torch.float32


# --- construction without initialisation ----------------------------------------------------

def test_loading_never_initialises_weights_that_are_replaced(_isolated_home):
    """In a fresh process: loading the tiny model does not import torch._dynamo (the meta init did)."""
    tiny_files()
    code = ("import sys, warnings; warnings.simplefilter('ignore')\n"
            "from tipsomaly_lite.backbones.tips.model import load_tips\n"
            "m = load_tips('tiny'); import torch; m.encode_features(torch.rand(1, 3, 56, 56))\n"
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def test_a_model_built_without_init_equals_one_built_the_ordinary_way(tiny):
    from tipsomaly_lite.backbones.tips.model import TIPS

    torch.manual_seed(0)
    ordinary = TIPS(tiny.arch, tiny.tokenizer, tiny.temperature)  # random init on the CPU, then overwritten
    ordinary.load_state_dict(tiny.state_dict(), strict=True)
    ordinary.eval()
    assert not any(t.is_meta for t in (*tiny.parameters(), *tiny.buffers()))
    images = torch.rand(2, 3, 56, 56, generator=torch.Generator().manual_seed(1))
    for name, value in tiny.encode_features(images).items():
        assert torch.equal(value, ordinary.encode_features(images)[name]), name
    assert torch.equal(tiny.encode_text(["a photo of a pill"]), ordinary.encode_text(["a photo of a pill"]))


@pytest.mark.parametrize("tower, name", [("vision", "blocks.1.mlp.fc2.bias"), ("text", "token_embedding.weight")])
def test_a_missing_weight_is_still_refused(tower, name, tmp_path):
    vision, text = random_tips_arrays(TINY_ARCH)
    del (vision if tower == "vision" else text)[name]
    v, t = write_npz(tmp_path / "v.npz", vision), write_npz(tmp_path / "t.npz", text)
    with pytest.raises(CheckpointError, match=name.split(".")[-2] if tower == "vision" else "token_embedding"):
        load_tips_files(v, t, tiny_files()[2])


def test_the_strict_load_is_the_last_guard(monkeypatch, tmp_path):
    """Even with the layout check bypassed, a tensor left on the meta device cannot get through."""
    import tipsomaly_lite.backbones.tips.model as model_module

    vision, text = random_tips_arrays(TINY_ARCH)
    monkeypatch.setattr(model_module, "validate_pair", lambda *a, **k: TINY_ARCH)
    del vision["norm.bias"]
    with pytest.raises(RuntimeError, match="Missing key.*norm.bias"):
        model_module._build(vision, text, model_module.Tokenizer(tiny_files()[2]), num_heads=None,
                            vision_name="v", text_name="t")


def test_bf16_loading_casts_each_vision_array_as_it_goes(tmp_path):
    """The vision arrays are consumed one by one (no whole float32 tower beside the bf16 one)."""
    import tipsomaly_lite.backbones.tips.model as model_module

    vision, text = random_tips_arrays(TINY_ARCH)
    expected = {k: torch.from_numpy(np.array(v)).to(torch.bfloat16) for k, v in vision.items()}
    model = model_module._build(vision, text, model_module.Tokenizer(tiny_files()[2]), num_heads=None,
                                vision_name="v", text_name="t", dtype=torch.bfloat16)
    assert vision == {}
    assert {p.dtype for p in model.vision.parameters()} == {torch.bfloat16}
    assert all(torch.equal(model.vision.state_dict()[k], w) for k, w in expected.items())
    placed = model.place("cpu", torch.bfloat16)
    assert {p.dtype for p in placed.text.parameters()} == {torch.float32}
    assert {p.dtype for p in placed.vision.parameters()} == {torch.bfloat16}
