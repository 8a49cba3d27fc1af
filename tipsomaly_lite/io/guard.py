"""The one output guard: a command replaces or deletes only what this package wrote.

Every folder a command writes carries a small marker, :data:`MARKER`, saying which command made
it and which files it wrote. The rules, used by every command:

1. An output never is, holds or lies inside one of the command's inputs (a source dataset,
   ``--images``, a run folder read as ``--prompts``, the download cache); checked on resolved paths,
   before anything is written (:func:`check_apart`).
2. A command writes into a folder that is new, empty, or marked as ours (:func:`claim_folder`, then
   :func:`finish_folder`); a folder holding anything else is refused with the names of what it holds.
3. ``--overwrite`` replaces only a marked folder, and only when every file in it is one the marker
   lists (:func:`check_replaceable`); a user's file in it is named in the error, never deleted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Mapping

from tipsomaly_lite.io.atomic import atomic_file
from tipsomaly_lite.io.jsonfile import JSONFileError, read_json

__all__ = ["MARKER", "OutputError", "check_apart", "check_folder_path", "claim_folder", "finish_folder",
           "check_replaceable", "write_marker", "read_marker", "folder_files", "check_file_output"]

#: The marker file in every folder this package writes.
MARKER = ".tipsomaly-output.json"
#: How many names an error lists before "and N more".
_SHOWN = 3


class OutputError(ValueError):
    """An output would overwrite or delete what this package did not write, or overlaps an input."""


def _resolved(path: str | os.PathLike) -> Path:
    return Path(path).expanduser().resolve()


def _names(paths: list[str]) -> str:
    shown = ", ".join(paths[:_SHOWN])
    return shown + (f" and {len(paths) - _SHOWN} more" if len(paths) > _SHOWN else "")


def check_apart(out: str | os.PathLike, inputs: Mapping[str, str | os.PathLike | Iterable | None],
                flag: str = "--out") -> None:
    """Refuse an output that is, holds or lies inside any input (resolved paths, links followed).

    Args:
        out: the output folder or file.
        inputs: what the command reads, by the words a user knows it by (``{"--source": path}``);
            a value may be a list of paths, or None.
        flag: the output's flag, for the message.
    Raises:
        OutputError: naming both and the relation.
    """
    o = _resolved(out)
    for name, value in inputs.items():
        values = [value] if isinstance(value, (str, os.PathLike)) else list(value or [])
        for v in values:
            i = _resolved(v)
            relation = ("is" if o == i else "lies inside" if i in o.parents else "holds" if o in i.parents
                        else None)
            if relation:
                raise OutputError(f"{flag} {out} {relation} {name} {v}: an output must stay apart from what the "
                                  f"command reads (nothing there is replaced or deleted); choose another {flag}")


def folder_files(folder: Path) -> list[str]:
    """Every entry under ``folder`` as POSIX paths relative to it (files, links; folders only when empty)."""
    found = []
    for root, dirs, files in os.walk(folder):
        rel = Path(root).relative_to(folder)
        found += [(rel / f).as_posix() for f in files]
        found += [(rel / d).as_posix() for d in dirs if Path(root, d).is_symlink()]
        if not dirs and not files and Path(root) != folder:
            found.append(rel.as_posix() + "/")
    return sorted(found)


def read_marker(folder: str | os.PathLike) -> dict | None:
    """The marker of ``folder`` when it is ours and readable, else None."""
    path = Path(folder) / MARKER
    if not path.is_file() or path.is_symlink():
        return None
    try:
        marker = read_json(path, what="output marker", max_bytes=16 * 2**20)
    except (JSONFileError, OSError):
        return None
    files = marker.get("files")
    if marker.get("made_by") != "tipsomaly_lite" or not isinstance(files, list) or \
            not all(isinstance(f, str) for f in files):
        return None
    return marker


def write_marker(folder: str | os.PathLike, command: str, complete: bool = True) -> Path:
    """Record in ``folder`` that ``command`` wrote it, listing every file now in it.

    Args:
        complete: False while the command runs (:func:`claim_folder`): whatever appears in the folder
            until :func:`finish_folder` is the command's own, even when it is killed half-way and run again.
    """
    folder = Path(folder)
    files = sorted(set(folder_files(folder)) - {MARKER})
    path = folder / MARKER
    with atomic_file(path, "w", encoding="utf-8") as f:
        json.dump({"made_by": "tipsomaly_lite", "command": command, "complete": complete, "files": files}, f,
                  indent=1)
    return path


def finish_folder(folder: str | os.PathLike, command: str) -> Path:
    """Mark ``folder`` complete: every file now in it was written by ``command`` (after :func:`claim_folder`)."""
    return write_marker(folder, command, complete=True)


def check_folder_path(folder: str | os.PathLike, flag: str = "--out") -> None:
    """Refuse an output folder that is, or lies under, an existing file (before any work is done).

    Raises:
        OutputError: naming the file.
    """
    folder = Path(folder)
    for p in [folder, *folder.parents]:
        if (p.exists() or p.is_symlink()) and not p.is_dir():
            where = "is" if p == folder else f"lies under {p}, which is"
            raise OutputError(f"{flag} {folder} {where} an existing file, not a folder; give a folder for the "
                              "results")


def _not_ours(folder: Path) -> list[str]:
    """What in ``folder`` this package did not write: everything when it has no valid marker (a file that
    only looks like one included), else what a complete marker does not list (nothing for a run killed
    half-way, whose marker is still incomplete: everything in it is its own)."""
    present = folder_files(folder)
    marker = read_marker(folder)
    if marker is None:
        return present
    if not marker.get("complete", True):
        return []
    return sorted(set(present) - set(marker["files"]) - {MARKER})


def claim_folder(folder: str | os.PathLike, *, command: str, inputs: Mapping[str, object] | None = None,
                 flag: str = "--out") -> Path:
    """Make ``folder`` ready for ``command``'s results, before any long work.

    New and empty folders are created and marked; a folder with our marker is reused (its files are
    ours to replace); anything else is refused. Writing the marker proves the folder writable.

    Raises:
        OutputError: it overlaps an input, is a file, lies under a file, or holds files we did not write
            (named), or cannot be written.
    """
    folder = Path(folder)
    check_apart(folder, inputs or {}, flag)
    check_folder_path(folder, flag)
    foreign = _not_ours(folder) if folder.is_dir() else []
    if foreign:
        raise OutputError(f"{flag} {folder} already holds files this package did not write ({_names(foreign)}); "
                          "they are left alone: move them away or choose a new or empty folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_marker(folder, command, complete=False)
    except OSError as exc:
        raise OutputError(f"{flag} {folder}: cannot write results there ({exc.strerror or exc})") from exc
    return folder


def check_replaceable(folder: str | os.PathLike, flag: str = "--out") -> None:
    """Refuse ``--overwrite`` of a folder unless this package wrote it and every file in it.

    Raises:
        OutputError: not a folder, no marker (not ours), or files the marker does not list (named).
    """
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_symlink() or not folder.is_dir():
        raise OutputError(f"{flag} {folder} is not a folder this package wrote; --overwrite leaves it alone")
    if read_marker(folder) is None:
        raise OutputError(f"{flag} {folder} was not written by this package (it has no {MARKER}); --overwrite "
                          "replaces only folders it wrote: move it away or choose another folder")
    foreign = _not_ours(folder)
    if foreign:
        raise OutputError(f"{flag} {folder} holds files this package did not write ({_names(foreign)}); "
                          "--overwrite would delete them: move them away first")


def check_file_output(path: str | os.PathLike, *, header: str, inputs: Mapping[str, object] | None = None,
                      flag: str = "--out") -> Path:
    """Refuse an output *file* that would replace what this package did not write, before any work.

    The rules of the folders, for one file (a CSV written with :func:`~tipsomaly_lite.io.atomic.atomic_file`):
    apart from the inputs, not a folder or a link, and when it exists already, its first line is
    ``header`` (a file this package wrote, which may be replaced); anything else is left alone.

    Raises:
        OutputError: naming the file and what is in the way.
    """
    path = Path(path)
    check_apart(path, inputs or {}, flag)
    check_folder_path(path.parent, flag)
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise OutputError(f"{flag} {path} exists and is not a regular file; choose a new file name")
    if path.exists():
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                first = fh.readline().rstrip("\r\n")
        except OSError as exc:
            raise OutputError(f"{flag} {path}: cannot be read to check who wrote it ({exc.strerror or exc})") from exc
        if first != header:
            raise OutputError(f"{flag} {path} already exists and was not written by this command (its first line is "
                              "not the expected header); it is left alone: move it away or choose another name")
    return path
