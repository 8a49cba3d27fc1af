"""Learnable pixel prompts: two ``(n, D)`` tensors put into the text tokens (docs/method.md, Eq. 4).

The sentences are the fixed prompt ensemble with the class word ``object``. For each sentence,
the n learnable vectors of its state (normal or anomalous) go where the backbone's text tower
expects them (for TIPS: *before* the sqrt(D)-scaled token embeddings, not scaled themselves,
marked as real tokens, the sequence cut back to 64; see
:meth:`~tipsomaly_lite.backbones.base.Backbone.prompted_text_inputs`); the frozen tower then
runs as usual. Per state: normalise each sentence, average, normalise. Only the 2·n·D prompt
values train.

Taught in notebooks/04_learnable_pixel_prompts.ipynb.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tipsomaly_lite.method.prompts import PromptSet, ensemble, get_prompt_set
from tipsomaly_lite.backbones.base import Backbone

__all__ = ["PromptLearner", "DEFAULT_N_TOKENS", "DEFAULT_CLASS_WORD", "INIT_STD"]

DEFAULT_N_TOKENS = 8
DEFAULT_CLASS_WORD = "object"
INIT_STD = 0.02


class PromptLearner(nn.Module):
    """Two learnable prompt tensors and the frozen text tower that turns them into text features.

    Args:
        model: a loaded backbone (its text tower is used, never trained).
        n_tokens: learnable vectors per state (8 in the paper).
        prompt_set: sentence ensemble (default ``industrial``).
        class_word: the word in the sentences (``object``: the prompts are class-agnostic).
        generator: seeds the ``randn * 0.02`` initialisation.
        normal, anomalous: start from these ``(n, D)`` tensors instead (e.g. released prompts).

    Calling the learner returns ``text_features (2, D)``, rows (normal, anomalous), L2-normalised,
    differentiable with respect to :attr:`normal` and :attr:`anomalous` only.
    Taught in notebooks/04_learnable_pixel_prompts.ipynb.
    """

    def __init__(self, model: Backbone, n_tokens: int = DEFAULT_N_TOKENS, prompt_set: str | PromptSet | None = None,
                 class_word: str = DEFAULT_CLASS_WORD, generator: torch.Generator | None = None,
                 normal: Tensor | None = None, anomalous: Tensor | None = None) -> None:
        super().__init__()
        width = model.text_width
        if normal is not None or anomalous is not None:
            if normal is None or anomalous is None:
                raise ValueError("pass both normal= and anomalous= prompt tensors, or neither")
            for what, t in (("normal", normal), ("anomalous", anomalous)):
                if t.ndim != 2 or t.shape[1] != width:
                    raise ValueError(f"{what} prompts must be (n, {width}) for this model's text width, "
                                     f"got {tuple(t.shape)}")
            if normal.shape != anomalous.shape:
                raise ValueError(f"normal {tuple(normal.shape)} and anomalous {tuple(anomalous.shape)} prompts "
                                 "differ in shape")
            n_tokens = normal.shape[0]
            init = [normal.detach().float().clone(), anomalous.detach().float().clone()]
        else:
            if n_tokens < 1:
                raise ValueError(f"n_tokens must be >= 1, got {n_tokens}")
            init = [torch.randn(n_tokens, width, generator=generator) * INIT_STD for _ in range(2)]
        device = model.device
        self.normal = nn.Parameter(init[0].to(device))
        self.anomalous = nn.Parameter(init[1].to(device))
        self.prompt_set = get_prompt_set(prompt_set)
        self.class_word = class_word
        # The backbone is held outside the module tree so it stays out of state_dict() and the optimizer.
        self.__dict__["model"] = model
        normal_sentences, anomalous_sentences = self.prompt_set.sentences(class_word)
        self.n_normal = len(normal_sentences)
        self.n_sentences = self.n_normal + len(anomalous_sentences)
        inputs = model.prompted_text_inputs(normal_sentences + anomalous_sentences, n_tokens)
        self._input_names = tuple(inputs)
        for name, tensor in inputs.items():
            self.register_buffer(f"text_{name}", tensor, persistent=False)
        # Which prompt each sentence gets: 0 (normal) for the first n_normal, then 1 (anomalous).
        self.register_buffer("state", (torch.arange(self.n_sentences) >= self.n_normal).long().to(device),
                             persistent=False)

    @property
    def n_tokens(self) -> int:
        return self.normal.shape[0]

    def forward(self) -> Tensor:
        """``text_features (2, D)`` from the current prompts."""
        prompts = torch.stack([self.normal, self.anomalous])[self.state]  # (S, n, D): each sentence's prompt
        inputs = {name: getattr(self, f"text_{name}") for name in self._input_names}
        feats = self.model.encode_prompted_text(prompts, inputs)
        return torch.stack([ensemble(feats[:self.n_normal]), ensemble(feats[self.n_normal:])])

    def prompts(self) -> tuple[Tensor, Tensor]:
        """Detached copies ``(normal (n, D), anomalous (n, D))``."""
        return self.normal.detach().clone(), self.anomalous.detach().clone()

    def extra_repr(self) -> str:
        return (f"n_tokens={self.n_tokens}, width={self.normal.shape[1]}, prompt_set={self.prompt_set.name!r}, "
                f"class_word={self.class_word!r}, sentences={self.n_normal}+{self.n_sentences - self.n_normal}")
