"""The whole method in one object: features -> global and patch scores -> fused image score and anomaly map.

Three modes (docs/method.md §2.4):

- ``decoupled`` (the paper): the image level uses the fixed prompts with the class name, the
  pixel level the learned prompts with ``object``.
- ``coupled``: both levels use the learned prompts (an ablation).
- ``training_free``: no learned prompts; both levels use the fixed prompts with the class name.

    detector = Detector(model, prompts=load_released_prompts("mvtec"))
    pred = detector.predict(images, ["metal nut"] * len(images))
    pred.image_score, pred.anomaly_map            # (B,), (B, S, S)

Taught in notebooks/05_local_to_global_fusion.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor

from tipsomaly_lite.method.few_shot import NN_WEIGHT, ReferenceMemory, fuse_patch_scores
from tipsomaly_lite.method.fusion import fuse_scores, local_score
from tipsomaly_lite.method.maps import anomaly_map
from tipsomaly_lite.method.prompt_learner import PromptLearner
from tipsomaly_lite.method.prompts import PromptSet, TextFeatureBank, get_prompt_set
from tipsomaly_lite.method.scoring import global_score, patch_evidence, patch_probabilities
from tipsomaly_lite.backbones.base import Backbone, attention_of

__all__ = ["MODES", "DEFAULT_SIGMA", "Prediction", "Detector"]

MODES = ("decoupled", "coupled", "training_free")
DEFAULT_SIGMA = 4.0


@dataclass
class Prediction:
    """Scores of a batch. ``image_score = global_weight * global_score + local_weight * local_score``.

    Taught in notebooks/05_local_to_global_fusion.ipynb.
    """

    image_score: Tensor  # (B,) fused, in [0, 2] with unit weights
    global_score: Tensor  # (B,) P(anomalous) from the global token
    local_score: Tensor  # (B,) max patch P(anomalous)
    patch_scores: Tensor  # (B, N) P(anomalous) of every patch (the local score's max is over these)
    anomaly_map: Tensor | None  # (B, S, S) upsampled and smoothed, or None when not asked for
    global_by_token: dict[str, Tensor] = field(default_factory=dict)  # (B,) per global token, all reported

    def __len__(self) -> int:
        return len(self.image_score)


class Detector:
    """Tipsomaly: zero-shot anomaly scores and maps from a frozen backbone (plus learned pixel prompts).

    Args:
        model: a loaded backbone (TIPS in the paper).
        prompts: learned pixel prompts ``(normal (n, D), anomalous (n, D))``, a trained
            :class:`PromptLearner`, or None (training-free).
        prompt_set: fixed prompt vocabulary (default ``industrial``); the learned prompts'
            sentences use it too, with the class word ``object``.
        mode: ``decoupled`` (default with prompts), ``coupled`` or ``training_free`` (default without).
        token: the global token for the image level, one of ``model.global_tokens`` (TIPS: ``cls1``,
            the default, or ``cls2``).
        sigma: Gaussian smoothing of the maps in pixels (4; 0 turns it off).
        global_weight, local_weight: fusion weights (1 and 1).
        prompts_source: a note for the result config (e.g. ``released:mvtec``).
    Taught in notebooks/05_local_to_global_fusion.ipynb.
    """

    def __init__(self, model: Backbone, prompts: tuple[Tensor, Tensor] | PromptLearner | None = None, *,
                 prompt_set: str | PromptSet | None = None, mode: str | None = None,
                 token: str | None = None, sigma: float = DEFAULT_SIGMA, global_weight: float = 1.0,
                 local_weight: float = 1.0, prompts_source: str = "") -> None:
        mode = mode or ("training_free" if prompts is None else "decoupled")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode != "training_free" and prompts is None:
            raise ValueError(f"mode {mode!r} needs learned prompts (prompts=...); without them use 'training_free'")
        token = token or model.default_global_token
        if token not in model.global_tokens:
            raise ValueError(f"token must be one of the backbone's global tokens {model.global_tokens}, got {token!r}")
        self.model = model
        self.mode = mode
        self.token = token
        self.sigma = float(sigma)
        self.global_weight = float(global_weight)
        self.local_weight = float(local_weight)
        self.prompt_set = get_prompt_set(prompt_set)
        self.bank = TextFeatureBank(model, self.prompt_set)
        self.prompts_source = "none" if prompts is None or mode == "training_free" else prompts_source or "given"
        self.learned_features: Tensor | None = None  # (2, D)
        self.n_prompt_tokens = 0
        #: Few-shot: K normal images per class (docs/method.md §2.8); None = zero-shot, the method unchanged.
        self.references: ReferenceMemory | None = None
        if prompts is not None and mode != "training_free":
            if not isinstance(prompts, PromptLearner):
                normal, anomalous = prompts
                prompts = PromptLearner(model, prompt_set=self.prompt_set, normal=normal, anomalous=anomalous)
            with torch.no_grad():
                self.learned_features = prompts().detach()
            self.n_prompt_tokens = prompts.n_tokens

    def text_features(self, class_words: Sequence[str]) -> tuple[Tensor, Tensor]:
        """``(image-level (B, 2, D), pixel-level (B, 2, D) or (2, D))`` text features for the mode."""
        fixed = self.bank(list(class_words)).to(self.model.device)
        if self.mode == "training_free":
            return fixed, fixed
        if self.mode == "decoupled":
            return fixed, self.learned_features
        return self.learned_features, self.learned_features

    @torch.no_grad()
    def predict_features(self, features: dict[str, Tensor], class_words: str | Sequence[str],
                         image_size: int | tuple[int, int] | None = None, *,
                         nearest_scores: Tensor | None = None) -> Prediction:
        """Scores from already-computed vision features (e.g. from a :class:`FeatureCache`).

        Args:
            features: ``patch_tokens (B, N, D)`` and a ``(B, D)`` entry per global token of the backbone.
            class_words: one prompt word per image (or one for all).
            image_size: side of the anomaly maps; None skips the maps (scores only).
            nearest_scores: ``(B, N)`` nearest-neighbour scores in [0, 1] to fuse with the patch
                probabilities (Eq. 14; mutual scoring passes them); default: from :attr:`references`
                when set, else none (zero-shot).
        """
        patches = features["patch_tokens"]
        b, n, _ = patches.shape
        words = [class_words] * b if isinstance(class_words, str) else list(class_words)
        if len(words) != b:
            raise ValueError(f"got {len(words)} class words for {b} images")
        image_text, pixel_text = self.text_features(words)
        rule = self.model.scoring_rule  # softmax (TIPS, CLIP) or independent sigmoids (SigLIP2)
        by_token = {t: global_score(features[t], image_text, rule) for t in self.model.global_tokens}
        g = by_token[self.token]
        probs = patch_probabilities(patches, pixel_text, rule)  # (B, N, 2)
        # The map shows the rule's evidence: p_anomalous, or (1 - p_normal + p_anomalous) / 2 for sigmoids.
        patch_scores, evidence = probs[..., 1], patch_evidence(probs, rule)
        if nearest_scores is None and self.references is not None:
            nearest_scores = self.references.scores(patches, words, self.model)
        if nearest_scores is not None:  # few-shot or mutual (docs/method.md §2.8-2.9): maps and local score
            weight = self.references.weight if self.references is not None else NN_WEIGHT
            patch_scores = fuse_patch_scores(patch_scores, nearest_scores, weight)
            evidence = fuse_patch_scores(evidence, nearest_scores, weight)
        fused = fuse_scores(g, patch_scores, self.global_weight, self.local_weight)
        amap = None
        if image_size is not None:
            size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
            amap = anomaly_map(evidence, self.model.patch_grid(size), size, sigma=self.sigma)
        return Prediction(fused, g, local_score(patch_scores), patch_scores, amap, by_token)

    @torch.no_grad()
    def predict(self, images: Tensor, class_words: str | Sequence[str], maps: bool = True) -> Prediction:
        """Scores and maps for a batch.

        Args:
            images: ``image (B, 3, S, S)`` in [0, 1], S a multiple of 14 (see ``model.preprocess``).
            class_words: the object's name in the prompts, per image or one for all (``"metal nut"``).
            maps: also compute ``anomaly_map (B, S, S)``.
        """
        features = self.model.encode_features(images)
        return self.predict_features(features, class_words, tuple(images.shape[-2:]) if maps else None)

    def config(self) -> dict[str, Any]:
        """Everything that changes the scores, for a result's config file."""
        return {"backbone": self.model.family, "variant": self.model.variant, "model_source": self.model.source,
                "offline_model": self.model.is_offline, "dtype": str(self.model.dtype).removeprefix("torch."),
                "mode": self.mode, "global_token": self.token,
                "prompt_set": self.prompt_set.to_dict(), "pixel_prompts": self.prompts_source,
                "n_prompt_tokens": self.n_prompt_tokens, "sigma": self.sigma, "map_filter":
                "torch separable Gaussian, equal to scipy.ndimage.gaussian_filter(mode='reflect', truncate=4)",
                "global_weight": self.global_weight, "local_weight": self.local_weight,
                "temperature": self.model.temperature, "scoring_rule": self.model.scoring_rule.describe(),
                "attention": attention_of(self.model),
                **({"few_shot": self.references.config()} if self.references is not None else {})}

    def __repr__(self) -> str:
        return (f"Detector(mode={self.mode!r}, token={self.token!r}, prompt_set={self.prompt_set.name!r}, "
                f"pixel_prompts={self.prompts_source!r}, sigma={self.sigma}, model={self.model.variant!r})")
