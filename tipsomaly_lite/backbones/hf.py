"""CLIP and SigLIP2 behind the :class:`~tipsomaly_lite.backbones.base.Backbone` seam, from ``transformers``.

The paper's thesis is that the backbone matters more than CLIP-specific tricks. These wrappers
let the same Tipsomaly pipeline run on the two families the ZSAD literature starts from:

- **CLIP** (``CLIPModel``; the baselines use ViT-L/14 at 336 px): global token = the projected
  image embedding; patch tokens = the final patch tokens after the post-layernorm, through the
  visual projection. Plain CLIP, no tricks. Learnable prompts go right after the start token;
  the sentence feature is the end token's, through the text projection.
- **SigLIP2** (fixed-resolution checkpoints, ``SiglipModel`` in transformers, as the Tipsomaly
  authors use them): global token = the attention-pooling head's output; patch tokens = the
  last hidden state. Learnable prompts go in front of the token embeddings, the sequence is cut
  back to 64 before the position embeddings, and the sentence feature is the last position's,
  through the text head (SigLIP has no padding mask).

The towers expect normalised pixels: images in [0, 1] are normalised with the checkpoint's
mean/std inside :meth:`encode_features`, so datasets and masks stay as for TIPS (squashed to a
square, no crop). Scoring rules (:attr:`~HFBackbone.scoring_rule`): CLIP the two-way softmax with
temperature ``1 / exp(logit_scale)``; SigLIP2 the authors' independent sigmoids,
``sigmoid(cos * exp(logit_scale) + logit_bias)`` per state, with the checkpoint's scale and bias.

``load_hf_backbone("tiny", family="clip")`` builds a tiny random configuration locally (never
downloaded) for the offline mode; its outputs are meaningless and it says so.

Taught in notebooks/08_backbones.ipynb.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tipsomaly_lite.backbones.base import BackboneBase, l2_normalize, vision_dtype, wants_tiny
from tipsomaly_lite.backbones.scoring_rule import ScoringRule

__all__ = ["HF_FAMILIES", "SHORT_NAMES", "HFBackbone", "CLIPBackbone", "SigLIP2Backbone", "load_hf_backbone",
           "load_clip", "load_siglip2", "hf_family_for"]

#: Short names -> hub ids, per family.
SHORT_NAMES: dict[str, dict[str, str]] = {
    "clip": {"l14-336": "openai/clip-vit-large-patch14-336", "l14": "openai/clip-vit-large-patch14",
             "b16": "openai/clip-vit-base-patch16"},
    "siglip2": {"so400m-256": "google/siglip2-so400m-patch16-256", "l16-512": "google/siglip2-large-patch16-512",
                "b16-224": "google/siglip2-base-patch16-224"},
}
HF_FAMILIES = tuple(SHORT_NAMES)
_LABELS = {"clip": "CLIP", "siglip2": "SigLIP2"}  # in messages
# Per-family image statistics when a checkpoint folder has no preprocessor_config.json.
_STATS = {"clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
          "siglip2": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}


class _TinyTokenizer:
    """The offline tokenizer: the tiny SentencePiece model, framed as the family's tokenizer frames text.

    CLIP: ``[start] pieces [end]`` then padding; SigLIP: ``pieces [end]`` padded to the full length.
    """

    def __init__(self, family: str, max_len: int) -> None:
        import sentencepiece as spm

        from tipsomaly_lite.backbones.tips.tiny import TINY_VOCAB, tiny_files

        self.sp = spm.SentencePieceProcessor(model_file=str(tiny_files()[2]))
        self.family, self.max_len = family, max_len
        self.bos, self.eos, self.pad = TINY_VOCAB, TINY_VOCAB + 1, 0

    def __call__(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        rows = []
        for text in texts:
            ids = self.sp.encode(text.lower())
            ids = ([self.bos] + ids[:self.max_len - 2] if self.family == "clip" else ids[:self.max_len - 1])
            rows.append(ids + [self.eos])
        ids = torch.full((len(rows), self.max_len), self.pad, dtype=torch.long)
        keep = torch.zeros(len(rows), self.max_len, dtype=torch.bool)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row)
            keep[i, :len(row)] = True
        return ids, keep


class _HubTokenizer:
    """A transformers tokenizer, padded to the model's full context as the model was trained."""

    def __init__(self, tokenizer: Any, max_len: int) -> None:
        self.tokenizer, self.max_len = tokenizer, max_len

    def __call__(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        out = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.max_len,
                             return_tensors="pt")
        return out["input_ids"], out["attention_mask"].bool()


class HFBackbone(BackboneBase):
    """Common ground of the transformers-based backbones: the checkpoint's facts and pixel statistics.

    Device, dtype, patch grid, preprocessing, the batched text loop, placement, fingerprint and
    ``describe`` come from :class:`~tipsomaly_lite.backbones.base.BackboneBase`.

    Attributes:
        model: the frozen ``transformers`` model.
        tokenizer: callable ``texts -> (ids (T, L), keep (T, L) bool)``.
        patch_size, native_size: from the checkpoint's vision config.
        image_mean, image_std: per-channel statistics applied to [0, 1] images inside
            :meth:`encode_features` (the towers expect normalised pixels).
    """

    family = "hf"
    global_tokens = ("global",)
    default_global_token = "global"

    def __init__(self, model: nn.Module, tokenizer: Any, *, variant: str, source: str, image_size: int | None,
                 image_mean: tuple[float, float, float], image_std: tuple[float, float, float],
                 is_offline: bool = False) -> None:
        vision = model.config.vision_config
        super().__init__(variant=variant, source=source, patch_size=int(vision.patch_size),
                         native_size=int(vision.image_size), image_size=image_size, is_offline=is_offline)
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)
        self.temperature = float(1.0 / model.logit_scale.detach().float().exp())

    def _vision_modules(self) -> list[nn.Module]:
        return [self.model.vision_model]

    def _fingerprint_header(self) -> str:
        """The family and its options, the pixel statistics and the config (the weights are ``self.model``'s)."""
        config = json.dumps(self.model.config.to_dict(), sort_keys=True, default=str)
        options = f"{self.family}|{getattr(self, 'dense', '')}|{self.image_mean}|{self.image_std}"
        return f"{options}|{config}"

    def _fingerprinted(self) -> nn.Module:
        return self.model

    def _encode_text_batch(self, texts: list[str]) -> Tensor:
        ids, keep = self.tokenizer(texts)
        return self._text_features(ids.to(self.device), keep.to(self.device))

    def _text_features(self, ids: Tensor, keep: Tensor) -> Tensor:
        """Raw sentence features ``(T, D)`` of token ids ``(T, L)`` and their keep mask, through the model's own path."""
        raise NotImplementedError

    def _pixels(self, images: Tensor) -> Tensor:
        """[0, 1] images ``(B, 3, H, W)`` -> the tower's normalised pixels, on the model's device and dtype."""
        mean = torch.tensor(self.image_mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std, device=self.device).view(1, 3, 1, 1)
        return ((images.to(self.device).float() - mean) / std).to(self.dtype)

    def _interpolate(self, images: Tensor) -> bool:
        return tuple(images.shape[-2:]) != (self.native_size, self.native_size)

    def _repr_lines(self) -> list[str]:
        v, t = self.model.config.vision_config, self.model.config.text_config
        return [f"variant={self.variant!r}, width={v.hidden_size}, depth={v.num_hidden_layers}, "
                f"text_width={t.hidden_size}, text_depth={t.num_hidden_layers}, image_size={self.image_size}, "
                f"patch_grid={'x'.join(map(str, self.patch_grid()))}, scoring={self.scoring_rule},",
                f"source={self.source}"]


class CLIPBackbone(HFBackbone):
    """Plain CLIP: projected image embedding as the global token, projected post-layernorm patch tokens.

    ``dense="values"`` is one classic CLIP trick, for teaching what a trick buys: the patch tokens
    come from the last block's *value* path only (``out_proj(v_proj(layer_norm1(x)))``, no query-key
    attention, no residual, no MLP), as MaskCLIP does, then the same post-layernorm and projection.
    The global token is unchanged.

    Taught in notebooks/08_backbones.ipynb.
    """

    family = "clip"
    DENSE = ("plain", "values")

    def __init__(self, *args: Any, dense: str = "plain", **kwargs: Any) -> None:
        if dense not in self.DENSE:
            raise ValueError(f"dense must be one of {self.DENSE}, got {dense!r}")
        super().__init__(*args, **kwargs)
        self.dense = dense
        if dense != "plain":
            self.variant = f"{self.variant} ({dense} trick)"

    @property
    def text_width(self) -> int:
        return int(self.model.config.projection_dim)

    def _vision_modules(self) -> list[nn.Module]:
        return [self.model.vision_model, self.model.visual_projection]

    @torch.no_grad()
    def encode_features(self, images: Tensor) -> dict[str, Tensor]:
        """``patch_tokens (B, N, D)`` and ``global (B, D)``, L2-normalised float32."""
        vision = self.model.vision_model
        out = vision(pixel_values=self._pixels(images), interpolate_pos_encoding=self._interpolate(images),
                     output_hidden_states=self.dense == "values")
        tokens = self.model.visual_projection(vision.post_layernorm(out.last_hidden_state))
        patches = tokens[:, 1:]
        if self.dense == "values":
            last = vision.encoder.layers[-1]
            values = last.self_attn.out_proj(last.self_attn.v_proj(last.layer_norm1(out.hidden_states[-2])))
            patches = self.model.visual_projection(vision.post_layernorm(values[:, 1:]))
        return {"patch_tokens": l2_normalize(patches.float()), "global": l2_normalize(tokens[:, 0].float())}

    def _text_features(self, ids: Tensor, keep: Tensor) -> Tensor:
        return self.model.get_text_features(input_ids=ids, attention_mask=keep.long()).pooler_output

    def _eos_positions(self, ids: Tensor) -> Tensor:
        eos = self.model.config.text_config.eos_token_id
        if eos == 2:  # old configs: the end token has the largest id
            return ids.argmax(dim=-1)
        return (ids == eos).int().argmax(dim=-1)

    def prompted_text_inputs(self, sentences: list[str], n_prompt_tokens: int) -> dict[str, Tensor]:
        """Token embeddings ``(S, L, D)``, and where each sentence's end token lands after ``n`` prompts."""
        ids, _ = self.tokenizer(sentences)
        max_len = ids.shape[1]
        if not 1 <= n_prompt_tokens < max_len - 1:
            raise ValueError(f"n_tokens={n_prompt_tokens} leaves no room for text in a {max_len}-token sequence")
        eos = self._eos_positions(ids) + n_prompt_tokens
        if int(eos.max()) >= max_len:
            raise ValueError(f"a sentence is too long for {n_prompt_tokens} prompt tokens in {max_len} positions")
        # Causal attention: nothing after the end token reaches it, so the sequence can stop there.
        longest = int(eos.max()) + 1 - n_prompt_tokens
        with torch.no_grad():
            embeddings = self.model.text_model.embeddings.token_embedding(ids[:, :longest].to(self.device))
        return {"token_embeddings": embeddings, "eos": eos.to(self.device)}

    def encode_prompted_text(self, prompts: Tensor, inputs: dict[str, Tensor]) -> Tensor:
        """``[start] prompts (S, n, D) tokens...`` -> projected end-token features ``(S, D)``."""
        text = self.model.text_model
        emb = inputs["token_embeddings"]
        x = torch.cat([emb[:, :1], prompts.to(emb.dtype), emb[:, 1:]], dim=1)
        h = text.embeddings(inputs_embeds=x)
        n = h.shape[1]
        blocked = torch.ones(n, n, dtype=torch.bool, device=h.device).triu(1)
        mask = torch.zeros(n, n, dtype=h.dtype, device=h.device).masked_fill(blocked, torch.finfo(h.dtype).min)
        h = text.encoder(inputs_embeds=h, attention_mask=mask.expand(len(h), 1, n, n)).last_hidden_state
        h = text.final_layer_norm(h)
        pooled = h[torch.arange(len(h), device=h.device), inputs["eos"]]
        return self.model.text_projection(pooled)


class SigLIP2Backbone(HFBackbone):
    """SigLIP2 as the Tipsomaly authors use it: attention-pooled global token, last hidden state as patches,
    and scored with independent sigmoids (:attr:`scoring_rule`).

    Taught in notebooks/08_backbones.ipynb.
    """

    family = "siglip2"

    @property
    def scoring_rule(self) -> ScoringRule:
        """``sigmoid(cos * exp(logit_scale) + logit_bias)`` per state, the checkpoint's scale and bias.

        SigLIP is trained with a pairwise sigmoid loss: each image-text pair is judged on its own, with
        a learned bias, so its logits are calibrated per pair rather than as a softmax over candidates.
        """
        return ScoringRule.sigmoid(float(self.model.logit_scale.detach().float()),
                                   float(self.model.logit_bias.detach().float()))

    @property
    def text_width(self) -> int:
        return int(self.model.config.text_config.projection_size)

    @torch.no_grad()
    def encode_features(self, images: Tensor) -> dict[str, Tensor]:
        """``patch_tokens (B, N, D)`` and ``global (B, D)``, L2-normalised float32."""
        out = self.model.vision_model(pixel_values=self._pixels(images), interpolate_pos_encoding=self._interpolate(images))
        return {"patch_tokens": l2_normalize(out.last_hidden_state.float()),
                "global": l2_normalize(out.pooler_output.float())}

    def _text_features(self, ids: Tensor, keep: Tensor) -> Tensor:
        # SigLIP was trained on max-length padding without a mask: the model sees the pads, as here.
        return self.model.get_text_features(input_ids=ids).pooler_output

    def prompted_text_inputs(self, sentences: list[str], n_prompt_tokens: int) -> dict[str, Tensor]:
        """Token embeddings ``(S, L - n, D)``: the first ``L - n`` positions survive the cut after prompting."""
        ids, _ = self.tokenizer(sentences)
        max_len = ids.shape[1]
        if not 1 <= n_prompt_tokens < max_len:
            raise ValueError(f"n_tokens={n_prompt_tokens} leaves no room for text in a {max_len}-token sequence")
        with torch.no_grad():
            embeddings = self.model.text_model.embeddings.token_embedding(ids[:, :max_len - n_prompt_tokens].to(self.device))
        return {"token_embeddings": embeddings}

    def encode_prompted_text(self, prompts: Tensor, inputs: dict[str, Tensor]) -> Tensor:
        """``prompts (S, n, D) tokens...`` + positions -> the head's last-position features ``(S, D)``."""
        text = self.model.text_model
        emb = inputs["token_embeddings"]
        x = torch.cat([prompts.to(emb.dtype), emb], dim=1)
        h = text.embeddings(inputs_embeds=x)
        h = text.encoder(inputs_embeds=h).last_hidden_state
        return text.head(text.final_layer_norm(h)[:, -1])


_CLASSES = {"clip": CLIPBackbone, "siglip2": SigLIP2Backbone}


def _tiny_model(family: str) -> tuple[nn.Module, int]:
    """A tiny random transformers model of ``family``, built locally and seeded; and its text length."""
    from tipsomaly_lite.backbones.tips.tiny import TINY_VOCAB

    import transformers

    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    text = dict(common, vocab_size=TINY_VOCAB + 2, max_position_embeddings=32)
    vision = dict(common, image_size=112)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # default-config notes about token ids the tiny vocab does not have
    try:
        with torch.random.fork_rng():  # seeded, and the caller's random state is left as it was
            torch.manual_seed(0)
            if family == "clip":
                config = transformers.CLIPConfig(
                    text_config=dict(text, bos_token_id=TINY_VOCAB, eos_token_id=TINY_VOCAB + 1, pad_token_id=0),
                    vision_config=dict(vision, patch_size=14), projection_dim=32)
                model = transformers.CLIPModel(config)
            else:
                # No start/end ids: SigLIP pools the last position, and the defaults lie outside the tiny vocabulary.
                config = transformers.SiglipConfig(
                    text_config=transformers.SiglipTextConfig(**text, projection_size=32, bos_token_id=None,
                                                              eos_token_id=None, pad_token_id=0),
                    vision_config=transformers.SiglipVisionConfig(**vision, patch_size=16))
                model = transformers.SiglipModel(config)
                with torch.no_grad():
                    model.logit_scale.fill_(math.log(100.0))  # a real SigLIP's scale is of that order
                    model.logit_bias.fill_(-10.0)  # SigLIP's starting bias: pairs are unlikely until shown otherwise
    finally:
        transformers.logging.set_verbosity(verbosity)
    return model, 32


#: Upper bounds on a checkpoint folder's config sizes, checked before anything is built (the largest
#: CLIP/SigLIP2 checkpoints stay far below them; a hostile config could otherwise allocate terabytes).
CONFIG_BOUNDS = {"hidden_size": 8192, "intermediate_size": 65536, "num_hidden_layers": 128,
                 "num_attention_heads": 256, "vocab_size": 1_000_000, "max_position_embeddings": 65536,
                 "image_size": 4096, "projection_dim": 8192}
#: Two sentences a working tokenizer must tell apart (a folder without tokenizer files gives one id list).
_PROBES = ("a photo of a flawless object.", "a photo of a damaged object.")


def _family_of(folder: Path) -> str | None:
    """The family a checkpoint folder's config.json describes, after its sizes are checked."""
    from tipsomaly_lite.io.jsonfile import read_json

    config = read_json(folder / "config.json", what="transformers config")
    for part in (config, config.get("text_config") or {}, config.get("vision_config") or {}):
        for key, bound in CONFIG_BOUNDS.items():
            value = part.get(key) if isinstance(part, dict) else None
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= bound):
                raise ValueError(f"{folder / 'config.json'}: {key}={value!r}; expected an integer in 1..{bound}")
    return {"clip": "clip", "siglip": "siglip2", "siglip2": "siglip2"}.get(config.get("model_type", ""))


def _check_loaded(target: str, model: nn.Module, info: dict[str, Any], tokenizer: "_HubTokenizer") -> None:
    """Refuse a checkpoint that would load but score nonsense: randomly initialised tensors (strict
    loading), NaN/inf weights, a scale that is not a positive finite number, or a tokenizer that gives
    different sentences the same ids.

    Raises:
        ValueError: naming the folder (or hub id) and what is wrong.
    """
    missing = sorted({*info.get("missing_keys", ()), *(k[0] if isinstance(k, tuple) else k
                                                       for k in info.get("mismatched_keys", ()))})
    if missing:
        raise ValueError(f"{target}: {len(missing)} weight tensors are missing or of the wrong shape "
                         f"({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}); they would be random: "
                         "not a complete checkpoint")
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{target}: weight {name} holds NaN or infinite values")
    scale = float(model.logit_scale.detach().float().exp())
    if not math.isfinite(scale) or not 0 < scale <= 1e4:
        raise ValueError(f"{target}: logit_scale gives a scale of {scale:g}; expected a positive finite number")
    ids, _ = tokenizer(list(_PROBES))
    if torch.equal(ids[0], ids[1]):
        raise ValueError(f"{target}: the tokenizer gives the same ids to different sentences (are its files "
                         "missing?); every score would be the same")


class _Unreachable(OSError):
    """The hub checkpoint is not cached and the hub cannot be reached (carries the one-line error)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _from_pretrained(target: str, family: str, is_local: bool, kwargs: dict[str, Any]) -> tuple[Any, Any, Any]:
    """``(model, loading info, tokenizer)`` through transformers' own ``from_pretrained``.

    A hub id is looked up in the cache first, without the network; only when it is missing there is
    the hub asked, and only when it answers (no retries against a network that is not there).
    """
    from transformers import AutoModel, AutoTokenizer

    def load(**extra: Any) -> tuple[Any, Any, Any]:
        options = {**kwargs, **extra}
        model, info = AutoModel.from_pretrained(target, output_loading_info=True, **options)
        return model, info, AutoTokenizer.from_pretrained(target, **options)

    if is_local or kwargs.get("local_files_only"):
        return load()
    try:
        return load(local_files_only=True)
    except OSError:
        pass  # not (completely) in the cache: download, when the hub answers
    from tipsomaly_lite.io.network import HUB_HOST, network_problem, unavailable

    reason = network_problem(HUB_HOST)
    if reason is not None:
        raise _Unreachable(unavailable(f"{_LABELS[family]} {target}", reason,
                                       f"or fetch them with a network first: load_backbone('{target}', "
                                       f"family='{family}') in Python"))
    return load()


def load_hf_backbone(variant: str | None = None, *, family: str, image_size: int | None = None,
                     device: str | torch.device = "cpu", download: bool = True, fallback_to_tiny: bool = False,
                     dtype: str | torch.dtype = "float32", **options: Any) -> HFBackbone:
    """Load CLIP or SigLIP2, frozen and in eval mode.

    Args:
        variant: a short name (``"l14-336"``; see :data:`SHORT_NAMES`), ``"tiny"`` (offline, random), a hub id
            (``"openai/clip-vit-large-patch14-336"``) or ``"hf:<hub id or local folder>"``. The family's default
            when None (the registry's, :data:`~tipsomaly_lite.backbones.registry.FAMILIES`).
        family: ``"clip"`` or ``"siglip2"``.
        image_size: default input side (a multiple of the patch size); the checkpoint's when omitted.
        device: where the model lives.
        download: fetch a hub checkpoint into ``$TIPSOMALY_HOME/hf`` when it is not there.
        fallback_to_tiny: when a hub checkpoint is not cached and cannot be fetched, load the tiny
            offline model (with its warning) instead of raising (as :func:`~tipsomaly_lite.backbones.tips.model.load_tips`).
        dtype: the vision tower's dtype, ``"float32"`` (default) or ``"bfloat16"`` (as for
            :func:`~tipsomaly_lite.backbones.tips.model.load_tips`: the text tower stays float32 and
            the features come back float32).
        **options: the family's own options (CLIP: ``dense="values"``, see :class:`CLIPBackbone`).

    ``TIPSOMALY_OFFLINE=1`` turns anything that needs the network into ``"tiny"``.
    Raises:
        ValueError: unknown family or dtype, or a local folder that is not a CLIP/SigLIP checkpoint.
        tipsomaly_lite.io.download.DownloadError: the hub cannot be reached.
    Taught in notebooks/08_backbones.ipynb.
    """
    if family not in _CLASSES:
        raise ValueError(f"unknown transformers backbone family {family!r}; expected one of {HF_FAMILIES}")
    dtype = vision_dtype(dtype)
    from tipsomaly_lite.backbones.registry import FAMILIES

    variant = variant or FAMILIES[family].default_variant
    target = variant[3:] if variant.startswith("hf:") else SHORT_NAMES[family].get(variant, variant)
    is_local = variant != "tiny" and Path(target).is_dir()
    cls = _CLASSES[family]
    from tipsomaly_lite.io.extras import require

    require(("transformers",), extra="backbones", who=f"the {family} backbone")  # one line, not a traceback
    if wants_tiny(variant, needs_network=not is_local):
        model, max_len = _tiny_model(family)
        mean, std = _STATS[family]
        backbone = cls(model, _TinyTokenizer(family, max_len), variant="tiny", source="random init (tiny, offline)",
                       image_size=image_size, image_mean=mean, image_std=std, is_offline=True, **options)
        return backbone.place(device, dtype)
    if is_local:
        found = _family_of(Path(target))
        if found != family:
            raise ValueError(f"{target}: config.json describes a {found or 'non-CLIP/SigLIP'} model, not {family}")
        kwargs: dict[str, Any] = {}
    else:
        from tipsomaly_lite.io.download import cache_dir

        kwargs = {"cache_dir": str(cache_dir() / "hf"), "local_files_only": not download}
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # its "Loading weights" bar would break a command's one-line errors
    try:
        model, info, tokenizer = _from_pretrained(target, family, is_local, kwargs)
    except OSError as err:
        from tipsomaly_lite.io.download import DownloadError

        if fallback_to_tiny and not is_local:
            return load_hf_backbone("tiny", family=family, image_size=image_size, device=device, dtype=dtype,
                                    **options)
        if isinstance(err, _Unreachable):
            raise err.error from None
        from tipsomaly_lite.io.network import OFFLINE_HINT

        raise DownloadError(f"could not load {target} for {family} ({type(err).__name__}: {err}); pass a local "
                            f"folder (hf:/path), or {OFFLINE_HINT}") from err
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    mean, std = _STATS[family]
    processor_file = Path(target) / "preprocessor_config.json" if is_local else None
    if processor_file is not None and processor_file.is_file():
        from tipsomaly_lite.io.jsonfile import read_json

        stats = read_json(processor_file, what="preprocessor config")
        mean, std = stats.get("image_mean", mean), stats.get("image_std", std)
        for name, values, low, high in (("image_mean", mean, 0.0, 1.0), ("image_std", std, 1e-3, 10.0)):
            if not (isinstance(values, (list, tuple)) and len(values) == 3 and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and low <= v <= high for v in values)):
                raise ValueError(f"{processor_file}: {name}={values!r}; expected three numbers in [{low:g}, {high:g}]")
        mean, std = tuple(map(float, mean)), tuple(map(float, std))
    max_len = int(model.config.text_config.max_position_embeddings)
    hub_tokenizer = _HubTokenizer(tokenizer, max_len)
    _check_loaded(str(target), model, info, hub_tokenizer)
    backbone = cls(model, hub_tokenizer, variant=variant, source=str(target),
                   image_size=image_size, image_mean=mean, image_std=std, **options)
    return backbone.place(device, dtype)


def load_clip(variant: str | None = None, **kwargs: Any) -> CLIPBackbone:
    """CLIP's loader in the family registry: :func:`load_hf_backbone` with ``family="clip"``."""
    return load_hf_backbone(variant, family="clip", **kwargs)


def load_siglip2(variant: str | None = None, **kwargs: Any) -> SigLIP2Backbone:
    """SigLIP2's loader in the family registry: :func:`load_hf_backbone` with ``family="siglip2"``."""
    return load_hf_backbone(variant, family="siglip2", **kwargs)


def hf_family_for(spec: str) -> str | None:
    """The transformers family a ``hf:`` spec or hub id names, when it can be told (else None: TIPS)."""
    target = spec[3:] if spec.startswith("hf:") else spec
    folder = Path(target)
    if folder.is_dir() and (folder / "config.json").is_file():
        return _family_of(folder)
    lowered = target.lower()
    return "clip" if "clip" in lowered else "siglip2" if "siglip" in lowered else None

