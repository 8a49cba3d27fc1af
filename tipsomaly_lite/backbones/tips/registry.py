"""The public TIPS checkpoints: the variant registry on the TIPS bucket and the download cache.

    fetch_variant("l14-hr")      # {"vision": Path, "text": Path, "tokenizer": Path}, downloaded once

Every file is checked after a download *and* when it is found in the cache (the npz files open
without pickle and hold the TIPS arrays, the tokenizer loads), so a damaged file is never used
just because it exists.

Taught in notebooks/00_setup.ipynb.
"""

from __future__ import annotations

import os
import warnings
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


#: An array every file of a role holds, whatever the size of the model (docs/method.md §1.2).
_MARKERS = {"vision": ("patch_embed.proj.weight", "pos_embed"), "text": ("token_embedding.weight",)}


def check_tips_file(role: str, path: str | os.PathLike) -> None:
    """Raise ``ValueError`` naming ``path`` unless it is a usable TIPS ``vision``/``text`` npz or ``tokenizer``.

    Cheap: the npz files are checked from their array headers (no weights are read, no pickle is
    allowed), the tokenizer is loaded.
    """
    from tipsomaly_lite.backbones.tips.checkpoints import CheckpointError, npz_shapes

    path = Path(path)
    if role == "tokenizer":
        from tipsomaly_lite.backbones.tips.text import Tokenizer

        Tokenizer(path)  # ValueError naming the file when SentencePiece cannot load it
        return
    shapes = npz_shapes(path)  # CheckpointError (a ValueError) when not a readable npz
    missing = [k for k in _MARKERS[role] if k not in shapes]
    if missing:
        raise CheckpointError(f"{path}: not a TIPS {role} checkpoint (no {', '.join(missing)} among its "
                              f"{len(shapes)} arrays)")


def _cached(name: str, role: str, dest: Path, download: bool) -> bool:
    """True when ``dest`` is a usable cached file; a damaged one is reported (and moved aside to re-fetch)."""
    if not dest.is_file():
        return False
    try:
        check_tips_file(role, dest)
        return True
    except ValueError as exc:
        if not download:
            raise ValueError(f"TIPS {name}: the cached {role} file {dest} is damaged ({exc}); delete it and run "
                             f"`tipsomaly fetch {name}` (or load_tips(..., download=True))") from exc
        bad = dest.with_name(dest.name + ".bad")
        warnings.warn(f"TIPS {name}: the cached {role} file {dest} is damaged ({exc}); moving it to {bad} "
                      "and downloading it again.", stacklevel=3)
        os.replace(dest, bad)
        return False


def fetch_variant(name: str, download: bool = True) -> dict[str, Path]:
    """Paths of a registry variant's vision npz, text npz and tokenizer in the cache.

    Missing files are downloaded from the TIPS bucket (resumable, atomic, with a progress bar)
    into ``$TIPSOMALY_HOME/tips/<bucket path>`` unless ``download`` is False. Every file, cached or
    new, is checked with :func:`check_tips_file`; a damaged cached one is moved aside to
    ``<file>.bad`` and fetched again (with a warning naming it).

    Raises:
        KeyError: unknown variant.
        FileNotFoundError: a file is missing and ``download`` is False.
        ValueError: a cached file is damaged and ``download`` is False (names it and says how to fix it).
        tipsomaly_lite.io.download.DownloadError: the bucket cannot be reached, or it served a
            file that fails the check.
    Taught in notebooks/00_setup.ipynb.
    """
    from tipsomaly_lite.io.download import cache_dir, download as fetch

    if name not in VARIANTS:
        raise KeyError(f"unknown TIPS variant {name!r}; expected one of {sorted(VARIANTS)}")
    root = cache_dir() / "tips"
    paths = {}
    for role, rel in VARIANTS[name].files.items():
        dest = root / rel
        if not _cached(name, role, dest, download):
            if not download:
                raise FileNotFoundError(
                    f"TIPS {name}: {role} file not in the cache ({dest}); run "
                    f"`tipsomaly fetch {name}` or load_tips(..., download=True)")
            fetch(BUCKET + rel, dest, desc=f"TIPS {name} {role}",
                  validate=lambda path, role=role: check_tips_file(role, path))
        paths[role] = dest
    return paths


def variant_is_cached(name: str) -> bool:
    """True when every file of a registry variant is already in the cache (no network).

    Taught in notebooks/00_setup.ipynb.
    """
    try:
        fetch_variant(name, download=False)
        return True
    except (FileNotFoundError, ValueError):  # missing, or damaged (never counted as cached)
        return False
