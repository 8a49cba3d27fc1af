"""Learned prompts from wherever they are kept: a train run folder, a prompt file, or the authors' release.

:func:`load_prompts` is what ``--prompts``, ``--released`` and ``--init-prompts`` read, in one
place; :func:`run_record` reads what a run folder recorded, so learned prompts keep the sentences
(prompt set) they were trained with, and :func:`check_trained_with` refuses them for another backbone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import Tensor

from tipsomaly_lite.method.prompts import DEFAULT_PROMPT_SET

__all__ = ["load_prompts", "run_record", "run_settings", "prompt_set_for", "check_trained_with"]


def load_prompts(path: str | os.PathLike | None = None, released: str | None = None) -> tuple[
        tuple[Tensor, Tensor] | None, str]:
    """Learned ``(normal, anomalous)`` prompts and where they came from.

    Args:
        path: a train run folder (its last checkpoint), one of its ``.safetensors`` checkpoints, a plain
            ``{normal, anomalous}`` ``.safetensors`` file or the authors' ``.pth``; ``released:<name>``
            names a release.
        released: the authors' release trained on this dataset (``"mvtec"``, ``"visa"``).
    Returns:
        ``((normal (n, D), anomalous (n, D)), source)``, or ``(None, "none")`` when neither is given.
    Raises:
        ValueError: both given, or a file that holds no prompts (named).
    """
    from tipsomaly_lite.data.released_prompts import load_prompt_file, load_released_prompts
    from tipsomaly_lite.method.run_folder import load_trained_prompts

    if path is not None and str(path).startswith("released:"):
        path, released = None, str(path)[len("released:"):]
    if path is not None and released:
        raise ValueError("give --prompts or --released, not both")
    if released:
        return load_released_prompts(released), f"released:{released}"
    if path is None:
        return None, "none"
    p = Path(path)
    if p.is_dir():
        return load_trained_prompts(p), str(p)
    if p.suffix == ".safetensors":
        try:
            return load_trained_prompts(p), str(p)
        except ValueError:
            pass  # a plain {normal, anomalous} safetensors file, not one of our checkpoints
    return load_prompt_file(p), str(p)


def run_record(path: str | os.PathLike | None) -> dict[str, Any]:
    """What a train run folder's ``config.json`` recorded (``{}`` for anything else: a prompt file, None).

    Raises:
        JSONFileError: the run folder's config.json is not a readable settings file (named).
    """
    from tipsomaly_lite.io.jsonfile import read_json

    config = Path(path) / "config.json" if path else None
    if config is None or not config.is_file():
        return {}
    return read_json(config, what="run config")


def run_settings(record: dict[str, Any]) -> dict[str, Any]:
    """The ``train`` settings of a run record (:func:`run_record`), ``{}`` when there are none."""
    train = record.get("train", {})
    return train if isinstance(train, dict) else {}


def check_trained_with(record: dict[str, Any], model: Any, prompt_set: Any, where: str | os.PathLike) -> None:
    """Refuse learned prompts whose run recorded another backbone or other prompt sentences.

    Compares, by content, what the run recorded and this call has: the backbone family and variant, its
    weights (when both use the same dtype: a bf16 copy has another fingerprint) and the prompt set's
    sentences, and the scoring rule its loss used (a run recorded before rules were counts as softmax). Other
    fields the run did not record are not compared.

    Args:
        record: the run's :func:`run_record` (``{}``: nothing to compare).
        model: the loaded :class:`~tipsomaly_lite.backbones.base.Backbone`.
        prompt_set: the :class:`~tipsomaly_lite.method.prompts.PromptSet` the detector uses.
        where: the run folder, for the message.
    Raises:
        ValueError: one line naming the differing fields in words.
    """
    from tipsomaly_lite.method.run_folder import differences, scoring_kind

    if not record:
        return
    ours = {"backbone": model.family, "variant": model.variant, "dtype": str(model.dtype).removeprefix("torch."),
            "prompt_sentences": {k: v for k, v in prompt_set.to_dict().items() if k != "name"}}
    fields = ["backbone", "variant", "prompt_sentences"]
    if record.get("dtype", "float32") == ours["dtype"] and "backbone_fingerprint" in record:
        ours["backbone_fingerprint"] = model.fingerprint()
        fields.append("backbone_fingerprint")
    said = differences(record, ours, [f for f in fields if f in record])
    if "backbone" in record:  # our run: its loss used this scoring rule (SigLIP2 runs before rules: the softmax)
        rule = differences({"scoring": scoring_kind(record)}, {"scoring": model.scoring_rule.kind}, ["scoring"])
        said = "; ".join(d for d in (said, rule) if d)
    if said:
        raise ValueError(f"--prompts {where}: these prompts were trained with another setup ({said}); use the "
                         "backbone and prompt set they were trained with, or train prompts for this one")


def prompt_set_for(settings: dict[str, Any], asked: str | None = None) -> str:
    """The prompt set to use: the one asked for, else the run's own (``settings`` from :func:`run_settings`;
    learned prompts belong to their sentences), else the method's default (``"industrial"``)."""
    return asked or settings.get("prompt_set") or DEFAULT_PROMPT_SET
