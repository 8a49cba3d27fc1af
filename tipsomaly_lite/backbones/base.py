"""The seam between a vision-language backbone and the method: what Tipsomaly needs from a model.

The method never reaches into a model's towers. It asks a :class:`Backbone` for:

- the input side and the patch grid (``image_size``, :meth:`~Backbone.preprocess`, :meth:`~Backbone.patch_grid`);
- image features: one or more named global tokens and the patch tokens (:meth:`~Backbone.encode_features`);
- text features of sentences (:meth:`~Backbone.encode_text`);
- text features of sentences with learnable prompt vectors inserted where the text tower expects
  them (:meth:`~Backbone.prompted_text_inputs`, then :meth:`~Backbone.encode_prompted_text`);
- its scoring rule (:attr:`~Backbone.scoring_rule`: how cosines become probabilities), the softmax
  temperature, device and dtype, a fingerprint of *all* its weights (cache keys), and
  :meth:`~Backbone.describe` for reports.

:class:`BackboneBase` is the plumbing the families share (device/dtype, patch grid, preprocessing,
the batched text loop, placement, fingerprint, ``describe``, the repr's frame); TIPS
(:class:`~tipsomaly_lite.backbones.tips.model.TIPS`) and the transformers families
(:class:`~tipsomaly_lite.backbones.hf.HFBackbone`) build on it, and a contract test checks every
registered family against :class:`Backbone`.

Taught in notebooks/01_loading_tips.ipynb.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from tipsomaly_lite.backbones.preprocess import check_size, preprocess
from tipsomaly_lite.backbones.scoring_rule import ScoringRule

__all__ = ["Backbone", "BackboneBase", "l2_normalize", "NORM_EPS", "VISION_DTYPES", "vision_dtype", "cpu_has_bf16",
           "warn_if_slow_bf16", "weights_fingerprint", "attention_of", "wants_tiny", "OFFLINE_BANNER"]

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


def attention_of(model: Any) -> str | None:
    """``model.attention_path()`` where the backbone says how it computes attention, else None (for configs)."""
    ask = getattr(model, "attention_path", None)
    return ask() if callable(ask) else None


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
    """What the method needs from a frozen vision-language model, and nothing more.

    The method (``method/``, ``eval/``) reads only these names; anything else a model has (TIPS's
    ``patch_size``, CLIP's ``image_mean``/``image_std``, the towers) stays its own business.

    Attributes:
        family: the registered family (``"tips"``, ``"clip"``, ``"siglip2"``; see
            :mod:`tipsomaly_lite.backbones.registry`).
        variant: which checkpoint (``"l14-hr"``, ``"tiny"``, a hub id).
        source: where the weights came from (paths or hub id), for result configs.
        is_offline: True for a tiny offline model (toy or random weights) whose outputs are meaningless.
        image_size: default input side ``S`` in pixels for :meth:`preprocess` (datasets, the course
            and the CLI ask the loaded model for it).
        global_tokens: names of the global (image-level) tokens :meth:`encode_features` returns,
            e.g. ``("cls1", "cls2")`` for TIPS, ``("global",)`` for CLIP and SigLIP2.
        default_global_token: the one used for the image score unless asked otherwise.
        temperature: softmax temperature: logits are ``cos / temperature``.
        scoring_rule: how cosines with the (normal, anomalous) texts become probabilities, the rule the
            family declares (:class:`~tipsomaly_lite.backbones.scoring_rule.ScoringRule`: the two-way
            softmax with :attr:`temperature`, or SigLIP2's independent sigmoids with scale and bias).
        text_width: width ``D`` of the text features, of the patch tokens and of one learnable prompt vector.
        device: where the weights live.
        dtype: the vision tower's dtype (float32 or bfloat16); features come back float32 either way.
    """

    family: str
    variant: str
    source: str
    is_offline: bool
    image_size: int
    global_tokens: tuple[str, ...]
    default_global_token: str
    temperature: float

    @property
    def scoring_rule(self) -> ScoringRule: ...

    @property
    def text_width(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def preprocess(self, images: object | Iterable[object], size: int | None = None) -> Tensor:
        """Images (paths, PIL, arrays, tensors) -> ``(B, 3, S, S)`` RGB in [0, 1], ``S = size or image_size``."""
        ...

    def patch_grid(self, size: int | tuple[int, int] | None = None) -> tuple[int, int]:
        """``(rows, cols)`` of the patch grid at an input size ``S`` or ``(H, W)`` (default :attr:`image_size`)."""
        ...

    def encode_features(self, images: Tensor) -> dict[str, Tensor]:
        """``images (B, 3, H, W)`` in [0, 1] -> L2-normalised float32 features.

        Returns:
            ``patch_tokens (B, N, D)`` in row-major grid order (``N = rows * cols`` of
            :meth:`patch_grid` at ``(H, W)``), and one ``(B, D)`` entry per name in :attr:`global_tokens`.
        """
        ...

    def encode_text(self, texts: list[str] | str, normalize: bool = False) -> Tensor:
        """Sentence features ``(T, D)`` float32, ``T = len(texts)`` (raw unless ``normalize``)."""
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

    def describe(self) -> dict[str, Any]:
        """What a report says about the model: a JSON-serialisable dict with at least ``family``,
        ``variant``, ``source``, ``image_size``, ``dtype``, ``offline`` and ``fingerprint``."""
        ...


#: Printed under a tiny offline model's repr.
OFFLINE_BANNER = "!! TINY RANDOM WEIGHTS: outputs are meaningless (offline mode) !!"


def wants_tiny(variant: str, *, needs_network: bool) -> bool:
    """Whether a loader should build its tiny offline model instead of ``variant`` (the offline branch).

    Yes when ``variant == "tiny"``, or when ``TIPSOMALY_OFFLINE=1`` and the weights would need the
    network (a registry name or hub id; explicit files and local folders still load as asked). When
    yes, the loud "meaningless" warning is given, pointing at the user's line.

    Args:
        variant: what was asked for.
        needs_network: whether loading ``variant`` could reach the network.
    Returns:
        True: build the tiny model.
    """
    from tipsomaly_lite import offline

    tiny = variant == "tiny" or (needs_network and offline.offline_forced())
    if tiny:
        offline.warn_meaningless()
    return tiny


class BackboneBase(nn.Module):
    """The plumbing every family shares: device/dtype, patch grid, preprocessing, batched text,
    placement, fingerprint, :meth:`describe` and the repr's frame.

    A family subclasses it, sets the class attributes ``family``, ``global_tokens`` and
    ``default_global_token``, calls ``super().__init__(...)`` first in its own ``__init__``, and
    writes the model itself:

    - :attr:`text_width`, :meth:`encode_features`, :meth:`prompted_text_inputs`,
      :meth:`encode_prompted_text` (the seam's model-specific half);
    - the hooks :meth:`_encode_text_batch` (one batch of sentences -> raw features),
      :meth:`_vision_modules` (what runs on images and may be cast to bf16),
      :meth:`_fingerprint_header` (architecture and options) and :meth:`_repr_lines`.

    Attributes:
        variant, source, is_offline, image_size: as in :class:`Backbone`.
        patch_size: side of one patch in pixels (14 for TIPS and CLIP L/14, 16 for SigLIP2 */16).
        native_size: the input side the checkpoint was trained at (the default ``image_size``).
    """

    family: str = "base"
    global_tokens: tuple[str, ...] = ()
    default_global_token: str = ""
    temperature: float
    #: ``"asked"``, or why ``dtype="auto"`` resolved as it did (set by :func:`~tipsomaly_lite.backbones.load_backbone`).
    dtype_choice: str = "asked"
    #: The line under an offline model's repr (a family whose tiny model is not random says what it is).
    offline_banner: str = OFFLINE_BANNER

    def __init__(self, *, variant: str, source: str, patch_size: int, native_size: int,
                 image_size: int | None = None, is_offline: bool = False) -> None:
        """Record the loading facts; ``image_size`` defaults to ``native_size`` (a multiple of ``patch_size``).

        Raises:
            ValueError: ``image_size`` (or ``native_size``) is not a positive multiple of ``patch_size``.
        """
        super().__init__()
        self.variant, self.source, self.is_offline = variant, source, is_offline
        self.patch_size, self.native_size = int(patch_size), int(native_size)
        self.image_size = check_size(image_size or self.native_size, "image_size", self.patch_size)

    # --- hooks a family writes -------------------------------------------------------------------

    def _vision_modules(self) -> list[nn.Module]:
        """What runs on images: cast to the ``dtype`` asked at load time (everything else stays float32)."""
        raise NotImplementedError

    def _encode_text_batch(self, texts: list[str]) -> Tensor:
        """Raw sentence features ``(T, D)`` of one batch of ``T`` sentences (called under ``no_grad``)."""
        raise NotImplementedError

    def _fingerprint_header(self) -> str:
        """Everything besides the weights that changes the features (architecture, options, temperature)."""
        raise NotImplementedError

    def _fingerprinted(self) -> nn.Module:
        """The module whose state is fingerprinted (the whole backbone unless a family says otherwise)."""
        return self

    def _repr_lines(self) -> list[str]:
        """The repr's body, one string per line, without the class name and the closing parenthesis."""
        return [f"variant={self.variant!r}, image_size={self.image_size}, "
                f"patch_grid={'x'.join(map(str, self.patch_grid()))}, temperature={self.temperature:.5g},",
                f"source={self.source}"]

    # --- shared plumbing -------------------------------------------------------------------------

    @property
    def scoring_rule(self) -> ScoringRule:
        """The two-way softmax with :attr:`temperature` (a family scored otherwise overrides this).

        Taught in notebooks/08_backbones.ipynb.
        """
        return ScoringRule.softmax(self.temperature)

    def _vision_weight(self) -> Tensor:
        for module in self._vision_modules():
            for tensor in module.parameters():
                return tensor
        raise RuntimeError(f"{type(self).__name__}: the vision modules hold no parameters")

    @property
    def device(self) -> torch.device:
        """Where the weights live (the vision tower's device; the whole model is placed together)."""
        return self._vision_weight().device

    @property
    def dtype(self) -> torch.dtype:
        """The vision tower's dtype (float32 or bfloat16); the text tower is always float32."""
        return self._vision_weight().dtype

    def patch_grid(self, size: int | tuple[int, int] | None = None) -> tuple[int, int]:
        """``(rows, cols)`` of the patch grid at an input size.

        Args:
            size: side ``S`` or ``(H, W)`` in pixels, multiples of :attr:`patch_size`; :attr:`image_size` when None.
        Returns:
            ``(H // patch_size, W // patch_size)``.
        Raises:
            ValueError: a side that is not a positive multiple of :attr:`patch_size`.
        Taught in notebooks/01_loading_tips.ipynb.
        """
        size = size or self.image_size
        h, w = (size, size) if isinstance(size, int) else size
        return (check_size(h, "height", self.patch_size) // self.patch_size,
                check_size(w, "width", self.patch_size) // self.patch_size)

    def preprocess(self, images: Any | Iterable[Any], size: int | None = None) -> Tensor:
        """Images of any mode (paths, PIL, arrays, ``(3, H, W)`` or ``(B, 3, H, W)`` tensors) ->
        ``(B, 3, S, S)`` float32 RGB in [0, 1], squashed (no crop) to ``S = size or image_size``.

        Any per-channel normalisation a tower needs happens inside :meth:`encode_features`.
        """
        return preprocess(images, size or self.image_size, multiple=self.patch_size)

    def encode_text(self, texts: list[str] | str, normalize: bool = False, batch_size: int = 256) -> Tensor:
        """Sentence features ``(T, D)`` float32, ``T = len(texts)``, in batches of ``batch_size`` sentences.

        Args:
            texts: one sentence or a list.
            normalize: L2-normalise (``x / max(||x||, 1e-3)``); raw by default.
            batch_size: sentences per pass through the text tower.
        Taught in notebooks/01_loading_tips.ipynb.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        outs = []
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                outs.append(self._encode_text_batch(texts[start:start + batch_size]).float())
        feats = torch.cat(outs)
        return l2_normalize(feats) if normalize else feats

    def place(self, device: str | torch.device, dtype: torch.dtype) -> "BackboneBase":
        """Move to ``device`` in float32 (hub checkpoints may hold bf16), then cast only the vision
        modules to ``dtype``; warns when bf16 is asked for on a CPU that can only emulate it.

        Returns:
            ``self``.
        """
        warn_if_slow_bf16(dtype, device)
        vision = {id(t) for module in self._vision_modules() for t in (*module.parameters(), *module.buffers())}

        # One pass, each tensor straight to its final device and dtype (no float32 round trip of a
        # bf16 vision tower), each old tensor released as its copy is made: the peak stays near one model.
        def convert(t: torch.Tensor) -> torch.Tensor:
            if not (t.is_floating_point() or t.is_complex()):
                return t.to(device)
            return t.to(device=device, dtype=dtype if id(t) in vision else torch.float32)

        self._apply(convert)
        return self

    def attention_path(self) -> str:
        """How the vision tower computes attention on this device and dtype, and why (for reports).

        The transformers families run transformers' own attention; TIPS says which of its two paths runs.
        """
        return "the family's own (transformers)"

    def fingerprint(self) -> str:
        """SHA-256 (first 16 hex digits) of :meth:`_fingerprint_header` and *every* weight tensor.

        Computed once and remembered until any weight is changed in place (tensor versions are checked).
        """
        return weights_fingerprint(self._fingerprinted(), self._fingerprint_header())

    def describe(self) -> dict[str, Any]:
        """The model in a report: a JSON-serialisable dict.

        Returns:
            ``family``, ``class``, ``variant``, ``source``, ``offline``, ``image_size``,
            ``patch_size``, ``patch_grid`` ``[rows, cols]`` at ``image_size``, ``global_tokens``,
            ``default_global_token``, ``text_width``, ``temperature``, ``scoring_rule`` (its
            :meth:`~tipsomaly_lite.backbones.scoring_rule.ScoringRule.describe`), ``dtype`` (the vision tower's,
            ``"float32"``/``"bfloat16"``), ``device``, ``dtype_choice`` (``"asked"``, or why ``dtype="auto"``
            chose it), ``attention`` (:meth:`attention_path`) and ``fingerprint``.
        """
        return {"family": self.family, "class": type(self).__name__, "variant": self.variant,
                "source": str(self.source), "offline": bool(self.is_offline), "image_size": int(self.image_size),
                "patch_size": int(self.patch_size), "patch_grid": list(self.patch_grid()),
                "global_tokens": list(self.global_tokens), "default_global_token": self.default_global_token,
                "text_width": int(self.text_width), "temperature": float(self.temperature),
                "scoring_rule": self.scoring_rule.describe(),
                "dtype": str(self.dtype).removeprefix("torch."), "device": str(self.device),
                "dtype_choice": self.dtype_choice, "attention": self.attention_path(),
                "fingerprint": self.fingerprint()}

    def __repr__(self) -> str:
        lines = self._repr_lines()
        text = f"{type(self).__name__}(" + "\n     ".join(lines) + ")"
        return text + ("\n     " + self.offline_banner if self.is_offline else "")
