"""The one error boundary of every command: one line for the user, never a traceback.

- An anticipated failure (a path, a name, a setting, a damaged file, a full disk) is one line naming
  the file or flag and what was expected, exit code 2.
- Anything else is a bug: one line with the path of a log file that holds the traceback, exit code 1.
- Another process of a torchrun run failed: this one stops quietly (that one said why), exit code 2.
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

__all__ = ["user_errors", "EXIT_USER", "EXIT_BUG", "one_line", "disk_full_message", "run_guarded", "log_folder"]

EXIT_USER = 2
EXIT_BUG = 1


@functools.cache
def user_errors() -> tuple[type[BaseException], ...]:
    """Errors a user can fix (a path, a name, a setting, a damaged file); imported on first use."""
    from PIL.Image import DecompressionBombError
    from safetensors import SafetensorError

    from tipsomaly_lite.io.archives import ArchiveError
    from tipsomaly_lite.io.download import DownloadError
    from tipsomaly_lite.io.extras import MissingExtraError

    return (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError, ValueError,
            KeyError, DownloadError, ArchiveError, SafetensorError, DecompressionBombError, UnicodeError,
            MissingExtraError)


def one_line(message: object) -> str:
    """``message`` with its whitespace (newlines included) folded to single spaces."""
    return " ".join(str(message).split())


def disk_full_message(exc: OSError, out: str | os.PathLike | None) -> str:
    """One line for ENOSPC/EDQUOT: which file and folder, how much is free there."""
    target = Path(exc.filename) if exc.filename else Path(out or ".")
    folder = target if target.is_dir() else target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB free"
    except OSError:
        free = "free space unknown"
    what = f"while writing {exc.filename}" if exc.filename else "while writing results"
    return (f"disk full ({exc.strerror or exc}) {what}: the folder {folder} has {free}; free some space "
            "there or choose another --out / --data-root")


def log_folder() -> Path:
    """Where tracebacks of unexpected errors go: ``<cache>/logs``, else the system's temporary folder."""
    from tipsomaly_lite.io.download import cache_dir

    try:
        folder = cache_dir() / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    except OSError:
        return Path(tempfile.gettempdir())


def _log_traceback(command: str, exc: BaseException) -> Path | None:
    name = f"tipsomaly-{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    try:
        path = log_folder() / name
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"tipsomaly {command}: {' '.join(sys.argv)}\n\n")
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=f)
        return path
    except OSError:
        return None


def run_guarded(command: str, func: Callable[[], int], *, out: str | os.PathLike | None = None,
                quiet: tuple[type[BaseException], ...] = ()) -> int:
    """Run ``func`` behind the boundary and return the process exit code.

    Args:
        command: the sub-command's name, which starts every line (``tipsomaly evaluate: error: ...``).
        func: the command's work; returns its exit code.
        out: the command's output folder, named when the disk is full.
        quiet: exceptions that mean "stop, someone else said why" (another torchrun process failed).
    Returns:
        ``func``'s code; 2 for a user's error; 1 (and a log file) for a bug; 130 for Ctrl-C.
    """
    try:
        return func()
    except quiet:
        return EXIT_USER
    except KeyboardInterrupt:
        print(f"tipsomaly {command}: interrupted; finished files are complete, nothing half-written is left",
              file=sys.stderr)
        return 130
    except user_errors() as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"tipsomaly {command}: error: {one_line(message)}", file=sys.stderr)
        return EXIT_USER
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            print(f"tipsomaly {command}: error: {disk_full_message(exc, out)}", file=sys.stderr)
            return EXIT_USER
        return _bug(command, exc)
    except Exception as exc:  # noqa: BLE001 - the boundary: a bug still gets one line and a log
        return _bug(command, exc)


def _bug(command: str, exc: BaseException) -> int:
    log = _log_traceback(command, exc)
    where = f"the traceback is in {log}" if log else "the traceback could not be written to a log file"
    print(f"tipsomaly {command}: internal error: {type(exc).__name__}: {one_line(exc)[:300]} ({where}; please "
          "report it)", file=sys.stderr)
    return EXIT_BUG
