"""Reading prepared anomaly-detection datasets: ``meta.json`` + an MVTec-like folder tree.

Every benchmark is prepared (see ``tipsomaly_lite.data.prepare``) into ``<data_root>/<key>/`` with a
``meta.json`` in the format AdaCLIP, AnomalyCLIP and Tipsomaly read::

    {"train": {...}, "test": {"bottle": [{"img_path": "bottle/test/broken_large/000.png",
        "mask_path": "bottle/ground_truth/broken_large/000_mask.png", "cls_name": "bottle",
        "specie_name": "broken_large", "anomaly": 1}, ...]}}

``AnomalyDataset`` turns those rows into tensors: ``image`` ``(3,S,S)`` in [0,1] and ``mask``
``(1,S,S)`` in {0,1}.

Taught in notebooks/00_setup.ipynb.
"""

from __future__ import annotations

import json
import os
import pathlib
import warnings
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from tipsomaly_lite.io.atomic import atomic_file
from tipsomaly_lite.data.registry import DATASET_KEYS, DATASETS, canonical_key, class_word  # noqa: F401
from tipsomaly_lite.io.images import (binary_mask, check_image_file, check_pixels, mask_tensor, resize_image,
                                     to_float_rgb)
from tipsomaly_lite.io.jsonfile import JSONFileError, read_json

__all__ = [
    "IMAGE_EXTENSIONS", "IGNORED_NAMES", "META_FORMAT_HINT",
    "DatasetError", "AnomalyDataset", "is_image_file", "list_images",
    "read_meta", "write_meta", "build_meta_from_mvtec_layout", "load_image", "load_mask",
    "check_dataset_key", "find_prepared",
]

#: Image file extensions we read, compared case-insensitively (DAGM uses ``.PNG``, VisA ``.JPG``).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: Files operating systems drop into folders; never images.
IGNORED_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})
#: Shown whenever meta.json cannot be used.
META_FORMAT_HINT = (
    'expected JSON like {"train": {}, "test": {"bottle": [{"img_path": "bottle/test/broken/000.png", '
    '"mask_path": "bottle/ground_truth/broken/000_mask.png", "cls_name": "bottle", '
    '"specie_name": "broken", "anomaly": 1}]}} with paths relative to the dataset root')
_ENTRY_KEYS = ("img_path", "mask_path", "cls_name", "specie_name", "anomaly")
NORMAL_FOLDERS = ("good", "ok")


class DatasetError(ValueError):
    """A dataset file or folder is missing, unreadable or inconsistent."""


def is_image_file(path: str | os.PathLike) -> bool:
    """True for a non-hidden file with an image extension (any case), not OS clutter."""
    p = pathlib.Path(path)
    name = p.name
    if name.startswith(".") or name.lower() in IGNORED_NAMES:
        return False
    return p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()


def subfolders(folder: pathlib.Path) -> list[pathlib.Path]:
    """The visible sub-folders of ``folder``, sorted (no ``.hidden`` ones, no archivers' ``__MACOSX``)."""
    return sorted(c for c in folder.iterdir() if c.is_dir() and not c.name.startswith(".") and c.name != "__MACOSX")


def find_folder(source: pathlib.Path, predicate: Callable[[pathlib.Path], bool], what: str,
                max_depth: int = 3) -> pathlib.Path:
    """The first folder at or below ``source`` (breadth-first, sorted) for which ``predicate`` holds.

    Raises:
        FileNotFoundError: ``source`` is not a folder.
        DatasetError: no folder within ``max_depth`` levels holds ``what``.
    """
    if not source.is_dir():
        raise FileNotFoundError(f"--source {source} does not exist or is not a folder.")
    level = [source]
    for _ in range(max_depth + 1):
        for folder in level:
            if predicate(folder):
                return folder
        level = [c for f in level for c in subfolders(f)]
    raise DatasetError(f"Could not find {what} in {source} (searched {max_depth} levels deep).")


def list_images(folder: str | os.PathLike) -> list[pathlib.Path]:
    """Image files directly inside ``folder``, sorted by name; empty if it does not exist."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if is_image_file(p)), key=lambda p: p.name)


def _stem_index(folder: pathlib.Path, suffix: str = "_mask") -> dict[str, pathlib.Path]:
    """Map image stem -> mask in ``folder``; masks are named ``<stem><suffix>.ext`` or ``<stem>.ext``."""
    index: dict[str, pathlib.Path] = {}
    for mask in list_images(folder):
        stem = mask.stem[: -len(suffix)] if suffix and mask.stem.endswith(suffix) else mask.stem
        if stem in index:
            raise DatasetError(f"Two masks for stem {stem!r} in {folder}: {index[stem].name} and "
                               f"{mask.name}; keep one.")
        index[stem] = mask
    return index


# ----------------------------------------------------------------------------------- meta.json

def read_meta(root: str | os.PathLike) -> dict[str, Any]:
    """Load and validate ``<root>/meta.json``.

    Args:
        root: dataset folder, e.g. ``data/mvtec``.
    Returns:
        ``{"train": {cls: [entry, …]}, "test": {cls: [entry, …]}}``; each entry has
        ``img_path``, ``mask_path`` (``""`` when there is none), ``cls_name``, ``specie_name``
        and ``anomaly`` (0 or 1). A missing ``train`` section becomes ``{}``.
    Raises:
        DatasetError: the file is missing or not in that format.
    Taught in notebooks/00_setup.ipynb.
    """
    path = pathlib.Path(root) / "meta.json"
    if not os.path.lexists(path):  # anything else there (a FIFO, a folder) is refused by the JSON gate, by name
        raise DatasetError(f"{path} not found: a prepared dataset needs a meta.json at its root "
                           f"({META_FORMAT_HINT}). Prepare it with `tipsomaly prepare` "
                           "or build it from an MVTec-like folder with build_meta_from_mvtec_layout.")
    try:
        meta = read_json(path, what="meta.json")
    except JSONFileError as err:
        raise DatasetError(f"{err}; {META_FORMAT_HINT}.") from None
    if not isinstance(meta.get("test"), dict):
        raise DatasetError(f"{path} has no 'test' mapping of class -> list of samples; "
                           f"{META_FORMAT_HINT}.")
    meta.setdefault("train", {})
    for split in ("train", "test"):
        if not isinstance(meta[split], dict):
            raise DatasetError(f"{path}: '{split}' must map class names to lists; {META_FORMAT_HINT}.")
        for cls, entries in meta[split].items():
            if not isinstance(entries, list):
                raise DatasetError(f"{path}: {split}/{cls} must be a list of samples; "
                                   f"{META_FORMAT_HINT}.")
            for i, entry in enumerate(entries):
                missing = [k for k in _ENTRY_KEYS if not isinstance(entry, dict) or k not in entry]
                if missing:
                    raise DatasetError(f"{path}: {split}/{cls}[{i}] lacks {missing}; "
                                       f"{META_FORMAT_HINT}.")
                if entry["anomaly"] not in (0, 1):
                    raise DatasetError(f"{path}: {split}/{cls}[{i}] has anomaly="
                                       f"{entry['anomaly']!r}, expected 0 or 1.")
                if entry["cls_name"] != cls:
                    raise DatasetError(f"{path}: {split}/{cls}[{i}] has cls_name={entry['cls_name']!r}, "
                                       f"but it is listed under the class {cls!r}; they must agree.")
                for key in ("img_path", "mask_path"):
                    _check_relative(entry[key], f"{path}: {split}/{cls}[{i}] {key}",
                                    allow_empty=key == "mask_path")
    return meta


def _check_relative(value: Any, where: str, *, allow_empty: bool = False) -> str:
    """A path from a data file must be a relative path that stays inside its root (no ``..``)."""
    if not isinstance(value, str) or (not value and not allow_empty):
        raise DatasetError(f"{where} is {value!r}; expected a relative path string.")
    unified = value.replace("\\", "/")
    if unified.startswith("/") or (len(unified) > 1 and unified[1] == ":") or "\x00" in unified:
        raise DatasetError(f"{where} is the absolute path {value!r}; paths must be relative to the "
                           "dataset root.")
    if ".." in unified.split("/"):
        raise DatasetError(f"{where} is {value!r}, which contains '..' and leaves the dataset root; "
                           "refusing.")
    return value


def _inside(root: pathlib.Path, rel: str, where: str) -> pathlib.Path:
    """``root / rel``, refusing one that resolves (through links) outside ``root``."""
    path = root / rel
    real, root_real = os.path.realpath(path), os.path.realpath(root)
    if real != root_real and not real.startswith(root_real + os.sep):
        raise DatasetError(f"{where}: {rel!r} resolves to {real}, outside {root}; refusing.")
    return path


def write_meta(root: str | os.PathLike, meta: dict[str, Any]) -> pathlib.Path:
    """Write ``<root>/meta.json`` atomically (temp file + rename), so readers never see half a file.

    Args:
        root: dataset folder (must exist).
        meta: ``{"train": {…}, "test": {…}}`` as returned by ``read_meta``.
    Returns:
        Path of the written file.
    """
    path = pathlib.Path(root) / "meta.json"
    with atomic_file(path, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    return path


def build_meta_from_mvtec_layout(root: str | os.PathLike) -> dict[str, Any]:
    """Build the meta dict of an MVTec-like folder (MVTec AD, MPDD, DTD-Synthetic, toy data).

    Expected layout: ``<root>/<cls>/test/<defect>/<stem>.<ext>`` with masks at
    ``<root>/<cls>/ground_truth/<defect>/<stem>_mask.<ext>`` (or ``<stem>.<ext>``), normal
    images in ``test/good`` (or ``test/ok``) and training images in ``train/good``. A class is
    any sub-folder holding a ``test`` folder. Masks are paired by stem, never by position.

    Args:
        root: dataset folder.
    Returns:
        ``{"train": {cls: [...]}, "test": {cls: [...]}}`` with paths relative to ``root``.
    Raises:
        DatasetError: no class folder; a class without test images; an anomalous image
            without mask (names the image and where the mask was looked for).
    Taught in notebooks/00_setup.ipynb.
    """
    root = pathlib.Path(root)
    if not root.is_dir():
        raise DatasetError(f"Dataset folder {root} does not exist.")
    class_dirs = sorted(p for p in root.iterdir()
                        if p.is_dir() and not p.name.startswith(".") and (p / "test").is_dir())
    if not class_dirs:
        raise DatasetError(f"No class folder in {root}: expected <class>/test/<defect>/*.png "
                           "(MVTec-like layout).")
    meta: dict[str, Any] = {"train": {}, "test": {}}
    for cls_dir in class_dirs:
        cls = cls_dir.name
        test_rows = []
        for defect_dir in sorted(p for p in (cls_dir / "test").iterdir()
                                 if p.is_dir() and not p.name.startswith(".")):
            defect = defect_dir.name
            normal = defect.lower() in NORMAL_FOLDERS
            masks = {} if normal else _stem_index(cls_dir / "ground_truth" / defect)
            for img in list_images(defect_dir):
                mask_rel = ""
                if not normal:
                    mask = masks.get(img.stem)
                    if mask is None:
                        raise DatasetError(
                            f"Anomalous image {img} has no mask: looked for "
                            f"{cls_dir / 'ground_truth' / defect}/{img.stem}_mask.<ext> or "
                            f"{img.stem}.<ext>. An anomalous image without mask is an error, "
                            "not an empty mask.")
                    mask_rel = mask.relative_to(root).as_posix()
                test_rows.append({"img_path": img.relative_to(root).as_posix(),
                                  "mask_path": mask_rel, "cls_name": cls,
                                  "specie_name": defect, "anomaly": 0 if normal else 1})
        if not test_rows:
            raise DatasetError(f"Class {cls!r} has no test images in {cls_dir / 'test'}.")
        meta["test"][cls] = sorted(test_rows, key=lambda r: r["img_path"])
        train_rows = []
        for good in NORMAL_FOLDERS:
            for img in list_images(cls_dir / "train" / good):
                train_rows.append({"img_path": img.relative_to(root).as_posix(), "mask_path": "",
                                   "cls_name": cls, "specie_name": good, "anomaly": 0})
        if train_rows:
            meta["train"][cls] = sorted(train_rows, key=lambda r: r["img_path"])
    return meta


# --------------------------------------------------------------------------------- image I/O

def _open(path: pathlib.Path, what: str, decode: bool = True) -> Image.Image:
    """Open an image or mask after the file and header checks; every failure is a DatasetError naming it.

    ``decode=False`` reads the header only (size and mode), e.g. to check a mask against its image.
    """
    try:
        check_image_file(path)  # a FIFO or device listed as an image would block the read forever
        img = Image.open(path)
        check_pixels(img, f"{what} {path}")  # from the header, before decoding a pixel bomb
        if decode:
            img.load()
    except FileNotFoundError as err:
        raise DatasetError(f"{what} {path} does not exist.") from err
    except Image.DecompressionBombError as err:
        raise DatasetError(f"{what} {path} is too large to decode safely ({err}).") from None
    except ValueError as err:
        raise DatasetError(str(err)) from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DatasetError(f"Cannot read {what.lower()} {path}: {err}. The file is corrupt or "
                           "not an image; replace it (re-extract the archive).") from err
    return img


def load_image(path: str | os.PathLike, size: int | None = None) -> torch.Tensor:
    """Read an image as RGB and squash it to ``size × size`` (no crop, no normalisation).

    The same pipeline as ``TIPS.preprocess`` (:mod:`tipsomaly_lite.backbones.preprocess`): grey images are
    repeated to RGB, alpha dropped, 16-bit images scaled by 65535, antialiased bilinear resize.

    Args:
        path: image file.
        size: output side S in pixels, or None to keep the original size.
    Returns:
        ``image`` ``(3,S,S)`` float32 in [0,1].
    """
    img = _open(pathlib.Path(path), "Image")
    try:
        image = to_float_rgb(img, where=f"Image {path}")
    except ValueError as err:  # NaN, inf or out-of-range float pixels: the message names the file
        raise DatasetError(str(err)) from None
    return resize_image(image, size) if size is not None else image


def load_mask(path: str | os.PathLike, size: int | None = None) -> torch.Tensor:
    """Read a mask, binarise it (> 0) and resize it bilinearly to ``size`` then threshold at 0.5.

    Args:
        path: mask file; any non-zero pixel is defect.
        size: output side S in pixels, or None to keep the original size.
    Returns:
        ``mask`` ``(1,S,S)`` float32 in {0,1}.
    """
    return mask_tensor(binary_mask(_open(pathlib.Path(path), "Mask")), size)


# --------------------------------------------------------------------------------- dataset

def find_prepared(data_root: str | os.PathLike, key: str) -> pathlib.Path:
    """``<data_root>/<key>`` as ``tipsomaly prepare`` writes it, or ``data_root`` itself when it holds meta.json.

    Raises:
        FileNotFoundError: neither holds a meta.json (the message says how to prepare one).
    """
    root = pathlib.Path(data_root)
    for candidate in (root / key, root):
        if os.path.lexists(candidate / "meta.json"):  # not only regular files: read_meta refuses the others by name
            return candidate
    raise FileNotFoundError(f"no prepared dataset at {root / key} (nor a meta.json in {root}); prepare it with "
                            f"`tipsomaly prepare {key} --source RAW --data-root {root}` "
                            "(or make the toy one: `tipsomaly toy-data`)")



def check_dataset_key(root: str | os.PathLike, key: str, classes: list[str]) -> None:
    """Refuse a dataset key that does not match the data in ``root``.

    A prepared folder records its key in ``protocol.json``; the toy dataset (``toy_config.json``)
    under a benchmark key gets a ``UserWarning``; otherwise, for a benchmark key (industrial or
    medical), every class must be one of that benchmark's classes. Comparing the toy
    dataset with the paper's MVTec AD numbers would otherwise look like a result.

    Raises:
        DatasetError: naming the key, the folder and what was found there.
    """
    root = pathlib.Path(root)
    protocol = root / "protocol.json"
    if protocol.is_file():
        try:
            recorded = read_json(protocol, what="protocol.json").get("dataset")
        except JSONFileError as err:
            raise DatasetError(f"{err}; prepare the dataset again.") from None
        if recorded is not None and recorded != key:
            raise DatasetError(f"--dataset {key}: {root} was prepared as {recorded!r} ({protocol}); "
                               f"use --dataset {recorded} or point --data-root at the {key} data.")
        return
    if key not in DATASETS:
        return
    if (root / "toy_config.json").is_file():
        # The course stands the toy data in for a benchmark on purpose; say so, loudly, every time.
        warnings.warn(f"--dataset {key}: {root} is the synthetic toy dataset (it has toy_config.json), not "
                      f"{DATASETS[key].name}; its numbers cannot be compared with the paper's.", UserWarning,
                      stacklevel=3)
        return
    foreign = sorted(set(classes) - set(DATASETS[key].classes))
    if foreign:
        raise DatasetError(f"--dataset {key}: {root} holds classes {foreign[:5]}"
                           f"{' ...' if len(foreign) > 5 else ''} that are not {DATASETS[key].name} "
                           f"classes; this is not the {key} data (for your own or the toy data use its "
                           "own name, e.g. --dataset toy).")


def _pixel_level(root: pathlib.Path, key: str) -> bool:
    """Whether the set at ``root`` has masks: ``levels`` in its ``protocol.json``, else its registry entry."""
    protocol = root / "protocol.json"
    if protocol.is_file():
        try:
            data = read_json(protocol, what="protocol.json")
        except JSONFileError as err:
            raise DatasetError(f"{err}; prepare the dataset again.") from None
        levels = data.get("levels") if isinstance(data, dict) else None
        if levels is not None:
            if not isinstance(levels, list) or not levels or any(v not in ("image", "pixel") for v in levels):
                raise DatasetError(f"{protocol}: levels is {levels!r}; expected a list of 'image' and/or 'pixel'.")
            return "pixel" in levels
    return "pixel" in DATASETS[key].levels if key in DATASETS else True


class AnomalyDataset(torch.utils.data.Dataset):
    """Samples of one split of a prepared dataset, as tensors.

    Each item is a dict: ``image`` ``(3,S,S)`` float32 in [0,1]; ``mask`` ``(1,S,S)`` float32 in
    {0,1} (zeros for normal images); ``label`` int (1 = anomalous); ``class_name``;
    ``class_word`` (the prompt word); ``defect_type``; ``path`` (absolute image path). Works
    with the default ``DataLoader`` collation. Order is deterministic: classes sorted, then
    samples sorted by path.

    Args:
        root: ``<data_root>/<key>`` holding ``meta.json``. A plain MVTec-like folder without
            meta.json is read through ``build_meta_from_mvtec_layout``.
        split: ``"test"`` (the zero-shot protocol) or ``"train"``.
        image_size: side S in pixels (images are squashed, not cropped).
        classes: subset of class names, or None for all.
        key: dataset key for the prompt words; defaults to the folder name.
        class_word_fn: maps a class name to its prompt word, replacing ``class_word``.
    Attributes:
        pixel_level: False for an image-level set (HeadCT, BrainMRI, Br35H: ``levels`` in its
            ``protocol.json``, else its registry entry): its anomalous images have no mask, their ``mask``
            is zeros and pixel metrics are undefined.
    Raises:
        DatasetError: missing/malformed meta.json, unknown or empty class, anomalous image
            without mask; when an item is read: unreadable image or mask, or a mask whose size
            differs from its image (names both files).
    Taught in notebooks/00_setup.ipynb.
    """

    def __init__(self, root: str | os.PathLike, *, split: str = "test", image_size: int = 518,
                 classes: list[str] | tuple[str, ...] | None = None, key: str | None = None,
                 class_word_fn: Callable[[str], str] | None = None) -> None:
        self.root = pathlib.Path(root).resolve()
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
        if int(image_size) <= 0:
            raise ValueError(f"image_size must be a positive number of pixels, got {image_size!r}.")
        self.split = split
        self.image_size = int(image_size)
        key = canonical_key(key) if key is not None else None
        self.key = key if key is not None else self.root.name
        self.pixel_level = _pixel_level(self.root, self.key)
        self._word = class_word_fn or (lambda c: class_word(self.key, c))
        if (self.root / "meta.json").exists():
            meta = read_meta(self.root)
            self.meta_source = "meta.json"
        else:
            meta = build_meta_from_mvtec_layout(self.root)
            self.meta_source = "folder layout"
        table = meta[split]
        if classes is not None:
            classes = [classes] if isinstance(classes, str) else list(classes)
            twice = sorted({c for c in classes if classes.count(c) > 1})
            if twice:
                raise DatasetError(f"classes (--classes) lists {twice} more than once; each class is "
                                   "evaluated once, so name it once.")
            unknown = [c for c in classes if c not in table]
            if unknown:
                raise DatasetError(f"Classes {unknown} are not in the {split} split of {self.root}; "
                                   f"available: {sorted(table)}.")
        if key is not None:
            check_dataset_key(self.root, key, list(table))
        self.classes = sorted(classes if classes is not None else table)
        self.samples: list[dict[str, Any]] = []
        for cls in self.classes:
            rows = table[cls]
            if not rows:
                raise DatasetError(f"Class {cls!r} has no {split} samples in "
                                   f"{self.root / 'meta.json'}.")
            for row in sorted(rows, key=lambda r: r["img_path"]):
                if row["anomaly"] == 1 and not row["mask_path"] and self.pixel_level:
                    raise DatasetError(f"Anomalous image {self.root / row['img_path']} has no "
                                       f"mask_path in {self.root / 'meta.json'}; an anomalous "
                                       "image without mask is an error, not an empty mask.")
                where = f"{self.root / 'meta.json'}: {split}/{cls}"
                for field in ("img_path", "mask_path"):
                    if row[field]:
                        _inside(self.root, _check_relative(row[field], f"{where} {field}"), where)
                self.samples.append(row)
        if not self.samples:
            raise DatasetError(f"No {split} samples in {self.root}.")

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> np.ndarray:
        """``(len,)`` int64 anomaly labels, without reading any image."""
        return np.array([r["anomaly"] for r in self.samples], dtype=np.int64)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.samples[index]
        img_path = self.root / row["img_path"]
        pil = _open(img_path, "Image")
        width, height = pil.size
        image_t = resize_image(to_float_rgb(pil), self.image_size)
        if row["mask_path"]:
            mask_path = self.root / row["mask_path"]
            mask_pil = _open(mask_path, "Mask")
            if mask_pil.size != (width, height):
                raise DatasetError(f"Mask {mask_path} is {mask_pil.size[0]}x{mask_pil.size[1]} "
                                   f"but image {img_path} is {width}x{height} (width x height); "
                                   "they must match.")
            binary = binary_mask(mask_pil)
            if not row["anomaly"] and binary.any():
                raise DatasetError(f"Normal image {img_path} (anomaly=0) has a non-empty mask {mask_path} "
                                   f"({int(binary.sum())} defect pixels); fix its label or its mask in "
                                   f"{self.root / 'meta.json'}.")
            mask_t = mask_tensor(binary, self.image_size)
        else:
            mask_t = torch.zeros(1, self.image_size, self.image_size)
        return {"image": image_t.contiguous(), "mask": mask_t, "label": int(row["anomaly"]),
                "class_name": row["cls_name"], "class_word": self._word(row["cls_name"]),
                "defect_type": row["specie_name"], "path": str(img_path)}

    def __repr__(self) -> str:
        n_anom = int(self.labels.sum())
        return (f"AnomalyDataset(root={str(self.root)!r}, split={self.split!r}, "
                f"image_size={self.image_size}, classes={len(self.classes)}, "
                f"samples={len(self)} ({len(self) - n_anom} normal / {n_anom} anomalous), "
                f"from {self.meta_source})")
