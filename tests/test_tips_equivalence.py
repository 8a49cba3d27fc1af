"""The TIPS port against an independent implementation: transformers' ``Tipsv2Model``.

Random weights in transformers' names are mapped into the npz layout, written as real npz
files and loaded by our loader; CLS1, CLS2, patch tokens and text embeddings must agree in
fp32 to 1e-5 of each tensor's largest magnitude, at 448 px and at 518 px (32 -> 37 grid).
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tipsomaly_lite.checkpoints import hf_to_npz_names, write_npz  # noqa: E402
from tipsomaly_lite.tips import load_tips  # noqa: E402

TOL = 1e-5


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def make_reference(width, depth, heads, mlp_ratio=4, text_mlp=None, vocab=32000, swiglu=False, seed=0):
    from transformers import Tipsv2Config, Tipsv2Model

    torch.manual_seed(seed)
    cfg = Tipsv2Config(
        vision_config=dict(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
                           mlp_ratio=mlp_ratio, use_swiglu_ffn=swiglu, image_size=448),
        text_config=dict(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
                         intermediate_size=text_mlp or 4 * width, vocab_size=vocab))
    model = Tipsv2Model(cfg).eval()
    # Every parameter random, layer norms and layer scales included: no term can hide.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "temperature":
                p.fill_(0.005)
            elif "norm" in name and name.endswith("weight") or "lambda1" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.05 * torch.randn_like(p))
    return model


def load_ours(model, tmp_path, tokenizer_path, num_heads=None):
    vision, text = hf_to_npz_names({k: v.numpy() for k, v in model.state_dict().items()})
    write_npz(tmp_path / "v.npz", vision)
    write_npz(tmp_path / "t.npz", text)
    return load_tips(vision=tmp_path / "v.npz", text=tmp_path / "t.npz", tokenizer=tokenizer_path,
                     num_heads=num_heads)


def compare(ref, ours, size, batch=2):
    torch.manual_seed(1)
    images = torch.rand(batch, 3, size, size)
    with torch.inference_mode():
        seq = ref.vision_model(pixel_values=images).last_hidden_state
        cls1, cls2, patches = ours.encode_image(images)
    assert patches.shape == (batch, (size // 14) ** 2, ours.width)
    assert rel_err(cls1, seq[:, 0]) <= TOL
    assert rel_err(cls2, seq[:, 1]) <= TOL
    assert rel_err(patches, seq[:, 2:]) <= TOL


def compare_text(ref, ours):
    texts = ["a bad photo of a damaged bottle.", "Flawless Metal Nut", "a cropped photo of the carpet with defect."]
    ids, padding = ours.tokenizer(texts)
    with torch.inference_mode():
        expected = ref.text_model(input_ids=ids, attention_mask=(~padding).long()).pooler_output
        got = ours.encode_text(texts)
    assert rel_err(got, expected) <= TOL


@pytest.mark.parametrize("size", [448, 518])
def test_small_config_matches_transformers(size, tmp_path, tiny_tokenizer_path):
    ref = make_reference(width=64, depth=2, heads=4, vocab=512)
    ours = load_ours(ref, tmp_path, tiny_tokenizer_path)
    compare(ref, ours, size)
    compare_text(ref, ours)


def test_swiglu_config_matches_transformers(tmp_path, tiny_tokenizer_path):
    # g/14's SwiGLU MLP at a small width; w12 = [gate; up], w3 = down.
    ref = make_reference(width=96, depth=2, heads=3, swiglu=True, vocab=512)
    ours = load_ours(ref, tmp_path, tiny_tokenizer_path, num_heads=3)
    assert ours.arch.swiglu
    compare(ref, ours, 448, batch=1)
    compare(ref, ours, 518, batch=1)


@pytest.mark.parametrize("size", [448, 518])
def test_b14_shapes_match_transformers(size, tmp_path, tiny_tokenizer_path):
    ref = make_reference(width=768, depth=12, heads=12)
    ours = load_ours(ref, tmp_path, tiny_tokenizer_path)
    assert ours.arch.family == "B/14"
    compare(ref, ours, size, batch=1)
    compare_text(ref, ours)


def test_hub_folder_route_matches_transformers(tmp_path, tiny_tokenizer_path):
    """``load_tips("hf:<folder>")`` reads a transformers ``save_pretrained`` folder as the hub serves it."""
    import shutil

    ref = make_reference(width=64, depth=2, heads=4, vocab=512)
    ref.save_pretrained(tmp_path / "hub")
    shutil.copy(tiny_tokenizer_path, tmp_path / "hub" / "tokenizer.model")
    ours = load_tips(f"hf:{tmp_path / 'hub'}")
    assert ours.arch.heads == 4  # read from config.json, not guessed
    compare(ref, ours, 448, batch=1)
    compare_text(ref, ours)
