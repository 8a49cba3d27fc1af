"""The benchmarks: where they come from, and how each native layout becomes one format.

``download_dataset`` fetches (or explains how to fetch) an archive and extracts it safely into
``<data_root>/raw/<key>/``. ``prepare_dataset`` turns that native layout into
``<data_root>/<key>/``: an MVTec-like tree (``<cls>/{train,test}/<defect>/…`` and binarised
0/255 masks ``<cls>/ground_truth/<defect>/<stem>_mask.png``), a ``meta.json`` that
``tipsomaly_lite.data.datasets.AnomalyDataset`` reads, and a ``protocol.json`` recording the split
protocol. Work happens in a hidden temporary folder renamed at the end, so an interrupted run
leaves nothing that looks finished. None of the datasets is shipped with this repository. The seven
medical layouts are read by :mod:`tipsomaly_lite.data.prepare_medical`.

Taught in notebooks/00_setup.ipynb.
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
import re
import shutil
import warnings
from typing import Any, Callable

import numpy as np
from PIL import Image

from tipsomaly_lite.io.archives import extract_archive
from tipsomaly_lite.io.atomic import atomic_folder
from tipsomaly_lite.io.guard import check_apart, check_replaceable, write_marker
from tipsomaly_lite.data.datasets import (
    DatasetError, _check_relative, _inside, _open, build_meta_from_mvtec_layout, find_folder, list_images, subfolders,
    write_meta,
)
from tipsomaly_lite.data.prepare_medical import MEDICAL_PREPARERS
from tipsomaly_lite.data.registry import (DAGM_PROTOCOLS, DATASETS, KSDD_CLASS, KSDD_RANDOM_STATE, KSDD_TEST_SIZE,
                                          canonical_key, class_word, dataset_source)
from tipsomaly_lite.io.images import binary_mask
from tipsomaly_lite.io.download import DownloadError, download, sha256_file
from tipsomaly_lite.offline import offline_forced

__all__ = ["download_dataset", "prepare_dataset", "check_published_counts", "instructions"]


def instructions(key: str) -> str:
    """Human-readable text: what the dataset is, its licence and how to get and prepare it.

    Taught in notebooks/00_setup.ipynb.
    """
    src = dataset_source(key)
    where = src.url or "no direct link (manual download)"
    counts = (f"{src.test_normal} normal / {src.test_anomalous} anomalous test images"
              if src.test_normal is not None else "test counts not published")
    return (f"{src.name} [{src.key}] - licence {src.licence}; {counts}.\n"
            f"  Source: {where}\n  {src.instructions}")


# -------------------------------------------------------------------------------- download

def download_dataset(key: str, data_root: str | os.PathLike, *, archive: str | os.PathLike | None = None,
                     verify: bool = True, progress: bool = True) -> pathlib.Path | None:
    """Download (or take a local archive), check its SHA-256 and extract it into ``raw/<key>``.

    ``mvtec``, ``visa``, ``btad`` and ``sdd`` download from the owners into
    ``<data_root>/downloads/`` (resuming if interrupted). ``mpdd``, ``dagm``, ``dtd`` and the medical
    sets have no direct link: without ``archive`` this prints how to get them and returns None.

    Args:
        key: one of ``ALL_DATASET_KEYS`` (or an alias: ``cvc-colondb``, ``cvc-clinicdb``).
        data_root: folder holding ``downloads/``, ``raw/`` and the prepared datasets.
        archive: an archive you downloaded yourself; it is checked and extracted instead.
        verify: refuse an ``archive`` whose SHA-256 differs from the published one.
        progress: show progress bars.
    Returns:
        ``<data_root>/raw/<key>`` (the ``--source`` for ``prepare_dataset``), or None when the
        data has to be fetched by hand first.
    Raises:
        DownloadError: network failure or checksum mismatch.
    Taught in notebooks/00_setup.ipynb.
    """
    src = dataset_source(key)
    key = src.key  # an alias (cvc-colondb) extracts under its key
    data_root = pathlib.Path(data_root)
    raw = data_root / "raw" / key
    if raw.exists():
        print(f"{key}: already extracted at {raw}; delete it to extract again.")
        return raw
    if archive is not None:
        archive = pathlib.Path(archive)
        if not archive.is_file():
            raise FileNotFoundError(f"--archive {archive} does not exist.")
        if src.sha256 is not None:
            actual = sha256_file(archive)
            if actual != src.sha256:
                message = (f"{archive} has SHA-256 {actual} but the published {src.name} archive "
                           f"has {src.sha256}.")
                if verify:
                    raise DownloadError(message + " It may be damaged or a different version; "
                                        "download it again, or pass --no-verify to use it anyway.")
                warnings.warn(message + " Using it anyway (--no-verify).", stacklevel=2)
    elif src.url is None:
        print(instructions(key))
        return None
    else:
        if offline_forced():
            raise DownloadError(f"TIPSOMALY_OFFLINE=1 is set, so {src.url} is not downloaded. "
                                f"Unset it, or fetch the file by hand and pass --archive.")
        archive = download(src.url, data_root / "downloads" / src.archive_name, sha256=src.sha256,
                           desc=key, progress=progress)
    extract_archive(archive, raw, progress=progress)
    print(f"{key}: extracted to {raw}")
    return raw


# ----------------------------------------------------------------------------- tree writer

def _natural_key(text: str) -> list:
    """Sort key that orders ``Part2`` before ``Part10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


class _TreeWriter:
    """Writes images and binarised masks into the MVTec-like output tree and collects meta rows."""

    def __init__(self, out: pathlib.Path, link: bool, source: pathlib.Path | None = None,
                 masks_required: bool = True) -> None:
        self.out = out
        self.link = link
        self.source = source
        self.masks_required = masks_required  # False for an image-level set (HeadCT...): it has no masks
        self.meta: dict[str, dict[str, list]] = {"train": {}, "test": {}}

    def source_file(self, path: pathlib.Path, what: str) -> pathlib.Path:
        """The real path of a source file, refusing one whose links lead out of the source folder."""
        if self.source is None:
            return path
        return _source_file(self.source, path, what)

    def _place(self, src: pathlib.Path, dest: pathlib.Path) -> None:
        for part in (dest.parent.relative_to(self.out)).parts + (dest.name,):
            _check_relative(part, f"output name for {src}")
        src = self.source_file(src, "Image")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            raise DatasetError(f"Two source images map to {dest} (second one: {src}).")
        if self.link:
            try:
                os.link(src, dest)  # no copy of multi-GB data when raw/ is on the same disk
                return
            except OSError:
                pass
        shutil.copyfile(src, dest)

    def add(self, split: str, cls: str, defect: str, anomaly: int, image: pathlib.Path | np.ndarray,
            name: str, mask: pathlib.Path | np.ndarray | None = None) -> None:
        """Add one sample. ``image``: a file to link/copy or an ``(H,W[,3])`` uint8 array
        (saved as PNG); ``mask``: a file (any non-zero is defect) or an ``(H,W)`` bool array."""
        rel_img = pathlib.PurePosixPath(cls, split, defect, name)
        dest = self.out / rel_img
        if isinstance(image, np.ndarray):
            dest.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(dest, format="PNG")
            size = (image.shape[1], image.shape[0])
            src_desc = f"{name} (generated)"
        else:
            image = self.source_file(image, "Image")  # before even its header is read
            size = _image_size(image) if anomaly else None  # header only; pixels are not needed
            self._place(image, dest)
            src_desc = str(image)
        rel_mask = ""
        if anomaly and (mask is not None or self.masks_required):
            if mask is None:
                raise DatasetError(f"Anomalous image {src_desc} has no mask; an anomalous image "
                                   "without mask is an error, not an empty mask.")
            if isinstance(mask, np.ndarray):
                binary = mask.astype(bool)
                mask_desc = "its mask"
            else:
                mask = self.source_file(mask, "Mask")
                with _open(mask, "Mask") as pil:
                    binary = binary_mask(pil)
                mask_desc = f"mask {mask}"
            if (binary.shape[1], binary.shape[0]) != size:
                raise DatasetError(f"Mask size {binary.shape[1]}x{binary.shape[0]} ({mask_desc}) "
                                   f"differs from image size {size[0]}x{size[1]} ({src_desc}).")
            stem = pathlib.PurePosixPath(name).stem
            rel = pathlib.PurePosixPath(cls, "ground_truth", defect, f"{stem}_mask.png")
            (self.out / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(binary.astype(np.uint8) * 255).save(self.out / rel, format="PNG")
            rel_mask = str(rel)
        self.meta[split].setdefault(cls, []).append({
            "img_path": str(rel_img), "mask_path": rel_mask, "cls_name": cls,
            "specie_name": defect, "anomaly": int(anomaly)})

    def sorted_meta(self) -> dict[str, dict[str, list]]:
        return {split: {cls: sorted(rows, key=lambda r: r["img_path"])
                        for cls, rows in sorted(table.items())}
                for split, table in self.meta.items()}


def _source_file(source: pathlib.Path, path: pathlib.Path, what: str) -> pathlib.Path:
    """``path`` resolved, if it is a regular file inside ``source`` (links followed), else DatasetError."""
    real = pathlib.Path(os.path.realpath(path))
    source_real = os.path.realpath(source)
    if not str(real).startswith(source_real + os.sep):
        raise DatasetError(f"{what} {path} resolves to {real}, outside the source folder {source}; "
                           "refusing to read or copy it.")
    if real.exists() and not real.is_file():
        raise DatasetError(f"{what} {path} is not a regular file (a folder, FIFO or device); refusing "
                           "to read it.")
    return real


def _listed(root: pathlib.Path, rel: str, where: str) -> pathlib.Path:
    """A path listed in a dataset's own index file: relative, no ``..``, resolving inside ``root``."""
    return _inside(root, _check_relative(rel, where), where)


def _image_size(path: pathlib.Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    with _open(path, "Image", decode=False) as pil:
        return pil.size


# ------------------------------------------------------------------------ native layouts

def _prepare_mvtec_like(source: pathlib.Path, writer: _TreeWriter, **_: Any) -> dict[str, Any]:
    root = find_folder(source, lambda d: any((c / "test").is_dir() for c in subfolders(d)),
                     "an MVTec-like folder (<class>/test/<defect>/...)")
    meta = build_meta_from_mvtec_layout(root)
    for split in ("train", "test"):
        for cls, rows in meta[split].items():
            for row in rows:
                writer.add(split, cls, row["specie_name"], row["anomaly"], root / row["img_path"],
                           pathlib.PurePosixPath(row["img_path"]).name,
                           root / row["mask_path"] if row["mask_path"] else None)
    return {"protocol": "official", "description": "The dataset's own train/test folders, "
            "unchanged; masks paired by stem and rewritten as 0/255 PNG."}


def _prepare_visa(source: pathlib.Path, writer: _TreeWriter, **_: Any) -> dict[str, Any]:
    root = find_folder(source, lambda d: (d / "split_csv" / "1cls.csv").is_file(),
                     "split_csv/1cls.csv (VisA)")
    csv_path = root / "split_csv" / "1cls.csv"
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        expected = {"object", "split", "label", "image", "mask"}
        if not reader.fieldnames or not expected <= {c.strip() for c in reader.fieldnames}:
            raise DatasetError(f"{csv_path} has columns {reader.fieldnames}; expected "
                               f"{sorted(expected)}.")
        rows = [{k.strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    for line, row in enumerate(rows, start=2):
        split, label = row["split"].lower(), row["label"].lower()
        if split not in ("train", "test") or label not in ("normal", "anomaly"):
            raise DatasetError(f"{csv_path} line {line}: split={row['split']!r}, "
                               f"label={row['label']!r}; expected train|test and normal|anomaly.")
        anomaly = int(label == "anomaly")
        where = f"{csv_path} line {line}"
        _check_relative(row["object"], f"{where} object")
        if "/" in row["object"].replace("\\", "/"):
            raise DatasetError(f"{where}: object {row['object']!r} must be a plain class name.")
        image = _listed(root, row["image"], f"{where} image")
        if anomaly and not row["mask"]:
            raise DatasetError(f"{where}: anomalous image {image} has an empty "
                               "mask column.")
        mask = _listed(root, row["mask"], f"{where} mask") if anomaly else None
        writer.add(split, row["object"], "anomaly" if anomaly else "good", anomaly, image,
                   image.name, mask)
    return {"protocol": "1cls", "description": "split_csv/1cls.csv (one-class split); "
            "masks hold class ids and are binarised with > 0."}


def _prepare_sdd(source: pathlib.Path, writer: _TreeWriter, **_: Any) -> dict[str, Any]:
    from sklearn.model_selection import train_test_split

    root = find_folder(source, lambda d: any(c.name.lower().startswith("kos") for c in subfolders(d)),
                     "KolektorSDD item folders (kos01/ ...)")
    strips_normal: list[tuple[str, np.ndarray]] = []
    n_images = 0
    for item in subfolders(root):
        if not item.name.lower().startswith("kos"):
            continue
        files = list_images(item)
        labels = {p.stem[: -len("_label")]: p for p in files if p.stem.endswith("_label")}
        for img_path in sorted((p for p in files if not p.stem.endswith("_label")),
                               key=lambda p: _natural_key(p.stem)):
            label_path = labels.get(img_path.stem)
            if label_path is None:
                raise DatasetError(f"KSDD image {img_path} has no label {img_path.stem}_label.bmp "
                                   "next to it.")
            img_path = writer.source_file(img_path, "Image")
            label_path = writer.source_file(label_path, "Mask")
            with _open(img_path, "Image") as pil:
                image = np.asarray(pil.convert("L"))
            with _open(label_path, "Mask") as pil:
                label = binary_mask(pil)
            if label.shape != image.shape:
                raise DatasetError(f"Label {label_path} is {label.shape[1]}x{label.shape[0]} but "
                                   f"image {img_path} is {image.shape[1]}x{image.shape[0]}.")
            n_images += 1
            h = image.shape[0]
            for k, (top, bottom) in enumerate([(0, h // 3), (h // 3, 2 * h // 3), (2 * h // 3, h)]):
                name = f"{item.name}_{img_path.stem}_{k}.png"
                strip, strip_label = image[top:bottom], label[top:bottom]
                if strip_label.any():
                    writer.add("test", KSDD_CLASS, "defect", 1, strip, name, strip_label)
                else:
                    strips_normal.append((name, strip))
    if not n_images:
        raise DatasetError(f"No KSDD images (kosXX/PartN.jpg) found in {root}.")
    # Sorted by (item folder, part number, strip index) before the seeded split; see protocol.
    strips_normal.sort(key=lambda t: _natural_key(t[0]))
    train, test = train_test_split(strips_normal, test_size=KSDD_TEST_SIZE,
                                   random_state=KSDD_RANDOM_STATE)
    for split, chosen in (("train", train), ("test", test)):
        for name, strip in chosen:
            writer.add(split, KSDD_CLASS, "good", 0, strip, name)
    return {"protocol": "strips-75-25",
            "description": "Each image and label cut into rows [0:H//3], [H//3:2H//3], [2H//3:H]; "
            "a strip is anomalous iff its label strip has a non-zero pixel. Normal strips, sorted "
            "by (item folder, part number, strip index) in natural order, are split with "
            f"sklearn train_test_split(test_size={KSDD_TEST_SIZE}, random_state="
            f"{KSDD_RANDOM_STATE}); test = that 25% plus every anomalous strip.",
            "images": n_images, "class_word": class_word("sdd", KSDD_CLASS)}


def _read_dagm_labels(split_dir: pathlib.Path) -> list[tuple[str, int, str]]:
    """Rows ``(image name, anomaly, mask name or "")`` of a DAGM ``Labels.txt``."""
    for candidate in (split_dir / "Label" / "Labels.txt", split_dir / "Labels.txt"):
        if candidate.is_file():
            break
    else:
        raise DatasetError(f"No Labels.txt in {split_dir / 'Label'}: DAGM lists each image as "
                           "'<id> <0|1> <image>.PNG <0> <mask>.PNG' there.")
    rows = []
    for line in candidate.read_text(encoding="utf-8", errors="replace").splitlines():
        tokens = line.split()
        # The first line is a bare count/flag; data rows name an image in their third field.
        if len(tokens) >= 3 and pathlib.Path(tokens[2]).suffix.lower() in (".png", ".bmp"):
            mask = tokens[4] if len(tokens) >= 5 and tokens[4] not in ("0", "") else ""
            if tokens[1] not in ("0", "1"):
                raise DatasetError(f"{candidate}: line {line!r} has anomaly flag {tokens[1]!r}; expected 0 or 1.")
            for name in (tokens[2], mask):
                if name and (pathlib.PurePath(name.replace("\\", "/")).name != name.replace("\\", "/")):
                    raise DatasetError(f"{candidate}: {name!r} is a path, not a file name in its folder; "
                                       "refusing (DAGM lists bare names such as 0001.PNG).")
            rows.append((tokens[2], int(tokens[1]), mask))
    if not rows:
        raise DatasetError(f"{candidate} lists no images; expected lines like "
                           "'1 1 0001.PNG 0 0001_label.PNG'.")
    return rows


def _dagm_samples(class_dir: pathlib.Path,
                  split: str) -> list[tuple[str, pathlib.Path, int, pathlib.Path | None]]:
    """``(split, image, anomaly, mask or None)`` for one DAGM class and split, sorted by name."""
    split_dir = next((d for d in subfolders(class_dir) if d.name.lower() == split.lower()), None)
    if split_dir is None:
        raise DatasetError(f"DAGM class folder {class_dir} has no {split}/ folder.")
    label_dir = split_dir / "Label"
    label_files = {p.name.lower(): p for p in list_images(label_dir)}
    samples = []
    for image_name, anomaly, mask_name in sorted(_read_dagm_labels(split_dir)):
        image = _listed(split_dir, image_name, f"{split_dir}/Label/Labels.txt image")
        if not image.is_file():
            raise DatasetError(f"{split_dir}/Label/Labels.txt lists {image_name}, but {image} "
                               "does not exist.")
        mask = None
        if anomaly:
            stem = pathlib.Path(image_name).stem
            mask = label_files.get(mask_name.lower()) if mask_name else None
            mask = mask or next((p for n, p in label_files.items()
                                 if pathlib.Path(n).stem == f"{stem}_label".lower()), None)
            if mask is None:
                raise DatasetError(f"DAGM anomalous image {image} has no mask "
                                   f"{label_dir}/{stem}_label.PNG.")
        samples.append((split.lower(), image, anomaly, mask))
    return samples


def _prepare_dagm(source: pathlib.Path, writer: _TreeWriter, *, protocol: str | None = None,
                  **_: Any) -> dict[str, Any]:
    protocol = protocol or "official"
    if protocol not in DAGM_PROTOCOLS:
        raise ValueError(f"DAGM protocol must be one of {DAGM_PROTOCOLS}, got {protocol!r}.")

    def is_class(d: pathlib.Path) -> bool:
        return re.fullmatch(r"class\d+", d.name.lower()) is not None and any(
            c.name.lower() == "test" for c in subfolders(d))

    find_folder(source, lambda d: any(is_class(c) for c in subfolders(d)),
              "DAGM class folders (Class1/Test/...)")
    # Some copies nest each class one level deeper (Class1/Class1/Test): collect them all.
    found: dict[str, pathlib.Path] = {}
    level = [source]
    for _ in range(4):
        level = [c for d in level for c in subfolders(d)]
        for c in level:
            if is_class(c):
                if c.name in found:
                    raise DatasetError(f"Two DAGM folders named {c.name}: {found[c.name]} and {c}; "
                                       "keep one.")
                found[c.name] = c
        level = [c for c in level if not is_class(c)]
    class_dirs = sorted(found.values(), key=lambda d: _natural_key(d.name))
    for class_dir in class_dirs:
        cls = class_dir.name
        train = _dagm_samples(class_dir, "Train")
        test = _dagm_samples(class_dir, "Test")
        if protocol == "official":
            plan = [("test", s, s[1].name) for s in test]
            plan += [("train", s, s[1].name) for s in train if not s[2]]
        else:
            merged = train + test  # already sorted by (split, file name)
            anomalous = [s for s in merged if s[2]]
            normal = [s for s in merged if not s[2]]
            n = len(anomalous)
            plan = [("test", s, f"{s[0]}_{s[1].name}") for s in anomalous + normal[:n]]
            plan += [("train", s, f"{s[0]}_{s[1].name}") for s in normal[n:]]
        for split, (_, image, anomaly, mask), name in plan:
            writer.add(split, cls, "defect" if anomaly else "good", anomaly, image, name, mask)
    if protocol == "official":
        description = ("The official DAGM Test split (Labels.txt decides anomaly); train = the "
                       "normal images of the official Train split.")
    else:
        description = ("Balanced: Train and Test merged; test = every anomalous image plus as many "
                       "normal images, the first ones in sorted (split, file name) order; train = "
                       "the remaining normal images. The published script took normal images in "
                       "unsorted directory order, so its exact subset is not reproducible; this "
                       "one is deterministic. File names are prefixed with train_/test_.")
    return {"protocol": protocol, "description": description}


_PREPARERS: dict[str, Callable[..., dict[str, Any]]] = {
    "mvtec": _prepare_mvtec_like, "mpdd": _prepare_mvtec_like, "dtd": _prepare_mvtec_like,
    "btad": _prepare_mvtec_like, "visa": _prepare_visa, "sdd": _prepare_sdd,
    "dagm": _prepare_dagm,
}


# ------------------------------------------------------------------------------ checking

def _counts(meta: dict[str, Any], split: str = "test") -> dict[str, tuple[int, int]]:
    out = {}
    for cls, rows in meta[split].items():
        n_anom = sum(r["anomaly"] for r in rows)
        out[cls] = (len(rows) - n_anom, n_anom)
    return out


def check_published_counts(key: str, counts: dict[str, tuple[int, int]], *,
                           protocol: str | None = None) -> list[str]:
    """Compare prepared test counts with the published ones; warn (not fail) on a difference.

    Args:
        key: dataset key.
        counts: ``{class: (normal, anomalous)}`` test counts of the prepared dataset.
        protocol: the split protocol; published totals only apply to the default one.
    Returns:
        The mismatch messages (also emitted together as one ``UserWarning``).
    Taught in notebooks/00_setup.ipynb.
    """
    src = dataset_source(key)
    if key == "dagm" and protocol not in (None, "official"):
        return []
    problems = []
    if src.class_counts:
        for cls, expected in src.class_counts.items():
            got = counts.get(cls)
            if got != expected:
                got_text = "missing" if got is None else f"{got[0]} normal / {got[1]} anomalous"
                problems.append(f"class {cls!r}: {got_text}, published {expected[0]} / {expected[1]}")
    missing = [c for c in src.classes if c not in counts]
    if missing and not src.class_counts:
        problems.append(f"classes missing: {missing}")
    if src.test_normal is not None:
        total = (sum(n for n, _ in counts.values()), sum(a for _, a in counts.values()))
        if total != (src.test_normal, src.test_anomalous):
            per_class = ", ".join(f"{c} {n}/{a}" for c, (n, a) in sorted(counts.items()))
            problems.append(f"total {total[0]} normal / {total[1]} anomalous, published "
                            f"{src.test_normal} / {src.test_anomalous} (per class: {per_class})")
    if problems:
        warnings.warn(f"{src.name} [{key}] test counts differ from the published ones: "
                      + "; ".join(problems) + ". Check that the download is complete.",
                      UserWarning, stacklevel=2)
    return problems


# ------------------------------------------------------------------------------- prepare

def prepare_dataset(key: str, source_dir: str | os.PathLike, data_root: str | os.PathLike, *,
                    protocol: str | None = None, link: bool = True, overwrite: bool = False,
                    check_counts: bool = True, verbose: bool = True) -> pathlib.Path:
    """Convert a dataset from its native layout into ``<data_root>/<key>/`` + ``meta.json``.

    Args:
        key: one of ``ALL_DATASET_KEYS`` (or an alias: ``cvc-colondb``, ``cvc-clinicdb``).
        source_dir: the extracted native dataset (e.g. ``<data_root>/raw/<key>``); the
            expected folder is searched up to three levels below it.
        data_root: output parent folder.
        protocol: DAGM only: ``"official"`` (default, the Test split) or ``"balanced"``.
        link: hard-link images instead of copying them when possible (saves disk space).
        overwrite: replace an existing prepared folder.
        check_counts: warn when test counts differ from the published ones.
        verbose: print per-class counts.
    Returns:
        ``<data_root>/<key>``, holding the tree, ``meta.json`` and ``protocol.json``.
    Raises:
        DatasetError: the native data is incomplete or inconsistent (names the file).
        FileExistsError: the output exists and ``overwrite`` is False.
    Taught in notebooks/00_setup.ipynb.
    """
    key = canonical_key(key)
    src = dataset_source(key)
    if protocol is not None and key != "dagm":
        raise ValueError(f"protocol= applies to dagm only, not {key!r}.")
    source = pathlib.Path(source_dir)
    data_root = pathlib.Path(data_root)
    out = data_root / key
    check_apart(out, {"--source": source}, flag="--data-root")  # never write over what we read
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=True (--overwrite) to "
                              "prepare it again.")
    check_replaceable(out, flag="--data-root")  # --overwrite replaces only a folder we wrote
    with atomic_folder(out, "preparing") as tmp:
        writer = _TreeWriter(tmp, link=link, source=source, masks_required="pixel" in src.levels)
        info = (_PREPARERS.get(key) or MEDICAL_PREPARERS[key])(source, writer, protocol=protocol)
        meta = writer.sorted_meta()
        if not meta["test"]:
            raise DatasetError(f"No test images found for {key} in {source}.")
        counts = _counts(meta)
        info = {"dataset": key, "source": str(source.resolve()), **info,
                "test_counts": {c: {"normal": n, "anomalous": a} for c, (n, a) in counts.items()},
                "class_words": {c: class_word(key, c) for c in counts}, "domain": src.domain,
                "levels": list(src.levels)}
        write_meta(tmp, meta)
        (tmp / "protocol.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
        write_marker(tmp, "prepare")
    if verbose:
        _print_counts(key, counts, show_published=key != "dagm" or protocol in (None, "official"))
    if check_counts:
        check_published_counts(key, counts, protocol=protocol)
    return out


def _print_counts(key: str, counts: dict[str, tuple[int, int]], show_published: bool = True) -> None:
    width = max(5, *(len(c) for c in counts))
    print(f"{key}: test images per class (normal / anomalous)")
    for cls, (n, a) in sorted(counts.items()):
        print(f"  {cls:<{width}}  {n:5d} / {a:5d}")
    total = (sum(n for n, _ in counts.values()), sum(a for _, a in counts.values()))
    src = DATASETS[key]
    published = (f"  (published {src.test_normal} / {src.test_anomalous})"
                 if src.test_normal is not None and show_published else "")
    print(f"  {'total':<{width}}  {total[0]:5d} / {total[1]:5d}{published}")

