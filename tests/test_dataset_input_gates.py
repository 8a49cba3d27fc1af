"""Hostile or faulty dataset files get a clear error naming the file.

Nothing is read or written outside the source and data root, FIFOs and pixel bombs are refused
instead of hanging or eating memory, and contradictory labels or keys are never silently used.
"""

from __future__ import annotations

import json
import os
import pathlib
import struct
import threading
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from helpers import native as nf
from tipsomaly_lite.io import images as pp
from tipsomaly_lite.data import prepare
from tipsomaly_lite.data.datasets import (AnomalyDataset, DatasetError, build_meta_from_mvtec_layout,
                                          load_image, read_meta, write_meta)


def _prepare(key, src, data_root):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # fake data never matches published counts
        return prepare.prepare_dataset(key, src, data_root, verbose=False)


def _secret(tmp_path) -> pathlib.Path:
    """A file outside every source folder that a hostile index tries to reach."""
    path = tmp_path / "secret.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    return path


def _rewrite_csv(src: pathlib.Path, old: str, new: str) -> None:
    csv_path = src / "split_csv" / "1cls.csv"
    text = csv_path.read_text()
    assert old in text
    csv_path.write_text(text.replace(old, new, 1))


# ------------------------------------------------------------------ preparation stays inside

@pytest.mark.parametrize("column,evil", [
    ("image", "../secret.png"),
    ("image", "candle/../../secret.png"),
    ("image", "ABSOLUTE"),
    ("mask", "../secret.png"),
    ("mask", "ABSOLUTE"),
])
def test_visa_csv_paths_leaving_the_source_are_refused(tmp_path, column, evil):
    src = nf.fake_visa(tmp_path / "raw" / "visa")
    secret = _secret(tmp_path)
    evil = str(secret) if evil == "ABSOLUTE" else evil
    old = "candle/Data/Images/Anomaly/000.JPG" if column == "image" else "candle/Data/Masks/Anomaly/000.png"
    _rewrite_csv(src, old, evil)
    with pytest.raises(DatasetError, match=rf"1cls\.csv line \d+ {column}") as info:
        _prepare("visa", src, tmp_path / "data")
    assert repr(evil) in str(info.value) or evil in str(info.value)
    assert not (tmp_path / "data" / "visa").exists()


def test_visa_object_column_cannot_name_a_folder_outside_the_output(tmp_path):
    src = nf.fake_visa(tmp_path / "raw" / "visa")
    _rewrite_csv(src, "candle,train", "../escaped,train")
    with pytest.raises(DatasetError, match=r"1cls\.csv line 2 object"):
        _prepare("visa", src, tmp_path / "data")
    assert not (tmp_path / "data" / "escaped").exists() and not (tmp_path / "escaped").exists()


def test_visa_csv_path_through_a_link_out_of_the_source_is_refused(tmp_path):
    src = nf.fake_visa(tmp_path / "raw" / "visa")
    _secret(tmp_path)
    (src / "outside").symlink_to(tmp_path)
    _rewrite_csv(src, "candle/Data/Images/Normal/0000.JPG", "outside/secret.png")
    with pytest.raises(DatasetError, match="outside"):
        _prepare("visa", src, tmp_path / "data")


@pytest.mark.parametrize("evil", ["../../../x.PNG", "ABSOLUTE", "..\\..\\x.PNG"])
def test_dagm_label_file_paths_are_refused(tmp_path, evil):
    src = nf.fake_dagm(tmp_path / "raw" / "dagm")
    target = tmp_path / "raw" / "x.PNG"  # a real image, so only the path check can stop it
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(target)
    evil = str(target) if evil == "ABSOLUTE" else evil
    labels = src / "Class1" / "Test" / "Label" / "Labels.txt"
    labels.write_text(labels.read_text().replace("0101.PNG", evil, 1))
    with pytest.raises(DatasetError, match=r"Labels\.txt"):
        _prepare("dagm", src, tmp_path / "data")
    assert not (tmp_path / "data" / "dagm").exists()


def test_dagm_bad_anomaly_flag_is_refused(tmp_path):
    src = nf.fake_dagm(tmp_path / "raw" / "dagm")
    labels = src / "Class1" / "Test" / "Label" / "Labels.txt"
    lines = labels.read_text().splitlines()
    lines[1] = lines[1].replace("\t1\t", "\t7\t").replace("\t0\t0100", "\t7\t0100")
    labels.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match="anomaly flag '7'"):
        _prepare("dagm", src, tmp_path / "data")


@pytest.mark.parametrize("what", ["image", "mask"])
def test_copying_never_follows_a_link_out_of_the_source(tmp_path, what):
    src = nf.fake_mvtec(tmp_path / "raw" / "mvtec")
    secret = _secret(tmp_path)
    cls = sorted(p for p in src.iterdir() if p.is_dir())[0]
    if what == "image":
        victim = sorted((cls / "train" / "good").iterdir())[0]
    else:
        victim = sorted(p for p in (cls / "ground_truth").rglob("*") if p.is_file())[0]
    victim.unlink()
    victim.symlink_to(secret)
    with pytest.raises(DatasetError, match=rf"{victim.name}.*outside the source folder"):
        _prepare("mvtec", src, tmp_path / "data")
    assert not (tmp_path / "data" / "mvtec").exists()


def test_links_inside_the_source_are_still_followed(tmp_path):
    src = nf.fake_mvtec(tmp_path / "raw" / "mvtec")
    cls = sorted(p for p in src.iterdir() if p.is_dir())[0]
    first, second = sorted((cls / "train" / "good").iterdir())[:2]
    second.unlink()
    second.symlink_to(first)  # a duplicate kept as a link: harmless, inside the source
    out = _prepare("mvtec", src, tmp_path / "data")
    copied = out / cls.name / "train" / "good" / second.name
    assert copied.is_file() and not copied.is_symlink()


# ------------------------------------------------------------------ meta.json stays inside

@pytest.fixture
def toy_root(tmp_path) -> pathlib.Path:
    root = nf.write_mvtec_like(tmp_path / "ds", {"carpet": ("hole",)})
    write_meta(root, build_meta_from_mvtec_layout(root))
    return root


def _edit_meta(root: pathlib.Path, edit) -> None:
    meta = json.loads((root / "meta.json").read_text())
    edit(meta)
    (root / "meta.json").write_text(json.dumps(meta))


def _first_anomalous(meta):
    return next(r for r in meta["test"]["carpet"] if r["anomaly"])


@pytest.mark.parametrize("field,value", [
    ("img_path", "../secret.png"),
    ("img_path", "carpet/../../secret.png"),
    ("img_path", "/etc/passwd"),
    ("mask_path", "../../secret.png"),
    ("mask_path", "C:/Windows/win.ini"),
    ("img_path", 42),
])
def test_meta_paths_leaving_the_dataset_root_are_refused(toy_root, field, value):
    _edit_meta(toy_root, lambda m: _first_anomalous(m).__setitem__(field, value))
    with pytest.raises(DatasetError, match=rf"meta\.json: test/carpet\[\d+\] {field}"):
        read_meta(toy_root)
    with pytest.raises(DatasetError, match="meta.json"):
        AnomalyDataset(toy_root, image_size=28)


def test_meta_path_through_a_link_out_of_the_root_is_refused(toy_root, tmp_path):
    _secret(tmp_path)
    (toy_root / "elsewhere").symlink_to(tmp_path)
    _edit_meta(toy_root, lambda m: m["test"]["carpet"][0].__setitem__("img_path", "elsewhere/secret.png"))
    with pytest.raises(DatasetError, match="outside"):
        AnomalyDataset(toy_root, image_size=28)


# ------------------------------------------------------------------ resources

def _png_header(path: pathlib.Path, width: int, height: int) -> pathlib.Path:
    """A PNG whose header claims ``width x height`` (only a stub of pixel data follows)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("side", [7000, 20000])  # over our cap; over PIL's own bomb limit
def test_pixel_bomb_is_refused_naming_the_file(tmp_path, side):
    path = _png_header(tmp_path / "bomb.png", side, side)
    for read in (load_image, pp.to_float_rgb):
        with pytest.raises(ValueError, match=r"bomb\.png.*(pixel cap|too large)"):
            read(path)


def test_pixel_cap_is_below_pils_own():
    assert pp.MAX_PIXELS < Image.MAX_IMAGE_PIXELS


def test_one_pixel_image_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "dot.png"
    Image.new("RGB", (1, 1)).save(path)
    with pytest.raises(ValueError, match=r"dot\.png.*1x1"):
        pp.to_float_rgb(path)


def test_pixel_bomb_listed_in_a_dataset_is_refused(toy_root):
    row = read_meta(toy_root)["test"]["carpet"][0]
    _png_header(toy_root / row["img_path"], 7000, 7000)
    index = next(i for i, r in enumerate(AnomalyDataset(toy_root, image_size=28).samples)
                 if r["img_path"] == row["img_path"])
    with pytest.raises(DatasetError, match="pixel cap"):
        AnomalyDataset(toy_root, image_size=28)[index]


def _fifo_read_does_not_hang(read, path):
    outcome = {}

    def run():
        try:
            read(path)
        except Exception as exc:  # noqa: BLE001 - the test inspects whatever was raised
            outcome["error"] = exc
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(5)
    if thread.is_alive():  # unblock the reader so the test process can end
        with open(path, "wb"):
            pass
        pytest.fail(f"reading the FIFO {path} hung")
    return outcome.get("error")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_listed_in_a_dataset_is_refused_not_hung(toy_root):
    row = read_meta(toy_root)["test"]["carpet"][0]
    path = toy_root / row["img_path"]
    path.unlink()
    os.mkfifo(path)
    dataset = AnomalyDataset(toy_root, image_size=28)
    index = next(i for i, r in enumerate(dataset.samples) if r["img_path"] == row["img_path"])
    error = _fifo_read_does_not_hang(lambda _: dataset[index], path)
    assert isinstance(error, DatasetError) and "FIFO" in str(error) and path.name in str(error)
    error = _fifo_read_does_not_hang(pp.to_float_rgb, path)
    assert isinstance(error, ValueError) and "FIFO" in str(error)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_listed_in_visa_csv_is_refused_not_hung(tmp_path):
    src = nf.fake_visa(tmp_path / "raw" / "visa")
    victim = src / "candle/Data/Images/Anomaly/000.JPG"
    victim.unlink()
    os.mkfifo(victim)
    error = _fifo_read_does_not_hang(lambda _: _prepare("visa", src, tmp_path / "data"), victim)
    assert isinstance(error, DatasetError) and "000.JPG" in str(error)


# ------------------------------------------------------------------ contradictions

def test_normal_image_with_a_non_empty_mask_is_refused(toy_root):
    def edit(meta):
        anomalous = _first_anomalous(meta)
        normal = next(r for r in meta["test"]["carpet"] if not r["anomaly"])
        normal["mask_path"] = anomalous["mask_path"]
    _edit_meta(toy_root, edit)
    dataset = AnomalyDataset(toy_root, image_size=28)
    index = next(i for i, r in enumerate(dataset.samples) if not r["anomaly"] and r["mask_path"])
    with pytest.raises(DatasetError, match="Normal image .* non-empty mask"):
        dataset[index]


def test_normal_image_with_an_empty_mask_is_fine(toy_root):
    empty = toy_root / "carpet" / "ground_truth" / "empty_mask.png"
    Image.fromarray(np.zeros((nf.FAKE_SIZE[1], nf.FAKE_SIZE[0]), np.uint8)).save(empty)
    _edit_meta(toy_root, lambda m: next(r for r in m["test"]["carpet"] if not r["anomaly"]).__setitem__(
        "mask_path", "carpet/ground_truth/empty_mask.png"))
    dataset = AnomalyDataset(toy_root, image_size=28)
    index = next(i for i, r in enumerate(dataset.samples) if not r["anomaly"] and r["mask_path"])
    assert dataset[index]["mask"].sum() == 0


def test_cls_name_differing_from_its_class_key_is_refused(toy_root):
    _edit_meta(toy_root, lambda m: m["test"]["carpet"][0].__setitem__("cls_name", "bottle"))
    with pytest.raises(DatasetError, match="cls_name='bottle'.*class 'carpet'"):
        read_meta(toy_root)


def test_duplicate_classes_are_refused(toy_root):
    with pytest.raises(DatasetError, match=r"--classes.*\['carpet'\] more than once"):
        AnomalyDataset(toy_root, image_size=28, classes=["carpet", "carpet"])


def test_dataset_key_not_matching_the_classes_is_refused(tmp_path):
    root = nf.write_mvtec_like(tmp_path / "toy", {"woven_fabric": ("hole",), "carpet": ("cut",)})
    write_meta(root, build_meta_from_mvtec_layout(root))
    with pytest.raises(DatasetError, match=r"--dataset mvtec.*\['woven_fabric'\].*not MVTec AD"):
        AnomalyDataset(root, image_size=28, key="mvtec")
    assert len(AnomalyDataset(root, image_size=28, key="toy")) > 0  # its own name is fine


def test_dataset_key_not_matching_protocol_json_is_refused(tmp_path):
    src = nf.fake_visa(tmp_path / "raw" / "visa")
    out = _prepare("visa", src, tmp_path / "data")
    with pytest.raises(DatasetError, match="--dataset mvtec: .* was prepared as 'visa'"):
        AnomalyDataset(out, image_size=28, key="mvtec")
    assert len(AnomalyDataset(out, image_size=28, key="visa")) > 0


def test_a_meta_json_that_is_not_a_regular_file_is_named_not_called_missing(tmp_path):
    import os

    from tipsomaly_lite.data.datasets import DatasetError, find_prepared, read_meta

    (tmp_path / "toy").mkdir()
    os.mkfifo(tmp_path / "toy" / "meta.json")  # reading it would block forever
    assert find_prepared(tmp_path, "toy") == tmp_path / "toy"
    with pytest.raises(DatasetError, match=r"meta\.json is not a regular file"):
        read_meta(tmp_path / "toy")
