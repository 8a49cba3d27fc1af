"""The tiny TIPS of the offline mode: a toy model, in the real npz layout, loaded by the real loader.

Width 64, two blocks per tower. Its weights ship with the package (``tiny_toy.npz``, about
0.7 MB): the seeded random arrays of :func:`random_tips_arrays`, then trained for a few CPU
minutes on synthetic defects drawn by the toy generator (never its test images) so that patch
tokens of painted defects lie nearer the "damaged ..." prompts. ``data_scripts/train_toy_tips.py``
reproduces the file. So the offline figures show where the *toy* defects are; the model has
learned nothing about real images, and its numbers say nothing about TIPS. :func:`random_tips_arrays`
and :func:`train_tiny_tokenizer` stay for tests and benchmarks that need random models.

Taught in notebooks/00_setup.ipynb.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

import numpy as np

from tipsomaly_lite.backbones.tips.checkpoints import (Architecture, CheckpointError, text_layout, vision_layout,
                                                      write_npz)
from tipsomaly_lite.io.atomic import atomic_file

TINY_SEED = 0
TINY_VOCAB = 320
# Width 64 with 4 heads (see checkpoints.HEADS_BY_WIDTH), grid 32 = 448 px like the real models.
TINY_ARCH = Architecture(width=64, depth=2, mlp_hidden=256, swiglu=False, grid=32, heads=4,
                         text_width=64, text_depth=2, text_mlp=256, vocab=TINY_VOCAB)
#: The packaged toy weights (written by data_scripts/train_toy_tips.py).
TOY_WEIGHTS = Path(__file__).with_name("tiny_toy.npz")


# A small corpus for the tiny tokenizer: the words the course's prompts use.
_CORPUS_WORDS = (
    "a bad photo of the a low resolution photo of the cropped photo flawless perfect unblemished "
    "without flaw defect damage damaged broken with object normal anomalous photo visual inspection "
    "medical image diagnostic scan slice showing clinical brain intact uniform structure clear tissue "
    "anatomy distortion symmetric appearance looking even texture regular shape abnormal spot "
    "abnormality diseased irregular area uneven bottle cable capsule carpet grid hazelnut leather "
    "metal nut pill screw tile toothbrush transistor wood zipper candle capsules cashew chewinggum "
    "fryum macaroni pcb pipe bracket connector tubes electrical commutators woven fabric wood grain "
    "brushed metal scratch hole stain crack missing piece colour color change cat dog car a an the"
).split()


def _corpus(seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(2000):
        n = int(rng.integers(3, 12))
        lines.append(" ".join(rng.choice(_CORPUS_WORDS, size=n)) + (". " if i % 2 else ""))
    return lines


def train_tiny_tokenizer(path: str | os.PathLike, vocab_size: int = TINY_VOCAB, seed: int = TINY_SEED) -> Path:
    """Train a small SentencePiece model on the fly (pad id 0, no BOS/EOS), written atomically."""
    import sentencepiece as spm

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus(seed)), model_writer=buffer, vocab_size=vocab_size,
        model_type="unigram", pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, hard_vocab_limit=False,
        num_threads=1, seed_sentencepiece_size=10000, minloglevel=2, character_coverage=1.0)
    with atomic_file(path) as fh:
        fh.write(buffer.getvalue())
    return path


def random_tips_arrays(arch: Architecture, seed: int = TINY_SEED) -> tuple[dict, dict]:
    """Random (vision, text) arrays in the real npz layout of ``arch`` (float32).

    Weights ~ N(0, 0.02), LayerNorm weights 1 and biases 0, layer scales 0.1, temperature
    0.005 (TIPS's value, a logit scale near 200).
    """
    rng = np.random.default_rng(seed)

    def fill(layout: dict) -> dict:
        out = {}
        for name, shape in layout.items():
            if name == "temperature":
                out[name] = np.array(0.005, dtype=np.float32)
            elif name.endswith(".gamma"):
                out[name] = np.full(shape, 0.1, dtype=np.float32)
            elif any(k in name for k in ("norm", "ln_")) and name.endswith(".weight"):
                out[name] = (1.0 + 0.05 * rng.standard_normal(shape)).astype(np.float32)
            else:
                out[name] = (0.02 * rng.standard_normal(shape)).astype(np.float32)
        return out

    return fill(vision_layout(arch)), fill(text_layout(arch))


def read_toy_weights(path: str | os.PathLike = TOY_WEIGHTS) -> tuple[dict, dict, bytes]:
    """The packaged toy model: ``(vision arrays, text arrays, SentencePiece model bytes)``, arrays float32.

    Raises:
        CheckpointError: the file is missing or not the layout :data:`TOY_WEIGHTS` has.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path}: the offline toy model's weights are missing or unreadable "
                              f"({type(exc).__name__}: {exc}); reinstall tipsomaly_lite") from None
    if "tokenizer" not in arrays or arrays["tokenizer"].dtype != np.uint8:
        raise CheckpointError(f"{path}: expected a uint8 'tokenizer' array beside vision/ and text/ arrays")
    vision = {k.removeprefix("vision/"): v.astype(np.float32) for k, v in arrays.items() if k.startswith("vision/")}
    text = {k.removeprefix("text/"): v.astype(np.float32) for k, v in arrays.items() if k.startswith("text/")}
    return vision, text, arrays["tokenizer"].tobytes()


def tiny_files(home: str | os.PathLike | None = None) -> tuple[Path, Path, Path]:
    """Paths of the tiny toy model's (vision npz, text npz, tokenizer), written from the packaged file if missing.

    They live in ``<home>/tiny/toy-<first 12 hex digits of the packaged file's SHA-256>/``, so a
    new release of the weights never meets files written from an older one.

    Taught in notebooks/00_setup.ipynb.
    """
    if home is None:
        from tipsomaly_lite.io.download import cache_dir

        home = cache_dir()
    digest = hashlib.sha256(TOY_WEIGHTS.read_bytes()).hexdigest()[:12] if TOY_WEIGHTS.is_file() else "missing"
    folder = Path(home) / "tiny" / f"toy-{digest}"
    vision, text, tok = (folder / "tips_tiny_vision.npz", folder / "tips_tiny_text.npz",
                         folder / "tokenizer_tiny.model")
    if not (vision.is_file() and text.is_file() and tok.is_file()):
        v, t, tokenizer = read_toy_weights()
        write_npz(text, t)
        write_npz(vision, v)
        with atomic_file(tok) as fh:
            fh.write(tokenizer)
    return vision, text, tok
