"""Tests for tipsomaly_lite.io.download against a local HTTP server (no internet)."""

from __future__ import annotations

import hashlib
import re
import socket

import numpy as np
import pytest

from tipsomaly_lite.io.download import DownloadError, cache_dir, download, sha256_file

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


# ---- fail closed: one download per destination, exact lengths, validated files ----------------

import http.server  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

from helpers.servers import local_server  # noqa: E402
from tipsomaly_lite.io.atomic import file_lock  # noqa: E402


class LyingHandler(http.server.BaseHTTPRequestHandler):
    """``server.mode``: "slow" (the body in small pieces, with pauses), "long" (more bytes than
    Content-Length), "short" (fewer, then close) or "badrange" (a 206 whose lengths disagree)."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        srv = self.server
        srv.hits += 1
        data = PAYLOAD
        start = 0
        if self.headers.get("Range") and srv.mode in ("slow", "badrange"):
            start = int(re.match(r"bytes=(\d+)-", self.headers["Range"]).group(1))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        announced = len(body) + (7 if srv.mode == "badrange" else 0)
        self.send_header("Content-Length", str(announced))
        self.end_headers()
        if srv.mode == "slow":
            for i in range(0, len(body), 30_000):
                self.wfile.write(body[i:i + 30_000])
                self.wfile.flush()
                time.sleep(0.01)
        elif srv.mode == "long":
            self.wfile.write(body + b"EXTRA BYTES NOT ANNOUNCED")
        elif srv.mode == "short":
            self.wfile.write(body[:-1000])
        else:
            self.wfile.write(body)
        self.close_connection = True


@pytest.fixture
def liar():
    with local_server(LyingHandler, mode="slow", hits=0) as srv:
        srv.url += "/data.bin"
        yield srv


@pytest.mark.parametrize("with_checksum", [True, False])
def test_concurrent_downloads_to_one_file_take_turns(liar, tmp_path, with_checksum):
    dest = tmp_path / "data.bin"
    errors = []

    def fetch():
        try:
            download(liar.url, dest, sha256=PAYLOAD_SHA if with_checksum else None, progress=False,
                     chunk_size=4096, timeout=10)
        except Exception as exc:  # collected: a thread's exception would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert dest.read_bytes() == PAYLOAD  # neither corrupt nor over-long
    assert liar.hits == 1  # the others waited and found the finished file
    assert not (tmp_path / "data.bin.part").exists()


def test_a_download_held_by_another_process_times_out_clearly(liar, tmp_path):
    with file_lock(tmp_path / "data.bin.lock"):
        with pytest.raises(DownloadError, match=r"data.bin.lock: the download of data.bin is in use"):
            download(liar.url, tmp_path / "data.bin", progress=False, lock_timeout=0.2)
    assert liar.hits == 0 and not (tmp_path / "data.bin").exists()


def test_a_body_longer_than_announced_is_an_error(liar, tmp_path):
    liar.mode = "long"
    with pytest.raises(DownloadError, match="more bytes than the 300000 it announced"):
        download(liar.url, tmp_path / "data.bin", progress=False, timeout=5)
    assert not (tmp_path / "data.bin").exists() and not (tmp_path / "data.bin.part").exists()


def test_a_body_shorter_than_announced_is_an_error(liar, tmp_path):
    liar.mode = "short"
    with pytest.raises(DownloadError, match="ended early: got 299000 of 300000 bytes"):
        download(liar.url, tmp_path / "data.bin", progress=False, timeout=5)
    assert not (tmp_path / "data.bin").exists()
    assert (tmp_path / "data.bin.part").stat().st_size == 299_000  # kept for resuming


def test_a_partial_response_with_inconsistent_lengths_is_refused(liar, tmp_path):
    liar.mode = "badrange"
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD[:1000])
    with pytest.raises(DownloadError, match="Content-Length .* does not match its Content-Range"):
        download(liar.url, tmp_path / "data.bin", progress=False, timeout=5)
    assert not (tmp_path / "data.bin").exists()


def _reject_unless_payload(path):
    if path.read_bytes() != PAYLOAD:
        raise ValueError(f"{path}: not the payload")


def test_a_fresh_file_that_fails_validation_is_not_used(server, tmp_path):
    def never(path):
        raise ValueError(f"{path}: no arrays")

    with pytest.raises(DownloadError, match=r"not usable: .*no arrays.*data.bin.bad") as info:
        download(server.url + "/data.bin", tmp_path / "data.bin", progress=False, validate=never)
    assert "by hand" in str(info.value)
    assert not (tmp_path / "data.bin").exists() and (tmp_path / "data.bin.bad").read_bytes() == PAYLOAD


def test_a_cached_file_that_fails_validation_is_reported_and_fetched_again(server, tmp_path):
    dest = tmp_path / "data.bin"
    dest.write_bytes(PAYLOAD[:10])  # exists, but cut short
    with pytest.warns(UserWarning, match=re.escape(str(dest)) + r" is damaged .*not the payload"):
        download(server.url + "/data.bin", dest, progress=False, validate=_reject_unless_payload)
    assert dest.read_bytes() == PAYLOAD and (tmp_path / "data.bin.bad").read_bytes() == PAYLOAD[:10]
    assert len(server.requests) == 1


def test_a_cached_file_that_passes_validation_needs_no_network(tmp_path):
    dest = tmp_path / "data.bin"
    dest.write_bytes(PAYLOAD)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert download("http://127.0.0.1:9/never", dest, progress=False, validate=_reject_unless_payload) == dest
    assert not (tmp_path / "data.bin.lock").exists()


# ---- TIPS files are checked after a download and when found in the cache ----------------------------

@pytest.fixture
def bucket(http_server, monkeypatch, tmp_path, tiny_tokenizer_path):
    """The s14-hr variant's three files, served by the local server in place of the TIPS bucket."""
    import io

    import tipsomaly_lite.backbones.tips.registry as registry
    from tipsomaly_lite.backbones.tips.tiny import TINY_ARCH, random_tips_arrays

    vision, text = random_tips_arrays(TINY_ARCH)
    for role, arrays in (("vision", vision), ("text", text)):
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        http_server.files["/" + registry.VARIANTS["s14-hr"].files[role]] = buf.getvalue()
    http_server.files["/" + registry.TOKENIZER_FILE] = tiny_tokenizer_path.read_bytes()
    monkeypatch.setattr(registry, "BUCKET", http_server.url + "/")
    monkeypatch.setenv("TIPSOMALY_HOME", str(tmp_path / "home"))
    http_server.registry = registry
    return http_server


def _npz_bytes(**arrays):
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_fetch_variant_downloads_and_checks_every_file(bucket):
    paths = bucket.registry.fetch_variant("s14-hr")
    assert set(paths) == {"vision", "text", "tokenizer"} and all(p.is_file() for p in paths.values())
    assert bucket.registry.variant_is_cached("s14-hr")
    n = len(bucket.requests)
    bucket.registry.fetch_variant("s14-hr")
    assert len(bucket.requests) == n  # cached and valid: no network


@pytest.mark.parametrize("damage", ["truncated", "empty", "html error page", "wrong arrays", "pickled objects"])
def test_a_damaged_cached_npz_is_reported_and_fetched_again(bucket, damage):
    paths = bucket.registry.fetch_variant("s14-hr")
    vision = paths["vision"]
    good = vision.read_bytes()
    vision.write_bytes({"truncated": good[: len(good) // 2], "empty": b"",
                        "html error page": b"<html>403 Forbidden</html>",
                        "wrong arrays": _npz_bytes(a=np.zeros(3)),
                        "pickled objects": _npz_bytes(**{"patch_embed.proj.weight": np.array([{"x": 1}], dtype=object),
                                                         "pos_embed": np.zeros(2)})}[damage])
    assert not bucket.registry.variant_is_cached("s14-hr")
    with pytest.raises(ValueError, match=re.escape(str(vision)) + r" is damaged .*tipsomaly fetch s14-hr"):
        bucket.registry.fetch_variant("s14-hr", download=False)
    with pytest.warns(UserWarning, match=re.escape(str(vision)) + r" is damaged"):
        bucket.registry.fetch_variant("s14-hr")
    assert vision.read_bytes() == good and vision.with_name(vision.name + ".bad").exists()


def test_a_damaged_cached_tokenizer_is_fetched_again(bucket):
    tok = bucket.registry.fetch_variant("s14-hr")["tokenizer"]
    good = tok.read_bytes()
    tok.write_bytes(b"not a sentencepiece model")
    with pytest.warns(UserWarning, match="tokenizer file .* is damaged"):
        bucket.registry.fetch_variant("s14-hr")
    assert tok.read_bytes() == good


@pytest.mark.parametrize("role", ["vision", "text", "tokenizer"])
def test_a_bucket_file_that_fails_the_check_is_never_used(bucket, role):
    rel = bucket.registry.VARIANTS["s14-hr"].files[role]
    bucket.files["/" + rel] = b"<html>Service Unavailable</html>"
    with pytest.raises(DownloadError, match=r"not usable: .*\.bad") as info:
        bucket.registry.fetch_variant("s14-hr")
    dest = cache_dir() / "tips" / rel
    assert str(dest) in str(info.value) and not dest.exists()
    assert not bucket.registry.variant_is_cached("s14-hr")
