"""Loading TIPS: the variant registry, the :class:`TIPS` model and its one entry point :func:`load_tips`.

    model = load_tips("l14-hr")                       # official npz, downloaded once into the cache
    model = load_tips(vision="v.npz", text="t.npz", tokenizer="tokenizer.model")
    model = load_tips("hf:google/tipsv2-b14")         # HuggingFace hub safetensors
    model = load_tips("tiny")                         # offline: random weights, meaningless outputs

Taught in notebooks/01_loading_tips.ipynb.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tipsomaly_lite import offline
from tipsomaly_lite.checkpoints import (PATCH_SIZE, Architecture, CheckpointError, canonical_text_names,
                                        hf_to_npz_names, npz_shapes, read_npz, validate_pair)
from tipsomaly_lite.preprocess import ImageLike, check_size, preprocess
from tipsomaly_lite.tips_text import TextTower, Tokenizer
from tipsomaly_lite.tips_vision import VisionTower

BUCKET = "https://storage.googleapis.com/tips_data/"
TOKENIZER_FILE = "v1_0/checkpoints/tokenizer.model"
DEFAULT_VARIANT = "l14-hr"


@dataclass(frozen=True)
class Variant:
    """One public TIPS checkpoint pair on the bucket (SPEC §1.1)."""

    name: str
    stem: str  # path under the bucket without the _vision.npz / _text.npz suffix
    native_size: int

    @property
    def files(self) -> dict[str, str]:
        """Bucket-relative paths of the vision npz, text npz and tokenizer."""
        return {"vision": self.stem + "_vision.npz", "text": self.stem + "_text.npz", "tokenizer": TOKENIZER_FILE}


_V1 = "v1_0/checkpoints/pytorch/"
_V2 = "v2_0/checkpoints/pytorch/"
VARIANTS: dict[str, Variant] = {v.name: v for v in [
    Variant("s14-hr", _V1 + "tips_oss_s14_highres_distilled", 448),
    Variant("b14-hr", _V1 + "tips_oss_b14_highres_distilled", 448),
    Variant("l14-hr", _V1 + "tips_oss_l14_highres_distilled", 448),
    Variant("so400m14-hr", _V1 + "tips_oss_so400m14_highres_largetext_distilled", 448),
    Variant("g14-hr", _V1 + "tips_oss_g14_highres", 448),
    Variant("g14-lr", _V1 + "tips_oss_g14_lowres", 224),
    Variant("v2-b14", _V2 + "tips_v2_oss_b14", 448),
    Variant("v2-l14", _V2 + "tips_v2_oss_l14", 448),
    Variant("v2-so400m14", _V2 + "tips_v2_oss_so14", 448),
    Variant("v2-g14", _V2 + "tips_v2_oss_g14", 448),
]}


def l2_normalize(x: Tensor, eps: float = 1e-3) -> Tensor:
    """``x / max(||x||, eps)`` along the last dimension (the method's normalisation, SPEC §2.3)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


class TIPS(nn.Module):
    """A loaded TIPS model: vision tower, text tower, tokenizer and temperature.

    Attributes:
        vision: :class:`~tipsomaly_lite.tips_vision.VisionTower`.
        text: :class:`~tipsomaly_lite.tips_text.TextTower`.
        tokenizer: :class:`~tipsomaly_lite.tips_text.Tokenizer`.
        temperature: softmax temperature; logits are ``cos / temperature`` (divided, not exponentiated).
        variant: registry name (``"l14-hr"``) or ``"custom"``.
        source: where the weights came from (paths or hub id).
        image_size: default input side for :meth:`preprocess` (a multiple of 14).
        is_offline: True for the tiny random model, whose outputs are meaningless.
    Taught in notebooks/01_loading_tips.ipynb.
    """

    def __init__(self, arch: Architecture, tokenizer: Tokenizer, temperature: float, *, variant: str = "custom",
                 source: str = "random init", image_size: int | None = None, is_offline: bool = False) -> None:
        super().__init__()
        self.arch = arch
        self.vision = VisionTower(arch)
        self.text = TextTower(arch)
        self.tokenizer = tokenizer
        self.temperature = float(temperature)
        self.variant = variant
        self.source = source
        self.image_size = check_size(image_size or arch.native_size, "image_size")
        self.is_offline = is_offline

    @property
    def device(self) -> torch.device:
        return self.vision.pos_embed.device

    @property
    def width(self) -> int:
        return self.arch.width

    def patch_grid(self, size: int | tuple[int, int] | None = None) -> tuple[int, int]:
        """``(rows, cols)`` of the patch grid at an input size (default :attr:`image_size`).

        Taught in notebooks/01_loading_tips.ipynb.
        """
        size = size or self.image_size
        h, w = (size, size) if isinstance(size, int) else size
        check_size(h, "height")
        check_size(w, "width")
        return h // PATCH_SIZE, w // PATCH_SIZE

    def preprocess(self, images: ImageLike | Iterable[ImageLike], size: int | None = None) -> Tensor:
        """Images of any mode -> ``(B, 3, S, S)`` RGB in [0,1] at ``size`` (default :attr:`image_size`)."""
        return preprocess(images, size or self.image_size)

    def encode_image(self, images: Tensor, normalize: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Global and local image features.

        Args:
            images: ``(B, 3, H, W)`` RGB in [0, 1], H and W multiples of 14.
            normalize: L2-normalise the outputs (``x / max(||x||, 1e-3)``); raw by default.
        Returns:
            ``cls1 (B, D)`` (first CLS, alt-text trained, used for retrieval),
            ``cls2 (B, D)`` (second CLS, synthetic-caption trained),
            ``patch_tokens (B, N, D)`` with ``N = (H/14)(W/14)`` in row-major order.
        Taught in notebooks/01_loading_tips.ipynb.
        """
        seq = self.vision(images.to(self.device, self.vision.pos_embed.dtype))
        cls1, cls2, patches = seq[:, 0], seq[:, 1], seq[:, 2:]
        if normalize:
            cls1, cls2, patches = l2_normalize(cls1), l2_normalize(cls2), l2_normalize(patches)
        return cls1, cls2, patches

    def encode_text(self, texts: list[str] | str, normalize: bool = False, batch_size: int = 256) -> Tensor:
        """Sentence features ``(T, D)`` (raw unless ``normalize``), ``T = len(texts)``.

        Taught in notebooks/01_loading_tips.ipynb.
        """
        if isinstance(texts, str):
            texts = [texts]
        outs = []
        for start in range(0, len(texts), batch_size):
            ids, padding = self.tokenizer(texts[start:start + batch_size])
            outs.append(self.text(ids.to(self.device), padding.to(self.device)))
        feats = torch.cat(outs)
        return l2_normalize(feats) if normalize else feats

    def zero_shot_probabilities(self, images: Tensor, texts: list[str], token: str = "cls1") -> Tensor:
        """``softmax(normalize(img) @ normalize(txt).T / temperature)`` -> ``(B, T)``.

        Args:
            images: ``(B, 3, H, W)`` in [0, 1].
            texts: ``T`` sentences.
            token: ``"cls1"`` (TIPS's retrieval token) or ``"cls2"``.
        Taught in notebooks/01_loading_tips.ipynb.
        """
        if token not in ("cls1", "cls2"):
            raise ValueError(f"token must be 'cls1' or 'cls2', got {token!r}")
        cls1, cls2, _ = self.encode_image(images, normalize=True)
        img = cls1 if token == "cls1" else cls2
        return F.softmax(img @ self.encode_text(texts, normalize=True).T / self.temperature, dim=-1)

    def __repr__(self) -> str:
        a = self.arch
        grid = self.patch_grid()
        lines = [
            f"TIPS(variant={self.variant!r}, family={a.family}, width={a.width}, depth={a.depth}, "
            f"heads={a.heads}, mlp={'SwiGLU' if a.swiglu else 'GELU'} {a.mlp_hidden},",
            f"     text_depth={a.text_depth}, image_size={self.image_size}, patch_grid={grid[0]}x{grid[1]} "
            f"(trained at {a.grid}x{a.grid}), temperature={self.temperature:.5g},",
            f"     source={self.source})",
        ]
        if self.is_offline:
            lines.append("     !! TINY RANDOM WEIGHTS: outputs are meaningless (offline mode) !!")
        return "\n".join(lines)


def _build(vision_arrays: dict, text_arrays: dict, tokenizer: Tokenizer, *, num_heads: int | None,
           vision_name: str, text_name: str, **kwargs) -> TIPS:
    text_arrays = canonical_text_names(text_arrays)
    arch = validate_pair({k: v.shape for k, v in vision_arrays.items()},
                         {k: v.shape for k, v in text_arrays.items()},
                         num_heads=num_heads, vision_name=vision_name, text_name=text_name)
    if tokenizer.vocab_size > arch.vocab:
        raise CheckpointError(f"tokenizer {tokenizer.path} has {tokenizer.vocab_size} pieces but {text_name} "
                              f"embeds only {arch.vocab} tokens; they do not belong together")
    temperature = float(np.asarray(text_arrays.pop("temperature")).reshape(()))
    # Build on the meta device and adopt the loaded tensors: no second copy of the weights.
    with torch.device("meta"):
        model = TIPS(arch, tokenizer, temperature, **kwargs)
    model.vision.load_state_dict({k: torch.from_numpy(v) for k, v in vision_arrays.items()}, strict=True,
                                 assign=True)
    model.text.load_state_dict({k: torch.from_numpy(v) for k, v in text_arrays.items()}, strict=True,
                               assign=True)
    return model.eval().requires_grad_(False)


def load_tips_files(vision: str | os.PathLike, text: str | os.PathLike, tokenizer: str | os.PathLike, *,
                    num_heads: int | None = None, variant: str = "custom", image_size: int | None = None,
                    is_offline: bool = False, device: str | torch.device = "cpu") -> TIPS:
    """Load an official-layout npz pair + SentencePiece tokenizer. See :func:`load_tips`."""
    vision, text = Path(vision), Path(text)
    tok = Tokenizer(tokenizer)
    # Check the layout from the headers before reading gigabytes of data.
    validate_pair(npz_shapes(vision), npz_shapes(text), num_heads=num_heads,
                  vision_name=str(vision), text_name=str(text))
    model = _build(read_npz(vision), read_npz(text), tok, num_heads=num_heads, vision_name=str(vision),
                   text_name=str(text), variant=variant, source=f"{vision} + {text.name}",
                   image_size=image_size, is_offline=is_offline)
    return model.to(device)


def fetch_variant(name: str, download: bool = True) -> dict[str, Path]:
    """Paths of a registry variant's vision npz, text npz and tokenizer in the cache.

    Missing files are downloaded from the TIPS bucket (resumable, atomic, with a progress bar)
    into ``$TIPSOMALY_HOME/tips/<bucket path>`` unless ``download`` is False.

    Raises:
        KeyError: unknown variant.
        FileNotFoundError: a file is missing and ``download`` is False.
        tipsomaly_lite.download.DownloadError: the bucket cannot be reached.
    Taught in notebooks/00_setup.ipynb.
    """
    from tipsomaly_lite.download import cache_dir, download as fetch

    if name not in VARIANTS:
        raise KeyError(f"unknown TIPS variant {name!r}; expected one of {sorted(VARIANTS)}")
    root = cache_dir() / "tips"
    paths = {}
    for role, rel in VARIANTS[name].files.items():
        dest = root / rel
        if not dest.is_file():
            if not download:
                raise FileNotFoundError(
                    f"TIPS {name}: {role} file not in the cache ({dest}); run "
                    f"`python data_scripts/fetch_tips.py {name}` or load_tips(..., download=True)")
            fetch(BUCKET + rel, dest, desc=f"TIPS {name} {role}")
        paths[role] = dest
    return paths


def variant_is_cached(name: str) -> bool:
    """True when every file of a registry variant is already in the cache (no network).

    Taught in notebooks/00_setup.ipynb.
    """
    try:
        fetch_variant(name, download=False)
        return True
    except FileNotFoundError:
        return False


def _load_hf(spec: str, *, num_heads: int | None, image_size: int | None, device, download: bool) -> TIPS:
    """``hf:<repo id or local folder>``: a transformers-layout ``model.safetensors`` (+ config.json)."""
    from safetensors.torch import load_file

    target = spec[3:]
    folder = Path(target)
    if folder.is_dir():
        weights, config, tok = folder / "model.safetensors", folder / "config.json", folder / "tokenizer.model"
    else:
        if not download:
            raise FileNotFoundError(f"{spec}: not a local folder and download=False")
        from huggingface_hub import hf_hub_download
        from huggingface_hub.utils import EntryNotFoundError

        from tipsomaly_lite.download import DownloadError, cache_dir

        hub_cache = cache_dir() / "hf"
        try:
            weights = Path(hf_hub_download(target, "model.safetensors", cache_dir=hub_cache))
            config = Path(hf_hub_download(target, "config.json", cache_dir=hub_cache))
        except Exception as exc:  # the hub client raises many kinds; all mean "not fetched"
            raise DownloadError(
                f"could not fetch {target} from the HuggingFace hub ({type(exc).__name__}: {exc}). Offline? "
                f"Use the npz route instead, e.g. load_tips('v2-b14'), or pass hf:/path/to/local/folder") from exc
        try:
            tok = Path(hf_hub_download(target, "tokenizer.model", cache_dir=hub_cache))
        except EntryNotFoundError:
            tok = fetch_variant("v2-b14")["tokenizer"]
    if not weights.is_file():
        raise FileNotFoundError(f"{spec}: no model.safetensors in {weights.parent}")
    if not tok.is_file():
        raise FileNotFoundError(f"{spec}: no tokenizer.model in {tok.parent} (the TIPS SentencePiece model)")
    if num_heads is None and config.is_file():
        num_heads = json.loads(config.read_text()).get("vision_config", {}).get("num_attention_heads")
    # Through torch, not numpy: hub files may hold bf16, which numpy cannot represent.
    state = {k: v.float().numpy() for k, v in load_file(str(weights)).items()}
    vision_arrays, text_arrays = hf_to_npz_names(state)
    model = _build(vision_arrays, text_arrays, Tokenizer(tok), num_heads=num_heads, vision_name=str(weights),
                   text_name=str(weights), variant=spec, source=str(weights), image_size=image_size)
    return model.to(device)


def load_tips(name: str | None = None, *, vision: str | os.PathLike | None = None,
              text: str | os.PathLike | None = None, tokenizer: str | os.PathLike | None = None,
              num_heads: int | None = None, image_size: int | None = None, download: bool = True,
              fallback_to_tiny: bool = False, device: str | torch.device = "cpu") -> TIPS:
    """Load a TIPS model, frozen and in eval mode.

    Args:
        name: a registry variant (``"l14-hr"``, ``"v2-b14"``... see :data:`VARIANTS`), ``"tiny"``
            (offline, random), or ``"hf:<repo or folder>"``. Ignored when ``vision``/``text`` are given.
        vision, text, tokenizer: explicit file paths (official npz layout + SentencePiece model).
        num_heads: needed only for widths outside the public table.
        image_size: default input side for ``model.preprocess`` (multiple of 14); the variant's
            native size (448) when omitted. Any multiple of 14 works at call time.
        download: fetch missing registry files into the cache (``TIPSOMALY_HOME``).
        fallback_to_tiny: when the files are not cached and cannot be fetched, load the tiny
            offline model (with its warning) instead of raising.
        device: where the model lives.

    ``TIPSOMALY_OFFLINE=1`` turns any registry name or hub id into ``"tiny"`` (explicit files and
    local ``hf:`` folders still load as asked).

    Taught in notebooks/01_loading_tips.ipynb.
    """
    if vision is not None or text is not None:
        if vision is None or text is None or tokenizer is None:
            raise ValueError("load_tips: pass all of vision=, text= and tokenizer= (or a variant name)")
        return load_tips_files(vision, text, tokenizer, num_heads=num_heads, image_size=image_size,
                               device=device)
    name = name or DEFAULT_VARIANT
    is_local = name.startswith("hf:") and Path(name[3:]).is_dir()
    if name not in VARIANTS and name != "tiny" and not name.startswith("hf:"):
        raise KeyError(f"unknown TIPS variant {name!r}; expected one of {sorted(VARIANTS)}, 'tiny' or 'hf:<repo>'")
    if name != "tiny" and not is_local and offline.offline_forced():
        name = "tiny"  # only what would need the network is replaced; local files still load
    if name == "tiny":
        offline.warn_meaningless()
        v, t, tok = offline.tiny_files()
        return load_tips_files(v, t, tok, variant="tiny", image_size=image_size, is_offline=True, device=device)
    if name.startswith("hf:"):
        return _load_hf(name, num_heads=num_heads, image_size=image_size, device=device, download=download)
    from tipsomaly_lite.download import DownloadError

    try:
        files = fetch_variant(name, download=download)
    except (FileNotFoundError, DownloadError):
        if not fallback_to_tiny:
            raise
        return load_tips("tiny", image_size=image_size, device=device)
    return load_tips_files(files["vision"], files["text"], files["tokenizer"], num_heads=num_heads,
                           variant=name, image_size=image_size, device=device)
