"""Every registered backbone family keeps the Backbone contract, and so does a new one added with one line.

The families are loaded through ``load_backbone(family=...)`` as users load them (TIPS, CLIP and
SigLIP2 as their tiny offline models) plus a fake family defined here and registered with
``register``: a random linear patch embedding and a bag-of-words text tower, written on
``BackboneBase`` as a new family would be. Each is checked on its own (features, text, prompted
text, fingerprint, ``describe``) and then through the method: ``Detector.predict``, one epoch of
``train_prompts`` and ``evaluate`` on a tiny toy dataset at the model's own ``image_size``.
"""

from __future__ import annotations

import json
import warnings
import zlib

import pytest
import torch
from torch import Tensor, nn

from tipsomaly_lite.backbones import FAMILIES, load_backbone
from tipsomaly_lite.backbones.base import Backbone, BackboneBase, vision_dtype
from tipsomaly_lite.backbones.registry import BackboneFamily, register, unregister
from tipsomaly_lite.offline import MeaninglessResultsWarning

FAKE = "fake"
REAL = ("tips", "clip", "siglip2")
ALL = (*REAL, FAKE)
#: The fake family's default input side when loaded through the registry (its native side is 32).
FAKE_SIZE = 48


# --- the fake family: one module (this one) plus one register line ---------------------------------------

class BagOfWordsBackbone(BackboneBase):
    """A tiny honest backbone: linear patch embedding (``(B, 3, H, W)`` -> ``(B, N, D)``), two pooled global
    tokens, and a bag-of-words text tower (mean of word embeddings, then a linear map)."""

    family = FAKE
    global_tokens = ("mean", "max")
    default_global_token = "mean"
    max_len = 16
    vocab = 97

    def __init__(self, width: int = 16, patch_size: int = 8, native_size: int = 32, **facts) -> None:
        super().__init__(patch_size=patch_size, native_size=native_size, **facts)
        self.patch_embed = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)  # linear on each patch
        self.head = nn.Linear(width, width)
        self.words = nn.Embedding(self.vocab, width, padding_idx=0)
        self.text_proj = nn.Linear(width, width)
        self.temperature = 0.07

    @property
    def text_width(self) -> int:
        return self.words.embedding_dim

    def _vision_modules(self) -> list[nn.Module]:
        return [self.patch_embed, self.head]

    def _fingerprint_header(self) -> str:
        return f"{self.family}|{self.patch_size}|{self.text_width}|{self.temperature!r}"

    def _repr_lines(self) -> list[str]:
        return [f"variant={self.variant!r}, width={self.text_width}, image_size={self.image_size}, "
                f"temperature={self.temperature:.5g},", f"source={self.source}"]

    def tokenize(self, texts: list[str], max_len: int | None = None) -> tuple[Tensor, Tensor]:
        """Sentences -> word ids ``(T, L)`` (stable hashes, 0 = padding) and a keep mask ``(T, L)``."""
        max_len = max_len or self.max_len
        ids = torch.zeros(len(texts), max_len, dtype=torch.long)
        for i, text in enumerate(texts):
            words = text.lower().replace(".", " ").split()[:max_len]
            ids[i, :len(words)] = torch.tensor([zlib.crc32(w.encode()) % (self.vocab - 1) + 1 for w in words],
                                               dtype=torch.long)
        return ids.to(self.device), (ids != 0).to(self.device)

    def _pool_text(self, embeddings: Tensor, keep: Tensor) -> Tensor:
        keep = keep.to(embeddings.dtype).unsqueeze(-1)
        return self.text_proj((embeddings * keep).sum(1) / keep.sum(1).clamp_min(1.0))

    def _encode_text_batch(self, texts: list[str]) -> Tensor:
        ids, keep = self.tokenize(texts)
        return self._pool_text(self.words(ids), keep)

    @torch.no_grad()
    def encode_features(self, images: Tensor) -> dict[str, Tensor]:
        x = self.patch_embed(images.to(self.device, self.dtype))  # (B, D, H/p, W/p)
        patches = x.flatten(2).transpose(1, 2)  # (B, N, D), row-major
        norm = lambda t: t.float() / t.float().norm(dim=-1, keepdim=True).clamp_min(1e-3)  # noqa: E731
        return {"patch_tokens": norm(patches), "mean": norm(self.head(patches.mean(1))), "max": norm(patches.amax(1))}

    def prompted_text_inputs(self, sentences: list[str], n_prompt_tokens: int) -> dict[str, Tensor]:
        if not 1 <= n_prompt_tokens < self.max_len:
            raise ValueError(f"n_tokens={n_prompt_tokens} leaves no room for text in a {self.max_len}-token sequence")
        ids, keep = self.tokenize(sentences, self.max_len - n_prompt_tokens)
        with torch.no_grad():
            return {"token_embeddings": self.words(ids), "keep": keep}

    def encode_prompted_text(self, prompts: Tensor, inputs: dict[str, Tensor]) -> Tensor:
        emb, keep = inputs["token_embeddings"], inputs["keep"]
        x = torch.cat([prompts.to(emb.dtype), emb], dim=1)
        keep = torch.cat([torch.ones(keep.shape[0], prompts.shape[1], dtype=torch.bool, device=keep.device), keep], 1)
        return self._pool_text(x, keep)


def load_fake(variant: str, *, image_size: int | None = None, device: str | torch.device = "cpu",
              dtype: str | torch.dtype = "float32", download: bool = True, fallback_to_tiny: bool = False,
              seed: int = 0) -> BagOfWordsBackbone:
    """The fake family's loader: seeded random weights, frozen, placed like every family."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = BagOfWordsBackbone(variant=variant, source=f"random init (seed {seed})", image_size=image_size,
                                   is_offline=True)
    return model.eval().requires_grad_(False).place(device, vision_dtype(dtype))


@pytest.fixture(scope="module", autouse=True)
def fake_family():
    family = register(BackboneFamily(FAKE, __name__, "load_fake", "tiny", FAKE_SIZE, None, "a test's fake family"))
    try:
        yield family
    finally:
        unregister(FAKE)
    assert FAKE not in FAMILIES


def _load(family: str, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MeaninglessResultsWarning)
        return load_backbone("tiny", family=family, **kwargs)


@pytest.fixture(scope="module")
def models(fake_family):
    return {family: _load(family) for family in ALL}


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    from tipsomaly_lite.data.toy_data import make_toy_dataset

    return make_toy_dataset(tmp_path_factory.mktemp("data") / "toy", classes=["pill"], n_train=0, n_normal=2,
                            n_anomalous=2)


def _native(model) -> int:
    return model.native_size


# --- the registry ------------------------------------------------------------------------------------

def test_the_registry_lists_the_families_with_their_defaults():
    assert tuple(FAMILIES)[:3] == REAL and FAKE in FAMILIES
    tips, clip, siglip2 = (FAMILIES[f] for f in REAL)
    assert (tips.default_variant, tips.default_image_size, tips.extra) == ("l14-hr", 518, None)
    assert (clip.default_variant, clip.default_image_size, clip.extra) == ("l14-336", None, "backbones")
    assert (siglip2.default_variant, siglip2.default_image_size, siglip2.extra) == ("so400m-256", None, "backbones")
    assert all(f.description for f in FAMILIES.values())
    with pytest.raises(ValueError, match=r"unknown backbone family 'blip'; expected one of .*'tips'.*'fake'"):
        load_backbone("tiny", family="blip")
    with pytest.raises(ValueError, match="already registered"):
        register(FAMILIES[FAKE])


def test_a_missing_extra_is_named():
    family = BackboneFamily("needs", __name__, "load_fake", "tiny", None, "someextra", "x", ("no_such_module_xyz",))
    with pytest.raises(ImportError, match=r'needs no_such_module_xyz, which is not installed: '
                                          r'pip install "tipsomaly_lite\[someextra\]"'):
        family.load()


# --- each family on its own ----------------------------------------------------------------------------

@pytest.mark.parametrize("family", ALL)
def test_load_and_describe(models, family):
    model = models[family]
    assert isinstance(model, Backbone) and model.family == family and model.variant == "tiny"
    default = FAMILIES[family].default_image_size
    assert model.image_size == (default or _native(model))
    d = model.describe()
    json.dumps(d)  # reports write it as is
    assert d["family"] == family and d["variant"] == "tiny" and d["image_size"] == model.image_size
    assert d["dtype"] == "float32" and d["offline"] is True and d["fingerprint"] == model.fingerprint()
    assert d["patch_grid"] == list(model.patch_grid()) and d["text_width"] == model.text_width
    assert set(d) >= {"source", "global_tokens", "default_global_token", "temperature", "device"}
    # Loud in every family: random tiny models say so, the toy TIPS says it is a toy (backbones/tips/tiny.py).
    banner = model.offline_banner
    assert banner in repr(model) and "TINY" in banner and "meaningless" in banner
    assert ("TOY MODEL" if family == "tips" else "TINY RANDOM WEIGHTS") in banner
    assert repr(model).startswith(type(model).__name__ + "(variant='tiny'")
    # An explicit image_size wins over the family's default.
    side = 2 * model.patch_size * (4 if family != FAKE else 2)
    assert _load(family, image_size=side).image_size == side


@pytest.mark.parametrize("family", ALL)
def test_features_are_normalised_float32_on_the_patch_grid(models, family):
    model = models[family]
    torch.manual_seed(0)
    images = model.preprocess(torch.rand(2, 3, 40, 50))
    s = model.image_size
    assert images.shape == (2, 3, s, s) and images.dtype == torch.float32
    feats = model.encode_features(images)
    assert tuple(feats) == ("patch_tokens", *model.global_tokens)
    assert model.default_global_token in model.global_tokens
    rows, cols = model.patch_grid()
    assert (rows, cols) == (s // model.patch_size, s // model.patch_size)
    assert feats["patch_tokens"].shape == (2, rows * cols, model.text_width)
    for name, f in feats.items():
        assert f.dtype == torch.float32 and f.shape[0] == 2 and f.shape[-1] == model.text_width, name
        torch.testing.assert_close(f.norm(dim=-1), torch.ones(f.shape[:-1]), msg=name)
    with pytest.raises(ValueError, match=f"multiple of {model.patch_size}"):
        model.patch_grid(model.patch_size * 3 + 1)


@pytest.mark.parametrize("family", ALL)
def test_text_features_in_batches_equal_one_batch(models, family):
    model = models[family]
    texts = ["a photo of a damaged pill.", "flawless pill", "a cropped photo of the pill.", "x", "scratch"]
    feats = model.encode_text(texts)
    assert feats.shape == (5, model.text_width) and feats.dtype == torch.float32 and not feats.requires_grad
    torch.testing.assert_close(model.encode_text(texts, batch_size=2), feats, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.encode_text(texts[1]), feats[1:2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.encode_text(texts, normalize=True).norm(dim=-1), torch.ones(5))


@pytest.mark.parametrize("family", ALL)
def test_prompted_text_is_differentiable_in_the_prompts_only(models, family):
    model = models[family]
    sentences = ["a photo of a damaged object.", "perfect object", "object"]
    inputs = model.prompted_text_inputs(sentences, 3)
    prompts = torch.randn(3, 3, model.text_width, generator=torch.Generator().manual_seed(0), requires_grad=True)
    out = model.encode_prompted_text(prompts, inputs)
    assert out.shape == (3, model.text_width) and out.requires_grad
    out.square().sum().backward()
    assert prompts.grad is not None and prompts.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in model.parameters())
    # Other prompts, other features: the prompts reach the output.
    other = torch.randn(prompts.shape, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(model.encode_prompted_text(other, inputs), out.detach())
    for bad in (0, 1000):
        with pytest.raises(ValueError, match="no room"):
            model.prompted_text_inputs(sentences, bad)


@pytest.mark.parametrize("family", ALL)
def test_fingerprint_is_stable_and_follows_every_weight(models, family):
    twin = _load(family)
    assert twin.fingerprint() == models[family].fingerprint()
    params = list(twin.parameters())
    for param in (params[0], params[-1]):  # the first and the last weight (vision side, text side)
        before = twin.fingerprint()
        with torch.no_grad():
            param.add_(1e-3)
        assert twin.fingerprint() != before and twin.describe()["fingerprint"] == twin.fingerprint()
    assert _load(family, dtype="bf16").fingerprint() != models[family].fingerprint()


@pytest.mark.parametrize("family", ALL)
def test_bf16_casts_the_vision_side_only(models, family):
    model = _load(family, dtype="bf16")
    assert model.dtype == torch.bfloat16 and model.describe()["dtype"] == "bfloat16"
    feats = model.encode_features(torch.rand(1, 3, model.image_size, model.image_size))
    assert all(f.dtype == torch.float32 for f in feats.values())
    assert model.encode_text(["a photo"]).dtype == torch.float32


# --- through the method ----------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ALL)
def test_the_method_runs_on_every_family(models, family, toy_root, tmp_path):
    from tipsomaly_lite import AnomalyDataset, Detector, TrainConfig, evaluate, train_prompts

    model = models[family]
    s = model.image_size
    torch.manual_seed(0)
    pred = Detector(model).predict(torch.rand(2, 3, s, s), "pill")
    assert pred.anomaly_map.shape == (2, s, s) and pred.image_score.shape == (2,)
    assert torch.isfinite(pred.anomaly_map).all() and set(pred.global_by_token) == set(model.global_tokens)

    ds = AnomalyDataset(toy_root, image_size=s)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MeaninglessResultsWarning)
        run = train_prompts(model, ds, TrainConfig(epochs=1), tmp_path / "run", progress=False)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["backbone"] == family and config["backbone_fingerprint"] == model.fingerprint()
    detector = Detector(model, run.prompts())
    result = evaluate(detector, ds, progress=False)
    assert result.config["backbone"] == family and result.config["image_size"] == s
    assert result.mean and all(v == v for v in result.mean.values())  # no NaN metric
