#!/usr/bin/env python3
"""Train the offline mode's tiny TIPS on synthetic toy defects, and write the packaged weights file.

    python data_scripts/train_toy_tips.py            # rewrites tipsomaly_lite/backbones/tips/tiny_toy.npz
    python data_scripts/train_toy_tips.py --check    # retrains and compares with the packaged file

Why: with random weights the offline figures teach nothing (every image gets about the same score,
the maps do not see the toy defects). So the tiny TIPS (width 64, two blocks per tower) starts
from the seeded random arrays of ``random_tips_arrays`` and its vision tower is trained for some
minutes of CPU, seeded and in one thread, so that the patch tokens of painted defects lie nearer
the fixed prompts' "damaged ..." sentences and the others nearer the "flawless ..." ones:

- data: images drawn by the toy generator (``render_sample``) from its own seed stream
  (:data:`TRAIN_SEED`), which no toy dataset of the course or the tests uses, so the toy *test*
  images are never seen; half of them get a defect of a kind the generator paints on that class;
- targets: the text features of the (random, frozen) text tower for the method's fixed prompts,
  three vocabularies (``industrial``, ``industrial_v0``, ``object_agnostic``) and notebook 02's
  similarity pair, each with the image's class word (sometimes an unrelated word instead);
- loss, per vocabulary: the method's segmentation loss (Focal + Dice + Dice, docs/method.md Eq. 7)
  on the patch probabilities, and a cross-entropy of both CLS tokens' two-way probabilities
  (Eq. 2) against the image label. The position embeddings stay random.

The result is a toy: it has learned what the toy generator paints, nothing about real images, and
its numbers say nothing about TIPS. The file holds the arrays in float16 (about 0.7 MB) and the
SentencePiece model they go with; ``tipsomaly_lite.backbones.tips.tiny.tiny_files`` writes them
out in the real npz layout, which the ordinary loader reads.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tipsomaly_lite.backbones.tips.checkpoints import write_npz
from tipsomaly_lite.backbones.tips.model import TIPS, _build
from tipsomaly_lite.backbones.tips.text import Tokenizer
from tipsomaly_lite.backbones.tips.tiny import (TINY_ARCH, TOY_WEIGHTS, random_tips_arrays, read_toy_weights,
                                                train_tiny_tokenizer)
from tipsomaly_lite.data.registry import class_word
from tipsomaly_lite.data.toy_data import CLASS_DEFECTS, TOY_CLASSES, render_sample
from tipsomaly_lite.io.atomic import atomic_file
from tipsomaly_lite.io.images import resize_image
from tipsomaly_lite.method.losses import segmentation_loss
from tipsomaly_lite.method.prompts import SIMILARITY_PROMPTS, text_features

#: The toy generator's seed stream for training images; toy datasets use ``[seed, class, split, i]`` with
#: the course's seeds 0 and 1, this one ``[TRAIN_SEED, class, i]``.
TRAIN_SEED = 2026
#: Training images per toy class (half of them with a defect).
IMAGES_PER_CLASS = 96
#: Input sides trained on, in turn (112 px is the smallest course size; others are interpolated).
SIZES = (112, 224)
STEPS = 2500
BATCH = 8
LR = 2e-3
#: How often the class word is swapped for an unrelated one, and the words used then.
OTHER_WORD_RATE = 0.3
OTHER_WORDS = ("object", "bottle", "metal nut", "screw", "cable", "tile", "leather", "wood", "carpet", "grid",
               "capsule", "hazelnut")
#: The prompt vocabularies trained against (besides notebook 02's similarity pair).
VOCABULARIES = ("industrial", "industrial_v0", "object_agnostic")
#: Weight of the CLS tokens' image-label cross-entropy beside the segmentation loss.
GLOBAL_WEIGHT = 0.25


def training_pool(images_per_class: int | None = None, seed: int = TRAIN_SEED,
                  image_size: int = 128) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Toy images from the generator's training seed stream.

    Returns:
        ``image (M, 3, S, S)`` in [0, 1], ``mask (M, 1, S, S)`` in {0, 1} and the ``M`` class words;
        every odd image of a class carries one defect, of a kind the generator paints on that class
        (``CLASS_DEFECTS``).
    """
    images, masks, words = [], [], []
    for c, cls in enumerate(TOY_CLASSES):
        for i in range(IMAGES_PER_CLASS if images_per_class is None else images_per_class):
            rng = np.random.default_rng([seed, c, i])
            kinds = CLASS_DEFECTS[cls]  # the kinds the generator paints on this class
            defect = None if i % 2 == 0 else kinds[int(rng.integers(len(kinds)))]
            sample = render_sample(cls, rng, image_size=image_size, defect=defect)
            images.append(torch.from_numpy(sample["image"]).permute(2, 0, 1).float() / 255)
            masks.append(torch.from_numpy(sample["mask"])[None].float())
            words.append(class_word(None, cls))
    return torch.stack(images), torch.stack(masks), words


def fixed_text(model: TIPS, words: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    """Per vocabulary (and ``"pair"``, notebook 02's two sentences), each word's ``(2, D)`` unit text features."""
    with torch.no_grad():
        out = {name: dict(zip(words, text_features(model, words, name))) for name in VOCABULARIES}
        pair = model.encode_text([p.format(w) for w in words for p in SIMILARITY_PROMPTS], normalize=True)
    out["pair"] = dict(zip(words, pair.view(len(words), 2, -1)))
    return out


def toy_loss(model: TIPS, images: torch.Tensor, masks: torch.Tensor,
             text_views: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one batch: ``image (B,3,S,S)``, ``mask (B,1,H,W)``; per vocabulary ``(B, 2, D)`` text features."""
    b, size = len(images), images.shape[-1]
    gh, gw = model.patch_grid(size)
    tokens = F.normalize(model.vision(images), dim=-1)
    cls_tokens, patches = tokens[:, :2], tokens[:, 2:]
    labels = (masks.flatten(1).amax(1) > 0).long()
    terms = {"segmentation": 0.0, "global_ce": 0.0}
    total = images.new_zeros(())
    for text in text_views:
        probs = (torch.einsum("bnd,bkd->bnk", patches, text) / model.temperature).softmax(-1)  # (B, N, 2)
        probs = F.interpolate(probs.transpose(1, 2).reshape(b, 2, gh, gw), size=masks.shape[-2:], mode="bilinear",
                              align_corners=False)
        parts = {"segmentation": segmentation_loss(probs, masks),
                 "global_ce": sum(F.cross_entropy(torch.einsum("bd,bkd->bk", cls_tokens[:, i], text)
                                                  / model.temperature, labels) for i in range(2))}
        total = total + parts["segmentation"] + GLOBAL_WEIGHT * parts["global_ce"]
        for name, value in parts.items():
            terms[name] += float(value.detach())
    return total, terms


def train_toy_tips(steps: int = STEPS, seed: int = 0, log_every: int = 50,
                   snapshot=None) -> tuple[dict, dict, bytes]:
    """Train the tiny TIPS on toy defects (single thread, seeded: the same result on the same machine).

    Returns:
        ``(vision arrays, text arrays, tokenizer bytes)``, arrays float32 in the real npz layout
        (already rounded through float16, as they are stored).
        ``snapshot(step, model)``, when given, is called after every ``log_every`` steps.
    """
    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a reduction order that does not depend on the machine's cores
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tok_path = train_tiny_tokenizer(Path(tmp) / "tokenizer.model")
            tokenizer_bytes = tok_path.read_bytes()
            vision, text = random_tips_arrays(TINY_ARCH)
            model = _build(vision, text, Tokenizer(tok_path), num_heads=None, vision_name="random vision",
                           text_name="random text", variant="tiny")
            generator = torch.Generator().manual_seed(seed)
            fixed = fixed_text(model, sorted({class_word(None, c) for c in TOY_CLASSES} | set(OTHER_WORDS)))
            # Only the vision tower trains; the position grid stays random (it is interpolated to every input side).
            model.vision.requires_grad_(True)
            model.vision.pos_embed.requires_grad_(False)
            model.vision.mask_token.requires_grad_(False)
            optimizer = torch.optim.Adam([p for p in model.vision.parameters() if p.requires_grad], lr=LR)
            # Cosine decay to a twentieth: the last steps settle instead of jumping around.
            schedule = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda i: 0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * min(i, steps) / steps)))
            images, masks, words = training_pool()
            start = time.perf_counter()
            for step in range(steps):
                idx = torch.randint(len(images), (BATCH,), generator=generator)
                swap = torch.rand(BATCH, generator=generator) < OTHER_WORD_RATE
                other = torch.randint(len(OTHER_WORDS), (BATCH,), generator=generator)
                batch_words = [OTHER_WORDS[int(o)] if s else words[int(i)] for i, s, o in zip(idx, swap, other)]
                views = [torch.stack([table[w] for w in batch_words]) for table in fixed.values()]
                x = resize_image(images[idx], SIZES[step % len(SIZES)])
                loss, terms = toy_loss(model, x, masks[idx], views)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                if log_every and (step % log_every == 0 or step == steps - 1):
                    print(f"step {step:4d}  loss {float(loss):.3f}  " + "  ".join(f"{k} {v:.2f}" for k, v in terms.items())
                          + f"  ({time.perf_counter() - start:.0f} s)", flush=True)
                    if snapshot is not None:
                        snapshot(step, model)
            temperature = text["temperature"]
            vision = {k: _half(v) for k, v in model.vision.state_dict().items()}
            text = {k: _half(v) for k, v in model.text.state_dict().items()}
            text["temperature"] = temperature
            return vision, text, tokenizer_bytes
    finally:
        torch.set_num_threads(threads)


def _half(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().astype(np.float16).astype(np.float32)


def write_toy_weights(path: str | Path, vision: dict, text: dict, tokenizer: bytes) -> Path:
    """The packaged file: ``vision/<name>``, ``text/<name>`` float16 (temperature float32), ``tokenizer`` uint8."""
    arrays = {f"vision/{k}": v.astype(np.float16) for k, v in vision.items()}
    arrays |= {f"text/{k}": v.astype(np.float32 if k == "temperature" else np.float16) for k, v in text.items()}
    arrays["tokenizer"] = np.frombuffer(tokenizer, dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    with atomic_file(Path(path)) as fh:
        fh.write(buffer.getvalue())
    return Path(path)


def toy_metrics(vision: dict, text: dict, tokenizer: bytes, sizes=(518, 112)) -> dict[int, dict[str, float]]:
    """Mean toy-test metrics (x100) of the training-free detector at each input side (seed-0 toy data)."""
    import warnings

    from tipsomaly_lite import AnomalyDataset, Detector, evaluate
    from tipsomaly_lite.backbones.tips.model import load_tips_files
    from tipsomaly_lite.data.toy_data import make_toy_dataset
    from tipsomaly_lite.offline import MeaninglessResultsWarning

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = make_toy_dataset(Path(tmp) / "toy", seed=0)
        write_npz(Path(tmp) / "v.npz", vision)
        write_npz(Path(tmp) / "t.npz", text)
        (Path(tmp) / "tok.model").write_bytes(tokenizer)
        for size in sizes:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MeaninglessResultsWarning)
                model = load_tips_files(Path(tmp) / "v.npz", Path(tmp) / "t.npz", Path(tmp) / "tok.model",
                                        variant="tiny", image_size=size, is_offline=True)
                result = evaluate(Detector(model), AnomalyDataset(root, image_size=size), progress=False)
            out[size] = dict(result.mean)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=TOY_WEIGHTS, help="where to write (default: the packaged file)")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--check", action="store_true", help="retrain and compare with --out instead of writing")
    args = parser.parse_args(argv)
    vision, text, tokenizer = train_toy_tips(args.steps)
    for size, m in toy_metrics(vision, text, tokenizer).items():
        print(f"{size} px: image AUROC {m['image_auroc']:.1f}, pixel AUROC {m['pixel_auroc']:.1f} "
              "(toy test data; says nothing about TIPS)")
    if args.check:
        shipped_v, shipped_t, shipped_tok = read_toy_weights(args.out)
        worst = max(float(np.abs(shipped_v[k] - vision[k]).max()) for k in vision)
        worst = max(worst, *(float(np.abs(shipped_t[k] - text[k]).max()) for k in text))
        print(f"largest difference to {args.out}: {worst:.3g}; tokenizer {'equal' if shipped_tok == tokenizer else 'DIFFERS'}")
        return 0 if worst == 0 and shipped_tok == tokenizer else 1
    print("wrote", write_toy_weights(args.out, vision, text, tokenizer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
