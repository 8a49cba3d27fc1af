"""TIPS checkpoint files: the npz layout, reading it safely, and telling the variant from the arrays.

The official PyTorch checkpoints are two flat ``.npz`` files per variant (vision, text) whose
names are the PyTorch ``state_dict`` names of the original code. Our towers use the same
names, so loading is a validated ``load_state_dict``. The HuggingFace ``google/tipsv2-*``
safetensors use transformers' names; :func:`hf_to_npz_names` maps them onto ours.

Taught in notebooks/01_loading_tips.ipynb.
"""

from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from tipsomaly_lite.io.atomic import atomic_file

PATCH_SIZE = 14
TEXT_MAX_LEN = 64
TEXT_VOCAB = 32000

# The number of heads is the one architectural fact the arrays do not carry (docs/method.md §1.2).
HEADS_BY_WIDTH = {384: 6, 768: 12, 1024: 16, 1152: 16, 1536: 24}
# The tiny offline model's width; it lives here so every loader knows its heads.
HEADS_BY_WIDTH[64] = 4

ARCH_NAMES = {  # (vision width, vision depth, swiglu) -> family name
    (384, 12, False): "S/14",
    (768, 12, False): "B/14",
    (1024, 24, False): "L/14",
    (1152, 27, False): "So400m/14",
    (1536, 40, True): "g/14",
}


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or not in the TIPS npz layout."""


@dataclass(frozen=True)
class Architecture:
    """Every shape a TIPS checkpoint pair implies.

    Attributes:
        width: vision width ``D``.
        depth: number of vision blocks.
        mlp_hidden: vision MLP hidden size ``F`` (the SwiGLU inner size for g/14).
        swiglu: whether the vision MLP is SwiGLU (g/14).
        grid: side ``G`` of the position-embedding grid (32 for 448 px).
        heads: attention heads (vision and text).
        text_width: text width; must equal ``width``.
        text_depth: number of text blocks.
        text_mlp: text MLP hidden size ``M``.
        vocab: rows of the token embedding.
    Taught in notebooks/01_loading_tips.ipynb.
    """

    width: int
    depth: int
    mlp_hidden: int
    swiglu: bool
    grid: int
    heads: int
    text_width: int
    text_depth: int
    text_mlp: int
    vocab: int = TEXT_VOCAB

    @property
    def family(self) -> str:
        """Human name such as ``"L/14"``; ``"custom"`` for shapes outside the public table."""
        return ARCH_NAMES.get((self.width, self.depth, self.swiglu), "custom")

    @property
    def native_size(self) -> int:
        """Input side in pixels the position embeddings were trained at."""
        return self.grid * PATCH_SIZE


def standard_architecture(family: str, grid: int = 32) -> Architecture:
    """The architecture of a public TIPS family (``"S/14"``, ``"B/14"``, ``"L/14"``,
    ``"So400m/14"``, ``"g/14"``) from docs/method.md §1.2."""
    table = {
        "S/14": (384, 12, 4 * 384, False, 12, 4 * 384),
        "B/14": (768, 12, 4 * 768, False, 12, 4 * 768),
        "L/14": (1024, 24, 4 * 1024, False, 12, 4 * 1024),
        "So400m/14": (1152, 27, 4304, False, 27, 4304),
        "g/14": (1536, 40, 4096, True, 12, 4 * 1536),
    }
    if family not in table:
        raise KeyError(f"unknown TIPS family {family!r}; expected one of {sorted(table)}")
    width, depth, mlp, swiglu, text_depth, text_mlp = table[family]
    return Architecture(width, depth, mlp, swiglu, grid, HEADS_BY_WIDTH[width], width, text_depth, text_mlp)


def vision_layout(arch: Architecture) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every array in a vision npz of this architecture (docs/method.md §1.2)."""
    d, f = arch.width, arch.mlp_hidden
    shapes: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, d),
        "register_tokens": (1, 1, d),
        "mask_token": (1, d),
        "pos_embed": (1, 1 + arch.grid * arch.grid, d),
        "patch_embed.proj.weight": (d, 3, PATCH_SIZE, PATCH_SIZE),
        "patch_embed.proj.bias": (d,),
        "norm.weight": (d,),
        "norm.bias": (d,),
    }
    for i in range(arch.depth):
        b = f"blocks.{i}."
        shapes.update({
            b + "norm1.weight": (d,), b + "norm1.bias": (d,),
            b + "attn.qkv.weight": (3 * d, d), b + "attn.qkv.bias": (3 * d,),
            b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
            b + "ls1.gamma": (d,),
            b + "norm2.weight": (d,), b + "norm2.bias": (d,),
            b + "ls2.gamma": (d,),
        })
        if arch.swiglu:
            shapes.update({
                b + "mlp.w12.weight": (2 * f, d), b + "mlp.w12.bias": (2 * f,),
                b + "mlp.w3.weight": (d, f), b + "mlp.w3.bias": (d,),
            })
        else:
            shapes.update({
                b + "mlp.fc1.weight": (f, d), b + "mlp.fc1.bias": (f,),
                b + "mlp.fc2.weight": (d, f), b + "mlp.fc2.bias": (d,),
            })
    return shapes


def text_layout(arch: Architecture) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every array in a text npz of this architecture (docs/method.md §1.2)."""
    d, m = arch.text_width, arch.text_mlp
    shapes: dict[str, tuple[int, ...]] = {
        "token_embedding.weight": (arch.vocab, d),
        "ln_final.weight": (d,),
        "ln_final.bias": (d,),
        "temperature": (),
    }
    for i in range(arch.text_depth):
        b = f"transformer.resblocks.{i}."
        shapes.update({
            b + "attn.in_proj_weight": (3 * d, d), b + "attn.in_proj_bias": (3 * d,),
            b + "attn.out_proj.weight": (d, d), b + "attn.out_proj.bias": (d,),
            b + "ln_1.weight": (d,), b + "ln_1.bias": (d,),
            b + "ln_2.weight": (d,), b + "ln_2.bias": (d,),
            b + "mlp.c_fc.weight": (m, d), b + "mlp.c_fc.bias": (m,),
            b + "mlp.c_proj.weight": (d, m), b + "mlp.c_proj.bias": (d,),
        })
    return shapes


def _count_blocks(names, pattern: str) -> int:
    found = {int(m.group(1)) for n in names if (m := re.match(pattern, n))}
    return max(found) + 1 if found else 0


def _shape(shapes: Mapping[str, tuple[int, ...]], name: str, where: str) -> tuple[int, ...]:
    if name not in shapes:
        raise CheckpointError(f"{where}: missing array {name!r}; this does not look like a TIPS checkpoint")
    return tuple(shapes[name])


def detect_architecture(vision_shapes: Mapping[str, tuple[int, ...]], text_shapes: Mapping[str, tuple[int, ...]],
                        *, num_heads: int | None = None, vision_name: str = "vision checkpoint",
                        text_name: str = "text checkpoint") -> Architecture:
    """Read the architecture off the array shapes (no data needed).

    Width from ``cls_token``, depth from block indices, SwiGLU from ``w12``, grid from
    ``pos_embed``; heads from :data:`HEADS_BY_WIDTH` unless ``num_heads`` is given.

    Raises:
        CheckpointError: a required array is missing, or vision and text widths differ.
    """
    width = _shape(vision_shapes, "cls_token", vision_name)[-1]
    depth = _count_blocks(vision_shapes, r"blocks\.(\d+)\.")
    swiglu = "blocks.0.mlp.w12.weight" in vision_shapes
    if swiglu:
        mlp_hidden = _shape(vision_shapes, "blocks.0.mlp.w3.weight", vision_name)[1]
    else:
        mlp_hidden = _shape(vision_shapes, "blocks.0.mlp.fc1.weight", vision_name)[0]
    n_pos = _shape(vision_shapes, "pos_embed", vision_name)[1] - 1
    grid = int(round(n_pos ** 0.5))
    if grid * grid != n_pos:
        raise CheckpointError(f"{vision_name}: pos_embed holds {n_pos} patch positions, not a square grid")
    vocab, text_width = _shape(text_shapes, "token_embedding.weight", text_name)
    text_depth = _count_blocks(text_shapes, r"transformer\.resblocks\.(\d+)\.")
    text_mlp = _shape(text_shapes, "transformer.resblocks.0.mlp.c_fc.weight", text_name)[0]
    if text_width != width:
        raise CheckpointError(
            f"vision/text width mismatch: {vision_name} has width {width} but {text_name} has width "
            f"{text_width}; the two files must come from the same TIPS variant")
    if num_heads is None:
        if width not in HEADS_BY_WIDTH:
            raise CheckpointError(
                f"{vision_name}: width {width} is not a public TIPS width {sorted(HEADS_BY_WIDTH)}; "
                "pass num_heads= explicitly")
        num_heads = HEADS_BY_WIDTH[width]
    if width % num_heads:
        raise CheckpointError(f"{vision_name}: num_heads={num_heads} (given, or from config.json) does not divide "
                              f"the width {width}")
    return Architecture(width, depth, mlp_hidden, swiglu, grid, num_heads, text_width, text_depth, text_mlp, vocab)


def _check_layout(shapes: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]], where: str) -> None:
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = sorted(f"{n}: {tuple(shapes[n])} (expected {expected[n]})"
                   for n in set(expected) & set(shapes) if tuple(shapes[n]) != expected[n])
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes: {'; '.join(wrong)}")
    if problems:
        raise CheckpointError(f"{where} is not in the TIPS npz layout: " + " | ".join(problems))


def canonical_text_names(entries: Mapping) -> dict:
    """Rename ``temperature_contrastive`` (used by some text files) to ``temperature``.

    Works on a name -> shape mapping and on a name -> array mapping alike.
    """
    entries = dict(entries)
    if "temperature" not in entries and "temperature_contrastive" in entries:
        entries["temperature"] = entries.pop("temperature_contrastive")
    return entries


def _text_aliases(shapes: Mapping) -> dict:
    """Canonical names, and a temperature stored as ``(1,)`` counted as the scalar it is."""
    shapes = canonical_text_names(shapes)
    if tuple(shapes.get("temperature", ())) == (1,):
        shapes["temperature"] = ()
    return shapes


def validate_pair(vision_shapes: Mapping[str, tuple[int, ...]], text_shapes: Mapping[str, tuple[int, ...]],
                  *, num_heads: int | None = None, vision_name: str = "vision checkpoint",
                  text_name: str = "text checkpoint") -> Architecture:
    """Detect the architecture and check that every key and shape matches it exactly.

    Raises:
        CheckpointError: listing missing keys, unexpected keys and wrong shapes.
    """
    text_shapes = _text_aliases(text_shapes)
    arch = detect_architecture(vision_shapes, text_shapes, num_heads=num_heads,
                               vision_name=vision_name, text_name=text_name)
    _check_layout(vision_shapes, vision_layout(arch), vision_name)
    _check_layout({k: tuple(v) for k, v in text_shapes.items()}, text_layout(arch), text_name)
    return arch


def _open_npz(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic == b"\x93NUMPY":
        raise CheckpointError(f"{path}: a single .npy array, not an .npz archive of named arrays; expected a "
                              "TIPS checkpoint written by np.savez (e.g. tips_oss_l14_highres_distilled_vision.npz)")
    try:
        # allow_pickle=False: a downloaded file must never run code or build arbitrary objects.
        return np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable .npz archive (truncated or corrupt?): {exc}") from exc


def npz_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every array in an npz, read from the headers only (no array data).

    Taught in notebooks/01_loading_tips.ipynb.
    """
    path = Path(path)
    shapes = {}
    with _open_npz(path) as npz:
        try:
            for member in npz.zip.namelist():
                if not member.endswith(".npy"):
                    continue
                with npz.zip.open(member) as fh:
                    version = np.lib.format.read_magic(fh)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read_header(fh)
                if dtype.hasobject:
                    raise CheckpointError(f"{path}: array {member[:-4]!r} holds Python objects; refused")
                shapes[member[:-4]] = tuple(shape)
        except (zipfile.BadZipFile, ValueError, EOFError, OSError) as exc:
            raise CheckpointError(f"{path}: corrupt npz member headers: {exc}") from exc
    return shapes


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of an npz as float32 numpy arrays (dtype is not guaranteed in the files).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not a zip / truncated member / object arrays / non-numeric data.
    """
    path = Path(path)
    out = {}
    with _open_npz(path) as npz:
        for name in npz.files:
            try:
                arr = npz[name]
            except (zipfile.BadZipFile, ValueError, EOFError, OSError) as exc:
                raise CheckpointError(f"{path}: array {name!r} cannot be read (truncated or corrupt?): {exc}") from exc
            if arr.dtype.kind not in "fiub":
                raise CheckpointError(f"{path}: array {name!r} has dtype {arr.dtype}, expected a numeric dtype")
            # np.ascontiguousarray would turn the scalar temperature into shape (1,).
            out[name] = np.require(arr.astype(np.float32, copy=False), requirements="C")
    return out


def write_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write arrays to ``path`` atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    with atomic_file(path) as fh:
        np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()})
    return path


# --- HuggingFace (transformers Tipsv2Model) names -> npz names ------------------------------

_HF_RENAMES = [  # (regex on the HF name, npz name template)
    (r"vision_model\.embeddings\.cls_token", "cls_token"),
    (r"vision_model\.embeddings\.register_tokens", "register_tokens"),
    (r"vision_model\.embeddings\.mask_token", "mask_token"),
    (r"vision_model\.embeddings\.position_embeddings", "pos_embed"),
    (r"vision_model\.embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"vision_model\.encoder\.layer\.(\d+)\.norm([12])\.(weight|bias)", r"blocks.\1.norm\2.\3"),
    (r"vision_model\.encoder\.layer\.(\d+)\.attention\.o_proj\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"vision_model\.encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1", r"blocks.\1.ls\2.gamma"),
    (r"vision_model\.encoder\.layer\.(\d+)\.mlp\.(fc[12])\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
    (r"vision_model\.encoder\.layer\.(\d+)\.mlp\.down_proj\.(weight|bias)", r"blocks.\1.mlp.w3.\2"),
    (r"vision_model\.layernorm\.(weight|bias)", r"norm.\1"),
    (r"text_model\.embeddings\.token_embedding\.weight", "token_embedding.weight"),
    (r"text_model\.encoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)",
     r"transformer.resblocks.\1.attn.out_proj.\2"),
    (r"text_model\.encoder\.layers\.(\d+)\.layer_norm([12])\.(weight|bias)", r"transformer.resblocks.\1.ln_\2.\3"),
    (r"text_model\.encoder\.layers\.(\d+)\.mlp\.fc1\.(weight|bias)", r"transformer.resblocks.\1.mlp.c_fc.\2"),
    (r"text_model\.encoder\.layers\.(\d+)\.mlp\.fc2\.(weight|bias)", r"transformer.resblocks.\1.mlp.c_proj.\2"),
    (r"text_model\.final_layer_norm\.(weight|bias)", r"ln_final.\1"),
    (r"temperature", "temperature"),
]
# Packed in the npz, separate in transformers: (regex, parts in packing order, npz name template).
_HF_PACKED = [
    (r"vision_model\.encoder\.layer\.(\d+)\.attention\.(q|k|v)_proj\.(weight|bias)", ("q", "k", "v"),
     "blocks.{0}.attn.qkv.{2}"),
    (r"vision_model\.encoder\.layer\.(\d+)\.mlp\.(gate|up)_proj\.(weight|bias)", ("gate", "up"),
     "blocks.{0}.mlp.w12.{2}"),
    (r"text_model\.encoder\.layers\.(\d+)\.self_attn\.(q|k|v)_proj\.(weight|bias)", ("q", "k", "v"),
     "transformer.resblocks.{0}.attn.in_proj_{2}"),
]
_HF_IGNORED = re.compile(r".*(position_ids|position_embedding\.weights)$")  # derived buffers


def check_finite(arrays: Mapping[str, np.ndarray], where: str) -> None:
    """Refuse weights holding NaN or infinity (a corrupt or diverged checkpoint), naming the array.

    Raises:
        CheckpointError: ``"<where>: array '<name>' holds N NaN/inf values ..."``.
    """
    for name, arr in arrays.items():
        arr = np.asarray(arr)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            bad = int(arr.size - np.isfinite(arr).sum())
            raise CheckpointError(f"{where}: array {name!r} holds {bad} NaN/inf value(s); the checkpoint is "
                                  "corrupt or from a diverged run; download or export it again")


def check_temperature(value, where: str) -> float:
    """The softmax temperature as a float, refusing one that is not a positive finite number."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.size != 1:
        raise CheckpointError(f"{where}: array 'temperature' has shape {arr.shape}; expected one number")
    temperature = float(arr.reshape(()))
    if not np.isfinite(temperature) or temperature <= 0:
        raise CheckpointError(f"{where}: array 'temperature' is {temperature!r}; expected a positive finite "
                              "number (logits are divided by it)")
    return temperature


def hf_to_npz_names(state: Mapping[str, np.ndarray], where: str = "HuggingFace checkpoint"
                    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Map a HuggingFace TIPSv2 state dict onto the (vision, text) npz names.

    Two spellings are understood: the hub's ``model.safetensors`` (``vision_encoder.<npz name>``,
    ``text_encoder.<npz name>``, vision MLP called ``c_fc``/``c_proj``), and the names of an
    instantiated transformers ``Tipsv2Model`` (``vision_model.encoder.layer.0.attention.q_proj``...).
    In the latter, q/k/v (and SwiGLU gate/up) are concatenated row-wise into the packed npz tensors: q, k, v
    are consecutive row blocks, and SwiGLU's ``w12`` output splits into (gate, up) halves.

    Raises:
        CheckpointError: a name that is neither mapped nor a known derived buffer, or two names
            (one of each spelling) for the same tensor; the message starts with ``where``.
    """
    vision: dict[str, np.ndarray] = {}
    text: dict[str, np.ndarray] = {}
    packed: dict[str, dict[str, np.ndarray]] = {}
    unknown = []
    # (tower, npz name) -> {packed part or None: the file's name for it}
    origin: dict[tuple[str, str], dict] = {}

    def claim(tower: str, target: str, name: str, part: str | None = None) -> None:
        given = origin.setdefault((tower, target), {})
        clash = given.get(part) or (given.get(None) if part else next(iter(given.values()), None))
        if clash:
            raise CheckpointError(f"{where}: both {clash!r} and {name!r} give the {tower} tensor {target!r}; "
                                  "the file mixes the old and new names for one tensor, keep one")
        given[part] = name

    for name, value in state.items():
        value = np.asarray(value)
        if name.startswith(("vision_encoder.", "text_encoder.")):
            # On-disk hub format (what save_pretrained writes): the original names under a prefix,
            # except that the vision MLP is called c_fc / c_proj there.
            tower, rest = name.split(".", 1)
            if tower == "vision_encoder":
                target = re.sub(r"\.mlp\.c_fc\.", ".mlp.fc1.", re.sub(r"\.mlp\.c_proj\.", ".mlp.fc2.", rest))
                claim("vision", target, name)
                vision[target] = value
            else:
                target = "temperature" if rest == "temperature_contrastive" else rest
                claim("text", target, name)
                text[rest] = value
            continue
        for pattern, parts, template in _HF_PACKED:
            m = re.fullmatch(pattern, name)
            if m:
                target = template.format(*m.groups())
                claim("vision" if target.startswith("blocks.") else "text", target, name, m.group(2))
                packed.setdefault(target, {})[m.group(2)] = value
                packed[template.format(*m.groups())]["__order__"] = parts  # type: ignore[assignment]
                break
        else:
            for pattern, template in _HF_RENAMES:
                if re.fullmatch(pattern, name):
                    target = re.sub(pattern, template, name)
                    claim("vision" if name.startswith("vision_model") else "text", target, name)
                    (vision if name.startswith("vision_model") else text)[target] = value
                    break
            else:
                if not _HF_IGNORED.match(name):
                    unknown.append(name)
    if unknown:
        raise CheckpointError(f"{where}: unrecognised HuggingFace TIPSv2 parameter names: "
                              f"{', '.join(sorted(unknown))}")
    for target, pieces in packed.items():
        order = pieces.pop("__order__")
        missing = [p for p in order if p not in pieces]
        if missing:
            raise CheckpointError(f"{where}: lacks the {missing} part(s) of {target}")
        joined = np.concatenate([pieces[p] for p in order], axis=0)
        (vision if target.startswith("blocks.") else text)[target] = joined
    return vision, text
