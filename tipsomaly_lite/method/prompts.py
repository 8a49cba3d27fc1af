"""Fixed text prompts: prompt sets as data, and the per-class text features they give (docs/method.md §2.1).

A prompt set is three lists: normal states, anomalous states and sentence templates. For a class
word and a state, every ``template.format(state.format(word))`` is one sentence; the features of
a state are the L2-normalised mean of its L2-normalised sentence features. So a class gets a
``(2, D)`` pair (normal, anomalous) and a list of classes ``text_features (C, 2, D)``.

    >>> sets = PROMPT_SETS["industrial"]
    >>> normal, anomalous = sets.sentences("metal nut")
    >>> len(normal), len(anomalous)
    (28, 20)

Taught in notebooks/03_fixed_prompts.ipynb.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import Tensor

from tipsomaly_lite.backbones.base import Backbone, l2_normalize
from tipsomaly_lite.io.jsonfile import read_json

__all__ = ["PromptSet", "PROMPT_SETS", "DEFAULT_PROMPT_SET", "SIMILARITY_PROMPTS", "get_prompt_set", "ensemble",
           "text_features", "TextFeatureBank"]


@dataclass(frozen=True)
class PromptSet:
    """A prompt vocabulary: states (with a ``{}`` for the class word) and templates (with a ``{}``).

    Attributes:
        name: short name, recorded in every result's config.
        normal_states: e.g. ``("{}", "flawless {}")``.
        anomalous_states: e.g. ``("damaged {}",)``.
        templates: e.g. ``("a bad photo of a {}.",)``.
        note: where the set comes from.
    Taught in notebooks/03_fixed_prompts.ipynb.
    """

    name: str
    normal_states: tuple[str, ...]
    anomalous_states: tuple[str, ...]
    templates: tuple[str, ...]
    note: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        for what in ("normal_states", "anomalous_states", "templates"):
            items = getattr(self, what)
            if isinstance(items, str) or not items:
                raise ValueError(f"prompt set {self.name!r}: {what} must be a non-empty list of strings")
            object.__setattr__(self, what, tuple(items))
            bad = [s for s in items if not isinstance(s, str) or s.count("{}") != 1]
            if bad:
                raise ValueError(f"prompt set {self.name!r}: every entry of {what} needs exactly one '{{}}'; "
                                 f"got {bad}")

    def sentences(self, word: str) -> tuple[list[str], list[str]]:
        """All sentences for a class word: ``(normal sentences, anomalous sentences)``."""
        def fill(states: Iterable[str]) -> list[str]:
            return [t.format(s.format(word)) for s in states for t in self.templates]
        return fill(self.normal_states), fill(self.anomalous_states)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "normal_states": list(self.normal_states),
                "anomalous_states": list(self.anomalous_states), "templates": list(self.templates)}


_INDUSTRIAL_NORMAL = ("{}", "flawless {}", "perfect {}", "unblemished {}", "{} without flaw", "{} without defect",
                      "{} without damage")
_INDUSTRIAL_ANOMALOUS = ("damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage")

#: The prompt vocabularies of docs/method.md §2.1. Which industrial template set produced the paper's table
#: is unverified, so both are here under their own names; ``industrial`` is the default.
PROMPT_SETS: dict[str, PromptSet] = {p.name: p for p in [
    PromptSet("industrial", _INDUSTRIAL_NORMAL, _INDUSTRIAL_ANOMALOUS,
              ("a bad photo of a {}.", "a low resolution photo of the {}.", "a bad photo of the {}.",
               "a cropped photo of the {}."),
              note="Tipsomaly's 4-template industrial set (28 + 20 sentences)"),
    PromptSet("industrial_v0", _INDUSTRIAL_NORMAL, _INDUSTRIAL_ANOMALOUS,
              ("a photo of a {}.", "a photo of the {}.", "a cropped photo of a {}.", "a cropped photo of the {}.",
               "a close-up photo of a {}", "a close-up photo of the {}", "a photo of the {} for visual inspection",
               "a photo of a {} for visual inspection"),
              note="the older 8-template industrial set from the code's history (56 + 40 sentences)"),
    PromptSet("medical",
              ("normal {}", "intact {}", "{} with uniform structure", "{} showing clear tissue",
               "{} with normal anatomy", "{} showing no distortion", "{} with symmetric appearance",
               "{} looking normal", "{} with even texture", "{} with regular shape"),
              ("abnormal {}", "{} with spot", "{} with abnormality", "diseased {}", "{} showing distortion",
               "{} with irregular area", "{} with irregular shape", "{} with uneven texture"),
              ("a medical image of a {}.", "a medical image of the {}.", "a diagnostic scan of a {}.",
               "a diagnostic scan of the {}.", "a slice showing a {}.", "a slice showing the {}.",
               "a scan of the {}.", "a clinical brain scan of a {}."),
              note="for HeadCT, BrainMRI, Br35H"),
    PromptSet("object_agnostic", ("{}",), ("damaged {}",), ("{}",), note="one sentence per state"),
]}
DEFAULT_PROMPT_SET = "industrial"

#: The two sentences of the first look at spatial alignment (notebook 02, ``make demo``): one
#: normal and one anomalous description, ``{}`` the class word.
SIMILARITY_PROMPTS = ("a photo of a flawless {}.", "a photo of a damaged {}.")


def get_prompt_set(spec: str | os.PathLike | PromptSet | Mapping[str, Any] | None = None) -> PromptSet:
    """A prompt set from its name, a JSON file, a dict or a :class:`PromptSet` (None = the default).

    A user's set is a dict (or JSON file) with ``normal_states``, ``anomalous_states``,
    ``templates`` and optionally ``name``.

    Raises:
        KeyError: unknown name. ValueError: malformed dict or file.
    Taught in notebooks/03_fixed_prompts.ipynb.
    """
    if spec is None:
        return PROMPT_SETS[DEFAULT_PROMPT_SET]
    if isinstance(spec, PromptSet):
        return spec
    if isinstance(spec, Mapping):
        missing = {"normal_states", "anomalous_states", "templates"} - set(spec)
        if missing:
            raise ValueError(f"a prompt set needs the keys normal_states, anomalous_states, templates; "
                             f"missing {sorted(missing)}")
        return PromptSet(str(spec.get("name", "custom")), tuple(spec["normal_states"]),
                         tuple(spec["anomalous_states"]), tuple(spec["templates"]), note=str(spec.get("note", "")))
    if str(spec) in PROMPT_SETS:
        return PROMPT_SETS[str(spec)]
    path = Path(spec)
    if path.suffix == ".json" and path.is_file():
        data = read_json(path, what="prompt set", max_bytes=2**20)
        data.setdefault("name", path.stem)
        try:
            return get_prompt_set(data)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"prompt set {path}: {exc}") from None
    raise KeyError(f"unknown prompt set {str(spec)!r}; expected one of {sorted(PROMPT_SETS)} or a .json file")


def ensemble(sentence_features: Tensor) -> Tensor:
    """``(S, D)`` sentence features -> ``(D,)``: normalise each, average, normalise again (docs/method.md §2.1).

    Taught in notebooks/03_fixed_prompts.ipynb.
    """
    return l2_normalize(l2_normalize(sentence_features).mean(dim=0))


@torch.no_grad()
def text_features(model: Backbone, words: str | list[str], prompt_set: str | PromptSet | None = None) -> Tensor:
    """Fixed-prompt text features for class words.

    Args:
        model: a loaded backbone.
        words: class words as they go into the prompts (see :func:`tipsomaly_lite.data.registry.class_word`).
        prompt_set: a :data:`PROMPT_SETS` name, a :class:`PromptSet` or a dict (default ``industrial``).
    Returns:
        ``text_features (C, 2, D)``, rows (normal, anomalous), L2-normalised.
    Taught in notebooks/03_fixed_prompts.ipynb.
    """
    prompts = get_prompt_set(prompt_set)
    words = [words] if isinstance(words, str) else list(words)
    out = []
    for word in words:
        normal, anomalous = prompts.sentences(word)
        feats = model.encode_text(normal + anomalous)
        out.append(torch.stack([ensemble(feats[:len(normal)]), ensemble(feats[len(normal):])]))
    return torch.stack(out)


class TextFeatureBank:
    """Fixed-prompt text features computed once per class word and reused.

    ``bank(["bottle", "cable"]) -> (2, 2, D)``; each word's sentences go through the text tower the
    first time it is asked for only.
    Taught in notebooks/03_fixed_prompts.ipynb.
    """

    def __init__(self, model: Backbone, prompt_set: str | PromptSet | None = None) -> None:
        self.model = model
        self.prompt_set = get_prompt_set(prompt_set)
        self._features: dict[str, Tensor] = {}

    def __call__(self, words: str | list[str]) -> Tensor:
        words = [words] if isinstance(words, str) else list(words)
        new = [w for w in dict.fromkeys(words) if w not in self._features]
        if new:
            for word, feats in zip(new, text_features(self.model, new, self.prompt_set)):
                self._features[word] = feats
        return torch.stack([self._features[w] for w in words])

    def __len__(self) -> int:
        return len(self._features)

    def __repr__(self) -> str:
        return f"TextFeatureBank(prompt_set={self.prompt_set.name!r}, cached_words={len(self)})"
