"""npz layout, variant detection and the errors a bad checkpoint must give."""

from __future__ import annotations

import dataclasses
import zipfile

import numpy as np
import pytest

from tipsomaly_lite.backbones.tips.checkpoints import (CheckpointError, detect_architecture, npz_shapes, read_npz,
                                        standard_architecture, text_layout, validate_pair, vision_layout,
                                        write_npz)
from helpers.arch import with_depth
from tipsomaly_lite.backbones.tips.tiny import TINY_ARCH, random_tips_arrays
from tipsomaly_lite.backbones.tips.model import load_tips
from tipsomaly_lite.backbones.tips.registry import VARIANTS

FAMILIES = ["S/14", "B/14", "L/14", "So400m/14", "g/14"]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_layout_is_detected_from_shapes(family):
    # Full-size layouts as shapes only: g/14 is never allocated.
    arch = standard_architecture(family)
    v, t = vision_layout(arch), text_layout(arch)
    assert ("blocks.0.mlp.w12.weight" in v) == (family == "g/14")
    got = validate_pair(v, t)
    assert got == arch
    assert got.family == family
    assert got.native_size == 448


def test_layout_facts_from_the_spec():
    g = standard_architecture("g/14")
    assert vision_layout(g)["blocks.0.mlp.w12.weight"] == (8192, 1536)
    assert vision_layout(g)["blocks.0.mlp.w3.weight"] == (1536, 4096)
    so = standard_architecture("So400m/14")
    assert so.text_depth == 27 and text_layout(so)["transformer.resblocks.0.mlp.c_fc.weight"] == (4304, 1152)
    assert standard_architecture("g/14", grid=16).native_size == 224  # g14-lr
    assert vision_layout(standard_architecture("L/14"))["pos_embed"] == (1, 1025, 1024)
    assert {standard_architecture(f).heads for f in FAMILIES} == {6, 12, 16, 24}


@pytest.mark.parametrize("family", FAMILIES)
def test_npz_round_trip_keeps_every_key_and_shape(family, tmp_path, tiny_tokenizer_path):
    """Real key layout of each family, depth 1, fp16 on disk (dtype is cast on load)."""
    arch = with_depth(standard_architecture(family), 1)
    # Shrink the token table (the largest array) but keep every name and every other shape.
    arch = dataclasses.replace(arch, vocab=512)
    v, t = random_tips_arrays(arch, seed=3)
    write_npz(tmp_path / "v.npz", {k: a.astype(np.float16) for k, a in v.items()})
    write_npz(tmp_path / "t.npz", t)
    assert npz_shapes(tmp_path / "v.npz") == vision_layout(arch)
    back = read_npz(tmp_path / "v.npz")
    assert all(a.dtype == np.float32 for a in back.values())
    np.testing.assert_allclose(back["blocks.0.attn.qkv.weight"], v["blocks.0.attn.qkv.weight"], atol=1e-3)
    model = load_tips(vision=tmp_path / "v.npz", text=tmp_path / "t.npz", tokenizer=tiny_tokenizer_path)
    assert model.arch == arch
    assert all(not p.requires_grad for p in model.parameters())


def write_tiny(tmp_path, vision_edit=None, text_edit=None):
    v, t = random_tips_arrays(TINY_ARCH)
    if vision_edit:
        vision_edit(v)
    if text_edit:
        text_edit(t)
    return write_npz(tmp_path / "v.npz", v), write_npz(tmp_path / "t.npz", t)


def test_missing_and_unexpected_keys_are_listed(tmp_path, tiny_tokenizer_path):
    def edit(v):
        del v["blocks.1.ls2.gamma"], v["norm.bias"]
        v["extra.thing"] = np.zeros(3, np.float32)

    vision, text = write_tiny(tmp_path, vision_edit=edit)
    with pytest.raises(CheckpointError) as err:
        load_tips(vision=vision, text=text, tokenizer=tiny_tokenizer_path)
    msg = str(err.value)
    assert str(vision) in msg
    assert "blocks.1.ls2.gamma" in msg and "norm.bias" in msg and "extra.thing" in msg


def test_wrong_shape_is_named(tmp_path, tiny_tokenizer_path):
    vision, text = write_tiny(tmp_path, vision_edit=lambda v: v.update({"norm.weight": np.ones(63, np.float32)}))
    with pytest.raises(CheckpointError, match=r"norm.weight: \(63,\) \(expected \(64,\)\)"):
        load_tips(vision=vision, text=text, tokenizer=tiny_tokenizer_path)


def test_width_mismatch_names_both_files(tmp_path, tiny_tokenizer_path):
    vision, _ = write_tiny(tmp_path)
    other = with_depth(standard_architecture("S/14"), 1)
    _, t = random_tips_arrays(dataclasses.replace(other, vocab=512))
    text = write_npz(tmp_path / "other_text.npz", t)
    with pytest.raises(CheckpointError, match="width mismatch") as err:
        load_tips(vision=vision, text=text, tokenizer=tiny_tokenizer_path)
    assert str(vision) in str(err.value) and str(text) in str(err.value)


def test_truncated_npz_is_refused_with_its_name(tmp_path, tiny_tokenizer_path):
    vision, text = write_tiny(tmp_path)
    data = vision.read_bytes()
    vision.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        load_tips(vision=vision, text=text, tokenizer=tiny_tokenizer_path)
    assert str(vision) in str(err.value)


def test_garbage_file_is_refused(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"definitely not a zip file" * 10)
    with pytest.raises(CheckpointError, match="bad.npz"):
        read_npz(bad)


def test_corrupt_member_data_is_refused(tmp_path):
    path = write_npz(tmp_path / "x.npz", {"a": np.arange(1000, dtype=np.float32)})
    raw = bytearray(path.read_bytes())
    start = raw.find(b"\x00\x00\x80?")  # somewhere inside the array data
    raw[start: start + 4] = b"XXXX"
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="x.npz"):
        read_npz(path)


def test_object_arrays_are_never_unpickled(tmp_path):
    path = tmp_path / "pickled.npz"
    np.savez(path, evil=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CheckpointError, match="pickled.npz"):
        read_npz(path)
    with pytest.raises(CheckpointError, match="objects"):
        npz_shapes(path)


def test_non_numeric_array_is_refused(tmp_path):
    path = write_npz(tmp_path / "s.npz", {"names": np.array(["a", "b"])})
    with pytest.raises(CheckpointError, match="dtype"):
        read_npz(path)


def test_missing_file_and_missing_tokenizer(tmp_path, tiny_tokenizer_path):
    vision, text = write_tiny(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_tips(vision=tmp_path / "nope.npz", text=text, tokenizer=tiny_tokenizer_path)
    with pytest.raises(FileNotFoundError, match="tokenizer model not found: .*missing.model"):
        load_tips(vision=vision, text=text, tokenizer=tmp_path / "missing.model")
    with pytest.raises(ValueError, match="tokenizer="):
        load_tips(vision=vision, text=text)


def test_unknown_variant_lists_the_known_ones():
    with pytest.raises(KeyError, match="l14-hr"):
        load_tips("l15-hr")


def test_unknown_width_needs_num_heads():
    arch = standard_architecture("B/14")
    v, t = vision_layout(arch), text_layout(arch)
    v = {k: tuple(s[:-1]) + (80,) if s and s[-1] == 768 else s for k, s in v.items()}
    t = {k: tuple(s[:-1]) + (80,) if s and s[-1] == 768 else s for k, s in t.items()}
    with pytest.raises(CheckpointError, match="num_heads"):
        detect_architecture(v, t)
    assert detect_architecture(v, t, num_heads=5).heads == 5


def test_temperature_aliases(tmp_path, tiny_tokenizer_path):
    def edit(t):
        t["temperature_contrastive"] = t.pop("temperature").reshape(1)

    vision, text = write_tiny(tmp_path, text_edit=edit)
    model = load_tips(vision=vision, text=text, tokenizer=tiny_tokenizer_path)
    assert model.temperature == pytest.approx(0.005)


def test_registry_covers_the_spec_table():
    assert set(VARIANTS) == {"s14-hr", "b14-hr", "l14-hr", "so400m14-hr", "g14-hr", "g14-lr",
                             "v2-b14", "v2-l14", "v2-so400m14", "v2-g14"}
    assert VARIANTS["l14-hr"].files["vision"] == \
        "v1_0/checkpoints/pytorch/tips_oss_l14_highres_distilled_vision.npz"
    assert VARIANTS["v2-so400m14"].files["text"] == "v2_0/checkpoints/pytorch/tips_v2_oss_so14_text.npz"
    assert VARIANTS["g14-lr"].native_size == 224
    assert all(v.files["tokenizer"] == "v1_0/checkpoints/tokenizer.model" for v in VARIANTS.values())


def test_written_npz_is_a_plain_zip_of_npy(tmp_path):
    path, _ = write_tiny(tmp_path)
    with zipfile.ZipFile(path) as zf:
        assert all(n.endswith(".npy") for n in zf.namelist())
    assert not list(tmp_path.glob("*.tmp"))  # atomic write leaves no temp file


def test_no_code_path_unpickles_downloaded_files():
    """Every np.load passes allow_pickle=False, every torch.load weights_only=True; nothing calls pickle."""
    import re
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "tipsomaly_lite"
    for path in package.glob("*.py"):
        source = path.read_text()
        for call in re.findall(r"np\.load\([^)]*\)", source):
            assert "allow_pickle=False" in call, f"{path.name}: {call}"
        assert "allow_pickle=True" not in source, path.name
        for call in re.findall(r"torch\.load\([^)]*\)", source):
            assert "weights_only=True" in call, f"{path.name}: {call}"
        assert not re.search(r"\bpickle\.loads?\(|weights_only=False", source), path.name


# --- weights are checked for sense at load, not just for shape

from helpers.hostile import hf_folder  # noqa: E402
from tipsomaly_lite.backbones.tips.checkpoints import hf_to_npz_names  # noqa: E402


def _tiny_pair(tmp_path, *, vision_edit=None, text_edit=None):
    v, t = random_tips_arrays(TINY_ARCH, seed=5)
    (vision_edit or (lambda a: None))(v)
    (text_edit or (lambda a: None))(t)
    write_npz(tmp_path / "v.npz", v)
    write_npz(tmp_path / "t.npz", t)
    return tmp_path / "v.npz", tmp_path / "t.npz"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weight_is_refused_naming_file_and_array(tmp_path, tiny_tokenizer_path, bad):
    def poison(arrays):
        arrays["blocks.0.attn.qkv.weight"][3, 5] = bad
    v, t = _tiny_pair(tmp_path, vision_edit=poison)
    with pytest.raises(CheckpointError, match=r"v\.npz: array 'blocks\.0\.attn\.qkv\.weight' holds 1 NaN/inf"):
        load_tips(vision=v, text=t, tokenizer=tiny_tokenizer_path)


@pytest.mark.parametrize("temperature", [0.0, -0.01, np.nan, np.inf])
def test_temperature_that_is_not_positive_and_finite_is_refused(tmp_path, tiny_tokenizer_path, temperature):
    v, t = _tiny_pair(tmp_path, text_edit=lambda a: a.__setitem__("temperature", np.float32(temperature)))
    with pytest.raises(CheckpointError, match=r"t\.npz: array 'temperature'"):
        load_tips(vision=v, text=t, tokenizer=tiny_tokenizer_path)


def test_npy_given_where_an_npz_is_expected(tmp_path, tiny_tokenizer_path):
    v, t = _tiny_pair(tmp_path)
    np.save(tmp_path / "single.npy", np.zeros(3, np.float32))
    for reader in (npz_shapes, read_npz):
        with pytest.raises(CheckpointError, match=r"single\.npy: a single \.npy array, not an \.npz"):
            reader(tmp_path / "single.npy")
    with pytest.raises(CheckpointError, match=r"single\.npy"):
        load_tips(vision=tmp_path / "single.npy", text=t, tokenizer=tiny_tokenizer_path)


def test_hf_folder_of_the_tiny_model_loads(tmp_path, tiny_tokenizer_path):
    model = load_tips(f"hf:{hf_folder(tmp_path / 'hf', tiny_tokenizer_path)}")
    assert model.arch == TINY_ARCH and model.temperature > 0


def test_hf_folder_with_old_and_new_names_for_one_tensor(tmp_path, tiny_tokenizer_path):
    old_name = {"vision_model.layernorm.weight": np.ones(TINY_ARCH.width, np.float32)}
    folder = hf_folder(tmp_path / "hf", tiny_tokenizer_path, extra=old_name)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: both .*'norm\.weight'.*mixes the old and new"):
        load_tips(f"hf:{folder}")


def test_packed_old_names_clash_with_a_new_packed_tensor():
    state = {"vision_encoder.blocks.0.attn.qkv.weight": np.zeros((6, 2)),
             "vision_model.encoder.layer.0.attention.q_proj.weight": np.zeros((2, 2))}
    with pytest.raises(CheckpointError, match="f.safetensors: both"):
        hf_to_npz_names(state, where="f.safetensors")
    parts = {f"vision_model.encoder.layer.0.attention.{p}_proj.weight": np.zeros((2, 2)) for p in "qkv"}
    vision, _ = hf_to_npz_names(parts)  # the three parts of one packed tensor are not a clash
    assert vision["blocks.0.attn.qkv.weight"].shape == (6, 2)


@pytest.mark.parametrize("config,match", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected an object"),
    ('{"vision_config": "big"}', "expected a JSON object"),
    ('{"vision_config": {"num_attention_heads": "4"}}', "num_attention_heads is '4'"),
    ('{"vision_config": {"num_attention_heads": 0}}', "num_attention_heads is 0"),
    ('{"vision_config": {"num_attention_heads": true}}', "num_attention_heads is True"),
])
def test_hf_config_json_malformed_or_wrong_types(tmp_path, tiny_tokenizer_path, config, match):
    folder = hf_folder(tmp_path / "hf", tiny_tokenizer_path, config=config)
    with pytest.raises(CheckpointError, match=rf"config\.json:? .*{match}") as info:
        load_tips(f"hf:{folder}")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("keep", [0.5, 0.001])
def test_truncated_safetensors_is_one_line_naming_the_file(tmp_path, tiny_tokenizer_path, keep):
    folder = hf_folder(tmp_path / "hf", tiny_tokenizer_path)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: max(10, int(len(data) * keep))])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors") as info:
        load_tips(f"hf:{folder}")
    assert "\n" not in str(info.value)


def test_hf_weights_with_nan_are_refused(tmp_path, tiny_tokenizer_path):
    bad = np.full(TINY_ARCH.width, np.nan, np.float32)
    folder = hf_folder(tmp_path / "hf", tiny_tokenizer_path, extra={"text_encoder.ln_final.bias": bad})
    with pytest.raises(CheckpointError, match=r"model\.safetensors: array 'ln_final\.bias' holds 64 NaN"):
        load_tips(f"hf:{folder}")
