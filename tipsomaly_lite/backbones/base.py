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

__all__ = ["Backbone", "l2_normalize", "NORM_EPS", "VISION_DTYPES", "vision_dtype", "cpu_has_bf16",
           "warn_if_slow_bf16", "weights_fingerprint"]

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


#: Names a loader accepts for the vision tower's dtype (``dtype=``); torch dtypes work too.
VISION_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "fp32": torch.float32,
                                         "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def vision_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """The torch dtype a loader's ``dtype=`` argument names: fp32 or bf16.

    Args:
        dtype: ``"float32"``/``"fp32"``/``torch.float32`` or ``"bfloat16"``/``"bf16"``/``torch.bfloat16``.
    Returns:
        ``torch.float32`` or ``torch.bfloat16``.
    Raises:
        ValueError: anything else; the message names the allowed values.
    """
    if isinstance(dtype, torch.dtype) and dtype in VISION_DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in VISION_DTYPES:
        return VISION_DTYPES[dtype]
    raise ValueError(f"dtype must be one of {sorted(VISION_DTYPES)}, torch.float32 or torch.bfloat16, got {dtype!r}")


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (avx512_bf16 or AMX), as oneDNN reports it."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(torch.backends.mkldnn.is_available() and check is not None and check())


def warn_if_slow_bf16(dtype: torch.dtype, device: str | torch.device) -> None:
    """Warn when bf16 is asked for on a CPU that can only emulate it (slower than float32 there)."""
    if dtype == torch.bfloat16 and torch.device(device).type == "cpu" and not cpu_has_bf16():
        from tipsomaly_lite.offline import warn_caller

        warn_caller("dtype=bfloat16 on a CPU without bf16 matrix instructions (avx512_bf16 or AMX): it is emulated "
                    "and slower than float32 here; use float32 on this machine")


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
