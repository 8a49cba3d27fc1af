"""The backbone families this package can load: one frozen record and one :func:`register` line each.

    FAMILIES["clip"].default_variant           # "l14-336"
    FAMILIES["tips"].load("tiny")              # what load_backbone("tiny") does

A family is one module (its :class:`~tipsomaly_lite.backbones.base.Backbone` class and a loader
``load(variant, *, image_size, device, download, fallback_to_tiny, dtype, **options) -> Backbone``)
plus one :func:`register` line here. The loader is imported on first use, so importing this
module (and ``tipsomaly_lite``) stays light: no torch, no transformers.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from tipsomaly_lite.backbones.scoring_rule import SCORING_KINDS
from tipsomaly_lite.backbones.tips.registry import DEFAULT_VARIANT as _TIPS_DEFAULT_VARIANT

__all__ = ["BackboneFamily", "FAMILIES", "DEFAULT_FAMILY", "register", "unregister", "get_family"]


@dataclass(frozen=True)
class BackboneFamily:
    """One loadable backbone family.

    Attributes:
        name: the family's key (``"tips"``), as ``load_backbone(family=...)`` and the CLI's ``--backbone`` take it.
        module: dotted path of the module holding the loader (imported on first use).
        loader: name of the loader function in ``module``; called as ``loader(variant, **kwargs)``.
        default_variant: the checkpoint loaded when no variant is asked for.
        default_image_size: input side ``S`` in pixels when ``image_size`` is not given to
            :meth:`load`; None = the checkpoint's native size.
        extra: the pip extra the family needs (``pip install 'tipsomaly_lite[<extra>]'``), None when the
            base install suffices.
        requires: top-level modules the extra provides; :meth:`load` says which extra to install
            when one is missing.
        description: one line for tables and ``--help``.
        scoring: how the family turns cosines into (normal, anomalous) probabilities, one of
            :data:`~tipsomaly_lite.backbones.scoring_rule.SCORING_KINDS`: ``"softmax"`` (two-way softmax
            with a temperature: TIPS, CLIP) or ``"sigmoid"`` (independent sigmoids with the checkpoint's
            scale and bias: SigLIP2). A loaded model's ``scoring_rule`` carries the numbers.
        paper: the Tipsomaly paper reports results with this family (its numbers may stand beside a run).
    """

    name: str
    module: str
    loader: str
    default_variant: str
    default_image_size: int | None
    extra: str | None
    description: str
    requires: tuple[str, ...] = ()
    scoring: str = "softmax"
    paper: bool = False

    def __post_init__(self) -> None:
        if self.scoring not in SCORING_KINDS:
            raise ValueError(f"backbone family {self.name!r}: scoring must be one of {SCORING_KINDS}, "
                             f"got {self.scoring!r}")

    def load_function(self) -> Callable[..., Any]:
        """The loader, imported now.

        Raises:
            tipsomaly_lite.io.extras.MissingExtraError: a module of :attr:`requires` is not installed (an
                ``ImportError``; one line naming the pip command, exit code 2 in the CLI).
        """
        from tipsomaly_lite.io.extras import require

        require(self.requires, extra=self.extra or "all", who=f"the {self.name} backbone")
        return getattr(importlib.import_module(self.module), self.loader)

    def load(self, variant: str | None = None, **kwargs: Any) -> Any:
        """Load a frozen backbone of this family with the family's defaults.

        Args:
            variant: a checkpoint of the family; :attr:`default_variant` when None.
            **kwargs: passed to the loader; ``image_size`` None or absent becomes :attr:`default_image_size`
                (None there = the checkpoint's native size).
        Returns:
            A :class:`~tipsomaly_lite.backbones.base.Backbone`.
        """
        if kwargs.get("image_size") is None:
            kwargs["image_size"] = self.default_image_size
        return self.load_function()(variant or self.default_variant, **kwargs)


#: Registered families by name, in registration order (the first is the default).
FAMILIES: dict[str, BackboneFamily] = {}
#: The paper's backbone.
DEFAULT_FAMILY = "tips"


def register(family: BackboneFamily, *, replace: bool = False) -> BackboneFamily:
    """Add a family to :data:`FAMILIES`.

    Args:
        family: the family's record.
        replace: allow replacing a registered family of the same name.
    Returns:
        ``family``.
    Raises:
        ValueError: the name is taken (and ``replace`` is False).
    """
    if family.name in FAMILIES and not replace:
        raise ValueError(f"backbone family {family.name!r} is already registered ({FAMILIES[family.name].module})")
    FAMILIES[family.name] = family
    return family


def unregister(name: str) -> BackboneFamily:
    """Remove a family from :data:`FAMILIES` and return its record (tests register fakes and remove them)."""
    return FAMILIES.pop(name)


def get_family(name: str) -> BackboneFamily:
    """The registered family called ``name``.

    Raises:
        ValueError: no such family; the message lists the registered ones.
    """
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown backbone family {name!r}; expected one of {tuple(FAMILIES)}") from None


# One line per family. TIPS: the paper's input side (518) when loaded through load_backbone; the
# others at their checkpoint's native size. SigLIP2 is scored with sigmoids, as the authors score it.
register(BackboneFamily("tips", "tipsomaly_lite.backbones.tips.model", "load_tips", _TIPS_DEFAULT_VARIANT, 518, None,
                        "TIPS (Google DeepMind): the paper's backbone, two CLS tokens, /14 patches", paper=True))
register(BackboneFamily("clip", "tipsomaly_lite.backbones.hf", "load_clip", "l14-336", None, "backbones",
                        "OpenAI CLIP from transformers, the ZSAD baselines' backbone (plain, no tricks)",
                        ("transformers",)))
register(BackboneFamily("siglip2", "tipsomaly_lite.backbones.hf", "load_siglip2", "so400m-256", None, "backbones",
                        "Google SigLIP2 from transformers, attention-pooled global token", ("transformers",),
                        scoring="sigmoid"))
