"""The :class:`TIPS` model (a :class:`~tipsomaly_lite.backbones.base.Backbone`) and its one entry point :func:`load_tips`.

    model = load_tips("l14-hr")                       # official npz, downloaded once into the cache
    model = load_tips(vision="v.npz", text="t.npz", tokenizer="tokenizer.model")
    model = load_tips("hf:google/tipsv2-b14")         # HuggingFace hub safetensors
    model = load_tips("tiny")                         # offline: a toy model, meaningless outputs

Taught in notebooks/01_loading_tips.ipynb.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tipsomaly_lite.backbones.base import BackboneBase, l2_normalize, vision_dtype, wants_tiny
from tipsomaly_lite.backbones.tips.checkpoints import (PATCH_SIZE, Architecture, CheckpointError, canonical_text_names,
                                        check_finite, check_temperature, hf_to_npz_names, npz_shapes, read_npz,
                                        validate_pair)
from tipsomaly_lite.backbones.tips import registry as tips_registry
from tipsomaly_lite.backbones.tips.registry import DEFAULT_VARIANT, VARIANTS, fetch_variant, variant_is_cached
from tipsomaly_lite.backbones.tips.text import TextTower, Tokenizer, trim_padding
from tipsomaly_lite.backbones.tips.vision import VisionTower, attention_choice

__all__ = ["TIPS", "load_tips", "load_tips_files", "CPU_IMAGES_PER_PASS"]

#: On the CPU the vision tower takes this many images per pass (a batch is split, the outputs joined).
#: Why: with 8 images at 518 px one MLP activation is 8 x 1371 x 3072 floats (135 MB in fp32); it
#: leaves the caches, and the memory-bound steps (GELU, layer norms, residual adds) then cost
#: several times more per image. Measured, B/14 at 518 px, 8 images on 2 cores: fp32 0.46 -> 0.54
#: img/s, bf16 1.29 -> 1.36 img/s. On a GPU the whole batch goes at once.
CPU_IMAGES_PER_PASS = 2


def _exporting() -> bool:
    """True while ``torch.export`` traces the model (torch >= 2.5 can tell; older ones are never asked to)."""
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return bool(is_exporting and is_exporting())


class TIPS(BackboneBase):
    """A loaded TIPS model: vision tower, text tower, tokenizer and temperature.

    Attributes:
        vision: :class:`~tipsomaly_lite.backbones.tips.vision.VisionTower`.
        text: :class:`~tipsomaly_lite.backbones.tips.text.TextTower`.
        tokenizer: :class:`~tipsomaly_lite.backbones.tips.text.Tokenizer`.
        arch: the :class:`~tipsomaly_lite.backbones.tips.checkpoints.Architecture` read from the arrays.
        temperature: softmax temperature; logits are ``cos / temperature`` (divided, not exponentiated).
        variant: registry name (``"l14-hr"``) or ``"custom"``.
        source: where the weights came from (paths or hub id).
        image_size: default input side for :meth:`preprocess` (a multiple of 14); the checkpoint's
            native size (448) unless asked otherwise.
        patch_size: 14. TIPS takes RGB in [0, 1] as it is (no mean/std).
        is_offline: True for the tiny toy model, whose outputs are meaningless.
    Implements :class:`~tipsomaly_lite.backbones.base.Backbone` (device, dtype, patch grid,
    preprocessing, batched text, fingerprint and ``describe`` come from
    :class:`~tipsomaly_lite.backbones.base.BackboneBase`): the method uses only that seam;
    :meth:`encode_image` (the two CLS tokens and the patches, TIPS's own vocabulary) is for teaching.

    Taught in notebooks/01_loading_tips.ipynb.
    """

    family = "tips"
    patch_size = PATCH_SIZE
    #: The first CLS (alt-text trained, TIPS's retrieval token) and the second (synthetic captions).
    global_tokens = ("cls1", "cls2")
    #: Which one the paper's table uses is unverified; the retrieval token is the default.
    default_global_token = "cls1"
    #: The offline tiny TIPS is not random: it was trained on drawn toy defects (backbones/tips/tiny.py).
    offline_banner = "!! TINY TOY MODEL (trained on drawn toy defects): outputs are meaningless, they say nothing about TIPS (offline mode) !!"

    def __init__(self, arch: Architecture, tokenizer: Tokenizer, temperature: float, *, variant: str = "custom",
                 source: str = "random init", image_size: int | None = None, is_offline: bool = False) -> None:
        super().__init__(variant=variant, source=source, patch_size=PATCH_SIZE, native_size=arch.native_size,
                         image_size=image_size, is_offline=is_offline)
        self.arch = arch
        self.vision = VisionTower(arch)
        self.text = TextTower(arch)
        self.tokenizer = tokenizer
        self.temperature = float(temperature)

    @property
    def width(self) -> int:
        """Width of the vision tokens."""
        return self.arch.width

    @property
    def text_width(self) -> int:
        """Width of the text features and of one learnable prompt vector."""
        return self.arch.text_width

    def _vision_modules(self) -> list[nn.Module]:
        return [self.vision]

    def _fingerprint_header(self) -> str:
        return f"{self.family}|{self.arch}|{self.temperature!r}"

    def _encode_text_batch(self, texts: list[str]) -> Tensor:
        ids, padding = self.tokenizer(texts)
        return self.text(ids.to(self.device), padding.to(self.device))

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
        images = images.to(self.device, self.vision.pos_embed.dtype)
        # Not while exporting: a split by the batch size would fix the exported graph's batch (deploy/export.py).
        if not _exporting() and images.device.type == "cpu" and len(images) > CPU_IMAGES_PER_PASS:
            seq = torch.cat([self.vision(chunk) for chunk in images.split(CPU_IMAGES_PER_PASS)])
        else:
            seq = self.vision(images)
        cls1, cls2, patches = seq[:, 0], seq[:, 1], seq[:, 2:]
        if normalize:
            cls1, cls2, patches = l2_normalize(cls1), l2_normalize(cls2), l2_normalize(patches)
        return cls1, cls2, patches

    @torch.no_grad()
    def encode_features(self, images: Tensor) -> dict[str, Tensor]:
        """The seam's image features, all L2-normalised float32.

        Args:
            images: ``(B, 3, H, W)`` RGB in [0, 1], H and W multiples of 14.
        Returns:
            ``patch_tokens (B, N, D)``, ``cls1 (B, D)``, ``cls2 (B, D)``.
        Taught in notebooks/04_learnable_pixel_prompts.ipynb.
        """
        cls1, cls2, patches = self.encode_image(images)
        return {"patch_tokens": l2_normalize(patches.float()), "cls1": l2_normalize(cls1.float()),
                "cls2": l2_normalize(cls2.float())}

    def prompted_text_inputs(self, sentences: list[str], n_prompt_tokens: int) -> dict[str, Tensor]:
        """Token embeddings ``(S, L, D)`` (times sqrt(D)) and padding ``(S, n + L)`` for prompted sentences.

        The n prompt vectors go *before* the scaled token embeddings and count as real tokens;
        the sequence is then cut back to the tokenizer's 64, which keeps the first ``64 - n``
        text positions (docs/method.md, Eq. 4).
        """
        max_len = self.tokenizer.max_len
        if not 1 <= n_prompt_tokens < max_len:
            raise ValueError(f"n_tokens={n_prompt_tokens} leaves no room for text in a {max_len}-token sequence")
        ids, padding = self.tokenizer(sentences)
        ids, padding = trim_padding(ids[:, :max_len - n_prompt_tokens], padding[:, :max_len - n_prompt_tokens])
        with torch.no_grad():
            embeddings = self.text.embed_tokens(ids.to(self.device))
        prompt_padding = torch.zeros(len(ids), n_prompt_tokens, dtype=torch.bool)
        return {"token_embeddings": embeddings, "padding": torch.cat([prompt_padding, padding], 1).to(self.device)}

    def encode_prompted_text(self, prompts: Tensor, inputs: dict[str, Tensor]) -> Tensor:
        """``prompts (S, n, D)`` prepended to each sentence's embeddings -> raw features ``(S, D)``."""
        embeddings = inputs["token_embeddings"]
        x = torch.cat([prompts.to(embeddings.dtype), embeddings], dim=1)
        return self.text.encode_embeddings(x, inputs["padding"])

    def zero_shot_probabilities(self, images: Tensor, texts: list[str], token: str = "cls1") -> Tensor:
        """``softmax(normalize(img) @ normalize(txt).T / temperature)`` -> ``(B, T)``.

        Args:
            images: ``(B, 3, H, W)`` in [0, 1].
            texts: ``T`` sentences.
            token: ``"cls1"`` (TIPS's retrieval token) or ``"cls2"``.
        Taught in notebooks/01_loading_tips.ipynb.
        """
        if token not in self.global_tokens:
            raise ValueError(f"token must be one of {self.global_tokens}, got {token!r}")
        cls1, cls2, _ = self.encode_image(images, normalize=True)
        img = cls1 if token == "cls1" else cls2
        return F.softmax(img @ self.encode_text(texts, normalize=True).T / self.temperature, dim=-1)

    def attention_path(self) -> str:
        """Which attention the vision tower runs here and why: ``"sdpa (...)"`` or ``"chunked (...)"``.

        See :func:`~tipsomaly_lite.backbones.tips.vision.attention_choice`; recorded in run and evaluation configs.
        """
        return str(attention_choice(self.device, self.dtype))

    def _repr_lines(self) -> list[str]:
        a = self.arch
        grid = self.patch_grid()
        return [
            f"variant={self.variant!r}, family={a.family}, width={a.width}, depth={a.depth}, "
            f"heads={a.heads}, mlp={'SwiGLU' if a.swiglu else 'GELU'} {a.mlp_hidden},",
            f"text_depth={a.text_depth}, image_size={self.image_size}, patch_grid={grid[0]}x{grid[1]} "
            f"(trained at {a.grid}x{a.grid}), temperature={self.temperature:.5g},",
            f"dtype={str(self.dtype).removeprefix('torch.')} (vision; text float32), source={self.source},",
            f"attention={self.attention_path()}",
        ]


def _build(vision_arrays: dict, text_arrays: dict, tokenizer: Tokenizer, *, num_heads: int | None,
           vision_name: str, text_name: str, dtype: torch.dtype = torch.float32, **kwargs) -> TIPS:
    """Validate the arrays and adopt them into a model built without initialisation; the vision
    arrays are cast to ``dtype`` one at a time and removed from ``vision_arrays`` (consumed), so that
    a bf16 load never holds a whole float32 vision tower beside its bf16 copy."""
    text_arrays = canonical_text_names(text_arrays)
    arch = validate_pair({k: v.shape for k, v in vision_arrays.items()},
                         {k: v.shape for k, v in text_arrays.items()},
                         num_heads=num_heads, vision_name=vision_name, text_name=text_name)
    if tokenizer.vocab_size > arch.vocab:
        raise CheckpointError(f"tokenizer {tokenizer.path} has {tokenizer.vocab_size} pieces but {text_name} "
                              f"embeds only {arch.vocab} tokens; they do not belong together")
    # Sense, not just shape: a NaN weight or a zero temperature would give NaN maps with no error.
    check_finite(vision_arrays, vision_name)
    check_finite(text_arrays, text_name)
    temperature = check_temperature(text_arrays.pop("temperature"), text_name)
    # Build on the meta device and adopt the loaded tensors: no second copy of the weights.
    with torch.device("meta"):
        model = TIPS(arch, tokenizer, temperature, **kwargs)
    vision_state = {}
    for name in list(vision_arrays):
        vision_state[name] = torch.from_numpy(vision_arrays.pop(name)).to(dtype)  # the float32 array goes here
    model.vision.load_state_dict(vision_state, strict=True, assign=True)
    model.text.load_state_dict({k: torch.from_numpy(v) for k, v in text_arrays.items()}, strict=True,
                               assign=True)
    return model.eval().requires_grad_(False)


def load_tips_files(vision: str | os.PathLike, text: str | os.PathLike, tokenizer: str | os.PathLike, *,
                    num_heads: int | None = None, variant: str = "custom", image_size: int | None = None,
                    is_offline: bool = False, device: str | torch.device = "cpu",
                    dtype: str | torch.dtype = "float32") -> TIPS:
    """Load an official-layout npz pair + SentencePiece tokenizer. See :func:`load_tips`."""
    dtype = vision_dtype(dtype)  # a bad value fails before anything is read
    vision, text = Path(vision), Path(text)
    tok = Tokenizer(tokenizer)
    # Check the layout from the headers before reading gigabytes of data.
    validate_pair(npz_shapes(vision), npz_shapes(text), num_heads=num_heads,
                  vision_name=str(vision), text_name=str(text))
    model = _build(read_npz(vision), read_npz(text), tok, num_heads=num_heads, vision_name=str(vision),
                   text_name=str(text), variant=variant, source=f"{vision} + {text.name}",
                   image_size=image_size, is_offline=is_offline, dtype=dtype)
    return model.place(device, dtype)


def _config_heads(config: Path) -> int | None:
    """``vision_config.num_attention_heads`` of a HuggingFace config.json, checked for type."""
    from tipsomaly_lite.io.jsonfile import JSONFileError, read_json

    try:
        cfg = read_json(config, what="HuggingFace config")
    except JSONFileError as exc:
        raise CheckpointError(f"{exc}; download it again") from None
    if not isinstance(cfg.get("vision_config", {}), dict):
        raise CheckpointError(f"{config}: expected a JSON object with a 'vision_config' object, got "
                              f"vision_config={repr(cfg.get('vision_config'))[:60]}")
    heads = cfg.get("vision_config", {}).get("num_attention_heads")
    if heads is not None and (isinstance(heads, bool) or not isinstance(heads, int) or heads <= 0):
        raise CheckpointError(f"{config}: vision_config.num_attention_heads is {heads!r}; expected a positive "
                              "integer")
    return heads


def _load_hf(spec: str, *, num_heads: int | None, image_size: int | None, device, download: bool,
             dtype: torch.dtype = torch.float32) -> TIPS:
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

        from tipsomaly_lite.io.download import DownloadError, cache_dir

        hub_cache = cache_dir() / "hf"
        try:  # the cache first, without the network; the hub only when it answers (no retries)
            weights = Path(hf_hub_download(target, "model.safetensors", cache_dir=hub_cache, local_files_only=True))
            config = Path(hf_hub_download(target, "config.json", cache_dir=hub_cache, local_files_only=True))
        except Exception:  # noqa: BLE001 - not (completely) cached
            from tipsomaly_lite.io.network import HUB_HOST

            _refuse_if_unreachable(f"TIPS {target}", f"https://{HUB_HOST}/", "or use the npz route instead, "
                                   "e.g. load_tips('v2-b14'), or pass hf:/path/to/a/folder")
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
        num_heads = _config_heads(config)
    from safetensors import SafetensorError

    try:
        # Through torch, not numpy: hub files may hold bf16, which numpy cannot represent.
        state = {k: v.float().numpy() for k, v in load_file(str(weights)).items()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        detail = " ".join(str(exc).split())
        raise CheckpointError(f"{weights}: not a readable safetensors file (truncated or corrupt?): "
                              f"{type(exc).__name__}: {detail}") from None
    vision_arrays, text_arrays = hf_to_npz_names(state, where=str(weights))
    del state  # _build releases each vision array as it casts it
    model = _build(vision_arrays, text_arrays, Tokenizer(tok), num_heads=num_heads, vision_name=str(weights),
                   text_name=str(weights), variant=spec, source=str(weights), image_size=image_size, dtype=dtype)
    return model.place(device, dtype)


def _refuse_if_unreachable(what: str, url: str, fetch_hint: str) -> None:
    """Raise the one-line :func:`~tipsomaly_lite.io.network.unavailable` error when ``url``'s host does not answer."""
    from tipsomaly_lite.io.network import unavailable, url_problem

    reason = url_problem(url)
    if reason is not None:
        raise unavailable(what, reason, fetch_hint)


def load_tips(name: str | None = None, *, vision: str | os.PathLike | None = None,
              text: str | os.PathLike | None = None, tokenizer: str | os.PathLike | None = None,
              num_heads: int | None = None, image_size: int | None = None, download: bool = True,
              fallback_to_tiny: bool = False, device: str | torch.device = "cpu",
              dtype: str | torch.dtype = "float32") -> TIPS:
    """Load a TIPS model, frozen and in eval mode.

    Args:
        name: a registry variant (``"l14-hr"``, ``"v2-b14"``... see :data:`VARIANTS`), ``"tiny"``
            (offline: a tiny toy model trained on drawn toy defects), or ``"hf:<repo or folder>"``. Ignored when ``vision``/``text`` are given.
        vision, text, tokenizer: explicit file paths (official npz layout + SentencePiece model).
        num_heads: needed only for widths outside the public table.
        image_size: default input side for ``model.preprocess`` (multiple of 14); the variant's
            native size (448) when omitted here. (:func:`~tipsomaly_lite.backbones.load_backbone`
            passes the family's default instead: 518, the paper's input side.) Any multiple of 14
            works at call time.
        download: fetch missing registry files into the cache (``TIPSOMALY_HOME``).
        fallback_to_tiny: when the files are not cached and cannot be fetched, load the tiny
            offline model (with its warning) instead of raising.
        device: where the model lives.
        dtype: the **vision tower's** dtype: ``"float32"`` (``"fp32"``, default) or ``"bfloat16"``
            (``"bf16"``), or the torch dtype. The text tower always stays float32: it runs once per
            class word, and prompt training back-propagates through it. :meth:`TIPS.encode_features`
            returns float32 features either way, so text features, scores, maps and metrics are
            computed in float32; ``model.dtype`` reports the vision tower's dtype. bf16 roughly
            halves the vision tower's memory and is several times faster on CPUs with bf16 matrix
            instructions (see the README, "Performance"); maps and scores differ from fp32 by a few
            thousandths.
    Raises:
        ValueError: a ``dtype`` other than those above.

    ``TIPSOMALY_OFFLINE=1`` turns any registry name or hub id into ``"tiny"`` (explicit files and
    local ``hf:`` folders still load as asked).

    Taught in notebooks/01_loading_tips.ipynb.
    """
    dtype = vision_dtype(dtype)
    if vision is not None or text is not None:
        if vision is None or text is None or tokenizer is None:
            raise ValueError("load_tips: pass all of vision=, text= and tokenizer= (or a variant name)")
        return load_tips_files(vision, text, tokenizer, num_heads=num_heads, image_size=image_size,
                               device=device, dtype=dtype)
    name = name or DEFAULT_VARIANT
    is_local = name.startswith("hf:") and Path(name[3:]).is_dir()
    if name not in VARIANTS and name != "tiny" and not name.startswith("hf:"):
        raise KeyError(f"unknown TIPS variant {name!r}; expected one of {sorted(VARIANTS)}, 'tiny' or 'hf:<repo>'")
    if wants_tiny(name, needs_network=not is_local):  # local files still load as asked
        from tipsomaly_lite.backbones.tips.tiny import tiny_files

        v, t, tok = tiny_files()
        return load_tips_files(v, t, tok, variant="tiny", image_size=image_size, is_offline=True, device=device,
                               dtype=dtype)
    if name.startswith("hf:"):
        return _load_hf(name, num_heads=num_heads, image_size=image_size, device=device, download=download,
                        dtype=dtype)
    from tipsomaly_lite.io.download import DownloadError

    try:
        if download and not variant_is_cached(name):
            _refuse_if_unreachable(f"TIPS {name}", tips_registry.BUCKET,
                                   f"or fetch them with a network first: tipsomaly fetch {name}")
        files = fetch_variant(name, download=download)
    except (FileNotFoundError, DownloadError):
        if not fallback_to_tiny:
            raise
        return load_tips("tiny", image_size=image_size, device=device, dtype=dtype)
    return load_tips_files(files["vision"], files["text"], files["tokenizer"], num_heads=num_heads,
                           variant=name, image_size=image_size, device=device, dtype=dtype)
