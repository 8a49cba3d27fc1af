"""Tests for tipsomaly_lite.data.datasets: meta.json, the MVTec-like reader and AnomalyDataset."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import torch
from PIL import Image

from tipsomaly_lite.data.datasets import (
    DATASET_KEYS, AnomalyDataset, DatasetError, build_meta_from_mvtec_layout, class_word,
    load_mask, read_meta, write_meta,
)
from helpers.native import FAKE_SIZE, write_mvtec_like


@pytest.fixture
def mvtec_root(tmp_path) -> pathlib.Path:
    root = write_mvtec_like(tmp_path / "mvtec", {"metal_nut": ("bent", "color"), "carpet": ("hole",)})
    write_meta(root, build_meta_from_mvtec_layout(root))
    return root


def test_dataset_keys():
    assert DATASET_KEYS == ("mvtec", "visa", "mpdd", "btad", "sdd", "dagm", "dtd")


@pytest.mark.parametrize("key,name,word", [
    ("mvtec", "metal_nut", "metal nut"), ("visa", "pipe_fryum", "pipe fryum"),
    ("mpdd", "bracket-black", "bracket black"), ("btad", "01", "01"), ("dagm", "Class3", "Class3"),
    ("sdd", "electrical_commutators", "electrical commutators"), (None, "wood", "wood"),
])
def test_class_words(key, name, word):
    assert class_word(key, name) == word


def test_meta_from_layout(mvtec_root):
    meta = build_meta_from_mvtec_layout(mvtec_root)
    assert sorted(meta["test"]) == ["carpet", "metal_nut"]
    rows = meta["test"]["metal_nut"]
    assert len(rows) == 2 + 2 * 2 and sum(r["anomaly"] for r in rows) == 4
    for r in rows:
        if r["anomaly"]:
            # Paired by stem: the mask of test/bent/001.png is ground_truth/bent/001_mask.png.
            img = pathlib.PurePosixPath(r["img_path"])
            assert r["mask_path"] == f"metal_nut/ground_truth/{img.parent.name}/{img.stem}_mask.png"
        else:
            assert r["mask_path"] == "" and r["specie_name"] == "good"
    assert len(meta["train"]["metal_nut"]) == 2
    assert read_meta(mvtec_root) == json.loads((mvtec_root / "meta.json").read_text())


def test_sample_contract(mvtec_root):
    ds = AnomalyDataset(mvtec_root, image_size=24)
    assert len(ds) == 6 + 4
    assert ds.classes == ["carpet", "metal_nut"]
    paths = [r["img_path"] for r in ds.samples]
    assert paths == sorted(paths)  # classes sorted, then paths sorted
    labels = []
    for i in range(len(ds)):
        s = ds[i]
        assert s["image"].shape == (3, 24, 24) and s["image"].dtype == torch.float32
        assert 0.0 <= s["image"].min() and s["image"].max() <= 1.0
        assert s["mask"].shape == (1, 24, 24) and s["mask"].dtype == torch.float32
        assert set(s["mask"].unique().tolist()) <= {0.0, 1.0}
        assert (s["mask"].sum() > 0) == bool(s["label"])
        assert pathlib.Path(s["path"]).is_absolute() and pathlib.Path(s["path"]).is_file()
        assert s["class_word"] == s["class_name"].replace("_", " ")
        labels.append(s["label"])
    assert labels == ds.labels.tolist()
    assert "samples=10 (4 normal / 6 anomalous)" in repr(ds)


def test_dataloader_default_collate(mvtec_root):
    ds = AnomalyDataset(mvtec_root, image_size=16, classes=["metal_nut"])
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2, shuffle=False)))
    assert batch["image"].shape == (2, 3, 16, 16)
    assert batch["mask"].shape == (2, 1, 16, 16)
    assert batch["label"].tolist() == [ds.samples[0]["anomaly"], ds.samples[1]["anomaly"]]
    assert batch["class_name"] == ["metal_nut", "metal_nut"]
    assert batch["class_word"] == ["metal nut", "metal nut"]


def test_folder_without_meta(tmp_path):
    root = write_mvtec_like(tmp_path / "plain", {"bottle": ("broken",)})
    ds = AnomalyDataset(root, image_size=8)
    assert len(ds) == 4 and ds.meta_source == "folder layout"
    assert ds.labels.tolist() == [1, 1, 0, 0]  # "broken" sorts before "good"


def test_train_split_and_class_filter(mvtec_root):
    assert len(AnomalyDataset(mvtec_root, split="train", image_size=8)) == 4
    with pytest.raises(DatasetError, match="wood"):
        AnomalyDataset(mvtec_root, classes=["wood"])
    with pytest.raises(ValueError, match="split"):
        AnomalyDataset(mvtec_root, split="val")


def test_image_is_squashed_not_cropped(tmp_path):
    # Left half black, right half white on a 40x32 image: a crop would change the ratio.
    root = write_mvtec_like(tmp_path / "d", {"c": ("x",)}, n_bad=1, n_good=0, n_train=0)
    img = np.zeros((FAKE_SIZE[1], FAKE_SIZE[0], 3), np.uint8)
    img[:, FAKE_SIZE[0] // 2:] = 255
    Image.fromarray(img).save(root / "c/test/x/000.png")
    s = AnomalyDataset(root, image_size=20)[0]
    assert s["image"][:, :, :9].max() == 0 and s["image"][:, :, 11:].min() == 1


@pytest.mark.parametrize("values,mode", [((0, 255), "L"), ((0, 1), "L"), ((0, 7), "P")])
def test_mask_binarisation(tmp_path, values, mode):
    arr = np.zeros((32, 40), np.uint8)
    arr[8:24, 10:30] = values[1]
    img = Image.fromarray(arr, mode="L")
    if mode == "P":
        img = img.convert("P")
        img.putpalette([0, 0, 0] * 256)  # a black palette: indices, not colours, carry the ids
        img.putdata(arr.flatten().tolist())
    path = tmp_path / "m.png"
    img.save(path)
    m = load_mask(path)
    assert m.shape == (1, 32, 40)
    assert m.sum() == 16 * 20
    small = load_mask(path, size=20)
    assert set(small.unique().tolist()) == {0.0, 1.0}
    assert abs(small.mean().item() - (16 * 20) / (32 * 40)) < 0.05


def test_rgba_mask_alpha_is_not_a_defect(tmp_path):
    arr = np.zeros((10, 10, 4), np.uint8)
    arr[..., 3] = 255
    arr[2:4, 2:4, 0] = 255
    Image.fromarray(arr, "RGBA").save(tmp_path / "m.png")
    assert load_mask(tmp_path / "m.png").sum() == 4


def test_stray_files_ignored(tmp_path):
    root = write_mvtec_like(tmp_path / "d", {"bottle": ("broken",)})
    for junk in (".DS_Store", "Thumbs.db", "._000.png", "notes.txt"):
        (root / "bottle/test/good" / junk).write_bytes(b"junk")
        (root / "bottle/ground_truth/broken" / junk).write_bytes(b"junk")
    (root / ".hidden_class" / "test" / "good").mkdir(parents=True)
    meta = build_meta_from_mvtec_layout(root)
    assert list(meta["test"]) == ["bottle"] and len(meta["test"]["bottle"]) == 4


def test_case_insensitive_extensions(tmp_path):
    root = write_mvtec_like(tmp_path / "d", {"c": ("x",)}, image_ext=".PNG", mask_ext=".Png")
    meta = build_meta_from_mvtec_layout(root)
    assert sum(r["anomaly"] for r in meta["test"]["c"]) == 2
    assert len(AnomalyDataset(root, image_size=8)) == 4


def test_anomalous_image_without_mask_is_an_error(tmp_path):
    root = write_mvtec_like(tmp_path / "d", {"bottle": ("broken",)})
    (root / "bottle/ground_truth/broken/001_mask.png").unlink()
    with pytest.raises(DatasetError, match=r"bottle/test/broken/001\.png"):
        build_meta_from_mvtec_layout(root)


def test_meta_row_without_mask_is_an_error(mvtec_root):
    meta = read_meta(mvtec_root)
    row = next(r for r in meta["test"]["carpet"] if r["anomaly"])
    row["mask_path"] = ""
    write_meta(mvtec_root, meta)
    with pytest.raises(DatasetError, match=row["img_path"]):
        AnomalyDataset(mvtec_root)


def test_mask_size_mismatch_names_both(mvtec_root):
    row = next(r for r in read_meta(mvtec_root)["test"]["carpet"] if r["anomaly"])
    Image.new("L", (10, 10)).save(mvtec_root / row["mask_path"])
    ds = AnomalyDataset(mvtec_root, image_size=8, classes=["carpet"])
    index = [r["img_path"] for r in ds.samples].index(row["img_path"])
    with pytest.raises(DatasetError) as info:
        ds[index]
    msg = str(info.value)
    assert row["mask_path"] in msg and row["img_path"] in msg
    assert "10x10" in msg and f"{FAKE_SIZE[0]}x{FAKE_SIZE[1]}" in msg


def test_corrupt_image_is_named(mvtec_root):
    row = read_meta(mvtec_root)["test"]["carpet"][0]
    (mvtec_root / row["img_path"]).write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    ds = AnomalyDataset(mvtec_root, image_size=8, classes=["carpet"])
    with pytest.raises(DatasetError, match=row["img_path"]):
        ds[0]


def test_truncated_image_is_named(mvtec_root):
    row = read_meta(mvtec_root)["test"]["carpet"][0]
    path = mvtec_root / row["img_path"]
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(DatasetError, match=row["img_path"]):
        AnomalyDataset(mvtec_root, image_size=8, classes=["carpet"])[0]


def test_empty_class_is_an_error(tmp_path):
    root = write_mvtec_like(tmp_path / "d", {"bottle": ("broken",)})
    (root / "empty_cls" / "test" / "good").mkdir(parents=True)
    with pytest.raises(DatasetError, match="empty_cls"):
        build_meta_from_mvtec_layout(root)
    write_meta(root, {"train": {}, "test": {"bottle": [], "x": []}})
    with pytest.raises(DatasetError, match="bottle"):
        AnomalyDataset(root)


def test_missing_and_malformed_meta(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(DatasetError, match=r"meta\.json.*expected JSON"):
        read_meta(tmp_path / "d")
    (tmp_path / "d" / "meta.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"meta\.json is not valid JSON"):
        read_meta(tmp_path / "d")
    (tmp_path / "d" / "meta.json").write_text(json.dumps({"test": {"a": [{"img_path": "x"}]}}))
    with pytest.raises(DatasetError, match="lacks"):
        read_meta(tmp_path / "d")
    (tmp_path / "d" / "meta.json").write_text(json.dumps([1, 2]))
    with pytest.raises(DatasetError, match=r"meta\.json holds list; expected an object"):
        read_meta(tmp_path / "d")


def test_write_meta_is_atomic(tmp_path):
    meta = {"train": {}, "test": {"a": [{"img_path": "a/test/good/0.png", "mask_path": "",
                                         "cls_name": "a", "specie_name": "good", "anomaly": 0}]}}
    write_meta(tmp_path, meta)
    assert read_meta(tmp_path) == meta
    assert [p.name for p in tmp_path.iterdir()] == ["meta.json"]


def test_dataset_images_go_through_the_same_pipeline_as_tips_preprocess(mvtec_root):
    from tipsomaly_lite.backbones.preprocess import preprocess

    ds = AnomalyDataset(mvtec_root, image_size=56)
    for i in (0, len(ds) - 1):
        torch.testing.assert_close(ds[i]["image"], preprocess(ds[i]["path"], size=56)[0])
