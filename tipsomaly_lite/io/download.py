"""Resumable, checksum-verified downloads over plain ``urllib``.

Used for the TIPS checkpoints and for the anomaly-detection benchmarks. A download streams into
``<dest>.part`` and only becomes ``<dest>`` (by an atomic rename) once it is complete and its
SHA-256 matches, so a file at ``dest`` is always a finished one. An interrupted download keeps
its ``.part`` file and the next call resumes it with an HTTP ``Range`` request, which matters for
multi-GB archives on slow hosts.

Fail closed: one download per destination at a time (an OS-level lock, ``<dest>.lock``, so two
processes never append to one ``.part``); a body shorter or longer than the server announced is an
error; and a ``validate`` check (e.g. "this npz opens with the expected arrays") runs on the
finished file and on a cached one, so a damaged file is never accepted because it exists.

Taught in notebooks/00_setup.ipynb.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import pathlib
import re
import urllib.error
import urllib.request
import socket
import warnings
from typing import Callable

from tqdm.auto import tqdm

from tipsomaly_lite.io.atomic import LockedError, file_lock

__all__ = ["DownloadError", "cache_dir", "download", "sha256_file"]

#: Environment variable that overrides the cache location.
HOME_ENV = "TIPSOMALY_HOME"
#: Cache location when ``$TIPSOMALY_HOME`` is unset.
DEFAULT_CACHE = pathlib.Path("~/.cache/tipsomaly_lite")
#: Some hosts refuse urllib's default agent string.
USER_AGENT = "tipsomaly_lite-downloader/0.1 (+python-urllib)"

_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)")


class DownloadError(RuntimeError):
    """A download failed: network error, HTTP error or checksum mismatch.

    Taught in notebooks/00_setup.ipynb.
    """


def cache_dir() -> pathlib.Path:
    """Folder for downloaded weights and archives, created on demand.

    Returns:
        ``$TIPSOMALY_HOME`` if set, else ``~/.cache/tipsomaly_lite``.
    Taught in notebooks/00_setup.ipynb.
    """
    env = os.environ.get(HOME_ENV)
    path = pathlib.Path(env).expanduser() if env else DEFAULT_CACHE.expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


#: Sub-folders of the cache that hold downloaded weights and prompt files: inputs no output may touch.
DOWNLOAD_FOLDERS = ("tips", "hf", "released_prompts", "tiny")


def download_folders() -> list[pathlib.Path]:
    """The cache's download sub-folders (:data:`DOWNLOAD_FOLDERS`), which the output guard keeps apart from
    every output; the rest of the cache (the course's results, logs) is a place to write."""
    return [cache_dir() / name for name in DOWNLOAD_FOLDERS]


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """SHA-256 of a file, read in chunks so multi-GB archives do not fill memory.

    Args:
        path: file to hash.
        chunk_size: bytes read at a time.
    Returns:
        Lower-case hex digest (64 characters).
    Taught in notebooks/00_setup.ipynb.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def _manual_hint(url: str, dest: pathlib.Path, part: pathlib.Path) -> str:
    kept = f" The partial file {part} is kept; running again resumes it." if part.exists() else ""
    return (f"{kept} You can also fetch {url} by hand (browser, curl -C -, wget -c) and place "
            f"the file at {dest}.")


def _total_from_headers(status: int, headers, offset: int) -> int | None:
    """Full file size in bytes as announced by the server, or None if unknown."""
    if status == 206:
        match = _CONTENT_RANGE.search(headers.get("Content-Range", ""))
        if match and match.group(3) != "*":
            return int(match.group(3))
    length = headers.get("Content-Length")
    if length is not None and length.isdigit():
        return int(length) + (offset if status == 206 else 0)
    return None


def download(url: str, dest: str | os.PathLike, *, sha256: str | None = None,
             desc: str | None = None, progress: bool = True, timeout: float = 60.0,
             chunk_size: int = 1 << 20, validate: Callable[[pathlib.Path], None] | None = None,
             lock_timeout: float | None = None) -> pathlib.Path:
    """Download ``url`` to ``dest``, resuming a previous partial download and checking SHA-256.

    If ``dest`` already exists (and matches ``sha256`` when given) it is returned without any
    network access. Otherwise bytes stream into ``<dest>.part``; an existing ``.part`` is resumed
    with an HTTP ``Range`` request (a server that ignores it makes us start over). On success the
    ``.part`` file is renamed to ``dest`` atomically. A file whose checksum does not match, or that
    ``validate`` rejects, is moved aside to ``<dest>.bad`` and never used (a cached one is fetched
    again, with a warning naming it). Concurrent calls for one ``dest`` (threads or processes)
    take turns: the second finds the first one's finished file.

    Args:
        url: ``http://`` or ``https://`` address.
        dest: final file path; its folder is created.
        sha256: expected hex digest, or None to skip verification.
        desc: progress-bar label (default: the file name).
        progress: show a ``tqdm`` progress bar.
        timeout: socket timeout in seconds for connecting and for each read.
        chunk_size: bytes per read.
        validate: called with a finished (or cached) file; raises ``ValueError`` when the file is
            not usable (the message should say why).
        lock_timeout: seconds to wait for another download of the same ``dest`` (None: wait).
    Returns:
        ``dest`` as a ``Path``.
    Raises:
        DownloadError: network/HTTP failure or a body shorter than announced (the ``.part`` file
            is kept for resuming), a body longer than announced, checksum mismatch or a file
            ``validate`` rejects (the file is kept at ``<dest>.bad``).
    Taught in notebooks/00_setup.ipynb.
    """
    dest = pathlib.Path(dest)
    expected = sha256.strip().lower() if sha256 else None
    if _usable(dest, expected, validate, warn=False):  # the common case needs no lock
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        lock = file_lock(dest.with_name(dest.name + ".lock"), timeout=lock_timeout, what=f"the download of {dest.name}")
        lock.__enter__()
    except LockedError as exc:
        raise DownloadError(f"{exc}. Run again when it has finished.") from None
    try:
        # Another process may have finished it while we waited; a damaged file is moved aside.
        if _usable(dest, expected, validate, warn=True):
            return dest
        return _download_locked(url, dest, expected, desc=desc, progress=progress, timeout=timeout,
                                chunk_size=chunk_size, validate=validate)
    finally:
        lock.__exit__(None, None, None)


def _usable(dest: pathlib.Path, expected: str | None, validate: Callable[[pathlib.Path], None] | None, *,
            warn: bool) -> bool:
    """True when ``dest`` is a finished file that passes the checks; with ``warn``, a failing one is moved aside."""
    if not dest.is_file():
        return False
    problem = None
    if expected is not None:
        actual = sha256_file(dest)
        if actual != expected:
            problem = f"has SHA-256 {actual}, expected {expected}"
    if problem is None and validate is not None:
        try:
            validate(dest)
        except ValueError as exc:
            problem = f"is damaged or not the expected file ({exc})"
    if problem is None:
        return True
    if warn:
        bad = dest.with_name(dest.name + ".bad")
        warnings.warn(f"{dest} {problem}; moving it to {bad} and downloading again.", stacklevel=4)
        os.replace(dest, bad)
    return False


def _download_locked(url: str, dest: pathlib.Path, expected: str | None, *, desc: str | None, progress: bool,
                     timeout: float, chunk_size: int, validate: Callable[[pathlib.Path], None] | None) -> pathlib.Path:
    part = dest.with_name(dest.name + ".part")

    # Two attempts: the second one only happens when the server forces a restart from zero
    # (416 on a .part that is not a finished file).
    for _ in range(2):
        offset = part.stat().st_size if part.exists() else 0
        outcome = _fetch(url, dest, part, offset, desc=desc, progress=progress,
                         timeout=timeout, chunk_size=chunk_size)
        if outcome == "done":
            break
        part.unlink(missing_ok=True)  # "restart"
    else:
        raise DownloadError(f"Download of {url} could not be completed: the server rejected the "
                            f"byte range twice.{_manual_hint(url, dest, part)}")

    if expected is not None:
        actual = sha256_file(part)
        if actual != expected:
            bad = dest.with_name(dest.name + ".bad")
            os.replace(part, bad)
            raise DownloadError(
                f"Checksum mismatch for {url}: expected SHA-256 {expected}, got {actual}. "
                f"The file was moved aside to {bad} and is not used. Delete it and run again, "
                f"or fetch the file by hand and place it at {dest}.")
    if validate is not None:
        try:
            validate(part)
        except ValueError as exc:
            bad = dest.with_name(dest.name + ".bad")
            os.replace(part, bad)
            raise DownloadError(f"Download of {url} gave a file that is not usable: {exc}. It was moved aside to "
                                f"{bad} and is not used; run again, or fetch the file by hand and place it at "
                                f"{dest}.") from exc
    os.replace(part, dest)
    return dest


def _fetch(url: str, dest: pathlib.Path, part: pathlib.Path, offset: int, *, desc: str | None,
           progress: bool, timeout: float, chunk_size: int) -> str:
    """One HTTP request appending to ``part``. Returns ``"done"`` or ``"restart"``."""
    headers = {"User-Agent": USER_AGENT}
    if offset > 0:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset > 0:
            # Range not satisfiable: our .part is as long as (or longer than) the file. It is
            # finished only if the server's announced size equals what we hold.
            content_range = err.headers.get("Content-Range", "") if err.headers else ""
            match = _UNSATISFIED_RANGE.search(content_range)
            err.close()
            if match and int(match.group(1)) == offset:
                return "done"
            return "restart"
        raise DownloadError(f"Download of {url} failed: HTTP {err.code} {err.reason}."
                            f"{_manual_hint(url, dest, part)}") from err
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", err)
        raise DownloadError(f"Download of {url} failed: {reason}."
                            f"{_manual_hint(url, dest, part)}") from err

    with response:
        status = response.status
        if status == 206:
            match = _CONTENT_RANGE.search(response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                return "restart"  # a range we did not ask for: do not splice it in
            mode = "ab"
        else:
            # 200 to a ranged request means the server ignored Range: start over from byte 0.
            offset, mode = 0, "wb"
        total = _total_from_headers(status, response.headers, offset)
        length = response.headers.get("Content-Length")
        if status == 206 and total is not None and length is not None and length.isdigit() \
                and offset + int(length) != total:
            raise DownloadError(f"Download of {url}: the server's Content-Length ({length}) does not match its "
                                f"Content-Range (bytes {offset}-{total - 1}/{total}); not using it."
                                f"{_manual_hint(url, dest, part)}")
        if not response.chunked:
            # Read to the end of the connection, not just Content-Length bytes: a body longer than
            # announced must be noticed, not cut silently (urllib asks the server to close after it).
            response.length = None
        bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=desc or dest.name, disable=not progress, leave=False)
        written = offset
        try:
            with open(part, mode) as f:
                while True:
                    block = response.read(chunk_size)
                    if not block:
                        break
                    f.write(block)
                    written += len(block)
                    bar.update(len(block))
                    if total is not None and written > total:
                        break
        except socket.timeout as err:
            if total is None or written != total:  # else: all announced bytes came; the host just kept the line open
                raise DownloadError(f"Download of {url} was interrupted after {written} bytes "
                                    f"({type(err).__name__}: {err}).{_manual_hint(url, dest, part)}") from err
        except (OSError, http.client.HTTPException) as err:
            # socket.timeout and ConnectionResetError are OSErrors; IncompleteRead is an
            # HTTPException. Either way the bytes already written stay in .part for resuming.
            raise DownloadError(f"Download of {url} was interrupted after {written} bytes "
                                f"({type(err).__name__}: {err}).{_manual_hint(url, dest, part)}"
                                ) from err
        finally:
            bar.close()
    if total is not None and written > total:
        part.unlink(missing_ok=True)  # which bytes are the file's is unknown: never splice from it
        raise DownloadError(f"Download of {url} sent more bytes than the {total} it announced; the partial file "
                            f"was deleted and nothing is used. Run again, or fetch the file by hand and place it "
                            f"at {dest}.")
    if total is not None and written != total:
        raise DownloadError(f"Download of {url} ended early: got {written} of {total} bytes."
                            f"{_manual_hint(url, dest, part)}")
    return "done"

