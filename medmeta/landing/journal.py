"""A change journal for a landing folder: which of its folders changed since a position, so that a
rerun need not ``lstat`` every file of the others (``git``'s fsmonitor, for a landing folder).

``ChangeJournal`` (kept by ``medmeta serve`` beside its watcher, or alone by ``medmeta journal``) watches
the landing folder with inotify, read directly (watchdog drops the kernel's queue-overflow event, so
with it a lost event could not be known), and writes ``<home>/watch/<landing token>.json``:

    {"version": 1, "landing": ..., "session": ..., "host": ..., "pid": ..., "seq": ..., "valid": true,
     "cookies": {"<cookie name>": seq}, "dirty": {"<folder token>": [seq, tree seq]}}

Every event counts: the folder it happened in becomes dirty at the event's ``seq`` (its first number),
and a folder created, deleted or moved in or out dirties its whole subtree (the second number, on the
folder itself: a folder that left and one of the same name that came in share no event inside).
Folders are named by their ``Pseudonymizer.path_token`` (the prefix discovery gives them: ``""``,
``"a/b/"``), never by name. A queue overflow (events lost) starts a new session: a run's position of the
old one is then worth nothing, and that run looks at every file once; so does a session that has marked
``MAX_DIRTY`` folders (the file every run reads stays small). The landing folder itself deleted or
moved, an unmount, a new folder that can not be watched (out of watches) or an error in the keeper ends
the journal: the file says ``valid: false`` and no run trusts it.

A run synchronises with the journal before it lists the folder (``sync``): it creates a cookie file
``.medmeta-sync-<random>`` in the landing folder and waits until the journal names it. inotify delivers
one queue in order, so every change made before the cookie is then in the journal, at a ``seq`` at most
the cookie's. The run records that position with the folders it found settled (``Ledger.record(watch=)``);
the next run takes a folder the ledger signed then, and not dirty since (``JournalView.clean_since``), as
settled without a ``stat`` of its files. The journal is trusted only when its keeper runs on this host
(its pid alive), answers the cookie within ``SYNC_TIMEOUT_S``, and the landing folder lies on a local file
system (inotify does not see another host's writes to a network file system); else a run ``stat``s
every file, as without it. Not seen by inotify, and so not by the journal: writes through a hard link
that lives outside the landing folder, and writes through a shared ``mmap``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import secrets
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import orjson

from medmeta.pseudonyms import Pseudonymizer

VERSION = 1
COOKIE_PREFIX = ".medmeta-sync-"  # in the landing folder's top only, for the moment of a sync
SYNC_TIMEOUT_S = 2.0
COOKIES_KEPT = 64
MAX_DIRTY = 20_000  # folders marked in one session; past that a new one starts (the file stays small to read)
# The file systems whose writes inotify sees whoever makes them (a network one's remote writes it does not).
LOCAL_FILE_SYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "overlay", "zfs", "f2fs", "jfs",
                                "reiserfs", "bcachefs"})

IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF = 0x400, 0x800
IN_UNMOUNT, IN_Q_OVERFLOW, IN_IGNORED = 0x2000, 0x4000, 0x8000
IN_ONLYDIR, IN_DONT_FOLLOW, IN_ISDIR = 0x01000000, 0x02000000, 0x40000000
IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000
WATCHED = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
           | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW)
_EVENT = struct.Struct("iIII")


def journal_file(watch_folder: Path, token: str) -> Path:
    return Path(watch_folder) / f"{token}.json"


def is_cookie(name: str) -> bool:
    return name.startswith(COOKIE_PREFIX)


def file_system_type(path: Path, mountinfo: str | None = None) -> str | None:
    """The type of the file system ``path`` lies on (``/proc/self/mountinfo``'s longest mount point
    above it); None when it can not be told."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return None
    target = os.path.realpath(path)
    best, kind = -1, None
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if " - " not in line or len(fields) < 5:
            continue
        point = _unescaped(fields[4])
        if (target == point or target.startswith(point.rstrip("/") + "/")) and len(point) > best:
            best, kind = len(point), line.split(" - ", 1)[1].split(" ")[0]
    return kind


def _unescaped(field: str) -> str:
    """A mountinfo field with its octal escapes (``\\040`` for a space) decoded."""
    out, at = [], 0
    while at < len(field):
        if field[at] == "\\" and field[at + 1:at + 4].isdigit():
            out.append(chr(int(field[at + 1:at + 4], 8)))
            at += 4
        else:
            out.append(field[at])
            at += 1
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# The keeper


class ChangeJournal:
    """Keeps the landing folder's journal from ``start()`` until ``stop()`` (a thread reading inotify).
    ``start`` raises ``OSError`` when inotify can not watch the folder or one below it (no inotify, out of
    watches, a folder it may not read) and ``ValueError`` when the folder is not on a local file system or
    another keeper keeps its journal: then no journal is kept (by this keeper)."""

    def __init__(self, landing: Path, journal: Path, pseudonymizer: Pseudonymizer, token: str):
        self.landing = Path(os.path.realpath(landing))
        self.journal = Path(journal)
        self.pseudonymizer = pseudonymizer
        self.token = token
        self.session = secrets.token_hex(8)
        self.seq = 0
        self.valid = True
        self.dirty: dict[str, list[int]] = {}
        self.cookies: dict[str, int] = {}
        self._fd = -1
        self._paths: dict[int, str] = {}  # watch descriptor -> folder prefix ("", "a/b/")
        self._stop_r, self._stop_w, self._lock = -1, -1, -1
        self._thread: threading.Thread | None = None
        self._tokens: dict[str, str] = {}

    def start(self) -> "ChangeJournal":
        kind = file_system_type(self.landing)
        if kind not in LOCAL_FILE_SYSTEMS:
            raise ValueError(f"the landing folder is on a {kind or 'unknown'} file system, whose writes from "
                             "other hosts inotify does not see")
        self._lock = _locked(self.journal)
        libc = _libc()
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            os.close(self._lock)
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        self._fd, self._libc = fd, libc
        try:
            self._watch_tree("")
        except OSError:
            os.close(fd)
            os.close(self._lock)
            raise
        self._stop_r, self._stop_w = os.pipe()
        self._write()
        self._thread = threading.Thread(target=self._run, name="medmeta-change-journal", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop watching; the file then says ``valid: false``."""
        if self._thread is not None:
            os.write(self._stop_w, b"!")
            self._thread.join(timeout_s)
            self._thread = None
        self.valid = False
        self._write()
        for fd in (self._fd, self._stop_r, self._stop_w, self._lock):
            if fd >= 0:
                os.close(fd)
        self._fd = self._stop_r = self._stop_w = self._lock = -1

    # watching

    def _watch_tree(self, prefix: str) -> None:
        """Watch the folder ``prefix`` and every folder below it (symlinks not followed)."""
        top = os.path.join(str(self.landing), prefix) if prefix else str(self.landing)
        for folder, _, _ in os.walk(top):
            relative = "" if folder == str(self.landing) else \
                os.path.relpath(folder, str(self.landing)).replace(os.sep, "/") + "/"
            wd = self._libc.inotify_add_watch(self._fd, os.fsencode(folder), WATCHED)
            if wd < 0:
                code = ctypes.get_errno()
                if relative != "" and code in (errno.ENOENT, errno.ENOTDIR):
                    continue  # gone or not a folder any more: its parent's event dirtied it
                raise OSError(code, os.strerror(code))  # unwatched, changes there would go unseen
            self._paths[wd] = relative

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if self._stop_r in ready:
                return
            try:
                data = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                continue
            try:
                if self.handle(parse_events(data)):
                    self._write()
            except Exception:  # noqa: BLE001: no journal is better than a wrong one
                self.valid = False
                with contextlib.suppress(OSError):
                    self._write()
                return

    def handle(self, events: list[tuple[int, int, str]]) -> bool:
        """Take in ``(watch descriptor, mask, name)`` events; whether the journal changed."""
        changed = False
        for wd, mask, name in events:
            if not self.valid:
                return changed
            if wd == -1 or mask & IN_Q_OVERFLOW:  # events were lost: no position before this one holds
                self._new_session()
                changed = True
                continue
            if mask & IN_UNMOUNT:
                self.valid, changed = False, True  # the file system went
                continue
            prefix = self._paths.get(wd)
            if mask & IN_IGNORED:
                self._paths.pop(wd, None)
                continue
            if prefix is None:
                continue
            if mask & (IN_DELETE_SELF | IN_MOVE_SELF):
                if prefix == "":
                    self.valid, changed = False, True  # the landing folder itself went
                else:
                    self._mark(prefix, tree=True)
                    changed = True
                continue
            if prefix == "" and is_cookie(name):
                if mask & IN_CREATE:
                    self.cookies[name] = self.seq
                    while len(self.cookies) > COOKIES_KEPT:
                        del self.cookies[next(iter(self.cookies))]
                    changed = True
                continue
            self._mark(prefix)
            if mask & IN_ISDIR and name:
                child = f"{prefix}{name}/"
                if mask & (IN_MOVED_FROM | IN_DELETE):
                    self._forget(child)
                self._mark(child, tree=True)
                if mask & (IN_CREATE | IN_MOVED_TO):
                    try:
                        self._watch_tree(child)
                    except OSError:
                        self.valid = False  # out of watches, or unreadable: changes below it would go unseen
            changed = True
        return changed

    def _new_session(self) -> None:
        """A new session (after lost events): runs whose position is of the old one look at every file once."""
        self.session = secrets.token_hex(8)
        self.dirty, self.cookies = {}, {}

    def _mark(self, prefix: str, tree: bool = False) -> None:
        self.seq += 1
        token = self._tokens.get(prefix)
        if token is None:
            token = self._tokens[prefix] = self.pseudonymizer.path_token(prefix)
        mark = self.dirty.setdefault(token, [0, 0])
        mark[0] = self.seq
        if tree:
            mark[1] = self.seq
        if len(self.dirty) > MAX_DIRTY:  # months of arrivals, one folder each: the next run looks at every file
            self._new_session()

    def _forget(self, prefix: str) -> None:
        """Stop watching the folders at and below ``prefix`` (moved out: their paths mean nothing now)."""
        for wd, path in list(self._paths.items()):
            if path.startswith(prefix):
                self._libc.inotify_rm_watch(self._fd, wd)
                self._paths.pop(wd, None)

    def _write(self) -> None:
        doc = {"version": VERSION, "landing": self.token, "session": self.session, "host": socket.gethostname(),
               "pid": os.getpid(), "seq": self.seq, "valid": self.valid, "cookies": self.cookies,
               "dirty": self.dirty}
        self.journal.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.journal.with_name(f".{self.journal.name}.{os.getpid()}.tmp")
        temporary.write_bytes(orjson.dumps(doc))
        os.replace(temporary, self.journal)  # atomic for the reader; durability is not needed (a dead keeper is not trusted)


def _locked(journal: Path) -> int:
    """A descriptor holding ``<journal>.lock`` (flock): one keeper per journal. ``ValueError`` when another
    keeper holds it."""
    import fcntl

    journal.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(journal.with_name(journal.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ValueError("another process keeps it already (medmeta serve or medmeta journal)") from None
    return fd


def parse_events(data: bytes) -> list[tuple[int, int, str]]:
    """The ``(wd, mask, name)`` of each ``struct inotify_event`` in ``data``."""
    events, at = [], 0
    while at + _EVENT.size <= len(data):
        wd, mask, _, length = _EVENT.unpack_from(data, at)
        at += _EVENT.size
        name = os.fsdecode(data[at:at + length].rstrip(b"\0")) if length else ""
        at += length
        events.append((wd, mask, name))
    return events


def _libc():
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    return libc


# ---------------------------------------------------------------------------------------------
# A run's view


@dataclass(frozen=True)
class JournalPosition:
    session: str
    seq: int

    def to_list(self) -> list:
        return [self.session, self.seq]

    @classmethod
    def from_list(cls, held: object) -> "JournalPosition | None":
        if isinstance(held, list) and len(held) == 2 and isinstance(held[0], str) and isinstance(held[1], int):
            return cls(held[0], held[1])
        return None


@dataclass(frozen=True)
class JournalView:
    """The journal as a run found it once synchronised: its position then and its dirty marks."""

    position: JournalPosition
    dirty: dict[str, list[int]]

    def clean_since(self, since: JournalPosition | None, pseudonymizer: Pseudonymizer) -> Callable[[str], bool] | None:
        """``clean(prefix)``: whether no event touched the folder ``prefix`` (nor removed or replaced a
        folder above it) after ``since``; None when ``since`` is not a position of this session."""
        if since is None or since.session != self.position.session or since.seq > self.position.seq:
            return None
        dirty, after = self.dirty, since.seq
        tokens: dict[str, str] = {}

        def token(prefix: str) -> str:
            held = tokens.get(prefix)
            if held is None:
                held = tokens[prefix] = pseudonymizer.path_token(prefix)
            return held

        def clean(prefix: str) -> bool:
            if dirty.get(token(prefix), (0, 0))[0] > after:
                return False
            parts = prefix.split("/")[:-1]
            return all(dirty.get(token("".join(f"{part}/" for part in parts[:depth])), (0, 0))[1] <= after
                       for depth in range(len(parts)))

        return clean


def sync(landing: Path, journal: Path, timeout_s: float = SYNC_TIMEOUT_S) -> JournalView | None:
    """The journal of ``landing`` with every change made before this call in it, or None when it can not
    be trusted: no journal, not valid, its keeper not running on this host, the landing folder not
    writable (no cookie), or no answer within ``timeout_s``."""
    doc = _read(journal)
    if doc is None or not _alive(doc):
        return None
    cookie = COOKIE_PREFIX + secrets.token_hex(8)
    path = os.path.join(os.path.realpath(landing), cookie)
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError:
        return None
    try:
        deadline, pause = time.monotonic() + timeout_s, 0.0002
        while True:
            doc = _read(journal)
            if doc is None or doc.get("session") is None:
                return None
            seq = doc.get("cookies", {}).get(cookie)
            if seq is not None:
                if not doc.get("valid"):
                    return None
                return JournalView(JournalPosition(doc["session"], int(seq)), doc.get("dirty", {}))
            if time.monotonic() > deadline or not doc.get("valid"):
                return None
            time.sleep(pause)
            pause = min(pause * 2, 0.005)
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


def _read(journal: Path) -> dict | None:
    try:
        doc = orjson.loads(Path(journal).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) and doc.get("version") == VERSION else None


def _alive(doc: dict) -> bool:
    if not doc.get("valid") or doc.get("host") != socket.gethostname() or not isinstance(doc.get("pid"), int):
        return False
    try:
        os.kill(doc["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True


def started(landing: Path, home: Path) -> ChangeJournal:
    """``landing``'s journal, kept in ``home`` from now on; ``MedmetaError`` (naming the landing by its
    token) when it can not be kept: no inotify, out of watches, a network file system."""
    from medmeta.errors import MedmetaError
    from medmeta.home import Home
    from medmeta.landing.changes import landing_token  # imports this module: not at the top
    from medmeta.pseudonyms import load_key

    the_home = Home.at(home)
    pseudonymizer = Pseudonymizer(load_key(the_home.key_file))
    token = landing_token(Path(landing).resolve(), pseudonymizer)
    keeper = ChangeJournal(landing, journal_file(the_home.watch, token), pseudonymizer, token)
    try:
        return keeper.start()
    except (OSError, ValueError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise MedmetaError(f"no change journal for landing {token}: {reason}") from None


def keep(landing: Path, home: Path, say: Callable[[str], None] = print) -> None:
    """Keep ``landing``'s journal in ``home`` until SIGTERM or SIGINT (``medmeta journal``)."""
    import signal

    keeper = started(landing, home)
    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopped.set())
    say(f"keeping the change journal of landing {keeper.token}; stop with Ctrl-C or SIGTERM")
    stopped.wait()
    keeper.stop()
