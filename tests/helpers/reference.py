"""The independent reference for the TIPS port: transformers' ``Tipsv2Model`` with random weights.

Tests and benchmarks build one here, map its weights into the official npz names and load them
with our loader, so both models hold identical numbers. Needs the ``dev`` extra (transformers);
nothing else in the package imports this module.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from tipsomaly_lite.backbones.tips.checkpoints import hf_to_npz_names, write_npz


def reference_config(width: int, depth: int, heads: int, *, text_depth: int | None = None,
                     text_mlp: int | None = None, vocab: int = 32000, swiglu: bool = False):
    """A ``Tipsv2Config``: vision and text ``width`` wide, 448 px native (32x32 position grid)."""
    from transformers import Tipsv2Config

    return Tipsv2Config(
        vision_config=dict(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
                           mlp_ratio=4, use_swiglu_ffn=swiglu, image_size=448),
        text_config=dict(hidden_size=width, num_hidden_layers=text_depth or depth, num_attention_heads=heads,
                         intermediate_size=text_mlp or 4 * width, vocab_size=vocab))


def random_reference(config, seed: int = 0) -> torch.nn.Module:
    """A frozen ``Tipsv2Model`` in eval mode with *every* parameter random.

    Layer norms and layer scales are drawn around 1, everything else ~ N(0, 0.05), temperature
    0.005: unlike the default init, no term of the forward pass can hide behind a zero or a one.
    """
    from transformers import Tipsv2Model

    torch.manual_seed(seed)
    model = Tipsv2Model(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "temperature":
                p.fill_(0.005)
            elif ("norm" in name and name.endswith("weight")) or "lambda1" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.05 * torch.randn_like(p))
    return model.requires_grad_(False)


def write_reference_npz(model: torch.nn.Module, folder: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``model``'s weights as an official-layout (vision, text) npz pair in ``folder``."""
    folder = Path(folder)
    vision, text = hf_to_npz_names({k: v.detach().cpu().float().numpy() for k, v in model.state_dict().items()})
    return write_npz(folder / "reference_vision.npz", vision), write_npz(folder / "reference_text.npz", text)
