"""How a backbone turns cosine similarities into (normal, anomalous) probabilities (docs/method.md, "Scoring rules").

A backbone is scored the way it was trained to compare an image with a text:

- ``softmax`` (TIPS, CLIP; contrastive softmax training): the two cosines compete,
  ``p = softmax([cos(z, t_n), cos(z, t_a)] / temperature)``, so ``p_normal + p_anomalous = 1``;
  the per-patch anomaly evidence is ``p_anomalous``.
- ``sigmoid`` (SigLIP2; pairwise sigmoid training, as the Tipsomaly authors score it): each state is
  judged on its own, ``p = sigmoid(cos(z, t) * exp(logit_scale) + logit_bias)`` for the normal and the
  anomalous text separately, so the two need not sum to 1; the per-patch anomaly evidence is
  ``(1 - p_normal + p_anomalous) / 2`` (the anomaly map's value).

Either way the image score fuses ``p_anomalous`` of the global token with the largest ``p_anomalous``
of a patch, and training feeds the two probability channels to the loss.

    rule = ScoringRule.sigmoid(logit_scale=2.3026, logit_bias=-1.0)
    probs = rule.probabilities(cosines)          # (..., 2) -> (..., 2)
    rule.anomaly_evidence(probs)                 # (..., 2) -> (...,)

Taught in notebooks/08_backbones.ipynb.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # importing the rule (and the family registry) stays free of torch
    from torch import Tensor

__all__ = ["SCORING_KINDS", "ScoringRule", "as_rule"]

#: The rules a backbone family may declare (:class:`~tipsomaly_lite.backbones.registry.BackboneFamily`).
SCORING_KINDS = ("softmax", "sigmoid")


@dataclass(frozen=True)
class ScoringRule:
    """One backbone's rule from cosines to (normal, anomalous) probabilities.

    Attributes:
        kind: ``"softmax"`` or ``"sigmoid"`` (:data:`SCORING_KINDS`).
        temperature: softmax only: logits are ``cos / temperature``.
        logit_scale: sigmoid only: the checkpoint's *log* scale; logits are ``cos * exp(logit_scale) + logit_bias``.
        logit_bias: sigmoid only: the checkpoint's learned bias.
    Taught in notebooks/08_backbones.ipynb.
    """

    kind: str = "softmax"
    temperature: float = 1.0
    logit_scale: float = 0.0
    logit_bias: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in SCORING_KINDS:
            raise ValueError(f"scoring rule kind must be one of {SCORING_KINDS}, got {self.kind!r}")
        for name in ("temperature", "logit_scale", "logit_bias"):
            if not math.isfinite(float(getattr(self, name))):
                raise ValueError(f"scoring rule {name} must be a finite number, got {getattr(self, name)!r}")
        if self.kind == "softmax" and not float(self.temperature) > 0:
            raise ValueError(f"softmax temperature must be positive, got {self.temperature!r}")

    @classmethod
    def softmax(cls, temperature: float) -> "ScoringRule":
        """The two-way softmax with a temperature (TIPS, CLIP)."""
        return cls("softmax", temperature=float(temperature))

    @classmethod
    def sigmoid(cls, logit_scale: float, logit_bias: float) -> "ScoringRule":
        """Independent sigmoids with the checkpoint's log scale and bias (SigLIP2)."""
        return cls("sigmoid", logit_scale=float(logit_scale), logit_bias=float(logit_bias))

    @property
    def complementary(self) -> bool:
        """True when ``p_normal = 1 - p_anomalous`` holds (the softmax), so one channel says everything."""
        return self.kind == "softmax"

    def probabilities(self, cosines: Tensor) -> Tensor:
        """``(..., 2)`` cosines (normal, anomalous) -> ``(..., 2)`` probabilities (normal, anomalous).

        Softmax: ``softmax(cos / temperature)``. Sigmoid: ``sigmoid(cos * exp(logit_scale) + logit_bias)`` per state.
        """
        if cosines.shape[-1] != 2:
            raise ValueError(f"cosines must end in the (normal, anomalous) pair, got {tuple(cosines.shape)}")
        if self.kind == "softmax":
            return (cosines / self.temperature).softmax(dim=-1)
        import torch

        # The scale as a float32 tensor, exponentiated there, as the authors compute it from the checkpoint.
        scale = torch.tensor(self.logit_scale, dtype=cosines.dtype, device=cosines.device).exp()
        return torch.sigmoid(cosines * scale + self.logit_bias)

    def anomaly_evidence(self, probs: Tensor) -> Tensor:
        """``(..., 2)`` probabilities -> ``(...)`` the value an anomaly map shows.

        Softmax: ``p_anomalous``. Sigmoid: ``(1 - p_normal + p_anomalous) / 2`` (both texts count, as the
        two probabilities are independent). Both lie in [0, 1].
        """
        if self.kind == "softmax":
            return probs[..., 1]
        return (1 - probs[..., 0] + probs[..., 1]) / 2

    def describe(self) -> dict[str, Any]:
        """The rule in a report: ``{"kind", "temperature"}`` or ``{"kind", "logit_scale", "logit_bias"}``."""
        if self.kind == "softmax":
            return {"kind": "softmax", "temperature": float(self.temperature)}
        return {"kind": "sigmoid", "logit_scale": float(self.logit_scale), "logit_bias": float(self.logit_bias)}

    def __str__(self) -> str:
        if self.kind == "softmax":
            return f"softmax(cos / {self.temperature:.4g})"
        return f"sigmoid(cos * {math.exp(self.logit_scale):.4g} {self.logit_bias:+.4g})"


def as_rule(rule: "ScoringRule | float") -> ScoringRule:
    """A :class:`ScoringRule`; a bare number is a softmax temperature (how the method was called before rules)."""
    if isinstance(rule, ScoringRule):
        return rule
    if isinstance(rule, bool) or not isinstance(rule, numbers.Real):
        raise TypeError(f"expected a ScoringRule or a softmax temperature, got {type(rule).__name__}")
    return ScoringRule.softmax(float(rule))
