"""Tests for tipsomaly_lite.io.archives: normal archives extract, hostile ones are refused."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile

import pytest

from tipsomaly_lite.io.archives import ArchiveError, extract_archive


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


# --- links that escape only once later links exist; nothing made outside first

from helpers.hostile import (patch_zip_encrypted, patch_zip_method, tar_gz_with_huge_member,  # noqa: E402
                                   tar_with, zero_deflate_stream, zip_bomb, zip_with)

_CHAIN = [("link", "a", "b/c/.."), ("dir", "b", b""), ("link", "b/c", "..")]


@pytest.mark.parametrize("build", [tar_with, zip_with], ids=["tar", "zip"])
def test_link_that_escapes_only_after_a_later_link_is_refused(tmp_path, build):
    # a -> b/c/.. is inside on paper; only once b/c -> .. exists does a resolve to the parent.
    archive = build(tmp_path / ("bad." + build.__name__[:3]), _CHAIN)
    with pytest.raises(ArchiveError, match="'a'.*once every link exists"):
        extract_archive(archive, tmp_path / "out", progress=False)
    _assert_nothing_left(tmp_path, tmp_path / "out")


@pytest.mark.parametrize("build", [tar_with, zip_with], ids=["tar", "zip"])
@pytest.mark.parametrize("kind", ["file", "dir"])
def test_member_inside_a_link_is_refused_before_any_folder_is_made(tmp_path, build, kind):
    # The old code made a/evil_dir (outside, through a) before noticing; zip folders were never checked.
    members = _CHAIN + [(kind, "a/evil_dir/x" if kind == "file" else "a/evil_dir/", b"boom")]
    archive = build(tmp_path / ("bad." + build.__name__[:3]), members)
    with pytest.raises(ArchiveError, match="inside the link 'a'"):
        extract_archive(archive, tmp_path / "out", progress=False)
    assert not (tmp_path / "evil_dir").exists()
    _assert_nothing_left(tmp_path, tmp_path / "out")


def test_link_inside_a_link_is_refused(tmp_path):
    archive = tar_with(tmp_path / "bad.tar", [("link", "l", "."), ("link", "l/up", "..")])
    with pytest.raises(ArchiveError, match="links inside links"):
        extract_archive(archive, tmp_path / "out", progress=False)
    _assert_nothing_left(tmp_path, tmp_path / "out")


def test_hard_link_to_a_symlink_is_refused(tmp_path):
    archive = tar_with(tmp_path / "bad.tar", [("link", "s", "."), ("hard", "h", "s")])
    with pytest.raises(ArchiveError, match="hard link 'h'"):
        extract_archive(archive, tmp_path / "out", progress=False)


def test_safe_links_between_folders_still_extract(tmp_path):
    members = [("dir", "d", b""), ("file", "d/one.txt", b"1"), ("link", "alias", "d"),
               ("link", "d/again", "one.txt"), ("link", "to_link", "alias/one.txt")]
    for build in (tar_with, zip_with):
        out = extract_archive(build(tmp_path / f"ok.{build.__name__[:3]}", members),
                              tmp_path / f"out_{build.__name__}", progress=False)
        assert (out / "alias" / "one.txt").read_bytes() == b"1"
        assert (out / "to_link").read_bytes() == b"1"
        assert (out / "d" / "again").is_symlink()


def test_later_file_replaces_an_earlier_link_of_the_same_name(tmp_path):
    archive = tar_with(tmp_path / "ok.tar", [("link", "x", "/etc/passwd"[1:]), ("file", "x", b"mine")])
    out = extract_archive(archive, tmp_path / "out", progress=False)
    assert not (out / "x").is_symlink() and (out / "x").read_bytes() == b"mine"


# --- size and compression-ratio caps

def test_crafted_deflate_stream_is_a_genuine_bomb(tmp_path):
    # The builder used below must really inflate: prove it on a small one with zipfile itself.
    path = zip_bomb(tmp_path / "small.zip", 3)
    with zipfile.ZipFile(path) as zf:
        assert zf.read("zeros.bin") == bytes(3 << 20)
    assert len(zero_deflate_stream(2048)) < 3 << 20  # 2 GiB of zeros in under 3 MB


def test_two_megabyte_zip_that_inflates_to_two_gib_stops_before_writing(tmp_path):
    import time

    path = zip_bomb(tmp_path / "bomb.zip", 2048)
    assert path.stat().st_size < 3 << 20
    start = time.perf_counter()
    with pytest.raises(ArchiveError, match=r"bomb\.zip.*over the cap.*times the archive"):
        extract_archive(path, tmp_path / "out", progress=False)
    assert time.perf_counter() - start < 5
    _assert_nothing_left(tmp_path, tmp_path / "out")


def test_tar_gz_member_declaring_gigabytes_is_refused_from_its_header(tmp_path):
    path = tar_gz_with_huge_member(tmp_path / "bomb.tar.gz", 2 << 30)
    with pytest.raises(ArchiveError, match=r"'huge\.bin'.*over the cap"):
        extract_archive(path, tmp_path / "out", progress=False)
    _assert_nothing_left(tmp_path, tmp_path / "out")


def test_total_size_cap_counts_every_member(tmp_path):
    archive = tar_with(tmp_path / "many.tar", [("file", f"f{i}", bytes(1000)) for i in range(5)])
    with pytest.raises(ArchiveError, match="'f3'.*max_total_bytes=3500"):
        extract_archive(archive, tmp_path / "out", progress=False, max_total_bytes=3500)
    extract_archive(archive, tmp_path / "fits", progress=False, max_total_bytes=5000)


def test_ratio_cap_applies_above_the_floor(tmp_path, monkeypatch):
    import tipsomaly_lite.io.archives as archives

    monkeypatch.setattr(archives, "_RATIO_FLOOR", 1 << 20)
    path = zip_bomb(tmp_path / "b.zip", 4)  # 4 MiB from ~4 KiB: ratio ~1000
    with pytest.raises(ArchiveError, match="times the archive"):
        extract_archive(path, tmp_path / "out", progress=False)
    assert extract_archive(path, tmp_path / "ok", progress=False, max_ratio=5000).is_dir()


# --- damaged and unsupported archives are one clear ArchiveError

def test_encrypted_zip_is_refused_as_unsupported(tmp_path):
    path = patch_zip_encrypted(zip_with(tmp_path / "enc.zip", [("file", "a.txt", b"secret")]))
    with pytest.raises(ArchiveError, match=r"'a\.txt' is encrypted.*unsupported"):
        extract_archive(path, tmp_path / "out", progress=False)


def test_deflate64_zip_is_refused_as_unsupported(tmp_path):
    path = patch_zip_method(zip_with(tmp_path / "d64.zip", [("file", "a.txt", b"x" * 100)]), 9)
    with pytest.raises(ArchiveError, match="Deflate64 compression, which is unsupported"):
        extract_archive(path, tmp_path / "out", progress=False)


@pytest.mark.parametrize("mode,suffix", [("w:gz", ".tar.gz"), ("w:bz2", ".tar.bz2"), ("w:xz", ".tar.xz")])
def test_corrupted_compressed_tar_is_an_archive_error(tmp_path, mode, suffix):
    archive = tar_with(tmp_path / ("c" + suffix), [("file", "a.bin", bytes(range(256)) * 400)], mode)
    data = bytearray(archive.read_bytes())
    for i in range(len(data) // 3, len(data) - 40):  # garble the middle of the compressed stream
        data[i] ^= 0x5A
    archive.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match=r"c\.tar"):
        extract_archive(archive, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_zip_with_a_corrupted_member_is_an_archive_error(tmp_path):
    path = tmp_path / "bad.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.bin", bytes(range(256)) * 400)
    data = bytearray(path.read_bytes())
    for i in range(60, 200):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match=r"bad\.zip.*damaged"):
        extract_archive(path, tmp_path / "out", progress=False)


def test_truncated_zip_is_an_archive_error(tmp_path):
    path = zip_with(tmp_path / "t.zip", [("file", "a.bin", os.urandom(20_000))])
    path.write_bytes(path.read_bytes()[:10_000])
    with pytest.raises(ArchiveError, match=r"t\.zip"):
        extract_archive(path, tmp_path / "out", progress=False)
