"""Find the input files of a landing folder or zip archive, and read them with bounded memory.

``discover`` lists every regular file under SOURCE, expanding zip archives (recognised by
their first bytes, not their name) into their entries. What must not be read is listed
anyway, with the reason in ``problem``: symlinks that leave SOURCE, archive entries that
climb out of the archive or are too large, nested archives, broken archives. Nothing is
ever extracted or written; ``read_item`` streams an entry and stops at the size limit.

What is read is what was checked: every file (and archive) is opened once, with ``O_NOFOLLOW |
O_NONBLOCK``, and only read when ``fstat`` of that descriptor says it is a regular file and the
path the descriptor really points at is inside SOURCE. A file swapped after discovery for a FIFO,
socket or device is ``unreadable`` at once (never waited on); one swapped for a symlink out of
SOURCE, or reached through a folder swapped so, is ``symlink_outside_source`` and never read.

An archive member is identified by its index in the archive, not its name: two members of one
name, or names that alias once normalised (``a/./b``, ``a//b``, ``A/B``), are each an item of
their own; the first keeps the plain logical path, each later one gets ``#<index>`` appended, so
no two items (nor ledger entries) share a path, even case-folded.

Names are kept as ``str`` the way ``os.fsdecode`` makes them (undecodable bytes as lone
surrogates); ``medmeta.landing.names`` shows and serialises them.
A gzip file (recognised by its first bytes; a FHIR bulk export's ``.ndjson.gz``), plain or in an
archive, is inflated by ``read_item`` within ``max_zip_entry_bytes``: a gzip bomb is refused
(``gzip_too_large``), never inflated without bound.
"""

from __future__ import annotations

import io
import os
import re
import stat
import struct
import threading
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from medmeta.checked_file import open_regular
from medmeta.errors import (
    BAD_ARCHIVE,
    GZIP_TOO_LARGE,
    NESTED_ARCHIVE,
    SYMLINK_OUTSIDE_SOURCE,
    UNREADABLE,
    ZIP_ENTRY_TOO_LARGE,
    ZIP_PATH_ESCAPE,
    ZIP_TOO_LARGE,
    MedmetaError,
    Rejected,
)
from medmeta.ingest.config import IngestConfig
from medmeta.landing.journal import is_cookie

ZIP_MAGIC = b"PK\x03\x04"
GZIP_MAGIC = b"\x1f\x8b\x08"  # gzip, deflate method (RFC 1952)
_READ_CHUNK = 1024 * 1024
_READABLE_COMPRESSION = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
_DRIVE = re.compile(r"^[A-Za-z]:")
# Errors zipfile raises for a damaged archive or entry.
_ARCHIVE_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, struct.error, NotImplementedError,
                   RuntimeError)


@dataclass(frozen=True)
class InputItem:
    """One file to ingest: a plain file, or an entry of a zip archive."""

    logical_path: str  # POSIX, relative to SOURCE; an entry is "<archive path>/<entry path>[#<index>]"
    fs_path: Path  # the file on disk (the archive, for an entry)
    member: str | None  # the entry's name in the archive; None for a plain file
    size: int  # bytes on disk, or the entry's declared uncompressed size
    problem: Rejected | None = None  # set when refused during discovery; such an item is never read
    member_index: int | None = None  # the entry's index in the archive's central directory
    source_root: Path | None = None  # the resolved SOURCE the file must stay inside (None: its own folder)
    mtime_ns: int | None = None  # a plain file's modification time when listed (None: an entry, a refused item)
    archive_stat: tuple[str, int, int] | None = None  # an entry's archive: (its logical path, size, mtime_ns)

    @property
    def content_name(self) -> str:
        """The path whose ending hints at the content (for ``sniff``): an entry's normalised path,
        without the ``#<index>`` an alias gets; a plain file's logical path."""
        return self.logical_path if self.member is None else entry_logical_path(self.member)


def discover(source: Path, config: IngestConfig,
             unchanged: Callable[[str, int, int], object] | None = None,
             settled: list[tuple[str, object, int, int]] | None = None) -> list[InputItem]:
    """Every input under ``source`` (a folder or a zip file), sorted by logical path.

    With ``unchanged`` and ``settled`` (given together): ``unchanged(logical_path, size, mtime_ns)``
    (``Ledger.settled_matcher``; asked once for the whole listing through its ``match`` when it has one)
    is truthy for a plain file the ledger holds as ingested with that
    size and mtime and whose content is still staged; such a file, known from its ``lstat`` alone,
    is not an item at all: ``(logical_path, what unchanged returned, size, mtime_ns)`` is appended to
    ``settled`` instead (a rerun over 50,000 known files opens none and builds no item). A matcher with
    ``folder_settled`` and ``sign_folder`` (``SettledMatcher``) is asked first for each folder whose
    entries (folders aside) are all plain files within ``max_file_bytes``: when it settles the folder
    whole, its files are neither items nor appended to ``settled`` (the matcher counts them:
    ``settled_in_folders``); each such folder whose every file it found settled one by one is signed."""
    if (unchanged is None) != (settled is None):
        raise ValueError("discover: unchanged and settled go together")
    source = Path(source)
    if not source.exists():
        raise MedmetaError("the landing folder is gone (it was there when the run started)")  # no path: this reaches Prefect
    root = Path(os.path.realpath(source))
    if root.is_dir():
        items = _folder_items(root, config, unchanged, settled)
    else:
        items = _file_items(root, source.name, root, config)
    return sorted(items, key=lambda item: item.logical_path)


def read_item(item: InputItem, config: IngestConfig) -> bytes:
    """The bytes of ``item``, read within the size limits; ``Rejected`` when it can not be read."""
    if item.problem is not None:
        raise item.problem
    root = item.source_root if item.source_root is not None else Path(os.path.realpath(item.fs_path.parent))
    if item.member is None:
        data = _read_file(item.fs_path, root, config.max_file_bytes)
    else:
        data = _read_entry(item, root, config.max_zip_entry_bytes)
    if data.startswith(GZIP_MAGIC) and data[128:132] != b"DICM":  # never a DICOM file whose preamble looks so
        return inflate_gzip(data, config.max_zip_entry_bytes)
    return data


def inflate_gzip(data: bytes, limit: int) -> bytes:
    """The content of a gzip file (all its members), refused once it passes ``limit`` bytes."""
    out = bytearray()
    remaining = data
    while remaining:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        pending = remaining
        try:
            while not inflater.eof:
                piece = inflater.decompress(pending, _READ_CHUNK)
                out += piece
                if len(out) > limit:
                    raise Rejected(GZIP_TOO_LARGE,
                                   f"the gzip data inflates past the max_zip_entry_bytes limit of {limit}")
                pending = inflater.unconsumed_tail
                if not pending and not piece:
                    raise Rejected(BAD_ARCHIVE, "the gzip data is truncated")
        except zlib.error:
            raise Rejected(BAD_ARCHIVE, "the gzip data is damaged") from None
        remaining = inflater.unused_data
        if remaining and not remaining.startswith(GZIP_MAGIC):
            if remaining.strip(b"\x00"):
                raise Rejected(BAD_ARCHIVE, "the gzip data is followed by bytes that are not gzip")
            break  # zero padding after the last member
    if out.startswith(GZIP_MAGIC) or out.startswith(ZIP_MAGIC):
        raise Rejected(NESTED_ARCHIVE, "the gzip data holds another archive; archives inside archives are not opened")
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# Folders


def _folder_items(root: Path, config: IngestConfig,
                  unchanged: Callable[[str, int, int], object] | None = None,
                  settled: list[tuple[str, object, int, int]] | None = None) -> list[InputItem]:
    items: list[InputItem] = []
    # plain files the ledger may know, as three aligned lists (no tuple nor object per file)
    candidate_logicals: list[str] = []
    candidate_sizes: list[int] = []
    candidate_mtimes: list[int] = []
    candidate_paths: list[str] = []
    max_bytes = config.max_file_bytes
    is_regular = stat.S_ISREG

    def unlistable(folder: Path) -> None:
        items.append(_refused(_relative(root, folder), folder, root, UNREADABLE, "the folder can not be listed"))

    top = str(root)
    folders = [top]
    folder_settled = getattr(unchanged, "folder_settled", None)
    folder_clean = getattr(unchanged, "folder_clean", None)
    sign_folder = getattr(unchanged, "sign_folder", None)
    whole: list[tuple[str, list[str], list[int], list[int], int]] = []  # folders to sign if all settle
    while folders:  # os.walk's folders and files, by os.scandir directly: one listing, no path joins
        folder = folders.pop()
        try:  # listed through a descriptor: each lstat is then relative to it (fstatat), no path walked again
            descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            unlistable(Path(folder))
            continue
        try:
            with os.scandir(descriptor) as listing:
                entries = list(listing)
        except OSError:
            os.close(descriptor)
            unlistable(Path(folder))
            continue
        folder_path = Path(folder)
        # logical paths by string operations: pathlib costs more than the lstat on a folder of 50,000 files
        prefix = "" if folder == top else os.path.relpath(folder, top).replace(os.sep, "/") + "/"
        names: list[str] = []  # this folder's candidates (plain files within max_file_bytes)
        sizes: list[int] = []
        mtimes: list[int] = []
        others = False  # an entry that is neither a folder nor a candidate
        if folder == top:  # a change journal's sync cookie (medmeta.landing.journal) is no input
            entries = [entry for entry in entries if not is_cookie(entry.name)]
        try:
            if folder_clean is not None and folder_clean(prefix):
                settled_folders = _clean_folder(entries, folder)
                if settled_folders is not None:  # no stat: folders known by their type in the listing
                    subfolders, files = settled_folders
                    folders.extend(subfolders)
                    unchanged.take_clean(prefix, files)
                    continue
            for entry in entries:
                try:
                    is_folder = entry.is_dir()  # follows a symlink, as os.walk does
                except OSError:
                    is_folder = False
                if is_folder:
                    if entry.is_symlink():  # a symlink to a folder is not entered
                        others = True
                        items.extend(_linked_folder_items(root, folder_path / entry.name))
                    else:
                        folders.append(os.path.join(folder, entry.name))
                    continue
                if unchanged is not None:  # a candidate when lstat says: a regular file within max_file_bytes
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except OSError:
                        info = None
                    if info is not None and is_regular(info.st_mode) and info.st_size <= max_bytes:
                        names.append(entry.name)
                        sizes.append(info.st_size)
                        mtimes.append(info.st_mtime_ns)
                        continue
                others = True
                items.extend(_file_items(folder_path / entry.name, prefix + entry.name, root, config))
        finally:
            os.close(descriptor)
        if not names:
            continue
        if folder_settled is not None and not others and folder_settled(prefix, names, sizes, mtimes):
            continue  # every file settled by the folder's listing signature: counted by the matcher
        if sign_folder is not None and not others:
            whole.append((prefix, names, sizes, mtimes, len(candidate_logicals)))
        candidate_logicals.extend([prefix + name for name in names])
        candidate_sizes.extend(sizes)
        candidate_mtimes.extend(mtimes)
        candidate_paths.extend([os.path.join(folder, name) for name in names])
    if candidate_logicals:  # the ledger asked once for the whole listing when it can answer so
        match = getattr(unchanged, "match", None)
        if match is not None:
            answers = match(candidate_logicals, candidate_sizes, candidate_mtimes)
        else:
            answers = [unchanged(*c) for c in zip(candidate_logicals, candidate_sizes, candidate_mtimes)]
        for logical, size, mtime_ns, path, known in zip(candidate_logicals, candidate_sizes, candidate_mtimes,
                                                        candidate_paths, answers):
            if known:
                settled.append((logical, known, size, mtime_ns))
            else:
                items.extend(_file_items(Path(path), logical, root, config))
        for prefix, names, sizes, mtimes, start in whole:
            if all(answers[start:start + len(names)]):
                sign_folder(prefix, names, sizes, mtimes)
    return items


def _clean_folder(entries: list[os.DirEntry], folder: str) -> tuple[list[str], int] | None:
    """The subfolders and the file count of a folder the change journal holds unchanged, from the
    listing's entry types alone (no ``stat``); None when it holds a symlink (then looked at as ever)."""
    subfolders, files = [], 0
    for entry in entries:
        if entry.is_symlink():
            return None
        if entry.is_dir(follow_symlinks=False):
            subfolders.append(os.path.join(folder, entry.name))
        else:
            files += 1
    return subfolders, files


def _relative(root: Path, path: Path) -> str:
    relative = path.relative_to(root).as_posix()
    return relative if relative != "." else path.name


def _linked_folder_items(root: Path, link: Path) -> list[InputItem]:
    """A symlink to a folder: its files inside SOURCE are reached by their own path, so skip it."""
    if _inside(root, link):
        return []
    return [_refused(_relative(root, link), link, root, SYMLINK_OUTSIDE_SOURCE,
                     "a symlink to a folder outside the source")]


def _inside(root: Path, link: Path) -> bool:
    return Path(os.path.realpath(link)).is_relative_to(root)


def _file_items(path: Path, logical: str, root: Path, config: IngestConfig) -> list[InputItem]:
    """A plain file, a symlink, or a zip archive expanded into its entries."""
    try:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            if not _inside(root, path):
                return [_refused(logical, path, root, SYMLINK_OUTSIDE_SOURCE, "a symlink to a file outside the source")]
            info = path.stat()
            if stat.S_ISDIR(info.st_mode):
                return []
        if not stat.S_ISREG(info.st_mode):
            return [_refused(logical, path, root, UNREADABLE, "not a regular file")]
        with open_checked(path, root) as handle:
            info = os.fstat(handle.fileno())
            if handle.read(len(ZIP_MAGIC)) == ZIP_MAGIC:
                return _archive_items(handle, path, logical, info.st_size, root, config, info.st_mtime_ns)
    except Rejected as problem:
        return [InputItem(logical, path, None, 0, problem, source_root=root)]
    except OSError as error:
        return [_refused(logical, path, root, UNREADABLE, f"the file can not be opened ({type(error).__name__})")]
    if info.st_size > config.max_file_bytes:
        message = f"the file holds {info.st_size} bytes, over the max_file_bytes limit of {config.max_file_bytes}"
        return [_refused(logical, path, root, UNREADABLE, message, info.st_size)]
    return [InputItem(logical, path, None, info.st_size, source_root=root, mtime_ns=info.st_mtime_ns)]


def _refused(logical: str, path: Path, root: Path, code: str, message: str, size: int = 0) -> InputItem:
    return InputItem(logical, path, None, size, Rejected(code, message), source_root=root)


def open_checked(path: Path, root: Path) -> BinaryIO:
    """``path`` opened once for reading (the caller closes it), after checking the open descriptor:
    a regular file whose real path is inside ``root``; ``Rejected`` (``unreadable``,
    ``symlink_outside_source``) otherwise.

    The path is resolved first (a symlink inside SOURCE to a file inside SOURCE is read through),
    then opened with ``O_NOFOLLOW | O_NONBLOCK``: a FIFO, socket or device opens at once and is
    refused by ``fstat``, never waited on; what the descriptor points at is read back from
    ``/proc/self/fd`` (elsewhere: compared by device and inode with the resolved path), so a path
    swapped between the check and the open is refused, never read.
    """
    target = os.path.realpath(path)
    if not Path(target).is_relative_to(root):
        raise Rejected(SYMLINK_OUTSIDE_SOURCE, "the path leads outside the source")
    fd, info = open_regular(target)
    try:
        if not _descriptor_inside(fd, info, target, root):
            raise Rejected(SYMLINK_OUTSIDE_SOURCE, "the file opened is outside the source")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _descriptor_inside(fd: int, info: os.stat_result, target: str, root: Path) -> bool:
    """True when the file open on ``fd`` lies inside ``root``."""
    try:
        opened = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # no /proc: the resolved path must still be the file that was opened
        try:
            now = os.stat(target, follow_symlinks=False)
        except OSError:
            return False
        return (now.st_dev, now.st_ino) == (info.st_dev, info.st_ino) and os.path.realpath(target) == target
    return Path(opened.removesuffix(" (deleted)")).is_relative_to(root)


def _read_file(path: Path, root: Path, limit: int) -> bytes:
    try:
        with open_checked(path, root) as handle:
            info = os.fstat(handle.fileno())
            if info.st_size > limit:
                raise Rejected(UNREADABLE, f"the file holds {info.st_size} bytes, over the max_file_bytes "
                                           f"limit of {limit}")
            data = handle.read(info.st_size)
            if handle.read(1):
                raise Rejected(UNREADABLE, "the file grew while it was read")
            return data
    except OSError as error:
        raise Rejected(UNREADABLE, f"the file can not be read ({type(error).__name__})") from None


# ---------------------------------------------------------------------------------------------
# Zip archives


def _archive_items(handle: BinaryIO, path: Path, logical: str, size: int, root: Path,
                   config: IngestConfig, mtime_ns: int | None = None) -> list[InputItem]:
    """The entries of an archive (read from the open ``handle``), or one refused item standing for it; each
    with the archive's ``archive_stat`` when its ``mtime_ns`` is given."""
    items = _archive_entries(handle, path, logical, size, root, config)
    if mtime_ns is None:
        return items
    return [replace(item, archive_stat=(logical, size, mtime_ns)) for item in items]


def _archive_entries(handle: BinaryIO, path: Path, logical: str, size: int, root: Path,
                     config: IngestConfig) -> list[InputItem]:
    try:
        declared_entries = _declared_entry_count(handle)
        if declared_entries is not None and declared_entries > config.max_zip_entries:
            return [_too_many_entries(logical, path, root, size, declared_entries, config)]
        handle.seek(0)
        with zipfile.ZipFile(handle) as archive:
            entries = [(index, info) for index, info in enumerate(archive.infolist()) if not info.is_dir()]
            if len(entries) > config.max_zip_entries:
                return [_too_many_entries(logical, path, root, size, len(entries), config)]
            total = sum(info.file_size for _, info in entries)
            if total > config.max_zip_total_bytes:
                message = f"the entries declare {total} bytes in all, over the limit of {config.max_zip_total_bytes}"
                return [_refused(logical, path, root, ZIP_TOO_LARGE, message, size)]
            paths = member_logical_paths(logical, [info.filename for _, info in entries])
            return [InputItem(member_path, path, info.filename, info.file_size, _entry_problem(archive, info, config),
                              member_index=index, source_root=root)
                    for member_path, (index, info) in zip(paths, entries)]
    except _ARCHIVE_ERRORS as error:
        return [_refused(logical, path, root, BAD_ARCHIVE, f"the archive can not be read ({type(error).__name__})",
                         size)]


def member_logical_paths(archive_logical: str, names: list[str]) -> list[str]:
    """The logical path of each member named in ``names`` (in archive order), all distinct even
    case-folded: a name that normalises (``entry_logical_path``) to the path of an earlier member,
    case aside, is that path with ``#<its index in names>`` appended, and again if that is taken."""
    plain = [f"{archive_logical}/{entry_logical_path(name)}" for name in names]
    first_holder: dict[str, int] = {}
    for position, member_path in enumerate(plain):
        first_holder.setdefault(member_path.casefold(), position)
    taken = set(first_holder)
    paths = []
    for position, member_path in enumerate(plain):
        if first_holder[member_path.casefold()] != position:
            while member_path.casefold() in taken:
                member_path += f"#{position}"
            taken.add(member_path.casefold())
        paths.append(member_path)
    return paths


def _too_many_entries(logical: str, path: Path, root: Path, size: int, count: int, config: IngestConfig) -> InputItem:
    message = f"the archive holds {count} entries, over the limit of {config.max_zip_entries}"
    return _refused(logical, path, root, ZIP_TOO_LARGE, message, size)


def _declared_entry_count(handle: BinaryIO) -> int | None:
    """The entry count in the end-of-central-directory record, read before zipfile loads every entry."""
    size = handle.seek(0, os.SEEK_END)
    tail_size = min(size, 22 + 0xFFFF)  # the record, and a comment of at most 64 KiB
    handle.seek(size - tail_size)
    tail = handle.read(tail_size)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + 22 > len(tail):
        return None
    (count,) = struct.unpack_from("<H", tail, at + 10)
    locator = at - 20
    if count != 0xFFFF or locator < 0 or tail[locator:locator + 4] != b"PK\x06\x07":
        return count
    (zip64_record,) = struct.unpack_from("<Q", tail, locator + 8)
    handle.seek(zip64_record)
    record = handle.read(56)
    if len(record) < 40 or not record.startswith(b"PK\x06\x06"):
        return None
    return struct.unpack_from("<Q", record, 32)[0]


def _entry_problem(archive: zipfile.ZipFile, info: zipfile.ZipInfo, config: IngestConfig) -> Rejected | None:
    if _escapes(info.filename):
        return Rejected(ZIP_PATH_ESCAPE, "the entry's path is absolute or climbs out of the archive")
    if info.file_size > config.max_zip_entry_bytes:
        return Rejected(ZIP_ENTRY_TOO_LARGE, f"the entry declares {info.file_size} bytes, over the "
                                             f"max_zip_entry_bytes limit of {config.max_zip_entry_bytes}")
    if info.compress_type not in _READABLE_COMPRESSION:
        # zipfile inflates bzip2 and lzma without an output bound, so a bomb could not be stopped
        return Rejected(UNREADABLE, f"the entry uses compression method {info.compress_type}; "
                                    "only stored and deflate entries are read")
    if info.flag_bits & 0x1:
        return Rejected(UNREADABLE, "the entry is encrypted")
    try:
        with archive.open(info) as stream:
            head = stream.read(len(ZIP_MAGIC))
    except _ARCHIVE_ERRORS as error:
        return Rejected(BAD_ARCHIVE, f"the entry can not be read ({type(error).__name__})")
    if head == ZIP_MAGIC:
        return Rejected(NESTED_ARCHIVE, "the entry is itself a zip archive; archives inside archives are not opened")
    return None


def _escapes(name: str) -> bool:
    """True for an absolute name, a drive letter, or a ".." part (backslashes count as slashes)."""
    normalised = name.replace("\\", "/")
    return normalised.startswith("/") or bool(_DRIVE.match(normalised)) or ".." in normalised.split("/")


def entry_logical_path(name: str) -> str:
    """The entry name as a relative POSIX path that can not climb: "..", "/" and "C:" are escaped."""
    normalised = name.replace("\\", "/")
    if _DRIVE.match(normalised):
        normalised = f"{normalised[0]}%3A{normalised[2:]}"
    parts = ["%2E%2E" if part == ".." else part for part in normalised.split("/") if part not in ("", ".")]
    return "/".join(parts) or "%2E"


def _read_entry(item: InputItem, root: Path, limit: int) -> bytes:
    """Stream the entry at ``item.member_index`` in chunks and stop past ``limit``: the declared size
    may lie. The archive is opened (and checked) again; an index that now holds another name is refused."""
    try:
        archive = _open_archives.get(item.fs_path, root)
    except OSError as error:
        raise Rejected(UNREADABLE, f"the archive can not be opened ({type(error).__name__})") from None
    except _ARCHIVE_ERRORS as error:
        raise Rejected(BAD_ARCHIVE, f"the archive can not be read ({type(error).__name__})") from None
    try:
        info = _member_info(archive, item)
        if info.file_size > limit:
            raise Rejected(ZIP_ENTRY_TOO_LARGE, f"the entry declares {info.file_size} bytes, over the "
                                                f"max_zip_entry_bytes limit of {limit}")
        with archive.open(info) as stream:
            return _bounded_read(stream, limit)
    except _ARCHIVE_ERRORS as error:
        raise Rejected(BAD_ARCHIVE, f"the entry can not be read ({type(error).__name__})") from None


def _member_info(archive: zipfile.ZipFile, item: InputItem) -> zipfile.ZipInfo:
    """The ZipInfo at the item's index (by name only for an item made without one: the last of that name)."""
    if item.member_index is None:
        try:
            return archive.getinfo(item.member)
        except KeyError:
            raise Rejected(BAD_ARCHIVE, "the entry is no longer in the archive") from None
    infos = archive.infolist()
    if item.member_index >= len(infos) or infos[item.member_index].filename != item.member:
        raise Rejected(BAD_ARCHIVE, "the archive changed since it was listed: the entry is no longer at its place")
    return infos[item.member_index]


def _bounded_read(stream: io.BufferedIOBase, limit: int) -> bytes:
    collected = io.BytesIO()
    while chunk := stream.read(_READ_CHUNK):
        collected.write(chunk)
        if collected.tell() > limit:
            raise Rejected(ZIP_ENTRY_TOO_LARGE, f"the entry inflates past the max_zip_entry_bytes limit of {limit}")
    return collected.getvalue()


class _OpenArchives(threading.local):
    """A few archives kept open in this thread, so reading entry after entry does not reparse the
    central directory each time (that made reading a 10 000-entry zip quadratic).

    Each read opens the archive's path again with ``open_checked``; a kept archive is used only when
    that descriptor is the very file it was parsed from, unchanged (device, inode, size, times).
    """

    keep = 4

    def __init__(self):
        self.archives: OrderedDict[tuple, _KeptArchive] = OrderedDict()

    def get(self, path: Path, root: Path) -> zipfile.ZipFile:
        handle = open_checked(path, root)
        try:
            info = os.fstat(handle.fileno())
            key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns, os.getpid())
            kept = self.archives.pop(key, None)
            if kept is not None:
                handle.close()
            else:
                kept = _KeptArchive(zipfile.ZipFile(handle), handle)
        except BaseException:
            handle.close()
            raise
        self.archives[key] = kept
        while len(self.archives) > self.keep:
            self.archives.popitem(last=False)[1].close()
        return kept.archive


class _KeptArchive:
    """A zip archive and the checked file it was parsed from (zipfile leaves a file it was given
    open): closed together, also when dropped."""

    def __init__(self, archive: zipfile.ZipFile, handle: BinaryIO):
        self.archive = archive
        self.handle = handle

    def close(self) -> None:
        self.archive.close()
        self.handle.close()

    __del__ = close


_open_archives = _OpenArchives()
