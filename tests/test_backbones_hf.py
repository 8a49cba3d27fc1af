"""CLIP and SigLIP2 behind the Backbone seam: the wrappers against transformers' own forward, prompts, loading."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from tipsomaly_lite.backbones import load_backbone
from tipsomaly_lite.backbones.base import Backbone
from tipsomaly_lite.backbones.hf import CLIPBackbone, SigLIP2Backbone, hf_family_for, load_hf_backbone
from tipsomaly_lite.offline import MeaninglessResultsWarning

TOL = 1e-5


@pytest.fixture(scope="module", params=["clip", "siglip2"])
def hf(request):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MeaninglessResultsWarning)
        return load_backbone("tiny", family=request.param)


def _close(a, b, tol=TOL):
    torch.testing.assert_close(a.float(), b.float(), atol=tol * max(1.0, float(b.abs().max())), rtol=0)


def test_tiny_backbones_implement_the_seam_and_say_they_are_meaningless(hf):
    assert isinstance(hf, Backbone) and hf.is_offline and "MEANINGLESS" not in repr(hf)
    assert "TINY RANDOM WEIGHTS" in repr(hf) and hf.global_tokens == ("global",)
    with pytest.warns(MeaninglessResultsWarning):
        load_backbone("tiny", family=hf.family)
    # Built locally from a seed: the same weights every time.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MeaninglessResultsWarning)
        assert load_backbone("tiny", family=hf.family).fingerprint() == hf.fingerprint()


@pytest.mark.parametrize("scale", [1, 2])
def test_image_features_equal_the_transformers_forward(hf, scale):
    torch.manual_seed(0)
    size = hf.native_size * scale
    images = torch.rand(2, 3, size, size)
    feats = hf.encode_features(images)
    pixels = hf._pixels(images)
    model = hf.model
    with torch.no_grad():
        theirs = model.get_image_features(pixel_values=pixels, interpolate_pos_encoding=scale != 1)
        hidden = model.vision_model(pixel_values=pixels, interpolate_pos_encoding=scale != 1).last_hidden_state
    # The global token is the model's own image embedding (CLIP: projected CLS; SigLIP: attention pooling).
    _close(feats["global"], torch.nn.functional.normalize(theirs.pooler_output, dim=-1))
    gh, gw = hf.patch_grid(size)
    if isinstance(hf, CLIPBackbone):
        patches = model.visual_projection(model.vision_model.post_layernorm(hidden[:, 1:]))
    else:
        patches = hidden
    assert feats["patch_tokens"].shape == (2, gh * gw, hf.text_width)
    _close(feats["patch_tokens"], torch.nn.functional.normalize(patches, dim=-1))


def test_text_features_equal_the_transformers_forward(hf):
    texts = ["a photo of a damaged bottle.", "flawless wood", "x"]
    ids, keep = hf.tokenizer(texts)
    with torch.no_grad():
        theirs = hf.model.get_text_features(input_ids=ids, attention_mask=keep.long()
                                            if isinstance(hf, CLIPBackbone) else None).pooler_output
    _close(hf.encode_text(texts), theirs)


def test_prompted_text_equals_the_plain_text_when_prompts_are_real_token_embeddings(hf):
    """Prompts inserted where the tower expects them: after the start token (CLIP), in front (SigLIP)."""
    sentences = ["a photo of a damaged object.", "perfect object", "a cropped photo of the object."]
    prompt_ids, _ = hf.tokenizer(["scratch hole"])
    body = prompt_ids[0][prompt_ids[0] != 0]
    body = body[1:-1] if isinstance(hf, CLIPBackbone) else body[:-1]  # the pieces only: no start/end token
    n = len(body)
    embed = hf.model.text_model.embeddings.token_embedding
    prompts = embed(body)[None].expand(len(sentences), -1, -1)
    inputs = hf.prompted_text_inputs(sentences, n)
    ours = hf.encode_prompted_text(prompts, inputs)
    ids, keep = hf.tokenizer(sentences)
    if isinstance(hf, CLIPBackbone):
        joined = torch.cat([ids[:, :1], body.expand(len(ids), -1), ids[:, 1:]], dim=1)[:, :ids.shape[1]]
        mask = torch.cat([keep[:, :1], torch.ones(len(ids), n, dtype=torch.bool), keep[:, 1:]], 1)[:, :ids.shape[1]]
        theirs = hf.model.get_text_features(input_ids=joined, attention_mask=mask.long()).pooler_output
    else:
        joined = torch.cat([body.expand(len(ids), -1), ids], dim=1)[:, :ids.shape[1]]
        theirs = hf.model.get_text_features(input_ids=joined).pooler_output
    _close(ours, theirs.detach())
    # Differentiable in the prompts only.
    p = prompts.clone().requires_grad_(True)
    hf.encode_prompted_text(p, inputs).sum().backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    assert not any(w.requires_grad for w in hf.model.parameters())
    with pytest.raises(ValueError, match="no room"):
        hf.prompted_text_inputs(sentences, 64)


def test_the_whole_method_runs_on_each_backbone(hf, tmp_path):
    from tipsomaly_lite import AnomalyDataset, Detector, TrainConfig, evaluate, make_toy_dataset, train_prompts

    make_toy_dataset(tmp_path / "toy", seed=0, classes=["pill"], n_normal=2, n_anomalous=2)
    ds = AnomalyDataset(tmp_path / "toy", image_size=hf.image_size)
    run = train_prompts(hf, ds, TrainConfig(epochs=1), tmp_path / "run", progress=False)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["backbone"] == hf.family and config["backbone_fingerprint"] == hf.fingerprint()
    detector = Detector(hf, run.prompts())
    assert detector.token == "global" and detector.config()["backbone"] == hf.family
    result = evaluate(detector, ds, progress=False)
    assert set(result.score_kinds) == {"image_score", "global_score", "local_score", "global_global"}
    pred = detector.predict(ds[0]["image"][None], "pill")
    assert pred.anomaly_map.shape == (1, hf.image_size, hf.image_size)
    with pytest.raises(ValueError, match="global tokens"):
        Detector(hf, run.prompts(), token="cls1")


def _save_clip_folder(folder):
    """A tiny CLIP checkpoint folder as save_pretrained writes it, with a real (tiny) BPE tokenizer."""
    from transformers import CLIPTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz."
    vocab = {tok: i for i, tok in enumerate(["!"] + list(letters) + [c + "</w>" for c in letters])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(1)
    config = CLIPConfig(text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, vocab_size=len(vocab), max_position_embeddings=16,
                                         bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"]),
                        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=4, image_size=56, patch_size=14), projection_dim=16)
    model = CLIPModel(config)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model, tok


def test_a_local_checkpoint_folder_loads_through_the_transformers_route(tmp_path, monkeypatch):
    monkeypatch.setenv("TIPSOMALY_OFFLINE", "1")  # local folders still load as asked
    model, tok = _save_clip_folder(tmp_path / "clip")
    assert hf_family_for(f"hf:{tmp_path / 'clip'}") == "clip"
    ours = load_backbone(f"hf:{tmp_path / 'clip'}")
    assert isinstance(ours, CLIPBackbone) and not ours.is_offline and ours.image_size == 56
    texts = ["a photo.", "cab"]
    batch = tok(texts, padding="max_length", max_length=16, return_tensors="pt")
    with torch.no_grad():
        theirs = model.get_text_features(**batch).pooler_output
    _close(ours.encode_text(texts), theirs)
    with pytest.raises(ValueError, match="not siglip2"):
        load_hf_backbone(f"hf:{tmp_path / 'clip'}", family="siglip2")


def test_offline_mode_and_unreachable_hub_fail_or_fall_back_clearly(tmp_path, monkeypatch):
    from tipsomaly_lite.io.download import DownloadError

    monkeypatch.setenv("TIPSOMALY_HOME", str(tmp_path))
    monkeypatch.setenv("TIPSOMALY_OFFLINE", "1")
    with pytest.warns(MeaninglessResultsWarning):
        assert load_backbone("l14-336", family="clip").is_offline
    monkeypatch.delenv("TIPSOMALY_OFFLINE")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError, match="could not load openai/clip-vit-large-patch14-336"):
        load_backbone("l14-336", family="clip", download=False)
    with pytest.raises(ValueError, match="unknown backbone family"):
        load_backbone("tiny", family="blip")


def test_a_siglip_folder_with_a_fast_tokenizer_loads_through_the_transformers_route(tmp_path, monkeypatch):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, SiglipConfig, SiglipModel

    words = ["<pad>", "<unk>", "</s>", "a", "bad", "photo", "of", "the", "object.", "flawless"]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", eos_token="</s>")
    folder = tmp_path / "siglip"
    torch.manual_seed(2)
    config = SiglipConfig(text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=4, vocab_size=len(words), max_position_embeddings=16,
                                           projection_size=32, bos_token_id=None, eos_token_id=2, pad_token_id=0),
                          vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=4, image_size=64, patch_size=16))
    model = SiglipModel(config)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    ours = load_backbone(f"hf:{folder}")
    assert isinstance(ours, SigLIP2Backbone) and ours.patch_grid() == (4, 4) and ours.image_size == 64
    texts = ["a bad photo of the object.", "flawless"]
    ids = tok(texts, padding="max_length", max_length=16, truncation=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        theirs = model.get_text_features(input_ids=ids).pooler_output
    _close(ours.encode_text(texts), theirs)


@pytest.mark.parametrize("family", ["clip", "siglip2"])
def test_the_cli_trains_and_evaluates_on_another_backbone(family, tmp_path, monkeypatch, capsys):
    from tipsomaly_lite import make_toy_dataset
    from tipsomaly_lite.cli import main

    monkeypatch.setenv("TIPSOMALY_OFFLINE", "1")
    make_toy_dataset(tmp_path / "toy", classes=["carpet"], n_train=0, n_normal=2, n_anomalous=2)
    common = ["--dataset", "toy", "--data-root", str(tmp_path), "--backbone", family, "--variant", "tiny"]
    with pytest.warns(MeaninglessResultsWarning):
        assert main(["train", *common, "--epochs", "1", "--out", str(tmp_path / "run")]) == 0
        assert main(["evaluate", *common, "--prompts", str(tmp_path / "run"), "--out", str(tmp_path / "ev")]) == 0
    config = json.loads((tmp_path / "ev" / "config.json").read_text())
    assert config["backbone"] == family and config["global_token"] == "global" and config["image_size"] == 112
    assert "MEANINGLESS" in capsys.readouterr().out


def test_the_clip_values_trick_changes_only_the_patch_tokens():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MeaninglessResultsWarning)
        plain = load_backbone("tiny", family="clip")
        trick = load_backbone("tiny", family="clip", dense="values")
    # Same weights, other features: cached features of one must never serve the other.
    assert "values trick" in trick.variant and trick.fingerprint() != plain.fingerprint()
    images = torch.rand(2, 3, 112, 112)
    a, b = plain.encode_features(images), trick.encode_features(images)
    _close(a["global"], b["global"])
    # By hand, from transformers' modules: the last block's value path, no attention, no residual, no MLP.
    vision = trick.model.vision_model
    with torch.no_grad():
        hidden = vision(pixel_values=trick._pixels(images), output_hidden_states=True).hidden_states[-2]
        last = vision.encoder.layers[-1]
        values = last.self_attn.out_proj(last.self_attn.v_proj(last.layer_norm1(hidden)))
        expected = trick.model.visual_projection(vision.post_layernorm(values[:, 1:]))
    _close(b["patch_tokens"], torch.nn.functional.normalize(expected, dim=-1))
    assert (a["patch_tokens"] - b["patch_tokens"]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="dense must be one of"):
        load_backbone("tiny", family="clip", dense="surgery")


# ------------------------------------------------------------------ the model-folder gate

def _load_folder_fails(folder, *needles):
    from tipsomaly_lite.io.download import DownloadError

    with pytest.raises((ValueError, DownloadError)) as info:
        load_backbone(f"hf:{folder}")
    message = str(info.value)
    assert str(folder) in message and all(n in message for n in needles), message
    return message


def _rewrite_weights(folder, change):
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "model.safetensors"))
    change(state)
    save_file(state, str(folder / "model.safetensors"))


def test_a_folder_without_tokenizer_files_is_refused(tmp_path):
    folder = tmp_path / "clip"
    _save_clip_folder(folder)
    for f in folder.iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            f.unlink()
    _load_folder_fails(folder)


def test_a_folder_missing_weights_is_refused_not_randomly_filled(tmp_path):
    folder = tmp_path / "clip"
    _save_clip_folder(folder)
    _rewrite_weights(folder, lambda s: s.pop(next(k for k in s if "visual_projection" in k)))
    _load_folder_fails(folder, "missing", "visual_projection")


def test_a_folder_with_nan_weights_is_refused(tmp_path):
    folder = tmp_path / "clip"
    _save_clip_folder(folder)
    _rewrite_weights(folder, lambda s: s[next(k for k in s if "text_projection" in k)].fill_(float("nan")))
    _load_folder_fails(folder, "text_projection", "NaN")


@pytest.mark.parametrize("key, value", [("hidden_size", 10**9), ("num_hidden_layers", -1), ("image_size", "big")])
def test_config_sizes_are_bounded_before_anything_is_built(tmp_path, key, value):
    folder = tmp_path / "clip"
    _save_clip_folder(folder)
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"][key] = value
    (folder / "config.json").write_text(json.dumps(config))
    _load_folder_fails(folder, "config.json", key)


def test_pixel_statistics_out_of_range_are_refused(tmp_path):
    folder = tmp_path / "clip"
    _save_clip_folder(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5, 0.5, 0.5],
                                                                  "image_std": [0.0, 1.0, 1.0]}))
    _load_folder_fails(folder, "preprocessor_config.json", "image_std")
