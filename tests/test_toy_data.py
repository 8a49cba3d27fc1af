"""Tests for tipsomaly_lite.data.toy_data: deterministic, readable, masks exactly on the defects."""

from __future__ import annotations

import hashlib
import json
import pathlib
import time

import numpy as np
import pytest
import torch
from PIL import Image

from tipsomaly_lite.data import toy_data
from tipsomaly_lite.data.datasets import AnomalyDataset, read_meta


def _tree_hashes(root: pathlib.Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> pathlib.Path:
    return toy_data.make_toy_dataset(tmp_path_factory.mktemp("toy") / "toy")


def test_default_dataset_layout_and_speed(tmp_path):
    start = time.perf_counter()
    root = toy_data.make_toy_dataset(tmp_path / "toy")
    assert time.perf_counter() - start < 10  # ~0.5 s on 2 cores; generous for slow CI
    meta = read_meta(root)
    assert sorted(meta["test"]) == sorted(toy_data.TOY_CLASSES)
    for cls, rows in meta["test"].items():
        assert sum(r["anomaly"] for r in rows) == toy_data.DEFAULT_N_ANOMALOUS
        assert sum(1 - r["anomaly"] for r in rows) == toy_data.DEFAULT_N_NORMAL
        assert len(meta["train"][cls]) == toy_data.DEFAULT_N_TRAIN
    kinds = {r["specie_name"] for rows in meta["test"].values() for r in rows if r["anomaly"]}
    assert kinds == set(toy_data.DEFECT_KINDS)
    assert "SYNTHETIC" in (root / "README.txt").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["toy"]  # no temp folder left behind


def test_same_seed_identical_bytes_other_seed_differs(tmp_path):
    kw = dict(image_size=48, n_train=1, n_normal=1, n_anomalous=2, classes=["carpet", "pill"])
    a = _tree_hashes(toy_data.make_toy_dataset(tmp_path / "a", seed=3, **kw))
    b = _tree_hashes(toy_data.make_toy_dataset(tmp_path / "b", seed=3, **kw))
    c = _tree_hashes(toy_data.make_toy_dataset(tmp_path / "c", seed=4, **kw))
    assert a == b
    assert a.keys() == c.keys()
    images = [k for k in a if k.endswith(".png")]
    assert all(a[k] != c[k] for k in images if "/test/" in k or "/train/" in k)


def test_more_images_keep_the_first_ones(tmp_path):
    small = _tree_hashes(toy_data.make_toy_dataset(tmp_path / "s", n_normal=2, classes=["hex_nut"]))
    big = _tree_hashes(toy_data.make_toy_dataset(tmp_path / "b", n_normal=5, classes=["hex_nut"]))
    assert all(big[k] == small[k] for k in small if k.endswith(".png"))


@pytest.mark.parametrize("cls", toy_data.TOY_CLASSES)
@pytest.mark.parametrize("kind", toy_data.DEFECT_KINDS)
def test_defect_changes_pixels_exactly_inside_mask(cls, kind):
    for i in range(3):
        sample = toy_data.render_sample(cls, np.random.default_rng([7, i]), image_size=64, defect=kind)
        changed = (sample["image"] != sample["clean"]).any(axis=2)
        assert sample["mask"].sum() >= 4
        np.testing.assert_array_equal(changed, sample["mask"])
        # The defect is visible, not a one-level flicker.
        diff = np.abs(sample["image"].astype(int) - sample["clean"].astype(int)).max(axis=2)
        assert np.median(diff[sample["mask"]]) >= 25


def test_written_files_match_the_generator(toy_root):
    # The anomalous image i of a class is rendered from rng([seed, class index, 2, i]).
    for cls in ("wood_grain", "hex_nut"):
        c = toy_data.TOY_CLASSES.index(cls)
        kind = toy_data.CLASS_DEFECTS[cls][0]
        sample = toy_data.render_sample(cls, np.random.default_rng([0, c, 2, 0]), defect=kind)
        image = np.asarray(Image.open(toy_root / cls / "test" / kind / "000.png"))
        mask = np.asarray(Image.open(toy_root / cls / "ground_truth" / kind / "000_mask.png"))
        np.testing.assert_array_equal(image, sample["image"])
        np.testing.assert_array_equal(mask, sample["mask"].astype(np.uint8) * 255)
        assert set(np.unique(mask).tolist()) == {0, 255}


def test_objects_have_defects_on_the_object(toy_root):
    for kind in toy_data.CLASS_DEFECTS["pill"]:
        mask = np.asarray(Image.open(toy_root / "pill" / "ground_truth" / kind / "000_mask.png")) > 0
        image = np.asarray(Image.open(toy_root / "pill" / "test" / kind / "000.png")).astype(int)
        clean = toy_data.render_sample("pill", np.random.default_rng(
            [0, toy_data.TOY_CLASSES.index("pill"), 2, toy_data.CLASS_DEFECTS["pill"].index(kind)]))["clean"]
        # Every defect pixel was on the bright pill, none on the dark background.
        assert clean[mask].mean() > 150
        assert image.shape == (128, 128, 3)


def test_reads_as_a_dataset(toy_root):
    ds = AnomalyDataset(toy_root, image_size=32)
    assert len(ds) == len(toy_data.TOY_CLASSES) * 8
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 32, 32)
    native = AnomalyDataset(toy_root, image_size=128)  # at 32 px a 2 px scratch may vanish
    for i in range(len(native)):
        s = native[i]
        assert (s["mask"].sum() > 0) == bool(s["label"])
    assert ds[0]["class_word"] in {"brushed metal", "carpet", "hex nut", "pill", "wood grain", "woven fabric"}


def test_cached_reuse_and_overwrite(tmp_path):
    kw = dict(image_size=32, n_train=0, n_normal=1, n_anomalous=1, classes=["carpet"])
    root = toy_data.make_toy_dataset(tmp_path / "toy", **kw)
    stamp = (root / "meta.json").stat().st_mtime_ns
    assert toy_data.make_toy_dataset(tmp_path / "toy", **kw) == root
    assert (root / "meta.json").stat().st_mtime_ns == stamp  # reused, not rewritten
    with pytest.raises(FileExistsError, match="overwrite"):
        toy_data.make_toy_dataset(tmp_path / "toy", seed=1, **kw)
    toy_data.make_toy_dataset(tmp_path / "toy", seed=1, overwrite=True, **kw)
    assert json.loads((root / "toy_config.json").read_text())["seed"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["toy"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="leather"):
        toy_data.make_toy_dataset("unused", classes=["leather"])
    with pytest.raises(ValueError, match="kind"):
        toy_data.render_sample("carpet", np.random.default_rng(0), defect="dent")
