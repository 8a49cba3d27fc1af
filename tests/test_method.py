"""The method's steps on the tiny model: prompt sets, text features, scores, learnable prompts, fusion, detector."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tipsomaly_lite.method.detector import Detector
from tipsomaly_lite.method.fusion import fuse_scores, local_score
from tipsomaly_lite.method.prompt_learner import PromptLearner
from tipsomaly_lite.method.prompts import PROMPT_SETS, PromptSet, TextFeatureBank, ensemble, get_prompt_set, text_features
from tipsomaly_lite.method.scoring import global_score, patch_probabilities, two_way_probabilities
from tipsomaly_lite.backbones.base import l2_normalize


# ----------------------------------------------------------------------------- prompt sets

@pytest.mark.parametrize("name, n_normal, n_anomalous", [
    ("industrial", 28, 20), ("industrial_v0", 56, 40), ("medical", 80, 64), ("object_agnostic", 1, 1)])
def test_prompt_set_sizes(name, n_normal, n_anomalous):
    normal, anomalous = PROMPT_SETS[name].sentences("metal nut")
    assert (len(normal), len(anomalous)) == (n_normal, n_anomalous)
    assert all("metal nut" in s for s in normal + anomalous)


def test_industrial_sentences_follow_spec_order():
    normal, anomalous = PROMPT_SETS["industrial"].sentences("bottle")
    assert normal[:5] == ["a bad photo of a bottle.", "a low resolution photo of the bottle.",
                          "a bad photo of the bottle.", "a cropped photo of the bottle.",
                          "a bad photo of a flawless bottle."]
    assert anomalous[-1] == "a cropped photo of the bottle with damage."
    assert PROMPT_SETS["object_agnostic"].sentences("object") == (["object"], ["damaged object"])


def test_user_prompt_sets_from_dict_and_json(tmp_path):
    spec = {"normal_states": ["good {}"], "anomalous_states": ["bad {}", "cracked {}"], "templates": ["{}."]}
    assert get_prompt_set(spec).sentences("tile") == (["good tile."], ["bad tile.", "cracked tile."])
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(spec))
    assert get_prompt_set(str(path)).name == "mine"
    assert get_prompt_set(None).name == "industrial"
    with pytest.raises(KeyError, match="unknown prompt set"):
        get_prompt_set("nope")
    with pytest.raises(ValueError, match="missing"):
        get_prompt_set({"templates": ["{}"]})
    with pytest.raises(ValueError, match="exactly one"):
        PromptSet("bad", ("{} {}",), ("x {}",), ("{}",))
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        get_prompt_set(path)


# ----------------------------------------------------------------------------- text features

def test_text_features_are_the_normalised_mean_of_normalised_sentences(tiny):
    feats = text_features(tiny, ["wood grain", "pill"], "industrial")
    assert feats.shape == (2, 2, tiny.width)
    normal, anomalous = PROMPT_SETS["industrial"].sentences("pill")
    for row, sentences in enumerate((normal, anomalous)):
        by_hand = torch.stack([l2_normalize(tiny.encode_text(s)[0]) for s in sentences]).mean(0)
        torch.testing.assert_close(feats[1, row], by_hand / by_hand.norm(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(2, 2))


def test_text_feature_bank_encodes_each_word_once(tiny, monkeypatch):
    bank = TextFeatureBank(tiny, "object_agnostic")
    calls = []
    original = tiny.encode_text
    monkeypatch.setattr(tiny, "encode_text", lambda texts, **kw: calls.append(list(texts)) or original(texts, **kw))
    first = bank(["pill", "carpet", "pill"])
    again = bank(["carpet"])
    assert len(calls) == 2 and len(bank) == 2
    torch.testing.assert_close(first[1], again[0])
    torch.testing.assert_close(first[0], first[2])


# ----------------------------------------------------------------------------- scores

def test_patch_probabilities_match_an_explicit_softmax():
    g = torch.Generator().manual_seed(0)
    tokens, text = torch.randn(2, 5, 8, generator=g), torch.randn(2, 8, generator=g)
    probs = patch_probabilities(tokens, text, 0.07)
    assert probs.shape == (2, 5, 2)
    for b in range(2):
        for i in range(5):
            z = tokens[b, i] / tokens[b, i].norm()
            cos = [float(z @ (t / t.norm())) for t in text]
            e = [math.exp(c / 0.07) for c in cos]
            assert probs[b, i, 1].item() == pytest.approx(e[1] / sum(e), rel=1e-5)
    per_image = patch_probabilities(tokens, text.expand(2, 2, 8), 0.07)
    torch.testing.assert_close(per_image, probs)
    with pytest.raises(ValueError, match="text_features"):
        two_way_probabilities(tokens, torch.randn(3, 8), 0.07)


def test_global_score_equals_zero_shot_probability(tiny):
    images = torch.rand(2, 3, 56, 56, generator=torch.Generator().manual_seed(1))
    texts = ["a photo of a pill.", "a photo of a damaged pill."]
    text = tiny.encode_text(texts, normalize=True)
    for token, idx in (("cls1", 0), ("cls2", 1)):
        feats = tiny.encode_image(images)[idx]
        torch.testing.assert_close(global_score(feats, text, tiny.temperature),
                                   tiny.zero_shot_probabilities(images, texts, token=token)[:, 1])


def test_fusion_adds_the_max_patch_probability():
    g = torch.tensor([0.2, 0.9])
    patches = torch.tensor([[0.1, 0.7, 0.3], [0.0, 0.05, 0.01]])
    torch.testing.assert_close(local_score(patches), torch.tensor([0.7, 0.05]))
    torch.testing.assert_close(fuse_scores(g, patches), torch.tensor([0.9, 0.95]))
    torch.testing.assert_close(fuse_scores(g, patches, 1.0, 0.0), g)
    torch.testing.assert_close(fuse_scores(g, patches, 0.0, 1.0), local_score(patches))
    with pytest.raises(ValueError, match="batch"):
        fuse_scores(g[:1], patches)


# ----------------------------------------------------------------------------- learnable prompts

def _naive_learned_features(tiny, learner):
    """docs/method.md §2.3 literally: prepend, full 64-token sequence with its padding, no trimming."""
    normal_s, anomalous_s = learner.prompt_set.sentences("object")
    out = []
    for prompt, sentences in ((learner.normal, normal_s), (learner.anomalous, anomalous_s)):
        ids, padding = tiny.tokenizer(sentences)
        x = torch.cat([prompt.expand(len(ids), -1, -1), tiny.text.embed_tokens(ids)], dim=1)[:, :64]
        pad = torch.cat([torch.zeros(len(ids), learner.n_tokens, dtype=torch.bool), padding], dim=1)[:, :64]
        feats = tiny.text.encode_embeddings(x, pad)
        out.append(ensemble(feats))
    return torch.stack(out)


def test_prompt_learner_matches_the_literal_recipe(tiny):
    learner = PromptLearner(tiny, generator=torch.Generator().manual_seed(111))
    assert learner.normal.shape == learner.anomalous.shape == (8, tiny.width)
    assert 0.015 < float(learner.normal.detach().std()) < 0.025  # randn * 0.02
    torch.testing.assert_close(learner(), _naive_learned_features(tiny, learner), atol=1e-5, rtol=1e-5)


def test_only_the_prompts_get_gradients(tiny):
    learner = PromptLearner(tiny, n_tokens=4, prompt_set="object_agnostic")
    assert set(learner.state_dict()) == {"normal", "anomalous"}
    assert [n for n, _ in learner.named_parameters()] == ["normal", "anomalous"]
    learner()[1].sum().backward()
    assert learner.anomalous.grad is not None and learner.anomalous.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny.parameters())


def test_prompt_learner_from_tensors_and_errors(tiny):
    n, a = torch.randn(3, tiny.width), torch.randn(3, tiny.width)
    learner = PromptLearner(tiny, normal=n, anomalous=a)
    assert learner.n_tokens == 3
    torch.testing.assert_close(learner.prompts()[0], n)
    with pytest.raises(ValueError, match="text width"):
        PromptLearner(tiny, normal=torch.randn(8, 1024), anomalous=torch.randn(8, 1024))
    with pytest.raises(ValueError, match="both"):
        PromptLearner(tiny, normal=n)
    with pytest.raises(ValueError, match="n_tokens"):
        PromptLearner(tiny, n_tokens=0)


# ----------------------------------------------------------------------------- detector

@pytest.fixture(scope="module")
def learned(tiny):
    return PromptLearner(tiny, generator=torch.Generator().manual_seed(3))


def test_detector_modes_pick_the_right_text_features(tiny, learned):
    images = torch.rand(2, 3, 56, 56, generator=torch.Generator().manual_seed(2))
    words = ["pill", "carpet"]
    fixed = text_features(tiny, words)
    with torch.no_grad():
        mine = learned()
    feats = tiny.encode_features(images)
    expect = {
        "training_free": (fixed, fixed),
        "decoupled": (fixed, mine),
        "coupled": (mine, mine),
    }
    for mode, (image_text, pixel_text) in expect.items():
        det = Detector(tiny, None if mode == "training_free" else learned, mode=mode)
        pred = det.predict(images, words)
        g = global_score(feats["cls1"], image_text, tiny.temperature)
        p = patch_probabilities(feats["patch_tokens"], pixel_text, tiny.temperature)[..., 1]
        torch.testing.assert_close(pred.global_score, g)
        torch.testing.assert_close(pred.global_by_token["cls1"], g)
        torch.testing.assert_close(pred.global_by_token["cls2"],
                                   global_score(feats["cls2"], image_text, tiny.temperature))
        torch.testing.assert_close(pred.patch_scores, p)
        torch.testing.assert_close(pred.image_score, g + p.amax(1))
        assert pred.anomaly_map.shape == (2, 56, 56)
        assert float(pred.image_score.min()) >= 0 and float(pred.image_score.max()) <= 2


def test_detector_token_choice_and_prompt_tensors(tiny, learned):
    images = torch.rand(1, 3, 42, 42)
    det1 = Detector(tiny, learned.prompts(), token="cls2")
    det2 = Detector(tiny, learned)
    p1, p2 = det1.predict(images, "pill"), det2.predict(images, "pill")
    torch.testing.assert_close(p1.patch_scores, p2.patch_scores)
    cls2 = tiny.encode_features(images)["cls2"]
    torch.testing.assert_close(p1.global_score, global_score(cls2, text_features(tiny, ["pill"]), tiny.temperature))
    assert det1.config()["global_token"] == "cls2" and det1.config()["mode"] == "decoupled"


def test_detector_rejects_bad_settings(tiny):
    with pytest.raises(ValueError, match="needs learned prompts"):
        Detector(tiny, None, mode="decoupled")
    with pytest.raises(ValueError, match="mode"):
        Detector(tiny, None, mode="fancy")
    with pytest.raises(ValueError, match="token"):
        Detector(tiny, None, token="cls3")
    with pytest.raises(ValueError, match="class words"):
        Detector(tiny).predict(torch.rand(2, 3, 28, 28), ["a", "b", "c"])


def test_package_exports_the_entry_points():
    import tipsomaly_lite

    from tipsomaly_lite.method.training import train_prompts

    assert tipsomaly_lite.Detector is Detector and tipsomaly_lite.train_prompts is train_prompts
    for name in tipsomaly_lite.__all__:
        assert getattr(tipsomaly_lite, name) is not None
    with pytest.raises(AttributeError, match="nope"):
        tipsomaly_lite.nope
