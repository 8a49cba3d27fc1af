"""Write files and folders so that nobody ever sees them half-written.

A file is written to a temporary name in its own folder and renamed over the target when
complete; a folder is built under a hidden temporary name and renamed into place. An
interrupted run therefore leaves either the old result or none, never a half-finished one that
looks done. The file is flushed to disk (``fsync``) before the rename, so a power cut cannot
leave a complete-looking name over empty blocks, and it gets the permissions of a file the user
would have created (``0o666`` less the umask), not the private ``0o600`` of a temporary file.

:func:`file_lock` is the companion for work that must not run twice at once on one target (a
download, a training run): an OS-level lock that the kernel releases when its holder exits, so a
killed process never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
import time
from typing import IO, Iterator

__all__ = ["atomic_file", "atomic_folder", "file_lock", "LockedError", "current_umask"]


class LockedError(RuntimeError):
    """Another process (or another open of the same lock file) holds the lock."""


def current_umask() -> int:
    """The process umask (e.g. ``0o022``), read without changing it where the OS allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc: the only portable way to read it is to set it and put it back
    os.umask(mask)
    return mask


def _fsync_folder(folder: pathlib.Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every OS can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary file next to ``path``; it replaces ``path`` only if the block succeeds.

    Example:
        ``with atomic_file("meta.json", "w", encoding="utf-8") as f: json.dump(meta, f)``
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            # mkstemp makes the file 0o600; the result should be readable as any file the user writes.
            if os.chmod in os.supports_fd:
                os.chmod(handle.fileno(), 0o666 & ~current_umask())
            os.fsync(handle.fileno())  # the data is on disk before the name points at it
        if os.chmod not in os.supports_fd:  # pragma: no cover - Windows: permissions are not modes
            os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, purpose: str = "building") -> Iterator[pathlib.Path]:
    """Yield an empty hidden folder next to ``path``; it becomes ``path`` if the block succeeds.

    An existing ``path`` is swapped out only after the new folder is complete. On error the
    temporary folder is removed and ``path`` is left as it was.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.{purpose}-", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it private; a dataset folder should not be
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, wait: bool = True, timeout: float | None = None,
              what: str = "this target") -> Iterator[pathlib.Path]:
    """Hold an exclusive OS-level lock on ``path`` (created if missing) for the block.

    The lock lives in the kernel (``flock`` on POSIX, ``msvcrt.locking`` on Windows), so it is
    released when the block ends, when the holder crashes or is killed: a leftover lock file is
    never a stale lock. The file itself is kept (deleting it would let a waiter lock a file that
    no longer has a name).

    Args:
        path: the lock file, e.g. ``run/train.lock`` or ``<download>.lock``.
        wait: block until the lock is free; False raises :class:`LockedError` at once.
        timeout: with ``wait``, give up after this many seconds (None: wait forever).
        what: what the lock protects, for the error message.
    Raises:
        LockedError: the lock is held elsewhere (names the lock file and the holder's pid).
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+b")
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not _try_lock(handle):
            if not wait or (deadline is not None and time.monotonic() > deadline):
                try:
                    handle.seek(0)
                    holder = handle.read(32).decode("ascii", "replace").strip() or "unknown"
                except OSError:  # Windows: the holder's locked byte cannot be read
                    holder = "unknown"
                raise LockedError(f"{path}: {what} is in use by another process (pid {holder}); "
                                  "wait for it to finish, or use another target")
            time.sleep(0.05)
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()).encode("ascii"))
        handle.flush()
        try:
            yield path
        finally:
            _unlock(handle)
    finally:
        handle.close()


def _try_lock(handle) -> bool:
    if os.name == "nt":  # pragma: no cover - Windows only
        import msvcrt

        try:
            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    import fcntl

    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _unlock(handle) -> None:
    if os.name == "nt":  # pragma: no cover - Windows only
        import msvcrt

        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
        return
    import fcntl

    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
