"""Tests for tipsomaly_lite.data.download against a local HTTP server (no internet)."""

from __future__ import annotations

import hashlib
import re
import socket

import numpy as np
import pytest

from tipsomaly_lite.data.download import DownloadError, cache_dir, download, sha256_file

PAYLOAD = np.random.default_rng(0).integers(0, 256, size=300_000, dtype=np.uint8).tobytes()
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def server(http_server):
    http_server.files["/data.bin"] = PAYLOAD
    return http_server


def test_full_download_with_checksum(server, tmp_path):
    dest = download(server.url + "/data.bin", tmp_path / "sub" / "data.bin", sha256=PAYLOAD_SHA,
                    progress=False, chunk_size=4096)
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "sub" / "data.bin.part").exists()
    assert sha256_file(dest) == PAYLOAD_SHA


def test_checksum_mismatch_keeps_bad_file_aside(server, tmp_path):
    dest = tmp_path / "data.bin"
    with pytest.raises(DownloadError) as info:
        download(server.url + "/data.bin", dest, sha256="0" * 64, progress=False)
    msg = str(info.value)
    assert server.url + "/data.bin" in msg and "0" * 64 in msg and PAYLOAD_SHA in msg
    assert not dest.exists()
    assert (tmp_path / "data.bin.bad").read_bytes() == PAYLOAD
    assert not (tmp_path / "data.bin.part").exists()


def test_interrupted_download_resumes_with_range(server, tmp_path):
    dest = tmp_path / "data.bin"
    server.drop_after = 100_000
    with pytest.raises(DownloadError) as info:
        download(server.url + "/data.bin", dest, sha256=PAYLOAD_SHA, progress=False,
                 chunk_size=8192, timeout=5)
    assert "resume" in str(info.value) and str(dest) in str(info.value)
    part = tmp_path / "data.bin.part"
    assert part.exists() and not dest.exists()
    kept = part.stat().st_size
    assert 0 < kept <= 100_000
    assert PAYLOAD.startswith(part.read_bytes())

    download(server.url + "/data.bin", dest, sha256=PAYLOAD_SHA, progress=False, timeout=5)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests[-1].get("Range") == f"bytes={kept}-"
    assert not part.exists()


def test_read_timeout_keeps_part(server, tmp_path):
    server.drop_after, server.stall = 50_000, 1.0
    with pytest.raises(DownloadError, match="interrupted"):
        download(server.url + "/data.bin", tmp_path / "data.bin", progress=False, timeout=0.2,
                 chunk_size=4096)
    assert PAYLOAD.startswith((tmp_path / "data.bin.part").read_bytes())
    assert (tmp_path / "data.bin.part").stat().st_size > 0


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.ignore_range = True
    part = tmp_path / "data.bin.part"
    part.write_bytes(b"garbage that is not the start of the payload")
    dest = download(server.url + "/data.bin", tmp_path / "data.bin", sha256=PAYLOAD_SHA,
                    progress=False)
    assert "Range" in server.requests[-1]
    assert dest.read_bytes() == PAYLOAD


def test_complete_part_file_answered_416_is_finished(server, tmp_path):
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD)
    dest = download(server.url + "/data.bin", tmp_path / "data.bin", sha256=PAYLOAD_SHA,
                    progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_404_names_the_url(server, tmp_path):
    with pytest.raises(DownloadError, match=re.escape(server.url + "/missing.bin")) as info:
        download(server.url + "/missing.bin", tmp_path / "m.bin", progress=False)
    assert "404" in str(info.value) and "by hand" in str(info.value)
    assert not (tmp_path / "m.bin").exists()


def test_unreachable_host(tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there any more: connection refused
    url = f"http://127.0.0.1:{port}/x.bin"
    with pytest.raises(DownloadError, match=re.escape(url)):
        download(url, tmp_path / "x.bin", progress=False, timeout=5)


def test_existing_dest_short_circuits(server, tmp_path):
    dest = tmp_path / "data.bin"
    dest.write_bytes(PAYLOAD)
    assert download(server.url + "/data.bin", dest, sha256=PAYLOAD_SHA, progress=False) == dest
    assert download("http://127.0.0.1:9/never", dest, progress=False) == dest
    assert server.requests == []


def test_existing_dest_with_wrong_checksum_is_replaced(server, tmp_path):
    dest = tmp_path / "data.bin"
    dest.write_bytes(b"stale")
    with pytest.warns(UserWarning, match="data.bin.bad"):
        download(server.url + "/data.bin", dest, sha256=PAYLOAD_SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert (tmp_path / "data.bin.bad").read_bytes() == b"stale"


def test_cache_dir_respects_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TIPSOMALY_HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home"
    assert (tmp_path / "home").is_dir()
    monkeypatch.delenv("TIPSOMALY_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert cache_dir() == tmp_path / "user" / ".cache" / "tipsomaly_lite"
