"""The main job for now (``make demo``): patch-text similarity maps with TIPS.

Loads TIPS (by default real weights when they are in the cache, else the tiny offline model with
its warning; an explicit variant loads as every command loads it, see :mod:`tipsomaly_lite.io.network`),
draws a few toy images with and without defects, and writes one PNG: each image beside the cosine
similarity of its patches to a "normal" and a "damaged" prompt, titled with the image-level
probabilities from the first CLS token.

Taught in notebooks/02_spatial_alignment.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib import pyplot as plt

from tipsomaly_lite.io.atomic import atomic_file
from tipsomaly_lite.backbones.base import Backbone
from tipsomaly_lite.backbones import load_backbone
from tipsomaly_lite.data.toy_data import render_sample
from tipsomaly_lite.eval.report import family_label
from tipsomaly_lite.course.viz import plot_similarity_maps
from tipsomaly_lite.method.maps import similarity_maps, upsample_map
from tipsomaly_lite.method.prompts import SIMILARITY_PROMPTS as PROMPTS
from tipsomaly_lite.offline import MEANINGLESS_TAG

DEMO_SAMPLES = (("wood_grain", None), ("wood_grain", "scratch"), ("hex_nut", None), ("hex_nut", "missing_piece"))


@dataclass
class DemoResult:
    """What :func:`run_demo` computed and wrote.

    Attributes:
        figure: path of the PNG.
        probabilities: ``(B, 2)`` image-level (normal, damaged) probabilities from the first CLS.
        maps: ``(B, 2, gh, gw)`` patch-text cosine similarities before upsampling.
        offline: True when the tiny offline model was used (numbers meaningless).
    """

    figure: Path
    probabilities: torch.Tensor
    maps: torch.Tensor
    offline: bool


def demo_images(size: int, seed: int = 0) -> tuple[torch.Tensor, list[str], list[str]]:
    """Toy images ``(B, 3, size, size)`` in [0,1], their class words and row titles."""
    rng = np.random.default_rng(seed)
    images, words, titles = [], [], []
    for cls, defect in DEMO_SAMPLES:
        sample = render_sample(cls, rng, image_size=size, defect=defect)
        images.append(torch.from_numpy(sample["image"]).permute(2, 0, 1).float() / 255.0)
        words.append(cls.replace("_", " "))
        titles.append(f"'{words[-1]}', {defect or 'good'}")
    return torch.stack(images), words, titles


@torch.inference_mode()
def run_demo(out_dir: str | Path = "build/demo", variant: str | None = None, size: int | None = None,
             model: Backbone | None = None, family: str = "tips") -> DemoResult:
    """Write ``similarity_maps.png`` into ``out_dir`` and return what was computed.

    ``variant`` None (the demo's default) is the paper's TIPS when its weights are in the cache, else
    the tiny offline model (said loudly); the demo never downloads for its default. A named
    ``variant`` loads as in every command: from the cache, else downloaded, else one line saying
    how to get the offline tiny model (``--variant tiny`` or ``TIPSOMALY_OFFLINE=1``). ``size``
    None is the model's own input side.
    """
    if model is None and variant is None:
        model = load_backbone(None, family=family, download=False, fallback_to_tiny=True)
    model = model or load_backbone(variant, family=family)
    size = size or model.image_size
    images, words, titles = demo_images(size)
    maps, probs = [], []
    for image, word in zip(images, words):
        texts = [p.format(word) for p in PROMPTS]
        maps.append(similarity_maps(model, image[None], texts)[0])
        probs.append(model.zero_shot_probabilities(image[None], texts)[0])
    maps_t, probs_t = torch.stack(maps), torch.stack(probs)
    row_titles = [f"{t}\nP(damaged)={p[1]:.2f}" for t, p in zip(titles, probs_t)]
    suptitle = f"{family_label(model.family)} {model.variant} at {size}px: patch-text similarity"
    if model.is_offline:
        suptitle += "\n" + MEANINGLESS_TAG
    full = upsample_map(maps_t.flatten(0, 1), (size, size)).view(len(images), 2, size, size)
    fig = plot_similarity_maps(images, full, [p.replace("a photo of a ", "…").format("<word>") for p in PROMPTS], row_titles, suptitle=suptitle)
    path = Path(out_dir) / "similarity_maps.png"
    with atomic_file(path) as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)
    return DemoResult(path, probs_t, maps_t, model.is_offline)
