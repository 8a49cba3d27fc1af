"""The public TIPS checkpoints: the variant registry on the TIPS bucket and the download cache.

    fetch_variant("l14-hr")      # {"vision": Path, "text": Path, "tokenizer": Path}, downloaded once

Taught in notebooks/00_setup.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["BUCKET", "TOKENIZER_FILE", "DEFAULT_VARIANT", "Variant", "VARIANTS", "fetch_variant", "variant_is_cached"]

BUCKET = "https://storage.googleapis.com/tips_data/"
TOKENIZER_FILE = "v1_0/checkpoints/tokenizer.model"
DEFAULT_VARIANT = "l14-hr"


@dataclass(frozen=True)
class Variant:
    """One public TIPS checkpoint pair on the bucket (docs/method.md, "TIPS checkpoints")."""

    name: str
    stem: str  # path under the bucket without the _vision.npz / _text.npz suffix
    native_size: int

    @property
    def files(self) -> dict[str, str]:
        """Bucket-relative paths of the vision npz, text npz and tokenizer."""
        return {"vision": self.stem + "_vision.npz", "text": self.stem + "_text.npz", "tokenizer": TOKENIZER_FILE}


_V1 = "v1_0/checkpoints/pytorch/"
_V2 = "v2_0/checkpoints/pytorch/"
VARIANTS: dict[str, Variant] = {v.name: v for v in [
    Variant("s14-hr", _V1 + "tips_oss_s14_highres_distilled", 448),
    Variant("b14-hr", _V1 + "tips_oss_b14_highres_distilled", 448),
    Variant("l14-hr", _V1 + "tips_oss_l14_highres_distilled", 448),
    Variant("so400m14-hr", _V1 + "tips_oss_so400m14_highres_largetext_distilled", 448),
    Variant("g14-hr", _V1 + "tips_oss_g14_highres", 448),
    Variant("g14-lr", _V1 + "tips_oss_g14_lowres", 224),
    Variant("v2-b14", _V2 + "tips_v2_oss_b14", 448),
    Variant("v2-l14", _V2 + "tips_v2_oss_l14", 448),
    Variant("v2-so400m14", _V2 + "tips_v2_oss_so14", 448),
    Variant("v2-g14", _V2 + "tips_v2_oss_g14", 448),
]}


def fetch_variant(name: str, download: bool = True) -> dict[str, Path]:
    """Paths of a registry variant's vision npz, text npz and tokenizer in the cache.

    Missing files are downloaded from the TIPS bucket (resumable, atomic, with a progress bar)
    into ``$TIPSOMALY_HOME/tips/<bucket path>`` unless ``download`` is False.

    Raises:
        KeyError: unknown variant.
        FileNotFoundError: a file is missing and ``download`` is False.
        tipsomaly_lite.data.download.DownloadError: the bucket cannot be reached.
    Taught in notebooks/00_setup.ipynb.
    """
    from tipsomaly_lite.data.download import cache_dir, download as fetch

    if name not in VARIANTS:
        raise KeyError(f"unknown TIPS variant {name!r}; expected one of {sorted(VARIANTS)}")
    root = cache_dir() / "tips"
    paths = {}
    for role, rel in VARIANTS[name].files.items():
        dest = root / rel
        if not dest.is_file():
            if not download:
                raise FileNotFoundError(
                    f"TIPS {name}: {role} file not in the cache ({dest}); run "
                    f"`tipsomaly fetch {name}` or load_tips(..., download=True)")
            fetch(BUCKET + rel, dest, desc=f"TIPS {name} {role}")
        paths[role] = dest
    return paths


def variant_is_cached(name: str) -> bool:
    """True when every file of a registry variant is already in the cache (no network).

    Taught in notebooks/00_setup.ipynb.
    """
    try:
        fetch_variant(name, download=False)
        return True
    except FileNotFoundError:
        return False
