"""One long-lived landing watcher: file-system notifications in, one ``on_arrival`` per arrival out.

``LandingWatcher`` watches a landing folder with ``watchdog``: inotify (its ``Observer`` on Linux),
or its ``PollingObserver`` when inotify is unavailable or out of watches or instances (``OSError``
at start), or when asked (``polling=True``; ``$MEDMETA_WATCH_POLLING=1`` for ``medmeta serve``).
Notifications only wake it: what arrived is decided by a ``LandingLook`` (sizes and mtimes, counts
only), once the folder has been quiet for ``settle_s`` (a batch of files dropped together, however
many notifications it makes, is one look and one arrival); files still being written are looked at
again once they settle. A look that finds nothing new calls nothing; removals alone call nothing.

The first look compares with the home's ledger (``LandingLook.from_ledger``), so a home that already
ingested the folder announces nothing at start.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable

from medmeta.landing.changes import LandingChanges, LandingLook
from medmeta.landing.journal import is_cookie
from medmeta.pseudonyms import Pseudonymizer

POLLING_ENV = "MEDMETA_WATCH_POLLING"
logger = logging.getLogger("medmeta.watcher")


def polling_asked() -> bool:
    return os.environ.get(POLLING_ENV, "").strip().lower() in ("1", "true", "yes")


class LandingWatcher:
    """``start()`` looks once (against the ledger) and then watches until ``stop()``.

    ``on_arrival(changes)`` runs on the watcher's thread, once per arrival; an exception in it is
    logged (one line) and the watcher goes on.
    """

    def __init__(self, landing: Path, ledger_file: Path, pseudonymizer: Pseudonymizer,
                 on_arrival: Callable[[LandingChanges], None], settle_s: float = 2.0,
                 polling: bool = False, poll_every_s: float = 30.0):
        self.landing = Path(landing).resolve()
        self.ledger_file = Path(ledger_file)
        self.pseudonymizer = pseudonymizer
        self.on_arrival = on_arrival
        self.settle_s = settle_s
        self.polling = polling
        self.poll_every_s = poll_every_s
        self.mode: str | None = None  # "inotify" or "polling" once started
        self.looks = 0
        self.arrivals = 0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._last_event = time.monotonic()
        self._observer = None
        self._thread: threading.Thread | None = None
        self._look: LandingLook | None = None
        self._handler = None
        self._rewatch = False

    # lifecycle

    def start(self) -> "LandingWatcher":
        self._look = LandingLook.from_ledger(self.landing, self.ledger_file, self.pseudonymizer)
        self._observer = self._started_observer()
        self._wake.set()  # the first look: files not in the ledger are new
        self._thread = threading.Thread(target=self._run, name="medmeta-landing-watcher", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout_s)
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _started_observer(self):
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer
        from watchdog.observers.polling import PollingObserver

        watcher = self

        class Wake(FileSystemEventHandler):
            def on_any_event(self, event) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return  # reads (ingest reading the landing) change nothing
                if is_cookie(os.path.basename(os.fsdecode(event.src_path))) and \
                        os.path.dirname(os.fsdecode(event.src_path)) == str(watcher.landing):
                    return  # an ingest's sync with the change journal
                if event.is_directory and event.event_type in ("created", "moved") and watcher.mode == "inotify":
                    watcher._rewatch = True  # watchdog does not watch a folder moved in from outside: re-add
                watcher._last_event = time.monotonic()
                watcher._wake.set()

        if not self.polling:
            observer = Observer()
            self._handler = Wake()
            observer.schedule(self._handler, str(self.landing), recursive=True)
            try:
                observer.start()
            except OSError as error:  # ENOSPC: out of inotify watches; EMFILE: out of instances
                logger.warning("inotify is not available for the landing folder (%s): polling every %g s instead",
                               error.strerror or type(error).__name__, self.poll_every_s)
            else:
                self.mode = "inotify"
                return observer
        observer = PollingObserver(timeout=self.poll_every_s)
        observer.schedule(Wake(), str(self.landing), recursive=True)
        observer.start()
        self.mode = "polling"
        return observer

    def _watch_again(self) -> None:
        """Watch the whole tree afresh (inotify): a folder moved into the landing folder from elsewhere
        is not watched by watchdog's recursive watch (its own TODO), so files written into it later
        would go unseen. Out of watches now: polling from here on."""
        try:
            self._observer.unschedule_all()
            self._observer.schedule(self._handler, str(self.landing), recursive=True)
        except OSError as error:
            logger.warning("inotify can not watch the landing folder any more (%s): polling every %g s instead",
                           error.strerror or type(error).__name__, self.poll_every_s)
            self._observer.stop()
            self.polling = True
            self._observer = self._started_observer()

    # the watcher's thread

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait()
            if self._stopping.is_set():
                return
            if not self._quiet():
                return
            self._wake.clear()
            if self._rewatch:
                self._rewatch = False
                self._watch_again()
            try:
                changes = self._look.look(self.settle_s)
            except Exception as error:  # the folder went away, a permission changed: say so, keep watching
                logger.warning("the landing watcher could not look: %s", _one_line(error))
                continue
            self.looks += 1
            if changes.waiting:
                self._last_event = time.monotonic()
                self._wake.set()  # look again once those files have settled
            if changes.arrived:
                self.arrivals += 1
                try:
                    self.on_arrival(changes)
                except Exception as error:
                    logger.warning("announcing an arrival failed: %s", _one_line(error))

    def _quiet(self) -> bool:
        """Wait until no notification came for ``settle_s``; False when stopped meanwhile."""
        while True:
            since = time.monotonic() - self._last_event
            if since >= self.settle_s:
                return True
            if self._stopping.wait(self.settle_s - since):
                return False


def _one_line(error: BaseException) -> str:
    from medmeta.errors import MedmetaError

    if isinstance(error, MedmetaError):
        return str(error)
    return type(error).__name__  # never a message that could quote a path
