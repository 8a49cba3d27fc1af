"""The seven medical benchmarks of the authors' code: each owner's layout read into the common format.

:func:`tipsomaly_lite.data.prepare.prepare_dataset` calls these readers through :data:`MEDICAL_PREPARERS`;
they add samples to its tree writer, which writes the MVTec-like tree, the binarised ``_mask.png`` files
and ``meta.json`` exactly as for the industrial sets. One class per dataset, named as the authors'
dataset descriptions name it (the name enters the prompts, see :data:`~tipsomaly_lite.data.registry.MEDICAL_KEYS`).

- HeadCT, BrainMRI, Br35H: labels only (a ``labels.csv``, or ``yes/`` and ``no/`` folders); anomalous
  images have no mask, so only image metrics are defined.
- ISIC 2016, CVC-ColonDB, CVC-ClinicDB, TN3K: every test image is anomalous and has a mask, paired by
  file name; only pixel metrics are defined.

Every reader fails closed: a mask with no image, an image with no label or mask, a ``labels.csv`` that
does not parse, two files for one name: a :class:`~tipsomaly_lite.data.datasets.DatasetError` naming the
file (and, as for every preparation, nothing is left in the output folder).

Taught in notebooks/06_benchmark.ipynb.
"""

from __future__ import annotations

import csv
import io
import pathlib
from typing import Any, Callable

from tipsomaly_lite.data.datasets import DatasetError, find_folder, list_images, subfolders

__all__ = ["MEDICAL_PREPARERS", "LABELS_CSV_MAX_BYTES", "read_headct_labels"]

#: The largest ``labels.csv`` read (the real one is about 2 KB for 200 rows).
LABELS_CSV_MAX_BYTES = 1 << 20


def _child(folder: pathlib.Path, name: str) -> pathlib.Path | None:
    """The sub-folder of ``folder`` called ``name`` (case-insensitively), or None."""
    return next((c for c in subfolders(folder) if c.name.lower() == name.lower()), None)


def _by_stem(files: list[pathlib.Path], folder: pathlib.Path, suffix: str = "") -> dict[str, pathlib.Path]:
    """``{stem without suffix: file}``; two files for one stem (``1.png`` and ``1.jpg``) are refused."""
    index: dict[str, pathlib.Path] = {}
    for path in files:
        stem = path.stem[: -len(suffix)] if suffix and path.stem.endswith(suffix) else path.stem
        if stem in index:
            raise DatasetError(f"Two files for {stem!r} in {folder}: {index[stem].name} and {path.name}; keep one.")
        index[stem] = path
    return index


# ------------------------------------------------------------------------------ image level

def read_headct_labels(path: pathlib.Path) -> dict[int, int]:
    """``{image id: 1 if hemorrhage else 0}`` from HeadCT's ``labels.csv`` (columns ``id, hemorrhage``).

    Raises:
        DatasetError: a file that is not UTF-8 text, too large, without those columns, with an id that is
            not a whole number, a label other than 0/1 or an id listed twice (names the file and line).
    """
    try:
        if path.stat().st_size > LABELS_CSV_MAX_BYTES:
            raise DatasetError(f"{path} is {path.stat().st_size} bytes; a HeadCT labels.csv is a few KB "
                               f"(at most {LABELS_CSV_MAX_BYTES}).")
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path} does not parse: not UTF-8 text ({err.reason} at byte {err.start}); expected "
                           "a CSV with the columns id, hemorrhage.") from None
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as err:
        raise DatasetError(f"{path} does not parse as CSV ({err}); expected the columns id, hemorrhage.") from None
    if not rows:
        raise DatasetError(f"{path} is empty; expected a header 'id, hemorrhage' and one row per image.")
    header = [c.strip().lower() for c in rows[0]]
    if "id" not in header or "hemorrhage" not in header:
        raise DatasetError(f"{path} has the columns {rows[0]}; expected id, hemorrhage.")
    i_id, i_label = header.index("id"), header.index("hemorrhage")
    labels: dict[int, int] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue  # a blank line
        if len(row) != len(header):
            raise DatasetError(f"{path} line {line} has {len(row)} fields, the header {len(header)}.")
        ident, label = row[i_id].strip(), row[i_label].strip()
        if not ident.isdigit() or len(ident) > 9:
            raise DatasetError(f"{path} line {line}: id {ident!r} is not a whole number of at most 9 digits.")
        if label not in ("0", "1"):
            raise DatasetError(f"{path} line {line}: hemorrhage {label!r}; expected 0 or 1.")
        if int(ident) in labels:
            raise DatasetError(f"{path} line {line}: id {int(ident)} is listed twice.")
        labels[int(ident)] = int(label)
    if not labels:
        raise DatasetError(f"{path} lists no image; expected one row 'id, hemorrhage' per image.")
    return labels


def _prepare_headct(source: pathlib.Path, writer: Any, **_: Any) -> dict[str, Any]:
    root = find_folder(source, lambda d: (d / "labels.csv").is_file(), "HeadCT's labels.csv")
    labels_path = writer.source_file(root / "labels.csv", "Labels file")
    labels = read_headct_labels(labels_path)

    def numbered(d: pathlib.Path) -> list[pathlib.Path]:
        return [p for p in list_images(d) if p.stem.isdigit()]

    folder = find_folder(root, lambda d: bool(numbered(d)), "HeadCT images (NNN.png)")
    images: dict[int, pathlib.Path] = {}
    for path in numbered(folder):
        if int(path.stem) in images:
            raise DatasetError(f"Two HeadCT images for id {int(path.stem)}: {images[int(path.stem)]} and {path}.")
        images[int(path.stem)] = path
    for ident, path in sorted(images.items()):
        if ident not in labels:
            raise DatasetError(f"HeadCT image {path} has no label: id {ident} is not in {labels_path}.")
    unlisted = sorted(set(labels) - set(images))
    if unlisted:
        raise DatasetError(f"{labels_path} labels id {unlisted[0]} ({len(unlisted)} ids in all) but {folder} has "
                           f"no image {unlisted[0]:03d}.png.")
    for ident, path in sorted(images.items()):
        anomaly = labels[ident]
        writer.add("test", "headct", "hemorrhage" if anomaly else "good", anomaly, path, path.name)
    return {"protocol": "all", "description": f"Every image listed in {labels_path.name} (id -> NNN.png), "
            "hemorrhage = anomalous; no masks (image level only)."}


def _prepare_yes_no(source: pathlib.Path, writer: Any, cls: str, defect: str, prefer: str | None = None
                    ) -> dict[str, Any]:
    """Images in ``yes/`` (anomalous) and ``no/`` (normal); every other folder and file is left out."""
    def has_both(d: pathlib.Path) -> bool:
        return _child(d, "yes") is not None and _child(d, "no") is not None

    root = None
    if prefer is not None:  # the published archive holds the labelled folders twice; its named copy wins
        named = [d for d in [source] + ([c for c in subfolders(source)] if source.is_dir() else [])
                 if d.name.lower() == prefer.lower() and has_both(d)]
        root = named[0] if named else None
    root = root or find_folder(source, has_both, "yes/ and no/ folders")
    left_out = [c.name + "/" for c in subfolders(root) if c.name.lower() not in ("yes", "no")]
    for folder_name, anomaly in (("no", 0), ("yes", 1)):
        folder = _child(root, folder_name)
        files = list_images(folder)
        if not files:
            raise DatasetError(f"{folder} holds no image; expected the {'anomalous' if anomaly else 'normal'} "
                               "images there.")
        for path in files:
            writer.add("test", cls, defect if anomaly else "good", anomaly, path, path.name)
    return {"protocol": "all", "description": "Every image of yes/ (anomalous) and no/ (normal); no masks "
            "(image level only)." + (f" Left out, unlabelled: {', '.join(left_out)}." if left_out else ""),
            "source_folder": str(root), "left_out": left_out}


def _prepare_brainmri(source: pathlib.Path, writer: Any, **_: Any) -> dict[str, Any]:
    return _prepare_yes_no(source, writer, "brain_mri", "tumor", prefer="brain_tumor_dataset")


def _prepare_br35h(source: pathlib.Path, writer: Any, **_: Any) -> dict[str, Any]:
    return _prepare_yes_no(source, writer, "br35h", "tumor")


# ------------------------------------------------------------------------------ pixel level

def _prepare_pairs(writer: Any, cls: str, defect: str, images_dir: pathlib.Path, masks_dir: pathlib.Path,
                   mask_suffix: str = "") -> dict[str, Any]:
    """Every image of ``images_dir`` anomalous, with the mask of the same name (plus ``mask_suffix``)."""
    images = _by_stem(list_images(images_dir), images_dir)
    masks = _by_stem(list_images(masks_dir), masks_dir, mask_suffix)
    if not images:
        raise DatasetError(f"{images_dir} holds no image.")
    for stem, mask in sorted(masks.items()):
        if stem not in images:
            raise DatasetError(f"Mask {mask} has no image: no {stem}.<ext> in {images_dir}.")
    for stem, image in sorted(images.items()):
        if stem not in masks:
            raise DatasetError(f"Image {image} has no mask: no {stem}{mask_suffix}.<ext> in {masks_dir}; every "
                               "test image of this set is anomalous, and an anomalous image without mask is an "
                               "error, not an empty mask.")
        writer.add("test", cls, defect, 1, image, image.name, masks[stem])
    return {"protocol": "test", "description": f"Every image of {images_dir.name}/ is anomalous, paired by file name "
            f"with its mask in {masks_dir.name}/ (binarised > 0); pixel level only."}


def _prepare_isic(source: pathlib.Path, writer: Any, **_: Any) -> dict[str, Any]:
    names = ("ISBI2016_ISIC_Part1_Test_Data", "ISBI2016_ISIC_Part1_Test_GroundTruth")
    root = find_folder(source, lambda d: all(_child(d, n) is not None for n in names), f"{names[0]}/ and {names[1]}/")
    return _prepare_pairs(writer, "isic", "lesion", _child(root, names[0]), _child(root, names[1]),
                          mask_suffix="_Segmentation")


def _pranet(folder_name: str, cls: str) -> Callable[..., dict[str, Any]]:
    def prepare(source: pathlib.Path, writer: Any, **_: Any) -> dict[str, Any]:
        def is_set(d: pathlib.Path) -> bool:
            return d.name.lower() == folder_name.lower() and all(_child(d, n) for n in ("images", "masks"))
        root = find_folder(source, is_set, f"{folder_name}/images/ and {folder_name}/masks/ (PraNet's TestDataset)")
        return _prepare_pairs(writer, cls, "polyp", _child(root, "images"), _child(root, "masks"))
    return prepare


def _prepare_tn3k(source: pathlib.Path, writer: Any, **_: Any) -> dict[str, Any]:
    root = find_folder(source, lambda d: all(_child(d, n) for n in ("test-image", "test-mask")),
                   "TN3K's test-image/ and test-mask/")
    return _prepare_pairs(writer, "tn3k", "nodule", _child(root, "test-image"), _child(root, "test-mask"))


#: Dataset key -> its layout reader ``(source, writer) -> protocol info``.
MEDICAL_PREPARERS: dict[str, Callable[..., dict[str, Any]]] = {
    "headct": _prepare_headct, "brainmri": _prepare_brainmri, "br35h": _prepare_br35h, "isic": _prepare_isic,
    "colondb": _pranet("CVC-ColonDB", "colon"), "clinicdb": _pranet("CVC-ClinicDB", "ClinicDB"),
    "tn3k": _prepare_tn3k,
}
