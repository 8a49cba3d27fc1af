"""Every user-caused error is one line naming the file or argument,
exit code 2, for every command (demo and fetch included); never a traceback."""

from __future__ import annotations

import errno
import struct
import warnings
import zlib

from pathlib import Path

import pytest
from PIL import Image

from helpers.hostile import hf_folder, patch_zip_encrypted, patch_zip_method, zip_bomb, zip_with
from tipsomaly_lite.cli import main
from tipsomaly_lite.data.toy_data import make_toy_dataset

SIZE = ["--image-size", "84", "--quiet"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_toy_dataset(root / "toy", classes=["hex_nut", "carpet"], n_train=0, n_normal=2, n_anomalous=2)
    return root


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("TIPSOMALY_OFFLINE", "1")


def _fails_in_one_line(capsys, argv, *needles, code=2):
    """Run the CLI, expect exit ``code`` and one stderr line holding every needle."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny model's meaningless-results warning
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse
            rc = exc.code
    err = capsys.readouterr().err.strip()
    assert rc == code, err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


# ------------------------------------------------------------------ arguments

@pytest.mark.parametrize("argv,needle", [
    (["predict", "--images", "x.png", "--class-name", "nut", "--out", "o", "--batch-size", "0"], "--batch-size"),
    (["predict", "--images", "x.png", "--class-name", "nut", "--out", "o", "--batch-size", "-3"], "--batch-size"),
    (["evaluate", "--dataset", "toy", "--image-size", "0"], "--image-size"),
    (["evaluate", "--dataset", "toy", "--image-size", "-14"], "--image-size"),
    (["evaluate", "--dataset", "toy", "--sigma", "-1"], "--sigma"),
    (["evaluate", "--dataset", "toy", "--sigma", "1e9"], "--sigma"),
    (["evaluate", "--dataset", "toy", "--sigma", "nan"], "--sigma"),
    (["benchmark", "--sigma", "inf"], "--sigma"),
    (["evaluate", "--dataset", "toy", "--workers", "-1"], "--workers"),
    (["train", "--dataset", "toy", "--out", "r", "--lr", "0"], "--lr"),
    (["train", "--dataset", "toy", "--out", "r", "--epochs", "0"], "--epochs"),
    (["train", "--dataset", "toy", "--out", "r", "--n-tokens", "-8"], "--n-tokens"),
    (["demo", "--size", "0"], "--size"),
    (["toy-data", "--image-size", "-5"], "--image-size"),
])
def test_absurd_numbers_are_refused_in_one_line(capsys, argv, needle):
    _fails_in_one_line(capsys, argv, needle)


def test_demo_size_not_a_multiple_of_14(capsys, tmp_path):
    _fails_in_one_line(capsys, ["demo", "--size", "500", "--out", str(tmp_path / "d")], "tipsomaly demo", "500")


def test_demo_unknown_variant(capsys, tmp_path):
    _fails_in_one_line(capsys, ["demo", "--variant", "nope", "--out", str(tmp_path / "d")], "tipsomaly demo", "nope")


def test_fetch_unknown_variant(capsys):
    _fails_in_one_line(capsys, ["fetch", "nonexistent"], "tipsomaly fetch", "nonexistent")


# ------------------------------------------------------------------ --out that is a file

@pytest.mark.parametrize("command", ["demo", "train", "evaluate", "benchmark", "predict", "toy-data"])
@pytest.mark.parametrize("under", [False, True])
def test_existing_file_as_out_is_refused_before_any_work(capsys, tmp_path, data_root, command, under):
    blocker = tmp_path / "results.txt"
    blocker.write_text("precious")
    out = blocker / "sub" if under else blocker
    image = tmp_path / "img.png"
    Image.new("RGB", (28, 28)).save(image)
    argv = {"demo": ["demo"],
            "train": ["train", "--dataset", "toy", "--data-root", str(data_root), *SIZE],
            "evaluate": ["evaluate", "--dataset", "toy", "--data-root", str(data_root), *SIZE],
            "benchmark": ["benchmark", "--data-root", str(data_root), *SIZE],
            "predict": ["predict", "--images", str(image), "--class-name", "nut", *SIZE],
            "toy-data": ["toy-data"]}[command] + ["--out", str(out)]
    _fails_in_one_line(capsys, argv, f"tipsomaly {command}", "--out", "existing file")
    assert blocker.read_text() == "precious"


# ------------------------------------------------------------------ disk full

def test_disk_full_names_the_file_and_folder(capsys, tmp_path, monkeypatch):
    from tipsomaly_lite.data import toy_data

    def full(*_, **__):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "toy" / "x.png"))
    monkeypatch.setattr(toy_data, "make_toy_dataset", full)
    err = _fails_in_one_line(capsys, ["toy-data", "--out", str(tmp_path / "toy")], "disk full", "x.png",
                             "MiB free")
    assert str(tmp_path) in err


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    from tipsomaly_lite.data import toy_data

    def interrupted(*_, **__):
        raise KeyboardInterrupt
    monkeypatch.setattr(toy_data, "make_toy_dataset", interrupted)
    assert main(["toy-data", "--out", str(tmp_path / "toy")]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tipsomaly toy-data: interrupted")


def test_an_unexpected_error_is_one_line_and_a_log_with_the_traceback(tmp_path, monkeypatch, capsys):
    from tipsomaly_lite.data import toy_data

    def broken(*_, **__):
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(toy_data, "make_toy_dataset", broken)
    assert main(["toy-data", "--out", str(tmp_path / "toy")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tipsomaly toy-data: internal error: OSError")
    assert "Traceback" not in err[0]
    log = Path(err[0].split("the traceback is in ", 1)[1].split(";", 1)[0])
    text = log.read_text()
    assert "Traceback" in text and "Input/output error" in text and "broken" in text


# ------------------------------------------------------------------ damaged archives

@pytest.mark.parametrize("kind", ["truncated_tar_xz", "garbage", "encrypted_zip", "deflate64_zip", "bomb_zip"])
def test_damaged_or_unsupported_archives_are_one_line(capsys, tmp_path, kind):
    import tarfile

    archive = tmp_path / {"truncated_tar_xz": "a.tar.xz", "garbage": "a.zip"}.get(kind, "a.zip")
    if kind == "truncated_tar_xz":
        with tarfile.open(archive, "w:xz") as tf:
            tf.add(__file__, "a.py")
        archive.write_bytes(archive.read_bytes()[:200])
    elif kind == "garbage":
        archive.write_bytes(b"<html>not found</html>" * 20)
    elif kind == "bomb_zip":
        zip_bomb(archive, 2048)
    else:
        zip_with(archive, [("file", "a.png", b"x" * 300)])
        (patch_zip_encrypted if kind == "encrypted_zip" else patch_zip_method)(
            *((archive,) if kind == "encrypted_zip" else (archive, 9)))
    needle = {"encrypted_zip": "unsupported", "deflate64_zip": "Deflate64", "bomb_zip": "over the cap"}.get(
        kind, archive.name)
    _fails_in_one_line(capsys, ["download", "mpdd", "--archive", str(archive), "--data-root",
                                str(tmp_path / "data"), "--no-progress"], "tipsomaly download", needle)
    assert not (tmp_path / "data" / "raw" / "mpdd").exists()


# ------------------------------------------------------------------ weights and images

def test_truncated_safetensors_variant_is_one_line(capsys, tmp_path, tiny_tokenizer_path):
    folder = hf_folder(tmp_path / "hf", tiny_tokenizer_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    image = tmp_path / "img.png"
    Image.new("RGB", (28, 28)).save(image)
    _fails_in_one_line(capsys, ["predict", "--images", str(image), "--class-name", "nut", "--out",
                                str(tmp_path / "o"), "--variant", f"hf:{folder}", *SIZE],
                       "model.safetensors", "not a readable safetensors")


def test_malformed_config_json_is_one_line(capsys, tmp_path, tiny_tokenizer_path):
    folder = hf_folder(tmp_path / "hf", tiny_tokenizer_path, config="{oops")
    image = tmp_path / "img.png"
    Image.new("RGB", (28, 28)).save(image)
    _fails_in_one_line(capsys, ["predict", "--images", str(image), "--class-name", "nut", "--out",
                                str(tmp_path / "o"), "--variant", f"hf:{folder}", *SIZE],
                       "config.json", "not valid JSON")


def _png_header(path, width, height):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("name,size,needle", [("bomb.png", (20000, 20000), "too large"),
                                               ("big.png", (7000, 7000), "pixel cap"),
                                               ("dot.png", (1, 1), "1x1")])
def test_bad_single_image_is_reported_naming_the_file(capsys, tmp_path, name, size, needle):
    image = tmp_path / name
    if size == (1, 1):
        Image.new("RGB", size).save(image)
    else:
        _png_header(image, *size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["predict", "--images", str(image), "--class-name", "nut", "--out", str(tmp_path / "o"), *SIZE])
    err = capsys.readouterr().err
    assert rc != 0 and "Traceback" not in err
    lines = [line for line in err.splitlines() if name in line]
    assert lines and needle in lines[0], err


# ------------------------------------------------------------------ datasets

def test_dataset_key_that_does_not_match_the_data_is_refused(capsys, tmp_path):
    from helpers.native import write_mvtec_like
    from tipsomaly_lite.data.datasets import build_meta_from_mvtec_layout, write_meta

    root = write_mvtec_like(tmp_path / "mine", {"hex_nut": ("cut",)})
    write_meta(root, build_meta_from_mvtec_layout(root))
    _fails_in_one_line(capsys, ["evaluate", "--dataset", "mvtec", "--data-root", str(root), "--paper",
                                "--out", str(tmp_path / "e"), *SIZE], "--dataset mvtec", "hex_nut")


def test_toy_data_under_a_benchmark_key_is_warned_about(data_root, tmp_path):
    from tipsomaly_lite.data.datasets import AnomalyDataset

    with pytest.warns(UserWarning, match=r"--dataset mvtec: .* synthetic toy dataset .* cannot be compared"):
        AnomalyDataset(data_root / "toy", image_size=28, key="mvtec")


def test_duplicate_classes_are_refused(capsys, data_root, tmp_path):
    _fails_in_one_line(capsys, ["evaluate", "--dataset", "toy", "--data-root", str(data_root), "--classes",
                                "carpet", "carpet", "--out", str(tmp_path / "e"), *SIZE], "--classes", "carpet")


def test_truncated_prompt_safetensors_is_one_line(capsys, data_root, tmp_path):
    from safetensors.torch import save_file
    import torch

    path = tmp_path / "prompts.safetensors"
    save_file({"normal": torch.zeros(4, 64), "anomalous": torch.zeros(4, 64)}, str(path))
    path.write_bytes(path.read_bytes()[:100])
    _fails_in_one_line(capsys, ["evaluate", "--dataset", "toy", "--data-root", str(data_root), "--prompts", str(path),
                                "--out", str(tmp_path / "e"), *SIZE], "prompts.safetensors")


def test_prepare_with_a_hostile_index_is_one_line(capsys, tmp_path):
    from helpers.native import fake_visa

    src = fake_visa(tmp_path / "raw" / "visa")
    csv_path = src / "split_csv" / "1cls.csv"
    csv_path.write_text(csv_path.read_text().replace("candle/Data/Images/Normal/0000.JPG", "../../etc/passwd", 1))
    _fails_in_one_line(capsys, ["prepare", "visa", "--source", str(src), "--data-root", str(tmp_path / "data")],
                       "tipsomaly prepare", "1cls.csv line 2 image", "'..'")
