"""Find the input files of a landing folder or zip archive, and read them with bounded memory.

``discover`` lists every regular file under SOURCE, expanding zip archives (recognised by
their first bytes, not their name) into their entries. What must not be read is listed
anyway, with the reason in ``problem``: symlinks that leave SOURCE, archive entries that
climb out of the archive or are too large, nested archives, broken archives. Nothing is
ever extracted or written; ``read_item`` streams an entry and stops at the size limit.
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
from dataclasses import dataclass
from pathlib import Path

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

    logical_path: str  # POSIX, relative to SOURCE; an entry is "<archive path>/<entry path>"
    fs_path: Path  # the file on disk (the archive, for an entry)
    member: str | None  # the entry's name in the archive; None for a plain file
    size: int  # bytes on disk, or the entry's declared uncompressed size
    problem: Rejected | None = None  # set when refused during discovery; such an item is never read


def discover(source: Path, config: IngestConfig) -> list[InputItem]:
    """Every input under ``source`` (a folder or a zip file), sorted by logical path."""
    source = Path(source)
    if not source.exists():
        raise MedmetaError(f"{source}: no such file or folder")
    root = Path(os.path.realpath(source))
    if root.is_dir():
        items = _folder_items(root, config)
    else:
        items = _file_items(root, source.name, root, config)
    return sorted(items, key=lambda item: item.logical_path)


def read_item(item: InputItem, config: IngestConfig) -> bytes:
    """The bytes of ``item``, read within the size limits; ``Rejected`` when it can not be read."""
    if item.problem is not None:
        raise item.problem
    if item.member is None:
        data = _read_file(item.fs_path, config.max_file_bytes)
    else:
        data = _read_entry(item.fs_path, item.member, config.max_zip_entry_bytes)
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


def _folder_items(root: Path, config: IngestConfig) -> list[InputItem]:
    items: list[InputItem] = []

    def unlistable(error: OSError) -> None:
        folder = Path(error.filename or root)
        items.append(_refused(_relative(root, folder), folder, UNREADABLE, "the folder can not be listed"))

    for folder, folder_names, file_names in os.walk(root, followlinks=False, onerror=unlistable):
        folder = Path(folder)
        for name in folder_names:  # os.walk lists symlinks to folders here, and does not enter them
            if (folder / name).is_symlink():
                items.extend(_linked_folder_items(root, folder / name))
        for name in file_names:
            path = folder / name
            items.extend(_file_items(path, _relative(root, path), root, config))
    return items


def _relative(root: Path, path: Path) -> str:
    relative = path.relative_to(root).as_posix()
    return relative if relative != "." else path.name


def _linked_folder_items(root: Path, link: Path) -> list[InputItem]:
    """A symlink to a folder: its files inside SOURCE are reached by their own path, so skip it."""
    if _inside(root, link):
        return []
    return [_refused(_relative(root, link), link, SYMLINK_OUTSIDE_SOURCE, "a symlink to a folder outside the source")]


def _inside(root: Path, link: Path) -> bool:
    return Path(os.path.realpath(link)).is_relative_to(root)


def _file_items(path: Path, logical: str, root: Path, config: IngestConfig) -> list[InputItem]:
    """A plain file, a symlink, or a zip archive expanded into its entries."""
    try:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            if not _inside(root, path):
                return [_refused(logical, path, SYMLINK_OUTSIDE_SOURCE, "a symlink to a file outside the source")]
            info = path.stat()
            if stat.S_ISDIR(info.st_mode):
                return []
        if not stat.S_ISREG(info.st_mode):
            return [_refused(logical, path, UNREADABLE, "not a regular file")]
        if _starts_with(path, ZIP_MAGIC):
            return _archive_items(path, logical, info.st_size, config)
    except OSError as error:
        return [_refused(logical, path, UNREADABLE, f"the file can not be opened ({type(error).__name__})")]
    if info.st_size > config.max_file_bytes:
        message = f"the file holds {info.st_size} bytes, over the max_file_bytes limit of {config.max_file_bytes}"
        return [_refused(logical, path, UNREADABLE, message, info.st_size)]
    return [InputItem(logical, path, None, info.st_size)]


def _starts_with(path: Path, magic: bytes) -> bool:
    with open(path, "rb") as handle:
        return handle.read(len(magic)) == magic


def _refused(logical: str, path: Path, code: str, message: str, size: int = 0) -> InputItem:
    return InputItem(logical, path, None, size, Rejected(code, message))


def _read_file(path: Path, limit: int) -> bytes:
    try:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise Rejected(UNREADABLE, "not a regular file")
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


def _archive_items(path: Path, logical: str, size: int, config: IngestConfig) -> list[InputItem]:
    """The entries of an archive, or one refused item standing for the whole archive."""
    try:
        declared_entries = _declared_entry_count(path)
        if declared_entries is not None and declared_entries > config.max_zip_entries:
            return [_too_many_entries(logical, path, size, declared_entries, config)]
        with zipfile.ZipFile(path) as archive:
            entries = [info for info in archive.infolist() if not info.is_dir()]
            if len(entries) > config.max_zip_entries:
                return [_too_many_entries(logical, path, size, len(entries), config)]
            total = sum(info.file_size for info in entries)
            if total > config.max_zip_total_bytes:
                message = f"the entries declare {total} bytes in all, over the limit of {config.max_zip_total_bytes}"
                return [_refused(logical, path, ZIP_TOO_LARGE, message, size)]
            return [_entry_item(archive, info, path, logical, config) for info in entries]
    except _ARCHIVE_ERRORS as error:
        return [_refused(logical, path, BAD_ARCHIVE, f"the archive can not be read ({type(error).__name__})", size)]


def _too_many_entries(logical: str, path: Path, size: int, count: int, config: IngestConfig) -> InputItem:
    message = f"the archive holds {count} entries, over the limit of {config.max_zip_entries}"
    return _refused(logical, path, ZIP_TOO_LARGE, message, size)


def _declared_entry_count(path: Path) -> int | None:
    """The entry count in the end-of-central-directory record, read before zipfile loads every entry."""
    with open(path, "rb") as handle:
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


def _entry_item(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, archive_logical: str,
                config: IngestConfig) -> InputItem:
    logical = f"{archive_logical}/{entry_logical_path(info.filename)}"
    problem = _entry_problem(archive, info, config)
    return InputItem(logical, path, info.filename, info.file_size, problem)


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


def _read_entry(path: Path, member: str, limit: int) -> bytes:
    """Stream an entry in chunks and stop past ``limit``: the declared size may lie."""
    try:
        archive = _open_archives.get(path)
    except OSError as error:
        raise Rejected(UNREADABLE, f"the archive can not be opened ({type(error).__name__})") from None
    except _ARCHIVE_ERRORS as error:
        raise Rejected(BAD_ARCHIVE, f"the archive can not be read ({type(error).__name__})") from None
    try:
        info = archive.getinfo(member)
        if info.file_size > limit:
            raise Rejected(ZIP_ENTRY_TOO_LARGE, f"the entry declares {info.file_size} bytes, over the "
                                                f"max_zip_entry_bytes limit of {limit}")
        with archive.open(info) as stream:
            return _bounded_read(stream, limit)
    except KeyError:
        raise Rejected(BAD_ARCHIVE, "the entry is no longer in the archive") from None
    except _ARCHIVE_ERRORS as error:
        raise Rejected(BAD_ARCHIVE, f"the entry can not be read ({type(error).__name__})") from None


def _bounded_read(stream: io.BufferedIOBase, limit: int) -> bytes:
    collected = io.BytesIO()
    while chunk := stream.read(_READ_CHUNK):
        collected.write(chunk)
        if collected.tell() > limit:
            raise Rejected(ZIP_ENTRY_TOO_LARGE, f"the entry inflates past the max_zip_entry_bytes limit of {limit}")
    return collected.getvalue()


class _OpenArchives(threading.local):
    """A few archives kept open in this thread, so reading entry after entry does not reparse the
    central directory each time (that made reading a 10 000-entry zip quadratic)."""

    keep = 4

    def __init__(self):
        self.archives: OrderedDict[tuple, zipfile.ZipFile] = OrderedDict()

    def get(self, path: Path) -> zipfile.ZipFile:
        info = os.stat(path)
        key = (str(path), os.getpid(), info.st_mtime_ns, info.st_size)  # a forked child opens its own
        archive = self.archives.pop(key, None) or zipfile.ZipFile(path)
        self.archives[key] = archive
        while len(self.archives) > self.keep:
            self.archives.popitem(last=False)[1].close()
        return archive


_open_archives = _OpenArchives()
