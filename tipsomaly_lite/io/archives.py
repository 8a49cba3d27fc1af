"""Safe extraction of downloaded dataset archives (.tar, .tar.gz, .tar.xz, .zip).

An archive from the internet may hold members that write outside the target folder
(``../evil``, ``/etc/passwd``), links that point outside it, device files, or a few megabytes
that inflate to gigabytes. Every member is checked before anything is written for it; files and
folders are written first, while no link exists, and links last, each then resolved with all of
them in place (a link to a link can escape even when each looks harmless on paper); the total
size is capped. Everything lands in a hidden temporary folder next to the target that is renamed only once
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

from tipsomaly_lite.io.atomic import atomic_folder

__all__ = ["ArchiveError", "MAX_TOTAL_BYTES", "MAX_RATIO", "extract_archive"]

#: Refuse to extract more than this many bytes in all (the largest benchmark, MVTec AD, is ~5 GB).
MAX_TOTAL_BYTES = 64 << 30
#: Refuse contents larger than this many times the archive itself (images barely compress; a
#: zero-filled deflate bomb inflates ~1000x).
MAX_RATIO = 100.0
# Below this many extracted bytes the ratio is not applied: tiny archives of text compress well.
_RATIO_FLOOR = 64 << 20


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


# Errors a damaged or unsupported archive raises while it is *read* (never while we write).
_READ_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, lzma.LZMAError, zlib.error, OSError,
                NotImplementedError, RuntimeError)
# Zip methods Python can decompress: stored, deflate, bzip2, lzma. 9 is Deflate64 (PKWARE-only).
_ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate",
                zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma"}


def _damaged(archive: pathlib.Path, err: BaseException) -> ArchiveError:
    return ArchiveError(f"{archive}: the archive is damaged or truncated ({type(err).__name__}: {err}); "
                        "download it again.")


class _Extractor:
    """Writes members into ``root`` in two phases so that no write ever goes through a link.

    Phase 1 (``directory``, ``regular``, ``hardlink``): only real folders and files exist, so
    nothing can be written outside ``root``; a member whose path runs through a link member is
    refused before any folder is made. Phase 2 (``finish``): the links are created last, then
    every link is resolved with all of them in place, so a chain like ``a -> b/c/..`` plus
    ``b/c -> ..`` (each harmless on paper) is caught.
    """

    def __init__(self, archive: pathlib.Path, root: pathlib.Path, *, max_total_bytes: int,
                 max_ratio: float) -> None:
        self.archive = archive
        self.root = root
        self.root_real = os.path.realpath(root)
        self.links: dict[tuple[str, ...], tuple[str, str]] = {}  # parts -> (member name, target)
        size = archive.stat().st_size
        by_ratio = max(int(max_ratio * size), _RATIO_FLOOR)
        self.limit = min(max_total_bytes, by_ratio)
        self.why = (f"max_total_bytes={max_total_bytes}" if max_total_bytes <= by_ratio else
                    f"{max_ratio:g} times the archive's own {size} bytes")
        self.total = 0

    def take(self, name: str, n_bytes: int, *, count: bool = True) -> None:
        """Count ``n_bytes`` more towards the size cap, refusing before they are written.

        With ``count=False`` only check that ``n_bytes`` more would fit (a zip's declared total).
        """
        total = self.total + max(int(n_bytes), 0)
        if count:
            self.total = total
        if total > self.limit:
            raise ArchiveError(
                f"{self.archive}: member {name!r} brings the extracted size to {total} bytes, over "
                f"the cap of {self.limit} bytes ({self.why}); refusing (a damaged archive or a "
                "decompression bomb). If the archive is genuine, pass a larger max_total_bytes= / "
                "max_ratio= to extract_archive.")

    def _not_through_link(self, name: str, parts: tuple[str, ...]) -> None:
        for i in range(1, len(parts)):
            if parts[:i] in self.links:
                raise ArchiveError(f"{self.archive}: member {name!r} lies inside the link "
                                   f"{'/'.join(parts[:i])!r}; refusing to write through a link.")
        self.links.pop(parts, None)  # a later member replaces an earlier link of the same name

    def _parent(self, name: str, parts: tuple[str, ...]) -> pathlib.Path:
        self._not_through_link(name, parts)
        dest = self.root.joinpath(*parts)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as err:
            raise ArchiveError(f"{self.archive}: member {name!r} needs a folder where the archive "
                               "already put a file; refusing.") from err
        if dest.is_dir():
            raise ArchiveError(f"{self.archive}: member {name!r} is a file where the archive already "
                               "put a folder; refusing.")
        return dest

    def directory(self, name: str, parts: tuple[str, ...]) -> None:
        self._not_through_link(name, parts)
        dest = self.root.joinpath(*parts)
        try:
            dest.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as err:
            raise ArchiveError(f"{self.archive}: folder {name!r} collides with a file of the same "
                               "name; refusing.") from err

    def regular(self, name: str, parts: tuple[str, ...], src, declared: int) -> pathlib.Path:
        """Copy a member's bytes; never more than its header ``declared`` (checked as it streams)."""
        self.take(name, declared)
        dest = self._parent(name, parts)
        with open(dest, "wb") as out:
            written = 0
            while True:
                try:
                    chunk = src.read(1 << 20)
                except _READ_ERRORS as err:
                    raise _damaged(self.archive, err) from err
                if not chunk:
                    break
                written += len(chunk)
                if written > declared:
                    raise ArchiveError(f"{self.archive}: member {name!r} inflates beyond the {declared} "
                                       "bytes its header declares; refusing (damaged or hostile).")
                out.write(chunk)
        return dest

    def hardlink(self, name: str, parts: tuple[str, ...], linkname: str) -> None:
        # Hard-link names are relative to the archive root, not to the member.
        target = _check_link_target(self.archive, name, parts, linkname, relative_to_member=False)
        source = self.root.joinpath(*target)
        through_link = any(target[:i] in self.links for i in range(1, len(target) + 1))
        if through_link or source.is_symlink() or not source.is_file():
            raise ArchiveError(f"{self.archive}: hard link {name!r} -> {linkname!r} does not point to a "
                               "file extracted earlier inside the target folder; refusing.")
        self.take(name, source.stat().st_size)
        dest = self._parent(name, parts)
        shutil.copyfile(source, dest)

    def symlink(self, name: str, parts: tuple[str, ...], link: str) -> None:
        if "\x00" in link:
            raise ArchiveError(f"{self.archive}: link {name!r} has a NUL byte in its target; refusing.")
        _check_link_target(self.archive, name, parts, link, relative_to_member=True)
        for i in range(1, len(parts)):
            if parts[:i] in self.links:
                raise ArchiveError(f"{self.archive}: link {name!r} lies inside the link "
                                   f"{'/'.join(parts[:i])!r}; refusing links inside links.")
        self.links[parts] = (name, link)

    def finish(self) -> None:
        """Create the links (their folders are real ones), then resolve each with all in place."""
        made = []
        for parts, (name, link) in self.links.items():
            dest = self.root.joinpath(*parts)
            if dest.is_dir() and not dest.is_symlink():
                raise ArchiveError(f"{self.archive}: link {name!r} has the name of a folder the archive "
                                   "also holds; refusing.")
            dest.parent.mkdir(parents=True, exist_ok=True)  # phase 1 left only real folders here
            if not _inside(self.root_real, str(dest.parent)):
                raise ArchiveError(f"{self.archive}: link {name!r} would be created outside the target "
                                   "folder; refusing.")
            if dest.is_symlink() or dest.exists():
                dest.unlink()
            os.symlink(link, dest)
            made.append((name, link, dest))
        for name, link, dest in made:
            if not _inside(self.root_real, str(dest)):
                raise ArchiveError(f"{self.archive}: link {name!r} -> {link!r} resolves to "
                                   f"{os.path.realpath(dest)} once every link exists, outside the "
                                   "target folder; refusing.")


def _members(archive: pathlib.Path, tf: tarfile.TarFile):
    """Tar members one by one; a decompression error while seeking the next header is 'damaged'."""
    iterator = iter(tf)
    while True:
        try:
            member = next(iterator)
        except StopIteration:
            return
        except _READ_ERRORS as err:
            raise _damaged(archive, err) from err
        yield member


def _extract_tar(archive: pathlib.Path, ex: _Extractor, bar) -> None:
    try:
        tf = tarfile.open(archive, mode="r:*")
    except _READ_ERRORS as err:
        raise ArchiveError(f"{archive}: not a readable tar archive ({err}).") from err
    with tf:
        # Iterating streams members one by one, so a 5 GB .tar.xz is decompressed only once.
        for member in _members(archive, tf):
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
                ex.directory(name, parts)
            elif member.issym():
                ex.symlink(name, parts, member.linkname)
            elif member.islnk():
                ex.hardlink(name, parts, member.linkname)
            else:
                try:
                    src = tf.extractfile(member)
                except _READ_ERRORS as err:
                    raise _damaged(archive, err) from err
                if src is None:
                    raise ArchiveError(f"{archive}: cannot read member {name!r}.")
                with src:
                    dest = ex.regular(name, parts, src, member.size)
                # Keep the owner's read/write/execute bits only: no setuid, no world-writable.
                os.chmod(dest, (member.mode & 0o755) | 0o600)
            bar.update(1)
        ex.finish()


def _check_zip_members(archive: pathlib.Path, zf: zipfile.ZipFile, ex: _Extractor) -> None:
    """Refuse encrypted or unsupported members and over-large totals before writing anything."""
    declared = 0
    for info in zf.infolist():
        if info.flag_bits & 0x1:
            raise ArchiveError(f"{archive}: member {info.filename!r} is encrypted; password-protected "
                               "zips are unsupported. Extract it with a zip tool and pass the folder.")
        if info.compress_type not in _ZIP_METHODS:
            method = "Deflate64" if info.compress_type == 9 else f"method {info.compress_type}"
            raise ArchiveError(f"{archive}: member {info.filename!r} uses {method} compression, which is "
                               f"unsupported (supported: {', '.join(_ZIP_METHODS.values())}). Extract it "
                               "with a zip tool (7-Zip, unzip) and pass the folder instead.")
        declared += info.file_size
    # Declared sizes bound what zipfile will inflate, so a bomb is refused before any byte is written.
    ex.take("(all members together)", declared, count=False)


def _extract_zip(archive: pathlib.Path, ex: _Extractor, bar) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except _READ_ERRORS as err:
        raise ArchiveError(f"{archive}: not a readable zip archive ({err}).") from err
    with zf:
        _check_zip_members(archive, zf, ex)
        for info in zf.infolist():
            name = info.filename
            parts = _member_parts(archive, name)
            if not parts:
                continue
            mode = info.external_attr >> 16
            if info.is_dir():
                ex.directory(name, parts)
                continue
            # Many zip writers leave the file-type bits at 0; only a set, non-regular type is bad.
            if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
                raise ArchiveError(f"{archive}: member {name!r} is not a regular file or link "
                                   f"(mode {oct(mode)}); refusing to extract it.")
            if stat.S_ISLNK(mode):
                if info.file_size > 4096:
                    raise ArchiveError(f"{archive}: link {name!r} has a {info.file_size}-byte target; "
                                       "refusing.")
                try:
                    link = zf.read(info).decode("utf-8", errors="strict")
                except UnicodeDecodeError as err:
                    raise ArchiveError(f"{archive}: link {name!r} has a target that is not UTF-8; "
                                       "refusing.") from err
                except _READ_ERRORS as err:
                    raise _damaged(archive, err) from err
                ex.symlink(name, parts, link)
            else:
                try:
                    src = zf.open(info)
                except _READ_ERRORS as err:
                    raise _damaged(archive, err) from err
                with src:
                    ex.regular(name, parts, src, info.file_size)
            bar.update(1)
        ex.finish()


def extract_archive(archive: str | os.PathLike, target: str | os.PathLike, *,
                    progress: bool = True, max_total_bytes: int = MAX_TOTAL_BYTES,
                    max_ratio: float = MAX_RATIO) -> pathlib.Path:
    """Extract a tar (any compression) or zip archive into ``target``, refusing unsafe members.

    The archive type is detected from its content, not its name. Members with absolute paths or
    ``..``, links pointing outside ``target`` (checked once every link exists), members inside
    a link, device/FIFO files, encrypted or Deflate64 zip members, and contents larger than the
    size cap raise ``ArchiveError`` naming the archive and the member; nothing is left behind in
    that case and nothing is written outside ``target``.

    Args:
        archive: path of the ``.tar``, ``.tar.gz``, ``.tar.xz`` or ``.zip`` file.
        target: folder to create; must not exist yet. The archive's own top-level folders
            are kept as they are.
        progress: show a ``tqdm`` counter of extracted members.
        max_total_bytes: cap on the bytes extracted in all.
        max_ratio: cap on extracted bytes / archive bytes (applied above 64 MiB extracted), so
            a small decompression bomb stops before it fills the disk.
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
            ex = _Extractor(archive, tmp, max_total_bytes=max_total_bytes, max_ratio=max_ratio)
            if zipfile.is_zipfile(archive):
                _extract_zip(archive, ex, bar)
            elif tarfile.is_tarfile(archive):
                _extract_tar(archive, ex, bar)
            else:
                raise ArchiveError(f"{archive}: neither a tar nor a zip archive (expected "
                                   ".tar, .tar.gz, .tar.xz or .zip).")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, lzma.LZMAError, zlib.error) as err:
        raise _damaged(archive, err) from err
    return target
