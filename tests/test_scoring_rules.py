"""The scoring rule belongs to the backbone: SigLIP2 equals the authors' sigmoid path, CLIP plain transformers.

The oracle is ``tests/data/backbones_reference.npz`` (see ``tests/data/README.md``): arrays computed on
the tiny random checkpoints in ``tests/data/tiny_siglip2`` and ``tests/data/tiny_clip`` by the Tipsomaly
authors' SigLIP2 code and by plain transformers. We load the folders as a user would,
``load_backbone("hf:<folder>")``, and go through the package's own method: ``Detector``,
``PromptLearner``, the scoring functions and the training loss.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from tipsomaly_lite.backbones import FAMILIES, ScoringRule, as_rule, load_backbone  # noqa: E402
from tipsomaly_lite.backbones.base import l2_normalize  # noqa: E402
from tipsomaly_lite.method import training  # noqa: E402
from tipsomaly_lite.method.detector import Detector  # noqa: E402
from tipsomaly_lite.method.prompt_learner import PromptLearner  # noqa: E402
from tipsomaly_lite.method.prompts import get_prompt_set, text_features  # noqa: E402
from tipsomaly_lite.method.scoring import (global_score, patch_evidence, patch_probabilities,  # noqa: E402
                                           two_way_probabilities)
from tipsomaly_lite.offline import MeaninglessResultsWarning  # noqa: E402

DATA = Path(__file__).parent / "data"
TOL = 1e-5


@pytest.fixture(scope="module")
def ref():
    with np.load(DATA / "backbones_reference.npz", allow_pickle=False) as arrays:
        return {k: arrays[k] for k in arrays.files}


@pytest.fixture(scope="module")
def siglip2():
    return load_backbone(f"hf:{DATA / 'tiny_siglip2'}")


@pytest.fixture(scope="module")
def clip():
    return load_backbone(f"hf:{DATA / 'tiny_clip'}")


def _t(array) -> torch.Tensor:
    return torch.from_numpy(np.asarray(array))


def _close(got, want, tol=TOL):
    torch.testing.assert_close(got.float(), _t(want).float() if not torch.is_tensor(want) else want.float(),
                               atol=tol, rtol=0)


# --- SigLIP2: the authors' path --------------------------------------------------------------------------

def test_siglip2_declares_and_carries_the_authors_sigmoid_rule(siglip2, ref):
    assert siglip2.family == "siglip2" and FAMILIES["siglip2"].scoring == "sigmoid"
    rule = siglip2.scoring_rule
    assert rule.kind == "sigmoid" and not rule.complementary
    assert rule.logit_scale == pytest.approx(float(ref["siglip2_logit_scale"]), abs=1e-6)
    assert rule.logit_bias == pytest.approx(float(ref["siglip2_logit_bias"]), abs=1e-6)
    assert siglip2.describe()["scoring_rule"] == {"kind": "sigmoid", "logit_scale": rule.logit_scale,
                                                  "logit_bias": rule.logit_bias}
    assert "scoring=sigmoid(cos * 10 -1)" in repr(siglip2)


def test_siglip2_features_and_token_ids_equal_the_authors(siglip2, ref):
    features = siglip2.encode_features(_t(ref["siglip2_images"]))
    _close(features["global"], ref["siglip2_global"])
    _close(features["patch_tokens"], l2_normalize(_t(ref["siglip2_patch_raw"])))
    classes = [str(c) for c in ref["siglip2_classes"]]
    _close(text_features(siglip2, classes), ref["siglip2_text_fixed"])
    prompt_set = get_prompt_set(None)
    sentences = [s for c in classes for half in prompt_set.sentences(c) for s in half]
    assert sentences == [str(s) for s in ref["siglip2_fixed_sentences"]]
    ids, _ = siglip2.tokenizer(sentences)
    assert torch.equal(ids, _t(ref["siglip2_fixed_input_ids"]).long())
    learned = [s for half in prompt_set.sentences("object") for s in half]
    assert learned == [str(s) for s in ref["siglip2_learned_sentences"]]
    assert torch.equal(siglip2.tokenizer(learned)[0], _t(ref["siglip2_learned_input_ids"]).long())


def _learner(siglip2, ref) -> PromptLearner:
    prompts = _t(ref["siglip2_learnable_prompts"])
    return PromptLearner(siglip2, normal=prompts[0], anomalous=prompts[1])


def test_siglip2_probabilities_equal_the_authors(siglip2, ref):
    features = siglip2.encode_features(_t(ref["siglip2_images"]))
    fixed = text_features(siglip2, [str(c) for c in ref["siglip2_classes"]])  # (C, 2, D)
    per_image = fixed[_t(ref["siglip2_image_class_idx"]).long()]  # (B, 2, D)
    rule = siglip2.scoring_rule
    every_class = torch.stack([two_way_probabilities(features["global"][:, None], fixed[c].expand(2, 2, -1), rule)[:, 0]
                               for c in range(len(fixed))], dim=1)
    _close(every_class, ref["siglip2_img_probs_all"])
    _close(two_way_probabilities(features["global"][:, None], per_image, rule)[:, 0], ref["siglip2_img_probs"])
    _close(global_score(features["global"], per_image, rule), ref["siglip2_img_probs"][:, 1])
    _close(patch_probabilities(features["patch_tokens"], per_image, rule), ref["siglip2_patch_probs_fixed"])
    learned = _learner(siglip2, ref)().detach()
    _close(learned, ref["siglip2_text_learned"][0])
    _close(patch_probabilities(features["patch_tokens"], learned, rule), ref["siglip2_patch_probs_learned"])
    # The softmax the package used before scores SigLIP2 otherwise (by far more than the tolerance).
    softmax = patch_probabilities(features["patch_tokens"], per_image, siglip2.temperature)
    assert float((softmax - _t(ref["siglip2_patch_probs_fixed"])).abs().max()) > 0.1


@pytest.mark.parametrize("mode", ["training_free", "decoupled"])
def test_siglip2_maps_and_image_scores_equal_the_authors(siglip2, ref, mode):
    images = _t(ref["siglip2_images"])
    words = [str(ref["siglip2_classes"][i]) for i in ref["siglip2_image_class_idx"]]
    prompts = None if mode == "training_free" else _learner(siglip2, ref)
    pred = Detector(siglip2, prompts, mode=mode).predict(images, words)
    name = "fixed" if mode == "training_free" else "learned"
    score = "zeroshot" if mode == "training_free" else "decoupled"
    assert pred.anomaly_map.shape == (2, 128, 128)
    _close(pred.anomaly_map, ref[f"siglip2_anomaly_map_{name}"])
    _close(pred.image_score, ref[f"siglip2_img_score_{score}"][:, 1])
    _close(pred.global_score, ref["siglip2_img_probs"][:, 1])
    _close(pred.patch_scores, ref[f"siglip2_patch_probs_{name}"][..., 1])
    assert Detector(siglip2, prompts, mode=mode).config()["scoring_rule"]["kind"] == "sigmoid"


def test_siglip2_training_uses_both_sigmoid_channels_and_autograd(siglip2, ref, monkeypatch):
    """The hand-derived gradient assumes p_normal = 1 - p_anomalous; a sigmoid rule must bypass it and
    give training_loss's value and autograd gradient."""
    features = siglip2.encode_features(_t(ref["siglip2_images"]))
    tokens = features["patch_tokens"]
    masks = torch.zeros(2, 1, 128, 128)
    masks[0, :, 40:90, 30:70] = 1
    rule = siglip2.scoring_rule

    def gradient(step):
        learner = _learner(siglip2, ref)
        loss = step(learner)
        return float(torch.as_tensor(loss).detach()), learner.normal.grad.clone(), learner.anomalous.grad.clone()

    def reference(learner):
        loss = training.training_loss(learner, tokens, masks, rule, (8, 8))
        loss.backward()
        return loss

    want = gradient(reference)
    for fused in (True, False):
        monkeypatch.setattr(training, "FUSED_GRADIENT", fused)
        got = gradient(lambda learner: training.backward_step(learner, tokens, masks, rule, (8, 8)))
        assert got[0] == pytest.approx(want[0], abs=1e-5)
        torch.testing.assert_close(got[1], want[1], atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(got[2], want[2], atol=1e-6, rtol=1e-4)
    # The loss really is on the sigmoids: the softmax's loss differs.
    with torch.no_grad():
        softmax_loss = training.training_loss(_learner(siglip2, ref), tokens, masks, siglip2.temperature, (8, 8))
    assert abs(float(softmax_loss) - want[0]) > 1e-3


# --- CLIP: plain transformers --------------------------------------------------------------------------

def test_clip_equals_plain_transformers(clip, ref):
    assert clip.family == "clip" and clip.scoring_rule.kind == "softmax" == FAMILIES["clip"].scoring
    assert clip.image_mean == pytest.approx(tuple(ref["clip_pixel_mean"].tolist()), abs=1e-6)
    features = clip.encode_features(_t(ref["clip_images"]))
    _close(features["global"], ref["clip_image_embeds"])
    _close(features["patch_tokens"], l2_normalize(_t(ref["clip_patch_embeds_proj"])))
    sentences = [str(s) for s in ref["clip_sentences"]]
    ids, keep = clip.tokenizer(sentences)
    assert torch.equal(ids, _t(ref["clip_input_ids"]).long())
    assert torch.equal(keep.long(), _t(ref["clip_attention_mask"]).long())
    _close(clip.encode_text(sentences), ref["clip_text_embeds_raw"], tol=1e-4)
    text = clip.encode_text(sentences, normalize=True)
    _close(text, ref["clip_text_embeds"])
    # CLIP's rule is the softmax with temperature 1 / exp(logit_scale): a pair of its logits, soft-maxed.
    assert clip.temperature == pytest.approx(float(np.exp(ref["clip_logit_scale"])) ** -1, rel=1e-6)
    logits = _t(ref["clip_logits_per_image"])
    for pair in ((0, 1), (3, 4), (2, 1)):
        got = two_way_probabilities(features["global"][:, None], text[list(pair)], clip.scoring_rule)[:, 0]
        _close(got, logits[:, list(pair)].softmax(-1))


# --- the rules themselves ------------------------------------------------------------------------------

def test_the_softmax_rule_is_bit_for_bit_the_temperature_softmax():
    gen = torch.Generator().manual_seed(0)
    tokens, text = torch.randn(3, 50, 16, generator=gen), torch.randn(2, 16, generator=gen)
    old = (l2_normalize(tokens) @ l2_normalize(text).T / 0.01).softmax(dim=-1)
    for rule in (0.01, ScoringRule.softmax(0.01)):
        probs = patch_probabilities(tokens, text, rule)
        assert torch.equal(probs, old)
        assert torch.equal(patch_evidence(probs, rule), old[..., 1])


def test_the_sigmoid_rule_judges_each_state_on_its_own():
    rule = ScoringRule.sigmoid(logit_scale=float(np.log(10.0)), logit_bias=-2.0)
    cos = torch.tensor([[0.1, 0.5], [0.9, 0.2]])
    probs = rule.probabilities(cos)
    _close(probs, torch.sigmoid(cos * 10 - 2))
    _close(rule.anomaly_evidence(probs), (1 - probs[:, 0] + probs[:, 1]) / 2)
    assert str(rule) == "sigmoid(cos * 10 -2)" and rule.describe()["kind"] == "sigmoid"
    assert as_rule(0.07) == ScoringRule.softmax(0.07) and as_rule(rule) is rule
    with pytest.raises(ValueError, match="kind"):
        ScoringRule("argmax")
    with pytest.raises(ValueError, match="temperature must be positive"):
        ScoringRule.softmax(0.0)
    with pytest.raises(TypeError, match="ScoringRule or a softmax temperature"):
        as_rule("0.07")


def test_every_family_loads_the_rule_it_declares():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MeaninglessResultsWarning)
        for name in ("tips", "clip", "siglip2"):
            model = load_backbone("tiny", family=name)
            assert model.scoring_rule.kind == FAMILIES[name].scoring, name
            assert model.describe()["scoring_rule"]["kind"] == FAMILIES[name].scoring
    assert [n for n, f in FAMILIES.items() if f.paper] == ["tips"]
