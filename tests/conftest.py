"""Shared fixtures: everything the tests need is generated here, offline and seeded."""

from __future__ import annotations

import http.server
import re
import time
import warnings
from pathlib import Path

import matplotlib
import pytest

from helpers.servers import local_server

matplotlib.use("Agg")


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory):
    """The whole session uses a fresh TIPSOMALY_HOME: never a developer's real cache."""
    home = tmp_path_factory.mktemp("tipsomaly_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIPSOMALY_HOME", str(home))
        yield home


@pytest.fixture(scope="session")
def tiny_tokenizer_path(tmp_path_factory) -> Path:
    from tipsomaly_lite.backbones.tips.tiny import train_tiny_tokenizer

    return train_tiny_tokenizer(tmp_path_factory.mktemp("spm") / "tokenizer.model")


@pytest.fixture(scope="session")
def tiny(_isolated_home):
    """The tiny offline TIPS (random weights), loaded once; its warning is expected here."""
    from tipsomaly_lite.offline import MeaninglessResultsWarning
    from tipsomaly_lite.backbones.tips.model import load_tips

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MeaninglessResultsWarning)
        return load_tips("tiny")


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files``; honours ``Range`` unless ``server.ignore_range``.

    ``server.drop_after`` (bytes) makes the next response announce the full length, send only
    that many bytes and close the connection, as a flaky host would; with ``server.stall``
    (seconds) it first goes silent for that long, so the client times out.
    """

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        srv = self.server
        srv.requests.append({"path": self.path, **dict(self.headers)})
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404, "not found")
            return
        start = 0
        range_header = self.headers.get("Range")
        if range_header and not srv.ignore_range:
            start = int(re.match(r"bytes=(\d+)-", range_header).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.drop_after is not None:
            cut, srv.drop_after = srv.drop_after, None
            self.wfile.write(body[:cut])
            self.wfile.flush()
            if srv.stall:  # keep the socket open but silent, as a hung host does
                time.sleep(srv.stall)
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def http_server():
    """A local HTTP server (no internet): serves ``http_server.files`` (path -> bytes) at ``.url``;
    ``.requests`` records each request's path and headers."""
    with local_server(RangeHandler, files={}, requests=[], ignore_range=False, drop_after=None, stall=0.0) as srv:
        yield srv


@pytest.fixture
def exercise_check(monkeypatch, capsys):
    """Run an exercise's self-check the three ways that matter; returns nothing, asserts all.

    ``check(right)`` passes (✅); every answer in ``wrongs``, and the student copy's stub (a
    function returning None), raises ``CheckFailed`` in CI and, for a student, returns False and
    prints ❌ with what was expected.
    """
    from tipsomaly_lite.course.checks import STRICT_ENV, CheckFailed

    def run(check, right, wrongs):
        monkeypatch.delenv("CI", raising=False)
        monkeypatch.setenv(STRICT_ENV, "1")
        assert check(right) is True
        assert "✅" in capsys.readouterr().out
        for wrong in [*wrongs, lambda *args, **kwargs: None]:
            monkeypatch.setenv(STRICT_ENV, "1")
            with pytest.raises(CheckFailed):
                check(wrong)
            capsys.readouterr()
            monkeypatch.delenv(STRICT_ENV)
            assert check(wrong) is False, getattr(wrong, "__name__", wrong)
            out = capsys.readouterr().out
            assert "❌" in out and "expected" in out

    return run
