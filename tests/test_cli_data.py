"""A pip user needs no repository checkout: ``tipsomaly fetch --list``, ``download``, ``prepare`` and
``toy-data`` do what the data_scripts do, from the installed package."""

from __future__ import annotations

import json
import warnings

import pytest

from helpers import native as nf
from tipsomaly_lite.cli import main
from tipsomaly_lite.data.registry import DATASET_KEYS
from tipsomaly_lite.data.toy_data import make_toy_dataset


def test_fetch_lists_the_variants_and_needs_a_name(capsys):
    assert main(["fetch", "--list"]) == 0
    out = capsys.readouterr().out
    assert "l14-hr" in out and "storage.googleapis.com/tips_data/" in out and "cache:" in out
    assert main(["fetch"]) == 2
    assert "name a variant" in capsys.readouterr().err


def test_download_lists_and_explains_every_dataset(capsys, tmp_path):
    assert main(["download", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(f"[{k}]" in out for k in DATASET_KEYS)
    assert main(["download"]) == 2 and "name a dataset or pass --list" in capsys.readouterr().err
    assert main(["download", "dtd", "--data-root", str(tmp_path)]) == 0  # manual: prints how to get it
    assert "Google Drive" in capsys.readouterr().out
    assert main(["download-dataset", "--list"]) == 0  # the data_scripts' name works too


def test_download_of_a_missing_archive_is_one_line(capsys, tmp_path):
    assert main(["download", "mvtec", "--archive", str(tmp_path / "nope.tar.xz"), "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tipsomaly download: error:") and len(err.strip().splitlines()) == 1


def test_download_of_a_broken_archive_is_one_line(capsys, tmp_path):
    bad = tmp_path / "broken.zip"
    bad.write_bytes(b"not a zip at all")
    with pytest.warns(UserWarning, match="Using it anyway"):
        code = main(["download", "btad", "--archive", str(bad), "--no-verify", "--no-progress",
                     "--data-root", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("tipsomaly download: error:") and len(err.strip().splitlines()) == 1


def test_prepare_converts_and_refuses_to_overwrite(tmp_path, capsys):
    src = nf.fake_dtd(tmp_path / "raw")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # fake counts differ from the published ones
        assert main(["prepare", "dtd", "--source", str(src), "--data-root", str(tmp_path / "data")]) == 0
    assert "prepared dtd at" in capsys.readouterr().out and (tmp_path / "data/dtd/meta.json").is_file()
    assert main(["prepare", "dtd", "--source", str(src), "--data-root", str(tmp_path / "data")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["prepare", "dtd", "--source", str(tmp_path / "missing"), "--data-root", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("tipsomaly prepare: error:")


def test_toy_data_is_the_packages_toy_dataset(tmp_path, capsys):
    args = ["--classes", "carpet", "--image-size", "32", "--n-anomalous", "3"]
    assert main(["toy-data", "--out", str(tmp_path / "cli"), *args]) == 0
    assert "toy dataset at" in capsys.readouterr().out
    ref = make_toy_dataset(tmp_path / "ref", classes=["carpet"], image_size=32, n_anomalous=3)
    got = json.loads((tmp_path / "cli" / "meta.json").read_text())
    assert got == json.loads((ref / "meta.json").read_text())
    assert (tmp_path / "cli" / "carpet" / "test").is_dir()
    assert main(["make-toy", "--out", str(tmp_path / "alias"), *args]) == 0
    with pytest.raises(SystemExit):  # an unknown class is refused by argparse (exit 2)
        main(["toy-data", "--out", str(tmp_path / "x"), "--classes", "nope"])
