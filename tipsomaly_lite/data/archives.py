"""Safe extraction of downloaded dataset archives (.tar, .tar.gz, .tar.xz, .zip).

An archive from the internet may hold members that write outside the target folder
(``../evil``, ``/etc/passwd``), links that point outside it, or device files. Every member is
checked before anything is written for it, links are checked again against the real file system
after they are created (a link to a link can escape even when each looks harmless on paper),
and everything lands in a hidden temporary folder next to the target that is renamed only once
the whole archive is out. An interrupted or refused extraction therefore leaves no target folder.
"""

from __future__ import annotations

import lzma
import os
import pathlib
import posixpath
import shutil
import stat
import tarfile
import zipfile
import zlib

from tqdm.auto import tqdm

from tipsomaly_lite.data.atomic import atomic_folder

__all__ = ["ArchiveError", "extract_archive"]


class ArchiveError(RuntimeError):
    """An archive is unreadable or holds a member that would escape the target folder."""


def _member_parts(archive: pathlib.Path, name: str) -> tuple[str, ...]:
    """Path components of a member name, refusing absolute paths, drives and ``..``."""
    if "\x00" in name:
        raise ArchiveError(f"{archive}: member {name!r} has a NUL byte in its name; refusing.")
    unified = name.replace("\\", "/")
    if unified.startswith("/") or (len(unified) > 1 and unified[1] == ":"):
        raise ArchiveError(f"{archive}: member {name!r} has an absolute path; refusing to "
                           "extract it.")
    parts = tuple(p for p in unified.split("/") if p not in ("", "."))
    if ".." in parts:
        raise ArchiveError(f"{archive}: member {name!r} contains '..' and would escape the "
                           "target folder; refusing to extract it.")
    return parts


def _inside(root_real: str, path: str) -> bool:
    real = os.path.realpath(path)
    return real == root_real or real.startswith(root_real + os.sep)


def _check_link_target(archive: pathlib.Path, name: str, parts: tuple[str, ...], link: str,
                       *, relative_to_member: bool) -> tuple[str, ...]:
    """Components of a link's target inside the archive root, or ArchiveError if it escapes."""
    unified = link.replace("\\", "/")
    if unified.startswith("/") or (len(unified) > 1 and unified[1] == ":"):
        raise ArchiveError(f"{archive}: link {name!r} points to the absolute path {link!r}, "
                           "outside the target folder; refusing.")
    base = "/".join(parts[:-1]) if relative_to_member else ""
    joined = posixpath.normpath(posixpath.join("/root", base, unified))
    if joined != "/root" and not joined.startswith("/root/"):
        raise ArchiveError(f"{archive}: link {name!r} -> {link!r} points outside the target "
                           "folder; refusing.")
    return tuple(p for p in joined[len("/root"):].split("/") if p)


def _prepare_parent(archive: pathlib.Path, name: str, root: pathlib.Path, root_real: str,
                    parts: tuple[str, ...]) -> pathlib.Path:
    dest = root.joinpath(*parts)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # A folder reached through an earlier (in-tree) symlink must still resolve inside the root.
    if not _inside(root_real, str(dest.parent)):
        raise ArchiveError(f"{archive}: member {name!r} would be written through a link to "
                           f"{os.path.realpath(dest.parent)}, outside the target folder; refusing.")
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        dest.unlink()
    return dest


def _make_symlink(archive: pathlib.Path, name: str, dest: pathlib.Path, link: str,
                  root_real: str) -> None:
    os.symlink(link, dest)
    if not _inside(root_real, str(dest)):
        dest.unlink()
        raise ArchiveError(f"{archive}: link {name!r} -> {link!r} resolves to "
                           f"{os.path.realpath(dest)}, outside the target folder; refusing.")


def _extract_tar(archive: pathlib.Path, root: pathlib.Path, bar) -> None:
    root_real = os.path.realpath(root)
    try:
        tf = tarfile.open(archive, mode="r:*")
    except (tarfile.TarError, OSError) as err:
        raise ArchiveError(f"{archive}: not a readable tar archive ({err}).") from err
    with tf:
        # Iterating streams members one by one, so a 5 GB .tar.xz is decompressed only once.
        for member in tf:
            name = member.name
            parts = _member_parts(archive, name)
            if not parts:
                continue
            if member.isdev():
                kind = "FIFO" if member.isfifo() else "device file"
                raise ArchiveError(f"{archive}: member {name!r} is a {kind}; refusing to "
                                   "extract it.")
            if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
                raise ArchiveError(f"{archive}: member {name!r} has unsupported tar type "
                                   f"{member.type!r}; refusing to extract it.")
            if member.isdir():
                dest = root.joinpath(*parts)
                dest.mkdir(parents=True, exist_ok=True)
                if not _inside(root_real, str(dest)):
                    raise ArchiveError(f"{archive}: folder {name!r} resolves outside the target "
                                       "folder; refusing.")
                continue
            dest = _prepare_parent(archive, name, root, root_real, parts)
            if member.issym():
                _check_link_target(archive, name, parts, member.linkname, relative_to_member=True)
                _make_symlink(archive, name, dest, member.linkname, root_real)
            elif member.islnk():
                # Hard-link names are relative to the archive root, not to the member.
                target_parts = _check_link_target(archive, name, parts, member.linkname,
                                                  relative_to_member=False)
                source = root.joinpath(*target_parts)
                if not source.is_file() or not _inside(root_real, str(source)):
                    raise ArchiveError(f"{archive}: hard link {name!r} -> {member.linkname!r} "
                                       "does not point to a file extracted earlier inside the "
                                       "target folder; refusing.")
                shutil.copyfile(source, dest)
            else:
                src = tf.extractfile(member)
                if src is None:
                    raise ArchiveError(f"{archive}: cannot read member {name!r}.")
                with src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                # Keep the owner's read/write/execute bits only: no setuid, no world-writable.
                os.chmod(dest, (member.mode & 0o755) | 0o600)
            bar.update(1)


def _extract_zip(archive: pathlib.Path, root: pathlib.Path, bar) -> None:
    root_real = os.path.realpath(root)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as err:
        raise ArchiveError(f"{archive}: not a readable zip archive ({err}).") from err
    with zf:
        for info in zf.infolist():
            name = info.filename
            parts = _member_parts(archive, name)
            if not parts:
                continue
            mode = info.external_attr >> 16
            if info.is_dir():
                dest = root.joinpath(*parts)
                dest.mkdir(parents=True, exist_ok=True)
                continue
            # Many zip writers leave the file-type bits at 0; only a set, non-regular type is bad.
            if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
                raise ArchiveError(f"{archive}: member {name!r} is not a regular file or link "
                                   f"(mode {oct(mode)}); refusing to extract it.")
            dest = _prepare_parent(archive, name, root, root_real, parts)
            if stat.S_ISLNK(mode):
                link = zf.read(info).decode("utf-8", errors="strict")
                _check_link_target(archive, name, parts, link, relative_to_member=True)
                _make_symlink(archive, name, dest, link, root_real)
            else:
                with zf.open(info) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
            bar.update(1)


def extract_archive(archive: str | os.PathLike, target: str | os.PathLike, *,
                    progress: bool = True) -> pathlib.Path:
    """Extract a tar (any compression) or zip archive into ``target``, refusing unsafe members.

    The archive type is detected from its content, not its name. Members with absolute paths or
    ``..``, links pointing outside ``target``, and device/FIFO files raise ``ArchiveError``
    naming the archive and the member; nothing is left behind in that case.

    Args:
        archive: path of the ``.tar``, ``.tar.gz``, ``.tar.xz`` or ``.zip`` file.
        target: folder to create; must not exist yet. The archive's own top-level folders
            are kept as they are.
        progress: show a ``tqdm`` counter of extracted members.
    Returns:
        ``target`` as a ``Path``.
    Raises:
        FileNotFoundError: ``archive`` does not exist.
        FileExistsError: ``target`` already exists.
        ArchiveError: unreadable archive or unsafe member.
    """
    archive = pathlib.Path(archive)
    target = pathlib.Path(target)
    if not archive.is_file():
        raise FileNotFoundError(f"Archive {archive} does not exist.")
    if target.exists():
        raise FileExistsError(f"Extraction target {target} already exists; delete it to "
                              "extract again.")
    try:
        with atomic_folder(target, "extracting") as tmp, \
                tqdm(desc=f"extract {archive.name}", unit=" files", disable=not progress, leave=False) as bar:
            if zipfile.is_zipfile(archive):
                _extract_zip(archive, tmp, bar)
            elif tarfile.is_tarfile(archive):
                _extract_tar(archive, tmp, bar)
            else:
                raise ArchiveError(f"{archive}: neither a tar nor a zip archive (expected "
                                   ".tar, .tar.gz, .tar.xz or .zip).")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, lzma.LZMAError, zlib.error) as err:
        raise ArchiveError(f"{archive}: the archive is damaged or truncated ({err}); download "
                           "it again.") from err
    return target
