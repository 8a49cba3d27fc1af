"""Nothing stale is reused, nothing is lost: the feature-cache key, atomic writes and file locks.

Resume checks, the run lock and the training history live in tests/test_training.py; downloads in
tests/test_download.py; predict/evaluate in tests/test_cli_method.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

import tipsomaly_lite.method.feature_cache as feature_cache
from tipsomaly_lite.backbones.tips.model import load_tips_files
from tipsomaly_lite.backbones.tips.tiny import TINY_ARCH, random_tips_arrays, write_npz
from tipsomaly_lite.io.atomic import LockedError, atomic_file, atomic_folder, current_umask, file_lock
from tipsomaly_lite.data.datasets import AnomalyDataset
from tipsomaly_lite.data.toy_data import make_toy_dataset
from tipsomaly_lite.method.feature_cache import FeatureCache, content_hash

SIZE = 56


@pytest.fixture
def toy(tmp_path):
    root = make_toy_dataset(tmp_path / "toy", classes=["pill"], n_train=0, n_normal=2, n_anomalous=2)
    return AnomalyDataset(root, image_size=SIZE)


def _anomalous(ds):
    return next(i for i, row in enumerate(ds.samples) if row["anomaly"] == 1)


def _rewrite_keeping_stat(path, data: bytes) -> None:
    """Replace a file's bytes but keep its size and mtime (what path+size+mtime keys cannot see)."""
    st = path.stat()
    assert len(data) == st.st_size
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


# ---- the feature-cache key covers everything that changes the tokens -------------------------

def test_same_size_same_mtime_new_content_is_a_new_entry(tiny, toy):
    # Two BMPs of one size have the same byte length: swap one's content, keep its size and mtime.
    for name, i in (("a.bmp", 0), ("b.bmp", 1)):
        with Image.open(toy.root / toy.samples[i]["img_path"]) as im:
            im.convert("RGB").save(toy.root / name)
    assert (toy.root / "a.bmp").stat().st_size == (toy.root / "b.bmp").stat().st_size
    toy.samples[0]["img_path"] = "a.bmp"
    cache = FeatureCache(tiny, SIZE, progress=False)
    first = cache.get(toy, [0])["patch_tokens"]
    _rewrite_keeping_stat(toy.root / "a.bmp", (toy.root / "b.bmp").read_bytes())
    again = cache.get(toy, [0])["patch_tokens"]
    assert cache.misses == 2, "an edited image with the same size and mtime reused stale features"
    assert not torch.equal(first, again)


def test_touching_a_file_without_changing_it_keeps_its_entry(tiny, toy):
    cache = FeatureCache(tiny, SIZE, progress=False)
    cache.get(toy, [0])
    path = toy.root / toy.samples[0]["img_path"]
    os.utime(path, ns=(1, 1))
    cache.get(toy, [0])
    assert cache.misses == 1 and cache.hits == 1  # same content, same tokens: sharing is right


def test_an_edited_mask_or_label_is_a_new_entry(tiny, toy):
    i = _anomalous(toy)
    cache = FeatureCache(tiny, SIZE, progress=False)
    before = cache.get(toy, [i])["mask"]
    mask_path = toy.root / toy.samples[i]["mask_path"]
    with Image.open(mask_path) as im:
        Image.fromarray(255 - np.asarray(im)).save(mask_path)
    after = cache.get(toy, [i])["mask"]
    assert cache.misses == 2 and not torch.equal(before, after)
    path = toy.root / toy.samples[i]["img_path"]
    assert cache.key(path, mask_path, label=1) != cache.key(path, mask_path, label=0)  # a relabelled item
    toy.samples[i].update(anomaly=0, mask_path="")  # relabelled normal, its mask dropped
    cache.get(toy, [i])
    assert cache.misses == 3


def test_input_size_dtype_and_weights_change_the_key(tiny, toy, tmp_path):
    path = toy.root / toy.samples[0]["img_path"]
    keys = {FeatureCache(tiny, s, dtype=d, progress=False).key(path)
            for s in (56, 84) for d in (torch.float16, torch.float32)}
    assert len(keys) == 4


def _tiny_pair(folder, tokenizer, tweak_block: bool):
    vision, text = random_tips_arrays(TINY_ARCH)
    if tweak_block:  # differs from the other checkpoint in one transformer block only
        vision["blocks.1.mlp.fc2.weight"] = vision["blocks.1.mlp.fc2.weight"] * np.float32(1.001)
    write_npz(folder / "v.npz", vision)
    write_npz(folder / "t.npz", text)
    return load_tips_files(folder / "v.npz", folder / "t.npz", tokenizer, variant="tiny", image_size=SIZE)


def test_checkpoints_differing_in_one_block_never_share_entries(toy, tmp_path, tiny_tokenizer_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = _tiny_pair(tmp_path / "a", tiny_tokenizer_path, tweak_block=False)
    b = _tiny_pair(tmp_path / "b", tiny_tokenizer_path, tweak_block=True)
    assert a.fingerprint() != b.fingerprint()
    shared = tmp_path / "cache"
    ca = FeatureCache(a, SIZE, folder=shared, progress=False)
    ca.get(toy, [0, 1])
    cb = FeatureCache(b, SIZE, folder=shared, progress=False)
    got = cb.get(toy, [0, 1])
    assert cb.misses == 2 and cb.hits == 0
    path = toy.root / toy.samples[0]["img_path"]
    assert ca.key(path) != cb.key(path)
    torch.testing.assert_close(got["patch_tokens"], b.encode_features(
        torch.stack([toy[0]["image"], toy[1]["image"]]))["patch_tokens"], atol=2e-3, rtol=0)


def test_weights_changed_in_place_after_the_cache_was_made(toy, tmp_path, tiny_tokenizer_path):
    model = _tiny_pair(tmp_path, tiny_tokenizer_path, tweak_block=False)
    cache = FeatureCache(model, SIZE, progress=False)
    cache.get(toy, [0])
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "blocks.0" in n).mul_(1.5)
    cache.get(toy, [0])
    assert cache.misses == 2


def test_each_file_is_hashed_once_per_process(tiny, toy, monkeypatch):
    feature_cache._HASHES.clear()
    opened = []
    real_open = open
    monkeypatch.setattr(feature_cache, "open", lambda p, *a, **k: opened.append(str(p)) or real_open(p, *a, **k),
                        raising=False)
    cache = FeatureCache(tiny, SIZE, progress=False)
    i = _anomalous(toy)
    n = next(j for j, row in enumerate(toy.samples) if row["anomaly"] == 0)
    for _ in range(3):
        cache.get(toy, [n, i])
    assert len(opened) == 3  # the normal image, the anomalous one and its mask, each once
    assert sorted(opened) == sorted(str(toy.root / p) for p in (toy.samples[n]["img_path"], toy.samples[i]["img_path"],
                                                                 toy.samples[i]["mask_path"]))


def test_a_damaged_disk_entry_is_computed_again(tiny, toy, tmp_path):
    cache = FeatureCache(tiny, SIZE, folder=tmp_path / "c", progress=False)
    want = cache.get(toy, [0])["patch_tokens"]
    (entry,) = (tmp_path / "c").glob("*/*/*.npz")
    entry.write_bytes(entry.read_bytes()[:50])  # cut short
    got = FeatureCache(tiny, SIZE, folder=tmp_path / "c", progress=False).get(toy, [0])["patch_tokens"]
    torch.testing.assert_close(got, want)


def test_content_hash_of_a_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        content_hash(tmp_path / "nope.png")


# ---- atomic writes: the user's umask, fsync before the rename -------------------------------

@pytest.fixture
def umask():
    def set_mask(mask):
        old = os.umask(mask)
        restore.append(old)

    restore = []
    yield set_mask
    for old in reversed(restore):
        os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_file_follows_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    assert current_umask() == mask
    with atomic_file(tmp_path / "meta.json", "w", encoding="utf-8") as f:
        f.write("{}")
    assert (tmp_path / "meta.json").stat().st_mode & 0o777 == mode


def test_atomic_folder_follows_the_umask(tmp_path, umask):
    umask(0o027)
    with atomic_folder(tmp_path / "ds") as tmp:
        (tmp / "x").write_text("1")
    assert (tmp_path / "ds").stat().st_mode & 0o777 == 0o750


def test_atomic_file_fsyncs_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append("replace") or real_replace(a, b))
    with atomic_file(tmp_path / "x.bin") as f:
        f.write(b"data")
    assert events[:2] == ["fsync", "replace"]
    assert (tmp_path / "x.bin").read_bytes() == b"data"


def test_atomic_file_failure_leaves_the_old_file(tmp_path):
    (tmp_path / "x.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(tmp_path / "x.txt", "w", encoding="utf-8") as f:
            f.write("new")
            raise RuntimeError("disk gone")
    assert (tmp_path / "x.txt").read_text() == "old"
    assert os.listdir(tmp_path) == ["x.txt"]


# ---- the OS-level lock used by training runs and downloads --------------------------------------

def test_file_lock_refuses_a_second_holder_and_names_the_pid(tmp_path):
    with file_lock(tmp_path / "run.lock", what="the run"):
        with pytest.raises(LockedError, match=rf"run.lock: the run is in use .*pid {os.getpid()}"):
            with file_lock(tmp_path / "run.lock", wait=False, what="the run"):
                pass
        with pytest.raises(LockedError):
            with file_lock(tmp_path / "run.lock", timeout=0.1):
                pass
    with file_lock(tmp_path / "run.lock", wait=False):  # released at the end of the block
        pass


def test_file_lock_of_a_killed_process_is_not_stale(tmp_path):
    lock = tmp_path / "run.lock"
    code = ("import sys, time\nfrom tipsomaly_lite.io.atomic import file_lock\n"
            f"with file_lock({str(lock)!r}):\n    print('held', flush=True)\n    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(LockedError, match=str(proc.pid)):
            with file_lock(lock, wait=False):
                pass
    finally:
        proc.kill()
        proc.wait()
    assert lock.exists()  # the file stays, the lock does not
    with file_lock(lock, wait=False):
        pass


def test_file_lock_waits_for_the_holder(tmp_path):
    order = []

    def hold():
        with file_lock(tmp_path / "l"):
            order.append("first")
            time.sleep(0.3)
            order.append("first done")

    t = threading.Thread(target=hold)
    t.start()
    while not order:
        time.sleep(0.01)
    with file_lock(tmp_path / "l", timeout=10):
        order.append("second")
    t.join()
    assert order == ["first", "first done", "second"]
