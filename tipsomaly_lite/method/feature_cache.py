"""The frozen-feature cache: vision features computed once per (image, size, model), reused by every epoch.

The vision tower never trains, so an image's tokens are the same in every epoch. Training reads
them from here instead of decoding the image and running the tower again; only the text tower
(with the learnable prompts) and the loss run per step. Entries hold the L2-normalised patch
tokens, the backbone's global tokens and the ground-truth mask at the input size. They live in memory, or on
disk as one ``.npz`` per image (read with ``allow_pickle=False``), stored in float16 by default
(half the space; cosines change by ~1e-5) or float32 (bit-exact with the uncached path).

Taught in notebooks/04_learnable_pixel_prompts.ipynb.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from tipsomaly_lite.io.atomic import atomic_file
from tipsomaly_lite.backbones.base import Backbone

__all__ = ["FeatureCache"]


#: Bumped when what an entry holds (or how the key is made) changes, so old folders are not reused.
KEY_VERSION = 2

# Content hashes of files seen by this process, keyed on everything that changes when a file does
# (a rewrite gets a new ctime even if its size and mtime are put back), so a training step does not
# read every image again just to check that it is unchanged.
_HASHES: dict[tuple, str] = {}


def content_hash(path: str | os.PathLike) -> str:
    """SHA-256 (first 32 hex digits) of a file's bytes, computed once per process per file version.

    Memoised on (resolved path, size, mtime_ns, ctime_ns, inode): an unchanged file is hashed once,
    an edited one (even with its mtime set back) is hashed again.

    Raises:
        FileNotFoundError: no such file.
    """
    path = Path(path).resolve()
    st = path.stat()
    memo = (str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    digest = _HASHES.get(memo)
    if digest is None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digest = _HASHES[memo] = h.hexdigest()[:32]
    return digest


def _identity(dataset: Any, index: int) -> tuple[str, str, str]:
    """(image content hash, mask content hash or "-", label) of a dataset item.

    AnomalyDataset rows give the files without decoding anything; any other dataset is asked for
    the item (its ``path``, ``mask`` tensor and ``label``).
    """
    samples = getattr(dataset, "samples", None)
    if samples is not None and hasattr(dataset, "root"):
        row = samples[index]
        mask = content_hash(Path(dataset.root) / row["mask_path"]) if row.get("mask_path") else "-"
        return content_hash(Path(dataset.root) / row["img_path"]), mask, str(row.get("anomaly", "?"))
    item = dataset[index]
    mask = item.get("mask")
    mask_hash = "-" if mask is None else hashlib.sha256(
        np.ascontiguousarray(mask.detach().cpu().numpy() > 0.5).tobytes()).hexdigest()[:32]
    return content_hash(item["path"]), mask_hash, str(item.get("label", "?"))


class FeatureCache:
    """Vision features of dataset images, computed on first use and then reused.

    Args:
        model: the frozen backbone whose vision tower makes the features.
        image_size: input side S in pixels (the dataset's ``image_size``).
        folder: keep entries on disk under ``folder/<model fingerprint>/`` (survives restarts);
            None keeps them in memory.
        dtype: storage dtype, ``torch.float16`` (default) or ``torch.float32``.
        batch_size: images per vision forward when filling.
        progress: show a progress bar while filling.

    ``cache.get(dataset, indices)`` returns float32 ``patch_tokens (B, N, D)``, one ``(B, D)``
    entry per global token of the backbone (``cls1``, ``cls2`` for TIPS) and ``mask (B, 1, S, S)``.
    An entry's key covers everything that changes it: the image's *content* (SHA-256, hashed once
    per process per file version), the mask's content and the label, the input size, the storage
    dtype and the fingerprint of all backbone weights. An edited image or mask, or a model that
    differs in any weight, never reads stale features.
    Taught in notebooks/04_learnable_pixel_prompts.ipynb.
    """

    def __init__(self, model: Backbone, image_size: int, folder: str | os.PathLike | None = None,
                 dtype: torch.dtype = torch.float16, batch_size: int = 8, progress: bool = True) -> None:
        if dtype not in (torch.float16, torch.float32):
            raise ValueError(f"dtype must be torch.float16 or torch.float32, got {dtype}")
        self.model = model
        self.image_size = int(image_size)
        self.dtype = dtype
        self.batch_size = batch_size
        self.progress = progress
        self.fingerprint = model.fingerprint()
        self.feature_names = ("patch_tokens", *model.global_tokens)
        self.folder = None if folder is None else Path(folder) / self.fingerprint
        self._memory: dict[str, dict[str, np.ndarray]] = {}
        self.hits = 0
        self.misses = 0

    def key(self, image: str | os.PathLike, mask: str | os.PathLike | None = None, label: int | str = "?") -> str:
        """The entry name of an image file (with its mask file and label) for this cache's settings."""
        mask_hash = "-" if mask is None else content_hash(mask)
        return self._key(content_hash(image), mask_hash, str(label))

    def _key(self, image_hash: str, mask_hash: str, label: str) -> str:
        text = (f"v{KEY_VERSION}|{image_hash}|{mask_hash}|{label}|{self.image_size}|{self.fingerprint}|"
                f"{self.dtype}")
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def _file(self, key: str) -> Path:
        assert self.folder is not None
        return self.folder / key[:2] / f"{key}.npz"

    def _has(self, key: str) -> bool:
        return key in self._memory or (self.folder is not None and self._file(key).is_file())

    def _read(self, key: str) -> dict[str, np.ndarray]:
        if key in self._memory:
            return self._memory[key]
        path = self._file(key)
        try:
            with np.load(path, allow_pickle=False) as f:
                return {name: f[name] for name in (*self.feature_names, "mask")}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{path}: damaged feature-cache entry ({type(exc).__name__}: {exc})") from exc

    def _write(self, key: str, entry: dict[str, np.ndarray]) -> None:
        if self.folder is None:
            self._memory[key] = entry
            return
        path = self._file(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as f:
            np.savez(f, **entry)

    def _pack(self, feats: dict[str, Tensor], masks: Tensor, i: int) -> dict[str, np.ndarray]:
        store = np.float16 if self.dtype == torch.float16 else np.float32
        entry = {name: feats[name][i].cpu().numpy().astype(store) for name in self.feature_names}
        # Masks are {0,1}: eight pixels per byte.
        entry["mask"] = np.packbits(masks[i, 0].cpu().numpy() > 0.5)
        return entry

    def _keys(self, dataset: Any, indices: Sequence[int]) -> dict[int, str]:
        # The model's weights may have been changed in place since the cache was made (a
        # fingerprint is recomputed only when a tensor's version moved, so this is cheap).
        self.fingerprint = self.model.fingerprint()
        return {i: self._key(*_identity(dataset, i)) for i in indices}

    def _fill(self, dataset: Any, keys: dict[int, str]) -> int:
        """Compute the entries of ``keys`` (dataset index -> key) that are missing; returns how many."""
        todo = [i for i, k in keys.items() if not self._has(k)]
        batches = [todo[s:s + self.batch_size] for s in range(0, len(todo), self.batch_size)]
        for batch in tqdm(batches, desc="caching vision features", unit="batch",
                          disable=not self.progress or not batches):
            items = [dataset[i] for i in batch]
            images = torch.stack([item["image"] for item in items])
            masks = torch.stack([item["mask"] for item in items])
            if images.shape[-1] != self.image_size:
                raise ValueError(f"dataset images are {images.shape[-1]} px but the cache was made for "
                                 f"{self.image_size} px")
            feats = self.model.encode_features(images)
            for j, i in enumerate(batch):
                self._write(keys[i], self._pack(feats, masks, j))
        self.misses += len(todo)
        return len(todo)

    def fill(self, dataset: Any, indices: Sequence[int] | None = None) -> int:
        """Compute the missing entries for ``indices`` (default: the whole dataset); returns how many."""
        return self._fill(dataset, self._keys(dataset, range(len(dataset)) if indices is None else indices))

    def get(self, dataset: Any, indices: Sequence[int]) -> dict[str, Tensor]:
        """Features and masks for dataset items (computed first if missing), float32 on the model's device."""
        indices = list(indices)
        keys = self._keys(dataset, indices)  # a stat per file per call; contents hashed once per process
        self.hits += len(indices) - self._fill(dataset, keys)
        entries = []
        for i in indices:
            try:
                entries.append(self._read(keys[i]))
            except ValueError:
                # A damaged file on disk (a full disk, a copy cut short): compute it again, never use it.
                self._file(keys[i]).unlink(missing_ok=True)
                self._fill(dataset, {i: keys[i]})
                entries.append(self._read(keys[i]))
        s = self.image_size
        out = {name: torch.from_numpy(np.stack([e[name] for e in entries])).float()
               for name in self.feature_names}
        masks = np.stack([np.unpackbits(e["mask"], count=s * s).reshape(s, s) for e in entries])
        out["mask"] = torch.from_numpy(masks.astype(np.float32))[:, None]
        return {k: v.to(self.model.device) for k, v in out.items()}

    def __len__(self) -> int:
        if self.folder is None:
            return len(self._memory)
        return sum(1 for _ in self.folder.glob("*/*.npz")) if self.folder.is_dir() else 0

    def __repr__(self) -> str:
        where = "memory" if self.folder is None else str(self.folder)
        return (f"FeatureCache(model={self.model.variant!r} [{self.fingerprint}], image_size={self.image_size}, "
                f"dtype={str(self.dtype).replace('torch.', '')}, entries={len(self)}, in {where}, "
                f"hits={self.hits}, misses={self.misses})")
