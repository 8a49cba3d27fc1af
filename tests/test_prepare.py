"""Tests for tipsomaly_lite.data.prepare on fake native layouts (no real dataset, no network)."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import runpy
import shutil
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest
from PIL import Image
from sklearn.model_selection import train_test_split

from helpers import native as nf
from tipsomaly_lite.data import prepare
from tipsomaly_lite.data import registry
from tipsomaly_lite.data.datasets import AnomalyDataset, DatasetError, read_meta
from tipsomaly_lite.data.registry import DATASET_KEYS
from tipsomaly_lite.io.download import DownloadError, sha256_file

REPO = pathlib.Path(__file__).resolve().parents[1]


def _prepare(key, tmp_path, **kw):
    src = nf.FAKE_WRITERS[key](tmp_path / "raw" / key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # fake data never matches published counts
        return prepare.prepare_dataset(key, src, tmp_path / "data", verbose=False, **kw)


def _counts(root, split="test"):
    meta = read_meta(root)
    return {c: (sum(1 - r["anomaly"] for r in rows), sum(r["anomaly"] for r in rows))
            for c, rows in meta[split].items()}


def _assert_binary_masks(root):
    for row in (r for rows in read_meta(root)["test"].values() for r in rows if r["anomaly"]):
        values = set(np.unique(np.asarray(Image.open(root / row["mask_path"]))).tolist())
        assert values == {0, 255}, row["mask_path"]
        assert row["mask_path"].endswith("_mask.png")


def _no_leftovers(data_root):
    return [p.name for p in pathlib.Path(data_root).iterdir() if p.name.startswith(".")] == []


def test_registry_matches_spec():
    assert set(registry.DATASETS) == set(DATASET_KEYS) | set(registry.MEDICAL_KEYS)  # industrial + medical
    direct = {k for k, s in registry.DATASETS.items() if s.url}
    assert direct == {"mvtec", "visa", "btad", "sdd"}
    assert registry.DATASETS["visa"].sha256 == \
        "2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362"
    assert registry.DATASETS["btad"].url.endswith("btad/btad.zip")
    mvtec = registry.DATASETS["mvtec"]
    assert sum(n for n, _ in mvtec.class_counts.values()) == mvtec.test_normal == 467
    assert sum(a for _, a in mvtec.class_counts.values()) == mvtec.test_anomalous == 1258
    assert len(mvtec.classes) == 15 and len(registry.DATASETS["visa"].classes) == 12
    assert registry.DATASETS["sdd"].class_word("electrical_commutators") == "electrical commutators"
    for key in DATASET_KEYS:
        assert key in prepare.instructions(key)


def test_mvtec(tmp_path):
    out = _prepare("mvtec", tmp_path)
    assert out == tmp_path / "data" / "mvtec"
    assert _counts(out) == {"bottle": (2, 4), "wood": (2, 2)}  # .DS_Store/Thumbs.db ignored
    assert _counts(out, "train") == {"bottle": (2, 0), "wood": (2, 0)}
    _assert_binary_masks(out)
    protocol = json.loads((out / "protocol.json").read_text())
    assert protocol["dataset"] == "mvtec" and protocol["class_words"]["bottle"] == "bottle"
    ds = AnomalyDataset(out, image_size=16)
    assert len(ds) == 10 and ds[0]["image"].shape == (3, 16, 16)
    assert _no_leftovers(tmp_path / "data")


def test_published_count_mismatch_warns_naming_class(tmp_path):
    src = nf.fake_mvtec(tmp_path / "raw")
    with pytest.warns(UserWarning, match=r"class 'bottle': 2 normal / 4 anomalous, published 20 / 63"):
        prepare.prepare_dataset("mvtec", src, tmp_path / "data", verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the published counts themselves raise no warning
        assert prepare.check_published_counts("mvtec", dict(registry.DATASETS["mvtec"].class_counts)) == []
    with pytest.warns(UserWarning, match="KolektorSDD"):
        prepare.check_published_counts("sdd", {"electrical_commutators": (285, 54)})


def test_prints_counts(tmp_path, capsys):
    src = nf.fake_mpdd(tmp_path / "raw")
    with pytest.warns(UserWarning, match="MPDD"):
        prepare.prepare_dataset("mpdd", src, tmp_path / "data")
    out = capsys.readouterr().out
    assert "connector" in out and "published 176 / 282" in out


def test_visa_class_id_masks(tmp_path):
    out = _prepare("visa", tmp_path)
    assert _counts(out) == {"candle": (2, 2), "pcb1": (2, 2)}
    assert _counts(out, "train") == {"candle": (3, 0), "pcb1": (3, 0)}
    _assert_binary_masks(out)  # source masks hold ids 1 and 2, written as 255
    raw_mask = np.asarray(Image.open(tmp_path / "raw/visa/candle/Data/Masks/Anomaly/001.png"))
    prepared = np.asarray(Image.open(out / "candle/ground_truth/anomaly/001_mask.png"))
    assert set(np.unique(raw_mask).tolist()) == {0, 2}
    np.testing.assert_array_equal(prepared > 0, raw_mask > 0)


def test_btad_mixed_mask_extensions(tmp_path):
    out = _prepare("btad", tmp_path)
    assert _counts(out) == {"01": (2, 3), "03": (2, 3)}
    rows = read_meta(out)["test"]["03"]
    assert {r["specie_name"] for r in rows} == {"ok", "ko"}
    assert all(r["img_path"].endswith(".bmp") for r in rows)
    _assert_binary_masks(out)
    ds = AnomalyDataset(out, image_size=8)
    assert ds[0]["class_word"] == "01"


def test_ksdd_strips_and_split(tmp_path):
    out = _prepare("sdd", tmp_path)
    meta = read_meta(out)
    test, train = meta["test"][registry.KSDD_CLASS], meta["train"][registry.KSDD_CLASS]
    anomalous = sorted(pathlib.PurePosixPath(r["img_path"]).stem for r in test if r["anomaly"])
    # kos02/Part2 has rows 10-14: across the strip border at 12, so two anomalous strips.
    assert anomalous == ["kos01_Part1_1", "kos02_Part2_0", "kos02_Part2_1", "kos03_Part0_2"]
    # 36 strips - 4 anomalous = 32 normal -> 24 train / 8 test.
    assert len(train) == 24 and sum(1 - r["anomaly"] for r in test) == 8
    normal_names = sorted(
        (f"kos{i:02d}_Part{p}_{k}" for i in (1, 2, 3) for p in range(4) for k in range(3)),
        key=prepare._natural_key)
    normal_names = [n for n in normal_names if n not in anomalous]
    expected_train, expected_test = train_test_split(normal_names, test_size=0.25, random_state=42)
    got_test = sorted(pathlib.PurePosixPath(r["img_path"]).stem for r in test if not r["anomaly"])
    assert got_test == sorted(expected_test)
    assert sorted(pathlib.PurePosixPath(r["img_path"]).stem for r in train) == sorted(expected_train)
    strip = Image.open(out / next(r["img_path"] for r in test if r["anomaly"]))
    assert strip.size == (16, 12)
    mask = np.asarray(Image.open(out / "electrical_commutators/ground_truth/defect/kos02_Part2_0_mask.png"))
    assert mask.shape == (12, 16) and (mask[10:12] == 255).any() and not mask[:10].any()
    protocol = json.loads((out / "protocol.json").read_text())
    assert "random_state=42" in protocol["description"]
    assert protocol["class_words"] == {"electrical_commutators": "electrical commutators"}


def test_ksdd_missing_label_is_an_error(tmp_path):
    src = nf.fake_ksdd(tmp_path / "raw")
    (src / "kos02" / "Part3_label.bmp").unlink()
    with pytest.raises(DatasetError, match=r"kos02/Part3\.jpg"):
        prepare.prepare_dataset("sdd", src, tmp_path / "data", verbose=False)
    assert not (tmp_path / "data" / "sdd").exists() and _no_leftovers(tmp_path / "data")


def test_dagm_official(tmp_path):
    out = _prepare("dagm", tmp_path)
    assert _counts(out) == {"Class1": (3, 1), "Class2": (3, 1)}
    assert _counts(out, "train") == {"Class1": (3, 0), "Class2": (3, 0)}
    assert json.loads((out / "protocol.json").read_text())["protocol"] == "official"
    _assert_binary_masks(out)
    row = next(r for r in read_meta(out)["test"]["Class1"] if r["anomaly"])
    assert row["img_path"] == "Class1/test/defect/0102.PNG"


def test_dagm_balanced(tmp_path):
    out = _prepare("dagm", tmp_path, protocol="balanced")
    assert _counts(out) == {"Class1": (3, 3), "Class2": (3, 3)}
    assert _counts(out, "train") == {"Class1": (3, 0), "Class2": (3, 0)}
    protocol = json.loads((out / "protocol.json").read_text())
    assert protocol["protocol"] == "balanced" and "sorted" in protocol["description"]
    names = sorted(pathlib.PurePosixPath(r["img_path"]).name for r in read_meta(out)["test"]["Class1"])
    # Anomalous: Train 0001, 0003 and Test 0102; normal: the first three in sorted order.
    assert names == ["test_0102.PNG", "train_0000.PNG", "train_0001.PNG", "train_0002.PNG",
                     "train_0003.PNG", "train_0004.PNG"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no published totals for the balanced protocol
        prepare.check_published_counts("dagm", _counts(out), protocol="balanced")


def test_dagm_nested_class_folders(tmp_path):
    src = nf.fake_dagm(tmp_path / "raw")
    for cls in ("Class1", "Class2"):  # the Kaggle copy: ClassN/ClassN/{Train,Test}
        inner = src / cls / cls
        inner.mkdir()
        for split in ("Train", "Test"):
            (src / cls / split).rename(inner / split)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out = prepare.prepare_dataset("dagm", src, tmp_path / "data", verbose=False)
    assert _counts(out) == {"Class1": (3, 1), "Class2": (3, 1)}


def test_dagm_protocol_validation(tmp_path):
    src = nf.fake_dagm(tmp_path / "raw")
    with pytest.raises(ValueError, match="balanced"):
        prepare.prepare_dataset("dagm", src, tmp_path / "data", protocol="random", verbose=False)
    with pytest.raises(ValueError, match="dagm only"):
        prepare.prepare_dataset("mvtec", src, tmp_path / "data", protocol="balanced")


@pytest.mark.parametrize("key,expected", [
    ("mpdd", {"connector": (2, 2), "tubes": (2, 2)}),
    ("dtd", {"Blotchy_099": (2, 2), "Woven_001": (2, 2)}),
])
def test_mvtec_like(tmp_path, key, expected):
    out = _prepare(key, tmp_path)
    assert _counts(out) == expected
    _assert_binary_masks(out)


def test_failed_prepare_leaves_nothing(tmp_path):
    src = nf.fake_mvtec(tmp_path / "raw")
    (src / "wood" / "ground_truth" / "scratch" / "001_mask.png").unlink()
    with pytest.raises(DatasetError, match=r"wood/test/scratch/001\.png"):
        prepare.prepare_dataset("mvtec", src, tmp_path / "data", verbose=False)
    assert list((tmp_path / "data").iterdir()) == []


def test_mask_size_mismatch_in_source(tmp_path):
    src = nf.fake_btad(tmp_path / "raw")
    bad = next((src / "BTech_Dataset_transformed/01/ground_truth/ko").iterdir())
    Image.new("L", (7, 7)).save(bad, format="PNG" if bad.suffix == ".png" else "BMP")
    with pytest.raises(DatasetError, match=r"7x7.*40x32") as info:
        prepare.prepare_dataset("btad", src, tmp_path / "data", verbose=False)
    assert bad.name in str(info.value)


def test_existing_output_and_overwrite(tmp_path):
    out = _prepare("mpdd", tmp_path)
    with pytest.raises(FileExistsError, match="overwrite"):
        prepare.prepare_dataset("mpdd", tmp_path / "raw" / "mpdd", tmp_path / "data")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        again = prepare.prepare_dataset("mpdd", tmp_path / "raw" / "mpdd", tmp_path / "data",
                                        overwrite=True, verbose=False, link=False)
    assert again == out and _counts(out) == {"connector": (2, 2), "tubes": (2, 2)}
    assert _no_leftovers(tmp_path / "data")


def test_download_manual_dataset_prints_instructions(tmp_path, capsys):
    assert prepare.download_dataset("dagm", tmp_path) is None
    assert "mhskjelvareid" in capsys.readouterr().out
    assert not (tmp_path / "raw").exists()


def _zip_tree(folder: pathlib.Path, dest: pathlib.Path) -> pathlib.Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(folder).as_posix())
    return dest


def test_download_with_local_archive(tmp_path, monkeypatch):
    archive = _zip_tree(nf.fake_btad(tmp_path / "native"), tmp_path / "btad.zip")
    with pytest.raises(DownloadError, match="no-verify"):
        prepare.download_dataset("btad", tmp_path / "data", archive=archive, progress=False)
    assert not (tmp_path / "data" / "raw" / "btad").exists()
    with pytest.warns(UserWarning, match="anyway"):
        raw = prepare.download_dataset("btad", tmp_path / "data", archive=archive, verify=False,
                                       progress=False)
    assert (raw / "BTech_Dataset_transformed" / "01" / "test" / "ok").is_dir()
    # The right checksum is accepted silently.
    monkeypatch.setitem(registry.DATASETS, "btad", dataclasses.replace(
        registry.DATASETS["btad"], sha256=sha256_file(archive)))
    shutil.rmtree(raw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        raw = prepare.download_dataset("btad", tmp_path / "data", archive=archive, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out = prepare.prepare_dataset("btad", raw, tmp_path / "data", verbose=False)
    assert _counts(out) == {"01": (2, 3), "03": (2, 3)}


def test_download_uses_downloader_with_published_checksum(tmp_path, monkeypatch):
    archive = _zip_tree(nf.fake_ksdd(tmp_path / "native"), tmp_path / "KolektorSDD.zip")
    calls = []

    def fake_download(url, dest, *, sha256=None, desc=None, progress=True):
        calls.append((url, pathlib.Path(dest), sha256))
        pathlib.Path(dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(archive, dest)
        return pathlib.Path(dest)

    monkeypatch.delenv("TIPSOMALY_OFFLINE", raising=False)
    monkeypatch.setattr(prepare, "download", fake_download)
    raw = prepare.download_dataset("sdd", tmp_path / "data", progress=False)
    src = registry.DATASETS["sdd"]
    assert calls == [(src.url, tmp_path / "data" / "downloads" / "KolektorSDD.zip", src.sha256)]
    assert (raw / "kos01" / "Part0.jpg").is_file()
    monkeypatch.setenv("TIPSOMALY_OFFLINE", "1")
    with pytest.raises(DownloadError, match="OFFLINE"):
        prepare.download_dataset("visa", tmp_path / "data", progress=False)


def _script_main(script):
    return runpy.run_path(str(REPO / "data_scripts" / script), run_name="data_script")["main"]


@pytest.mark.parametrize("script", ["download_dataset.py", "prepare_dataset.py", "make_toy_dataset.py"])
def test_scripts_help(script, capsys):
    with pytest.raises(SystemExit) as info:
        _script_main(script)(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage:" in out and "python data_scripts/" in out  # the docstring's examples


def test_download_script_lists_and_explains(capsys, tmp_path):
    assert _script_main("download_dataset.py")(["--list"]) == 0
    out = capsys.readouterr().out
    assert all(f"[{k}]" in out for k in DATASET_KEYS)
    assert _script_main("download_dataset.py")(["dtd", "--data-root", str(tmp_path)]) == 0
    assert "Google Drive" in capsys.readouterr().out


def test_toy_script(tmp_path, capsys):
    main = _script_main("make_toy_dataset.py")
    assert main(["--out", str(tmp_path / "toy"), "--classes", "carpet", "--image-size", "32"]) == 0
    assert _counts(tmp_path / "toy") == {"carpet": (4, 4)}


def test_prepare_script_end_to_end(tmp_path):
    src = nf.fake_dtd(tmp_path / "raw")
    cmd = [sys.executable, str(REPO / "data_scripts" / "prepare_dataset.py"), "dtd",
           "--source", str(src), "--data-root", str(tmp_path / "data")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Blotchy_099" in result.stdout and (tmp_path / "data/dtd/meta.json").is_file()


def test_prepare_script_reports_errors(tmp_path, capsys):
    main = _script_main("prepare_dataset.py")
    src = nf.fake_dtd(tmp_path / "raw")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert main(["dtd", "--source", str(src), "--data-root", str(tmp_path / "data")]) == 0
    assert main(["dtd", "--source", str(src), "--data-root", str(tmp_path / "data")]) == 2  # the CLI's codes
    assert "already exists" in capsys.readouterr().err
    assert main(["visa", "--source", str(tmp_path / "nowhere"), "--data-root", str(tmp_path)]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_download_from_a_real_http_server_end_to_end(tmp_path, monkeypatch):
    """The real path: HTTP download with checksum, safe extraction, preparation."""
    import functools
    import http.server
    import threading

    from tipsomaly_lite.io.download import sha256_file as digest

    served = tmp_path / "served"
    served.mkdir()
    archive = _zip_tree(nf.fake_ksdd(tmp_path / "native"), served / "KolektorSDD.zip")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/KolektorSDD.zip"
        local = dataclasses.replace(registry.DATASETS["sdd"], url=url, sha256=digest(archive))
        monkeypatch.setitem(registry.DATASETS, "sdd", local)
        monkeypatch.delenv("TIPSOMALY_OFFLINE", raising=False)
        raw = prepare.download_dataset("sdd", tmp_path / "data", progress=False)
    finally:
        server.shutdown()
    assert (tmp_path / "data" / "downloads" / "KolektorSDD.zip").read_bytes() == archive.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # fake data: counts differ from the paper's
        out = prepare.prepare_dataset("sdd", raw, tmp_path / "data", verbose=False)
    assert (out / "meta.json").is_file()
