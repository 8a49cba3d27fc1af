"""Resumable, checksum-verified downloads over plain ``urllib``.

Used for the TIPS checkpoints and for the anomaly-detection benchmarks. A download streams into
``<dest>.part`` and only becomes ``<dest>`` (by an atomic rename) once it is complete and its
SHA-256 matches, so a file at ``dest`` is always a finished one. An interrupted download keeps
its ``.part`` file and the next call resumes it with an HTTP ``Range`` request, which matters for
multi-GB archives on slow hosts.

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
import warnings

from tqdm.auto import tqdm

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
             chunk_size: int = 1 << 20) -> pathlib.Path:
    """Download ``url`` to ``dest``, resuming a previous partial download and checking SHA-256.

    If ``dest`` already exists (and matches ``sha256`` when given) it is returned without any
    network access. Otherwise bytes stream into ``<dest>.part``; an existing ``.part`` is resumed
    with an HTTP ``Range`` request (a server that ignores it makes us start over). On success the
    ``.part`` file is renamed to ``dest`` atomically. A file whose checksum does not match is
    moved aside to ``<dest>.bad`` and never used.

    Args:
        url: ``http://`` or ``https://`` address.
        dest: final file path; its folder is created.
        sha256: expected hex digest, or None to skip verification.
        desc: progress-bar label (default: the file name).
        progress: show a ``tqdm`` progress bar.
        timeout: socket timeout in seconds for connecting and for each read.
        chunk_size: bytes per read.
    Returns:
        ``dest`` as a ``Path``.
    Raises:
        DownloadError: network/HTTP failure (the ``.part`` file is kept for resuming) or
            checksum mismatch (the file is kept at ``<dest>.bad``).
    Taught in notebooks/00_setup.ipynb.
    """
    dest = pathlib.Path(dest)
    expected = sha256.strip().lower() if sha256 else None
    if dest.exists():
        if expected is None:
            return dest
        actual = sha256_file(dest)
        if actual == expected:
            return dest
        bad = dest.with_name(dest.name + ".bad")
        warnings.warn(f"{dest} has SHA-256 {actual}, expected {expected}; moving it to {bad} "
                      "and downloading again.", stacklevel=2)
        os.replace(dest, bad)

    dest.parent.mkdir(parents=True, exist_ok=True)
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
        except (OSError, http.client.HTTPException) as err:
            # socket.timeout and ConnectionResetError are OSErrors; IncompleteRead is an
            # HTTPException. Either way the bytes already written stay in .part for resuming.
            raise DownloadError(f"Download of {url} was interrupted after {written} bytes "
                                f"({type(err).__name__}: {err}).{_manual_hint(url, dest, part)}"
                                ) from err
        finally:
            bar.close()
    if total is not None and written != total:
        raise DownloadError(f"Download of {url} ended early: got {written} of {total} bytes."
                            f"{_manual_hint(url, dest, part)}")
    return "done"

