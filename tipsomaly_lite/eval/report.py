"""What a result says about the model that made it: backbone family, variant, dtype and scoring rule.

A table of numbers is only as good as its header: ``results.md`` and the benchmark table name the
backbone that ran, and the paper's numbers stand beside a run only when the paper reports that
backbone (the Tipsomaly paper reports TIPS; a CLIP or SigLIP2 run gets a line saying so instead).

    backbone_line(result.config)   # "**Backbone:** CLIP `l14-336` (...), vision tower float32, scoring softmax(...)"
    paper_applies(result.config)   # True only for a family the paper reports
"""

from __future__ import annotations

import math
from typing import Any, Iterable

__all__ = ["FAMILY_LABELS", "family_label", "rule_text", "backbone_line", "model_facts", "meaningless_line",
           "paper_applies", "paper_note"]

#: How a family is written in prose (a registered family without an entry is written as its key).
FAMILY_LABELS = {"tips": "TIPS", "clip": "CLIP", "siglip2": "SigLIP2"}


def family_label(family: str | None) -> str:
    """``"clip"`` -> ``"CLIP"``; unknown or missing families as given (``"?"`` for None)."""
    return FAMILY_LABELS.get(str(family), str(family)) if family else "?"


def rule_text(rule: dict[str, Any] | None) -> str:
    """A recorded scoring rule (``ScoringRule.describe()``) in words; older results did not record one."""
    if not isinstance(rule, dict):
        return "not recorded"
    try:
        if rule.get("kind") == "softmax":
            return f"softmax(cos / {float(rule['temperature']):.4g})"
        if rule.get("kind") == "sigmoid":
            return f"sigmoid(cos * {math.exp(float(rule['logit_scale'])):.4g} {float(rule['logit_bias']):+.4g})"
    except (KeyError, TypeError, ValueError, OverflowError):
        pass
    return "not recorded"


def backbone_line(config: dict[str, Any]) -> str:
    """One Markdown line naming the model of a result's ``config`` (a detector's config)."""
    weights = config.get("model_source")
    where = f" ({weights})" if weights and weights != config.get("variant") else ""
    return (f"**Backbone:** {family_label(config.get('backbone'))} `{config.get('variant', '?')}`{where}, "
            f"vision tower {config.get('dtype', 'float32')}, scoring {rule_text(config.get('scoring_rule'))}")


def model_facts(model: Any) -> dict[str, Any]:
    """The report facts of a loaded backbone, in a detector config's keys (for :func:`backbone_line`)."""
    return {"backbone": model.family, "variant": model.variant, "model_source": str(model.source),
            "dtype": str(model.dtype).removeprefix("torch."), "scoring_rule": model.scoring_rule.describe(),
            "offline_model": bool(model.is_offline)}


def meaningless_line(config: dict[str, Any]) -> str:
    """The offline warning for a result table, naming the tiny model's family."""
    family = config.get("backbone", "tips")
    # TIPS's tiny model is a toy one trained on drawn toy defects; the other families' are random (offline.py)
    weights = "a toy model trained on drawn toy defects" if family == "tips" else "with random weights"
    return (f"**OFFLINE MODE: tiny {family_label(family)} {weights}. These numbers are MEANINGLESS; they say "
            "nothing about the real model and only show that the pipeline runs.**")


def paper_applies(config: dict[str, Any]) -> bool:
    """Whether the paper reports the backbone of a result (only then do its numbers stand beside ours)."""
    from tipsomaly_lite.backbones.registry import FAMILIES

    family = FAMILIES.get(str(config.get("backbone", "tips")))
    return bool(family is not None and family.paper)


def paper_note(configs: Iterable[dict[str, Any]]) -> str:
    """The line shown instead of the paper's numbers under a backbone the paper does not report."""
    names = sorted({family_label(c.get("backbone")) for c in configs})
    return (f"No paper numbers here: the paper reports TIPS, and this is a {' / '.join(names)} run "
            "(`--backbone tips` to compare with it).")
