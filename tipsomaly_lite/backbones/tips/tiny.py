"""The tiny TIPS of the offline mode: random weights and a SentencePiece model trained on the fly.

The files are written in the real npz layout and loaded by the same loader as the real
checkpoints, so the offline mode exercises the real code path. Its outputs are meaningless.

Taught in notebooks/00_setup.ipynb.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from tipsomaly_lite.backbones.tips.checkpoints import Architecture, text_layout, vision_layout, write_npz
from tipsomaly_lite.io.atomic import atomic_file

TINY_SEED = 0
TINY_VOCAB = 320
# Width 64 with 4 heads (see checkpoints.HEADS_BY_WIDTH), grid 32 = 448 px like the real models.
TINY_ARCH = Architecture(width=64, depth=2, mlp_hidden=256, swiglu=False, grid=32, heads=4,
                         text_width=64, text_depth=2, text_mlp=256, vocab=TINY_VOCAB)


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


def tiny_files(home: str | os.PathLike | None = None) -> tuple[Path, Path, Path]:
    """Paths of the tiny (vision npz, text npz, tokenizer), created deterministically if missing.

    Taught in notebooks/00_setup.ipynb.
    """
    if home is None:
        from tipsomaly_lite.io.download import cache_dir

        home = cache_dir()
    folder = Path(home) / "tiny"
    vision, text, tok = (folder / "tips_tiny_vision.npz", folder / "tips_tiny_text.npz",
                         folder / "tokenizer_tiny.model")
    if not (vision.is_file() and text.is_file()):
        v, t = random_tips_arrays(TINY_ARCH)
        write_npz(text, t)
        write_npz(vision, v)
    if not tok.is_file():
        train_tiny_tokenizer(tok)
    return vision, text, tok
