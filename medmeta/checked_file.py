"""Read a whole file only after checking, on the open descriptor, that it is a regular file of bounded size.

    read_checked(path, max_bytes, what="query") -> bytes

The file is opened once with ``O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC``; ``fstat`` of that descriptor must
say it is a regular file no larger than ``max_bytes``, and the bytes come from that descriptor, never
from a second open. So a FIFO, socket or device (``/dev/zero``, ``/dev/stdin``) is refused at once
instead of hanging or reading without end, and a file that grows while it is read stops at the
limit. ``follow=True`` resolves the path's symlinks once, before the open (a path a user typed may be
a link); whatever is swapped in after that is refused, never followed.

Refusals are ``Rejected("unreadable", message)``; messages say what the file is and never quote it.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from medmeta.errors import UNREADABLE, Rejected

# O_NOCTTY: a terminal device is never taken as the controlling terminal
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)
_CHUNK = 4 * 1024 * 1024
_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words (for messages)."""
    return next((words for test, words in _KINDS if test(mode)), "not a regular file")


def open_regular(path: str | os.PathLike) -> tuple[int, os.stat_result]:
    """``path`` opened once without following a final symlink or waiting on a FIFO, and checked on the
    descriptor: a regular file. Returns the descriptor (the caller closes it) and its ``fstat``;
    ``Rejected`` (``unreadable``) otherwise, saying what the file is."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise Rejected(UNREADABLE, "is a symbolic link; give the file it points to") from None
        if error.errno == errno.ENOENT:
            raise Rejected(UNREADABLE, "no such file") from None
        raise Rejected(UNREADABLE, f"can not be opened ({error.strerror or type(error).__name__})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Rejected(UNREADABLE, f"is {file_kind(info.st_mode)}, not a regular file")
        return fd, info
    except BaseException:
        os.close(fd)
        raise


def read_checked(path: str | os.PathLike, max_bytes: int, *, follow: bool = False, setting: str = "max_bytes") -> bytes:
    """The bytes of the regular file at ``path``, at most ``max_bytes`` of them, read from one descriptor.

    ``setting`` names the limit in the message of a file that is too large (the option that raises it).
    """
    fd, info = open_regular(os.path.realpath(path) if follow else os.fspath(path))
    try:
        if info.st_size > max_bytes:
            raise Rejected(UNREADABLE, f"holds {info.st_size} bytes, over the {setting} limit of {max_bytes}")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(_CHUNK, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise Rejected(UNREADABLE, f"grew past the {setting} limit of {max_bytes} bytes while being read")
        return b"".join(chunks)
    except OSError as error:
        raise Rejected(UNREADABLE, f"can not be read ({error.strerror or type(error).__name__})") from None
    finally:
        os.close(fd)


def resolved(path: str | os.PathLike) -> Path:
    """``path`` with its symlinks resolved once (what ``read_checked(..., follow=True)`` opens)."""
    return Path(os.path.realpath(path))
