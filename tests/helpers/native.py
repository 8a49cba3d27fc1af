"""Tiny fake copies of each benchmark's *native* layout, for tests and offline demos.

The real datasets cannot be shipped (licences) and are gigabytes; these writers produce a few
dozen small noise images arranged exactly as MVTec AD, VisA, BTAD, KolektorSDD, DAGM, MPDD and
DTD-Synthetic arrange theirs, including the awkward parts (VisA class-id masks, BTAD mixed
``.bmp``/``.png`` masks, KSDD ``_label.bmp`` files, DAGM ``Labels.txt``, OS clutter files), and the
seven medical sets as their owners publish them (HeadCT's ``labels.csv``, ``yes/``/``no/`` folders with
an unlabelled ``pred/``, ISIC's ``_Segmentation`` masks, PraNet's ``TestDataset``, TN3K's JPEG masks), so
every path of ``tipsomaly_lite.data.prepare`` runs without the real data. Each writer returns the
folder to pass as ``source_dir``. Seeded: same arguments, same files.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "FAKE_SIZE", "KSDD_FAKE_SHAPE", "KSDD_FAKE_DEFECTS", "DAGM_FAKE_SPLITS",
    "write_mvtec_like", "fake_mvtec", "fake_mpdd", "fake_dtd", "fake_btad", "fake_visa",
    "fake_ksdd", "fake_dagm", "FAKE_WRITERS",
    "fake_headct", "fake_brainmri", "fake_br35h", "fake_isic", "fake_colondb", "fake_clinicdb", "fake_tn3k",
    "MEDICAL_FAKE_COUNTS",
]

#: (width, height) of fake images; not square so that a transposed mask is caught.
FAKE_SIZE = (40, 32)
#: KSDD fake image (width, height): strips are rows [0:12], [12:24], [24:36].
KSDD_FAKE_SHAPE = (16, 36)
#: KSDD fake defects: (item, part, first row, last row inclusive). kos02/Part2 spans strips 0-1,
#: so 4 anomalous strips in all out of 3 items x 4 parts x 3 strips = 36.
KSDD_FAKE_DEFECTS = (("kos01", "Part1", 14, 18), ("kos02", "Part2", 10, 14), ("kos03", "Part0", 30, 33))
#: DAGM fake: per class and split, (image count, indices of anomalous images).
DAGM_FAKE_SPLITS = {"Train": (5, (1, 3)), "Test": (4, (2,))}


def _rng(root: pathlib.Path, seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, sum(str(root.name).encode())])


def _noise(rng: np.random.Generator, size: tuple[int, int], grey: bool = False) -> Image.Image:
    w, h = size
    if grey:
        return Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), mode="L")
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), mode="RGB")


def _blob(rng: np.random.Generator, size: tuple[int, int], value: int = 255) -> Image.Image:
    """Grey mask with one ellipse of ``value`` (the defect)."""
    w, h = size
    mask = Image.new("L", size, 0)
    x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
    ImageDraw.Draw(mask).ellipse([x0, y0, x0 + w // 4, y0 + h // 4], fill=value)
    return mask


def _save(img: Image.Image, path: pathlib.Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".png": "PNG"}[path.suffix.lower()]
    img.save(path, format=fmt)


def write_mvtec_like(root: str | os.PathLike, classes: dict[str, tuple[str, ...]], *,
                     n_train: int = 2, n_good: int = 2, n_bad: int = 2, normal: str = "good",
                     mask_suffix: str = "_mask", image_ext: str = ".png",
                     mask_ext: str | tuple[str, ...] = ".png", seed: int = 0,
                     size: tuple[int, int] = FAKE_SIZE) -> pathlib.Path:
    """An MVTec-like tree: ``<cls>/train/<normal>``, ``test/<normal>``, ``test/<defect>`` and
    ``ground_truth/<defect>/<stem><mask_suffix><mask_ext>`` (0/255).

    Args:
        root: folder to write into.
        classes: class name -> defect folder names.
        n_train, n_good, n_bad: images per class in train, test/normal and per defect.
        normal: name of the normal folder (``"good"``; BTAD uses ``"ok"``).
        mask_suffix: ``"_mask"`` (MVTec, MPDD, DTD) or ``""`` (BTAD).
        image_ext: image extension.
        mask_ext: mask extension, or a tuple cycled over masks (mixed ``.bmp``/``.png``).
        seed: random seed.
        size: image (width, height).
    Returns:
        ``root``.
    """
    root = pathlib.Path(root)
    rng = _rng(root, seed)
    exts = (mask_ext,) if isinstance(mask_ext, str) else tuple(mask_ext)
    k = 0
    for cls, defects in classes.items():
        for i in range(n_train):
            _save(_noise(rng, size), root / cls / "train" / normal / f"{i:03d}{image_ext}")
        for i in range(n_good):
            _save(_noise(rng, size), root / cls / "test" / normal / f"{i:03d}{image_ext}")
        for defect in defects:
            for i in range(n_bad):
                _save(_noise(rng, size), root / cls / "test" / defect / f"{i:03d}{image_ext}")
                ext = exts[k % len(exts)]
                k += 1
                _save(_blob(rng, size),
                      root / cls / "ground_truth" / defect / f"{i:03d}{mask_suffix}{ext}")
    return root


def fake_mvtec(root: str | os.PathLike, seed: int = 0) -> pathlib.Path:
    """MVTec AD: ``bottle`` (2 defects) and ``wood`` (1), plus OS clutter that must be ignored.

    Test counts: bottle 2 normal / 4 anomalous, wood 2 / 2.
    """
    root = write_mvtec_like(root, {"bottle": ("broken_large", "contamination"), "wood": ("scratch",)},
                            seed=seed)
    (root / "license.txt").write_text("fake\n")
    (root / "bottle" / "test" / "good" / ".DS_Store").write_bytes(b"\x00\x01junk")
    (root / "bottle" / "test" / "good" / "Thumbs.db").write_bytes(b"junk")
    (root / "wood" / "ground_truth" / "scratch" / "._000_mask.png").write_bytes(b"resource fork")
    return root


def fake_mpdd(root: str | os.PathLike, seed: int = 0) -> pathlib.Path:
    """MPDD: ``connector`` and ``tubes``, MVTec-like. Test counts: 2 / 2 each."""
    return write_mvtec_like(root, {"connector": ("parts_mismatch",), "tubes": ("anomalous",)},
                            seed=seed)


def fake_dtd(root: str | os.PathLike, seed: int = 0) -> pathlib.Path:
    """DTD-Synthetic: ``Blotchy_099`` and ``Woven_001`` with ``test/bad``. Test counts: 2 / 2 each."""
    return write_mvtec_like(root, {"Blotchy_099": ("bad",), "Woven_001": ("bad",)}, seed=seed)


def fake_btad(root: str | os.PathLike, seed: int = 0) -> pathlib.Path:
    """BTAD inside ``BTech_Dataset_transformed/``: classes ``01`` (.png images) and ``03``
    (.bmp images), ``ok``/``ko``, masks ``ground_truth/ko/<stem>.bmp|.png`` alternating.

    Returns the outer folder (as extracted from btad.zip). Test counts: 2 ok / 3 ko each.
    """
    root = pathlib.Path(root)
    inner = root / "BTech_Dataset_transformed"
    write_mvtec_like(inner, {"01": ("ko",)}, normal="ok", mask_suffix="", n_bad=3,
                     mask_ext=(".bmp", ".png"), seed=seed)
    write_mvtec_like(inner, {"03": ("ko",)}, normal="ok", mask_suffix="", n_bad=3,
                     image_ext=".bmp", mask_ext=(".png", ".bmp"), seed=seed + 1)
    return root


def fake_visa(root: str | os.PathLike, seed: int = 0) -> pathlib.Path:
    """VisA: ``candle`` and ``pcb1`` with ``split_csv/1cls.csv``; masks hold class ids 1..3.

    Per class: 3 train normal, 2 test normal, 2 test anomalous (``.JPG`` images).
    """
    root = pathlib.Path(root)
    rng = _rng(root, seed)
    rows = ["object,split,label,image,mask"]
    for cls in ("candle", "pcb1"):
        images = root / cls / "Data" / "Images"
        for i in range(5):
            name = f"{i:04d}.JPG"
            _save(_noise(rng, FAKE_SIZE), images / "Normal" / name)
            split = "train" if i < 3 else "test"
            rows.append(f"{cls},{split},normal,{cls}/Data/Images/Normal/{name},")
        for i in range(2):
            _save(_noise(rng, FAKE_SIZE), images / "Anomaly" / f"{i:03d}.JPG")
            # Class ids, not 0/255: a naive "== 255" would find no defect at all.
            _save(_blob(rng, FAKE_SIZE, value=1 + i),
                  root / cls / "Data" / "Masks" / "Anomaly" / f"{i:03d}.png")
            rows.append(f"{cls},test,anomaly,{cls}/Data/Images/Anomaly/{i:03d}.JPG,"
                        f"{cls}/Data/Masks/Anomaly/{i:03d}.png")
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def fake_ksdd(root: str | os.PathLike, seed: int = 0) -> pathlib.Path:
    """KolektorSDD: ``kos01``..``kos03`` x ``Part0``..``Part3`` grey ``.jpg`` with
    ``PartN_label.bmp``; defects as in ``KSDD_FAKE_DEFECTS``.
    """
    root = pathlib.Path(root)
    rng = _rng(root, seed)
    w, h = KSDD_FAKE_SHAPE
    for item in ("kos01", "kos02", "kos03"):
        for part in range(4):
            _save(_noise(rng, (w, h), grey=True), root / item / f"Part{part}.jpg")
            label = np.zeros((h, w), np.uint8)
            for d_item, d_part, top, bottom in KSDD_FAKE_DEFECTS:
                if (d_item, d_part) == (item, f"Part{part}"):
                    label[top:bottom + 1, 4:9] = 255
            _save(Image.fromarray(label), root / item / f"Part{part}_label.bmp")
    (root / "kos01" / "Thumbs.db").write_bytes(b"junk")
    return root


def fake_dagm(root: str | os.PathLike, seed: int = 0) -> pathlib.Path:
    """DAGM 2007: ``Class1`` and ``Class2``, each ``Train`` (5 images, 2 defective) and ``Test``
    (4 images, 1 defective), ``Label/Labels.txt`` and ``Label/<stem>_label.PNG`` masks.
    """
    root = pathlib.Path(root)
    rng = _rng(root, seed)
    for cls in ("Class1", "Class2"):
        for split, (count, defective) in DAGM_FAKE_SPLITS.items():
            folder = root / cls / split
            lines = ["1"]
            for i in range(count):
                name = f"{i + (0 if split == 'Train' else 100):04d}"
                _save(_noise(rng, FAKE_SIZE, grey=True), folder / f"{name}.PNG")
                if i in defective:
                    _save(_blob(rng, FAKE_SIZE), folder / "Label" / f"{name}_label.PNG")
                    lines.append(f"{i + 1}\t1\t{name}.PNG\t0\t{name}_label.PNG")
                else:
                    lines.append(f"{i + 1}\t0\t{name}.PNG\t0\t0")
            (folder / "Label").mkdir(parents=True, exist_ok=True)
            (folder / "Label" / "Labels.txt").write_text("\n".join(lines) + "\n")
    return root


#: Dataset key -> fake native writer.
# ------------------------------------------------------------------------------ medical layouts

def fake_headct(root: str | os.PathLike, seed: int = 0) -> pathlib.Path:
    """HeadCT as on Kaggle: ``labels.csv`` (``id, hemorrhage``, ids without padding) and ``head_ct/head_ct/NNN.png``.

    Test counts: 3 normal / 2 anomalous (ids 1 and 4 hemorrhage).
    """
    root = pathlib.Path(root)
    rng = _rng(root, seed)
    (root / "head_ct" / "head_ct").mkdir(parents=True, exist_ok=True)
    (root / "labels.csv").write_text("id, hemorrhage\n" + "".join(f"{i},{int(i in (1, 4))}\n" for i in range(5)))
    for i in range(5):
        _save(_noise(rng, FAKE_SIZE, grey=True), root / "head_ct" / "head_ct" / f"{i:03d}.png")
    return root


def _yes_no(folder: pathlib.Path, rng: np.random.Generator, n_yes: int, n_no: int, names: tuple[str, str]) -> None:
    for i in range(n_yes):
        _save(_noise(rng, FAKE_SIZE), folder / "yes" / names[0].format(i))
    for i in range(n_no):
        _save(_noise(rng, FAKE_SIZE, grey=True), folder / "no" / names[1].format(i))


def fake_brainmri(root: str | os.PathLike, seed: int = 0) -> pathlib.Path:
    """BrainMRI as on Kaggle: ``brain_tumor_dataset/{yes,no}`` and a second, different copy at the top that
    must not be used. Mixed extensions and names with spaces. Test counts: 2 normal / 3 anomalous."""
    root = pathlib.Path(root)
    rng = _rng(root, seed)
    _yes_no(root / "brain_tumor_dataset", rng, 3, 2, ("Y{}.jpg", "{} no.JPG"))
    _yes_no(root, rng, 1, 1, ("copy{}.png", "copy{}.png"))
    return root


def fake_br35h(root: str | os.PathLike, seed: int = 0) -> pathlib.Path:
    """Br35H as on Kaggle: ``yes/``, ``no/`` and the unlabelled ``pred/`` (left out). Test counts: 3 / 2."""
    root = pathlib.Path(root)
    rng = _rng(root, seed)
    _yes_no(root, rng, 2, 3, ("y{}.jpg", "no{}.jpg"))
    for i in range(2):
        _save(_noise(rng, FAKE_SIZE), root / "pred" / f"pred{i}.jpg")
    return root


def _pairs(images: pathlib.Path, masks: pathlib.Path, rng: np.random.Generator, n: int, image_name: str,
           mask_name: str) -> None:
    for i in range(n):
        _save(_noise(rng, FAKE_SIZE), images / image_name.format(i))
        _save(_blob(rng, FAKE_SIZE), masks / mask_name.format(i))


def fake_isic(root: str | os.PathLike, seed: int = 0) -> pathlib.Path:
    """ISIC 2016 part 1 test: ``ISBI2016_ISIC_Part1_Test_Data/ISIC_*.jpg`` and
    ``..._GroundTruth/ISIC_*_Segmentation.png`` (3 anomalous), with a licence file beside them."""
    root = pathlib.Path(root)
    _pairs(root / "ISBI2016_ISIC_Part1_Test_Data", root / "ISBI2016_ISIC_Part1_Test_GroundTruth", _rng(root, seed), 3,
           "ISIC_000000{}.jpg", "ISIC_000000{}_Segmentation.png")
    (root / "ISBI2016_ISIC_Part1_Test_Data" / "LICENSE.txt").write_text("fake\n")
    return root


def _fake_pranet(root: str | os.PathLike, name: str, n: int, seed: int) -> pathlib.Path:
    root = pathlib.Path(root)
    rng = _rng(root, seed)
    for other in ("CVC-ColonDB", "CVC-ClinicDB", "Kvasir"):  # PraNet's TestDataset holds five sets side by side
        _pairs(root / "TestDataset" / other / "images", root / "TestDataset" / other / "masks", rng,
               n if other == name else 1, "{}.png", "{}.png")
    return root


def fake_colondb(root: str | os.PathLike, seed: int = 0) -> pathlib.Path:
    """PraNet's ``TestDataset/`` holding CVC-ColonDB (4 anomalous) beside other sets."""
    return _fake_pranet(root, "CVC-ColonDB", 4, seed)


def fake_clinicdb(root: str | os.PathLike, seed: int = 0) -> pathlib.Path:
    """PraNet's ``TestDataset/`` holding CVC-ClinicDB (2 anomalous) beside other sets."""
    return _fake_pranet(root, "CVC-ClinicDB", 2, seed)


def fake_tn3k(root: str | os.PathLike, seed: int = 0) -> pathlib.Path:
    """TN3K: ``test-image/NNNN.jpg`` and ``test-mask/NNNN.jpg`` (JPEG masks; 3 anomalous), and train folders."""
    root = pathlib.Path(root)
    rng = _rng(root, seed)
    _pairs(root / "test-image", root / "test-mask", rng, 3, "{:04d}.jpg", "{:04d}.jpg")
    _pairs(root / "trainval-image", root / "trainval-mask", rng, 1, "{:04d}.jpg", "{:04d}.jpg")
    return root


#: ``(normal, anomalous)`` test counts of each fake medical layout.
MEDICAL_FAKE_COUNTS = {"headct": (3, 2), "brainmri": (2, 3), "br35h": (3, 2), "isic": (0, 3), "colondb": (0, 4),
                       "clinicdb": (0, 2), "tn3k": (0, 3)}


FAKE_WRITERS = {"mvtec": fake_mvtec, "visa": fake_visa, "mpdd": fake_mpdd, "btad": fake_btad,
                "sdd": fake_ksdd, "dagm": fake_dagm, "dtd": fake_dtd, "headct": fake_headct,
                "brainmri": fake_brainmri, "br35h": fake_br35h, "isic": fake_isic, "colondb": fake_colondb,
                "clinicdb": fake_clinicdb, "tn3k": fake_tn3k}
