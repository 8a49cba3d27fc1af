"""The seam between a vision-language backbone and the method: what Tipsomaly needs from a model.

The method never reaches into a model's towers. It asks a :class:`Backbone` for:

- preprocessing facts and the patch grid (``image_size``, ``patch_size``, ``image_mean``/``image_std``,
  :meth:`~Backbone.preprocess`, :meth:`~Backbone.patch_grid`);
- image features: one or more named global tokens and the patch tokens (:meth:`~Backbone.encode_features`);
- text features of sentences (:meth:`~Backbone.encode_text`);
- text features of sentences with learnable prompt vectors inserted where the text tower expects
  them (:meth:`~Backbone.prompted_text_inputs`, then :meth:`~Backbone.encode_prompted_text`);
- the softmax temperature, device and dtype, and a fingerprint of *all* its weights (cache keys).

TIPS (:class:`~tipsomaly_lite.backbones.tips.model.TIPS`) implements it; a test checks that it does.

Taught in notebooks/01_loading_tips.ipynb.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

__all__ = ["Backbone", "l2_normalize", "NORM_EPS", "weights_fingerprint"]

#: The method's normalisation floor: ``x / max(||x||, NORM_EPS)`` (docs/method.md, Eq. 1).
NORM_EPS = 1e-3


def l2_normalize(x: Tensor, eps: float = NORM_EPS) -> Tensor:
    """``x / max(||x||, eps)`` along the last dimension (the method's normalisation, docs/method.md Eq. 1).

    Args:
        x: ``(..., D)``.
    Returns:
        ``(..., D)`` with unit norm where ``||x|| >= eps``.
    """
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


def weights_fingerprint(module: nn.Module, header: str) -> str:
    """SHA-256 (first 16 hex digits) of ``header`` (architecture, config...) and every tensor of ``module``'s state.

    Remembered on the module until any of those tensors is changed in place (their version counters are
    compared), so asking again is free for a frozen model and never stale for an edited one.
    """
    tensors = list(module.state_dict().items())
    versions = (header, tuple(t._version for _, t in tensors))
    cached = module.__dict__.get("_fingerprint")
    if cached is not None and cached[0] == versions:
        return cached[1]
    h = hashlib.sha256(header.encode())
    for name, t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    digest = h.hexdigest()[:16]
    module.__dict__["_fingerprint"] = (versions, digest)
    return digest


@runtime_checkable
class Backbone(Protocol):
    """What the method needs from a frozen vision-language model.

    Attributes:
        family: the model family (``"tips"``).
        variant: which checkpoint (``"l14-hr"``, ``"tiny"``, a hub id).
        source: where the weights came from (paths or hub id), for result configs.
        is_offline: True for a tiny random model whose outputs are meaningless.
        image_size: default input side in pixels (a multiple of ``patch_size``).
        patch_size: side of one patch in pixels (14 for TIPS).
        image_mean, image_std: per-channel normalisation applied inside the model to images
            in [0, 1], or None when the model takes [0, 1] as is (TIPS).
        global_tokens: names of the global (image-level) tokens :meth:`encode_features` returns,
            e.g. ``("cls1", "cls2")`` for TIPS.
        default_global_token: the one used for the image score unless asked otherwise.
        temperature: softmax temperature: logits are ``cos / temperature``.
        text_width: width ``D`` of the text features and of one learnable prompt vector.
    """

    family: str
    variant: str
    source: str
    is_offline: bool
    image_size: int
    patch_size: int
    image_mean: tuple[float, float, float] | None
    image_std: tuple[float, float, float] | None
    global_tokens: tuple[str, ...]
    default_global_token: str
    temperature: float

    @property
    def text_width(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def preprocess(self, images: object | Iterable[object], size: int | None = None) -> Tensor:
        """Images (paths, PIL, arrays, tensors) -> ``(B, 3, S, S)`` RGB in [0, 1]."""
        ...

    def patch_grid(self, size: int | tuple[int, int] | None = None) -> tuple[int, int]:
        """``(rows, cols)`` of the patch grid at an input size (default :attr:`image_size`)."""
        ...

    def encode_features(self, images: Tensor) -> dict[str, Tensor]:
        """``images (B, 3, H, W)`` in [0, 1] -> L2-normalised float32 features.

        Returns:
            ``patch_tokens (B, N, D)`` in row-major grid order, and one ``(B, D)`` entry per
            name in :attr:`global_tokens`.
        """
        ...

    def encode_text(self, texts: list[str] | str, normalize: bool = False) -> Tensor:
        """Sentence features ``(T, D)``."""
        ...

    def prompted_text_inputs(self, sentences: list[str], n_prompt_tokens: int) -> dict[str, Tensor]:
        """Frozen inputs for :meth:`encode_prompted_text`: the sentences' token embeddings and
        whatever the tower needs beside them (padding masks...). Computed once per prompt learner.

        Raises:
            ValueError: ``n_prompt_tokens`` leaves no room for text in the tower's context.
        """
        ...

    def encode_prompted_text(self, prompts: Tensor, inputs: dict[str, Tensor]) -> Tensor:
        """Sentence features ``(S, D)`` (raw) with ``prompts (S, n, D)`` inserted into each sentence.

        Differentiable with respect to ``prompts``; the tower itself stays frozen.
        """
        ...

    def fingerprint(self) -> str:
        """A short hex id of *all* weights and the architecture: equal ids give equal outputs."""
        ...
