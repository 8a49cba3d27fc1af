"""Tests for tipsomaly_lite.data.archives: normal archives extract, hostile ones are refused."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile

import pytest

from tipsomaly_lite.data.archives import ArchiveError, extract_archive


def _add_file(tf: tarfile.TarFile, name: str, data: bytes = b"hello") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _add_special(tf: tarfile.TarFile, name: str, kind: bytes, linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    tf.addfile(info)


def _tar(path, build, mode="w"):
    with tarfile.open(path, mode) as tf:
        build(tf)
    return path


def _assert_nothing_left(tmp_path, target):
    assert not target.exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize("mode,suffix", [("w", ".tar"), ("w:gz", ".tar.gz"), ("w:xz", ".tar.xz")])
def test_tar_roundtrip(tmp_path, mode, suffix):
    def build(tf):
        _add_file(tf, "top/a/one.txt", b"1")
        _add_file(tf, "top/b/two.txt", b"22")
        _add_special(tf, "top/link_to_one", tarfile.SYMTYPE, "a/one.txt")
        _add_special(tf, "top/hard_two", tarfile.LNKTYPE, "top/b/two.txt")
    archive = _tar(tmp_path / ("ok" + suffix), build, mode)
    out = extract_archive(archive, tmp_path / "out", progress=False)
    assert (out / "top/a/one.txt").read_bytes() == b"1"
    assert (out / "top/link_to_one").read_bytes() == b"1"
    assert (out / "top/hard_two").read_bytes() == b"22"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_zip_roundtrip(tmp_path):
    with zipfile.ZipFile(tmp_path / "ok.zip", "w") as zf:
        zf.writestr("BTech/01/x.bmp", b"abc")
        zf.writestr("BTech/02/", b"")
    out = extract_archive(tmp_path / "ok.zip", tmp_path / "out", progress=False)
    assert (out / "BTech/01/x.bmp").read_bytes() == b"abc"
    assert (out / "BTech/02").is_dir()


@pytest.mark.parametrize("name", ["../evil", "good/../../evil", "/tmp/evil_abs_tipsomaly"])
def test_tar_path_escape_refused(tmp_path, name):
    archive = _tar(tmp_path / "bad.tar", lambda tf: (_add_file(tf, "fine.txt"), _add_file(tf, name)))
    with pytest.raises(ArchiveError, match="bad.tar") as info:
        extract_archive(archive, tmp_path / "out", progress=False)
    assert repr(name) in str(info.value)
    _assert_nothing_left(tmp_path, tmp_path / "out")
    assert not os.path.exists("/tmp/evil_abs_tipsomaly")


@pytest.mark.parametrize("name, kind, target", [
    ("etc_link", tarfile.SYMTYPE, "/etc"),              # absolute symlink
    ("a/up", tarfile.SYMTYPE, "../../.."),              # relative symlink escaping
    ("passwd", tarfile.LNKTYPE, "../../etc/passwd"),    # hard link escaping
])
def test_tar_link_outside_refused(tmp_path, name, kind, target):
    archive = _tar(tmp_path / "bad.tar", lambda tf: _add_special(tf, name, kind, target))
    with pytest.raises(ArchiveError, match=name):
        extract_archive(archive, tmp_path / "out", progress=False)
    _assert_nothing_left(tmp_path, tmp_path / "out")


def test_tar_symlink_chain_escape_refused(tmp_path):
    # Each link looks inside on paper, but d/x/y resolves through d/x -> .. to the root's parent.
    def build(tf):
        _add_special(tf, "d/x", tarfile.SYMTYPE, "..")
        _add_special(tf, "d/x/y", tarfile.SYMTYPE, "..")
        _add_file(tf, "d/x/y/evil")
    archive = _tar(tmp_path / "bad.tar", build)
    with pytest.raises(ArchiveError):
        extract_archive(archive, tmp_path / "out", progress=False)
    _assert_nothing_left(tmp_path, tmp_path / "out")



@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
def test_tar_device_refused(tmp_path, kind):
    archive = _tar(tmp_path / "bad.tar", lambda tf: _add_special(tf, "dev/thing", kind))
    with pytest.raises(ArchiveError, match="dev/thing"):
        extract_archive(archive, tmp_path / "out", progress=False)
    _assert_nothing_left(tmp_path, tmp_path / "out")


def test_zip_dotdot_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as zf:
        zf.writestr("ok.txt", b"ok")
        zf.writestr("../evil", b"boom")
    with pytest.raises(ArchiveError, match=r"bad\.zip.*\.\./evil"):
        extract_archive(tmp_path / "bad.zip", tmp_path / "out", progress=False)
    _assert_nothing_left(tmp_path, tmp_path / "out")


def test_zip_symlink_outside_refused(tmp_path):
    info = zipfile.ZipInfo("link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as zf:
        zf.writestr(info, "/etc")
    with pytest.raises(ArchiveError, match="link"):
        extract_archive(tmp_path / "bad.zip", tmp_path / "out", progress=False)


def test_not_an_archive_and_existing_target(tmp_path):
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"definitely not an archive" * 40)
    with pytest.raises(ArchiveError, match="junk.zip"):
        extract_archive(junk, tmp_path / "out", progress=False)
    (tmp_path / "exists").mkdir()
    archive = _tar(tmp_path / "ok.tar", lambda tf: _add_file(tf, "a.txt"))
    with pytest.raises(FileExistsError, match="exists"):
        extract_archive(archive, tmp_path / "exists", progress=False)


def test_truncated_archive_is_an_archive_error(tmp_path):
    archive = _tar(tmp_path / "ok.tar.gz", lambda tf: _add_file(tf, "a.bin", os.urandom(50_000)),
                   "w:gz")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArchiveError, match="ok.tar.gz"):
        extract_archive(archive, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
