"""The ledger: for every input path ever seen, the content hash and outcome of its last run.

    {"version": 2, "generation": ..., "sources": {"<SOURCE token>": {"<path token>": {"sha256": ..., "status": ...,
                                                                  "reason": ..., "size": ..., "mtime_ns": ...}}}}

Paths are held as keyed tokens, never as names (file and folder names can carry PHI): a SOURCE by
its landing token (``medmeta.ingest.landings.landing_token``, the watcher's and Prefect's too), a
file by the ``Pseudonymizer.path_token`` of its logical path under SOURCE. A ledger of version 1
(names as keys) is tokenised when it is loaded and written as version 2 by the next ``save``, so
a rerun on an older home finds its files unchanged.

The store is built from the parts of the hashes the ledger holds as ingested or unchanged: a
file replaced by a new version supersedes the old one, and files from earlier runs or other
sources stay in the store.

A rerun need not read a file again to know it is unchanged: ``settled_matcher`` (for discovery) takes a plain file
whose size and modification time (``mtime_ns``, as listed by discovery) are the ledger's, and whose
content is still staged, as ``unchanged`` without opening it (as ``git status`` and ``rsync`` do).
The stat is recorded only when the file was last modified at least ``STAT_SETTLE_NS`` before the
run recorded it, so a file rewritten within the file system's timestamp granularity of being read
is read again next time. Archive entries, quarantined files and files without a recorded stat are
always read (a quarantined file's stat is recorded for the landing watcher: ``seen_matcher``); the ``reread_unchanged`` setting reads and hashes every file, as before.

What a rerun over 50,000 settled files costs per file is kept small: discovery hands the matcher the
whole listing as three aligned lists (``SettledMatcher.match``: the path tokens made in one tight loop,
one lookup per file), and the matcher lists only the matched files whose entry an ``unchanged``
outcome would change (``to_record``), so a rerun builds no outcome nor entry for the others. A save
that changed a few entries of a large ledger appends them to ``ledger.json.journal`` (one line,
``{"generation": ..., "sources": {...}}``, the generation being the whole file's, written with it) rather
than rewriting 50,000 entries; ``load`` applies the journal's lines, and a save that changes many entries
(or once the journal is long) writes the whole file again and removes the journal.

Beside the entries the file keeps what lets a run adding 20 files to 50,000 skip work proportional to
the 50,000: ``folders`` (per SOURCE, the listing signatures of folders found settled whole:
``SettledMatcher``), ``versions`` and ``staged`` (per SOURCE, a token that changes with its entries, and the
claim that every settled entry of that version had its content staged in a staging of a given listing:
``settled_matcher(staging=)``), and ``active`` (the active set's size and keyed sum: ``active``,
``medmeta.ingest.active``). Journal lines carry them too; a line an older version wrote, without them,
makes the next run check and count the long way.
"""

from __future__ import annotations

import gc
import json
import os
import secrets
import time
from array import array

import orjson
from collections.abc import Callable, Mapping
from pathlib import Path

from medmeta.atomic import write_bytes
from medmeta.ingest.active import MODULUS, ActiveSet, keyed_sum, set_digest
from medmeta.ingest.landings import landing_token
from medmeta.ingest.outcome import INGESTED, UNCHANGED, FileOutcome
from medmeta.landing.journal import JournalPosition, JournalView
from medmeta.landing.names import name_bytes
from medmeta.landing.walk import InputItem
from medmeta.pseudonyms import Pseudonymizer

VERSION = 2
ARCHIVE = "archive"  # a zip archive's own entry (its stat; its entries are entries of their own)
STAT_SETTLE_NS = 2_000_000_000  # a stat younger than this at record time is not trusted next run
_TOKENS: dict[str, dict[str, str]] = {}  # key fingerprint -> {path: path token}
_TOKENS_KEEP = 1_000_000
_LOADED: list[tuple[tuple, "Ledger"]] = []  # the last ledger loaded, by its files' stat
# The journal (``ledger.json.journal``): a save that changed few entries of a large ledger appends them
# as one line instead of rewriting every entry; the next full save folds them in and removes it.
JOURNAL_MIN_ENTRIES = 4096  # below this a full rewrite costs milliseconds: always one file
JOURNAL_SHARE = 8  # appended while the journal holds at most 1/JOURNAL_SHARE of the ledger's entries
JOURNAL_MAX_LINES = 64


class Ledger:
    def __init__(self, path: Path, pseudonymizer: Pseudonymizer, sources: dict[str, dict[str, dict]] | None = None):
        self.path = path
        self.pseudonymizer = pseudonymizer
        self.sources = sources or {}
        self.folders: dict[str, dict[str, str]] = {}  # SOURCE token -> {folder token: listing signature}
        # SOURCE token -> [journal session, seq, max_file_bytes]: the change journal's position (``medmeta.landing.
        # journal``) the run that recorded ``folders`` synchronised at before listing, and its size limit.
        self.watched: dict[str, list] = {}
        self._fingerprint = pseudonymizer.fingerprint
        self._changed = not path.exists()
        self._rewrite = True  # the next save writes the whole file (a new or migrated ledger)
        self._generation: str | None = None  # the whole file's, which journal lines must carry
        self._journal_lines = self._journal_entries = 0
        self._dirty: dict[str, dict[str, dict]] = {}  # entries changed since the last save, by SOURCE token
        self._dirty_folders: dict[str, dict[str, str]] = {}  # SOURCE token -> its new folder signatures
        self._settled: dict[str, set[str]] = {}  # SOURCE token -> its ingested/unchanged content hashes (made once)
        # Staged claims (``settled_matcher``): SOURCE token -> a version token that changes whenever its entries
        # change; and the claim a run left that every settled entry of that version had its content staged
        # when the staging held the files of a listing digest (``image_parts.staging_listing``).
        self.versions: dict[str, str] = {}
        self.claims: dict[str, dict[str, str]] = {}
        self._changed_sources: set[str] = set()  # SOURCE tokens whose entries changed since the last save
        self._claiming: dict[str, str] = {}  # SOURCE token -> the staging digest to claim at the next save
        # The active set's size and keyed sum (``medmeta.ingest.active``) as the file held them when loaded (None:
        # not held, or not to be trusted); the hashes that joined the set since, and whether one may have left it.
        self._active_loaded: tuple[int, int] | None = None
        self._active_added: set[str] = set()
        self._active_left = False

    @classmethod
    def load(cls, path: Path, pseudonymizer: Pseudonymizer) -> "Ledger":
        """The ledger at ``path``, with the entries its journal appended since it was last written whole.
        The last one loaded in this process is kept while its files are unchanged (size, mtime, inode)
        and it was not modified (``record``): one run reads it once."""
        try:
            info = path.stat()
        except FileNotFoundError:
            return cls(path, pseudonymizer)
        journal = journal_path(path)
        try:
            journal_info = journal.stat()
            journal_key = (journal_info.st_size, journal_info.st_mtime_ns, journal_info.st_ino)
        except FileNotFoundError:
            journal_key = None
        key = (str(path), info.st_size, info.st_mtime_ns, info.st_ino, journal_key, pseudonymizer.fingerprint)
        if _LOADED and _LOADED[0][0] == key:
            return _LOADED[0][1]
        doc = _parsed(path.read_bytes())
        sources = doc.get("sources", {})
        ledger = cls(path, pseudonymizer, sources)
        ledger.folders, ledger.watched = doc.get("folders", {}), doc.get("watched", {})
        ledger.versions, ledger.claims = doc.get("versions", {}), doc.get("staged", {})
        ledger._active_loaded = _active_sum(doc.get("active"))
        if doc.get("version", 1) < VERSION:
            ledger.sources, ledger._changed = tokenised_v1(sources, pseudonymizer), True
            ledger.folders, ledger.versions, ledger.claims, ledger._active_loaded = {}, {}, {}, None
            ledger.watched = {}
        else:
            ledger._generation, ledger._rewrite = doc.get("generation"), False
            if journal_key is not None and ledger._generation:
                ledger._replay(journal.read_bytes())
        _LOADED[:] = [(key, ledger)]
        return ledger

    def _replay(self, journal: bytes) -> None:
        """Apply the journal's lines written on top of this very file (its ``generation``); a line of
        another generation (a journal left beside a ledger written whole since) is ignored, and so is
        a torn last line (a run killed while appending: its files are read again, their content found
        staged)."""
        for line in journal.split(b"\n"):
            if not line:
                continue
            try:
                record = _parsed(line)
            except ValueError:
                break
            if record.get("generation") != self._generation:
                continue
            for source_token, entries in record.get("sources", {}).items():
                self.sources.setdefault(source_token, {}).update(entries)
                self._journal_entries += len(entries)
                if entries and source_token not in record.get("versions", {}):  # a line an older version wrote
                    self.versions.pop(source_token, None)
            self.folders.update(record.get("folders", {}))
            self.watched = record.get("watched", {})  # the whole map; none in a line an older version wrote
            self.versions.update(record.get("versions", {}))
            self.claims.update(record.get("staged", {}))
            self._active_loaded = _active_sum(record.get("active"))  # none in a line an older version wrote
            self._journal_lines += 1

    def record(self, source: Path, outcomes: list[FileOutcome],
               stats: Mapping[str, tuple[int, int]] | None = None,
               folders: Mapping[str, str] | None = None,
               archives: Mapping[str, tuple[int, int]] | None = None,
               staged_after: str | None = None, watch: list | None = None) -> None:
        """The outcomes of one run over ``source`` (the resolved SOURCE path; held by its token);
        ``stats``: logical path -> (size, mtime_ns) as discovery listed it (``item_stats``);
        ``folders``: the listing signatures of the folders every file of which this run found settled
        (``SettledMatcher.signatures``): they replace the source's, so a run that gives none (one that
        reads every file again) leaves none, and no signature outlives a run that could change an entry;
        ``archives``: logical path -> (size, mtime_ns) of the zip archives this run opened (``archive_stats``),
        each kept as an entry of status ``archive`` (no content of its own: its entries carry it), or, for one
        refused whole, as the stat of its quarantined entry, so the landing watcher's first look
        (``seen_matcher``) knows the archive as it was read; ``staged_after``: the staging's listing digest
        now (``image_parts.staging_listing``), given when this run found every settled entry of the SOURCE
        staged (``SettledMatcher.all_staged``): every entry it records as settled has its content staged
        too, so the next save claims it for the SOURCE's entries as they will be then; ``watch``: the change
        journal's position this run synchronised at before it listed SOURCE, with its ``max_file_bytes``
        (``[session, seq, max_file_bytes]``; None: it listed without the journal), kept with ``folders``:
        the next run takes a signed folder the journal holds clean since then as settled, ``stat``-free."""
        if _LOADED and _LOADED[0][1] is self:
            _LOADED.clear()  # modified: no longer what the file holds
        source_token = landing_token(source, self.pseudonymizer)
        entries = self.sources.setdefault(source_token, {})
        settled = time.time_ns() - STAT_SETTLE_NS
        tokens = self._tokens()
        stats, archives = stats or {}, archives or {}
        for outcome in outcomes:
            entry = {"sha256": outcome.sha256, "status": outcome.status,
                     **({"reason": outcome.reason} if outcome.reason else {})}
            stat = stats.get(outcome.path) or archives.get(outcome.path)  # an archive refused whole: its own
            if stat is not None and stat[1] < settled:  # a quarantined file's too: the watcher knows it
                entry["size"], entry["mtime_ns"] = stat
            self._put(source_token, entries, tokens.get(outcome.path) or self._token(outcome.path), entry)
        written = {outcome.path for outcome in outcomes}
        for path, (size, mtime_ns) in archives.items():
            if path in written or mtime_ns >= settled:  # an outcome of its own (refused whole); or too fresh
                continue
            self._put(source_token, entries, tokens.get(path) or self._token(path),
                      {"status": ARCHIVE, "size": size, "mtime_ns": mtime_ns})
        if staged_after is not None:
            self._claiming[source_token] = staged_after
        else:
            self._claiming.pop(source_token, None)
        folders = dict(folders or {})
        if watch is not None:  # saved with the next save: one that writes these very folders
            held = self.watched.get(source_token)
            if not isinstance(held, list) or held[:1] + held[2:] != [watch[0], watch[2]]:
                self._changed = True  # a new session: saved even by a rerun that changed nothing else
            self.watched[source_token] = list(watch)
        else:
            self.watched.pop(source_token, None)
        if self.folders.get(source_token, {}) != folders:
            self.folders[source_token] = folders
            self._dirty_folders[source_token] = folders
            self._changed = True

    def _put(self, source_token: str, entries: dict[str, dict], token: str, entry: dict) -> None:
        """The SOURCE's entry ``token`` becomes ``entry`` (kept for the next save when it changed)."""
        old = entries.get(token)
        if old != entry:
            self._keep_settled(source_token, old, entry)
            entries[token] = entry
            self._dirty.setdefault(source_token, {})[token] = entry
            self._changed_sources.add(source_token)
            self._changed = True

    def active_hashes(self) -> list[str]:
        """The content hashes of every file held as ingested or unchanged, sorted."""
        return sorted(self._active_union())

    def _active_union(self) -> set[str]:
        return set().union(*[self.settled_hashes(token) for token in self.sources]) - {""}

    def active(self) -> ActiveSet:
        """The active content hashes (``active_hashes``) as consolidation takes them: their digest kept up
        by each run in O(files it changed) while none leaves the set, and how the set grew since loading."""
        count, total = self._active_now()
        before = None
        if self._active_loaded is not None and not self._active_left:
            before = set_digest(*self._active_loaded)
        return ActiveSet(set_digest(count, total), count, self.active_hashes, before, frozenset(self._active_added))

    def _active_now(self) -> tuple[int, int]:
        """The active set's size and keyed sum: the loaded ones and the terms of the hashes that joined it; made
        from every active hash when the file held none or a hash may have left."""
        if self._active_loaded is None or self._active_left:
            union = self._active_union()
            return len(union), keyed_sum(union, self.pseudonymizer)
        count, total = self._active_loaded
        return count + len(self._active_added), (total + keyed_sum(self._active_added, self.pseudonymizer)) % MODULUS

    def _in_active(self, sha256: str) -> bool:
        return any(sha256 in self.settled_hashes(token) for token in self.sources)

    def settled_hashes(self, source_token: str) -> set[str]:
        """The content hashes of the SOURCE's files held as ingested or unchanged: made once from its
        entries, then kept current by ``record`` (one pass over 50,000 entries per run, not one per use).
        ``""`` in it: an entry so held has no hash (its folders are never settled whole)."""
        hashes = self._settled.get(source_token)
        if hashes is None:
            hashes = self._settled[source_token] = _settled_set(self.sources.get(source_token, {}))
        return hashes

    def _keep_settled(self, source_token: str, old: dict | None, new: dict) -> None:
        """``settled_hashes`` of the SOURCE after its entry ``old`` becomes ``new``: a hash added as is;
        one that may leave (another entry can hold the same content) makes it again when next asked."""
        was = old is not None and old["status"] in _SETTLED_STATUSES
        if was and (new["status"] not in _SETTLED_STATUSES or new.get("sha256") != old.get("sha256")):
            self._active_left = True  # may leave the active set: its digest is made again from every hash
            self._settled.pop(source_token, None)
            return
        if was or new["status"] not in _SETTLED_STATUSES:
            return
        sha256 = new.get("sha256") or ""
        if sha256 and not self._active_left and not self._in_active(sha256):
            self._active_added.add(sha256)
        hashes = self._settled.get(source_token)
        if hashes is not None:
            hashes.add(sha256)

    def save(self) -> None:
        """Compact JSON (one line): a home of 50,000 files has 50,000 entries. A save that changed few
        entries of a large ledger (``JOURNAL_MIN_ENTRIES``, ``JOURNAL_SHARE``) appends them to the
        journal as one line (fsynced) instead, so a run adding 20 files to 50,000 writes 20 entries."""
        versions = {token: secrets.token_hex(8) for token in self._changed_sources}
        versions.update({token: secrets.token_hex(8) for token in self._claiming if token not in self.versions})
        claims = {token: {"version": versions.get(token) or self.versions[token], "staging": staging}
                  for token, staging in self._claiming.items()}
        claims = {token: claim for token, claim in claims.items() if self.claims.get(token) != claim}
        if not (self._changed or versions or claims):
            return  # a run that changed nothing (a no-op rerun) leaves the file as it was
        self.versions.update(versions)
        self.claims.update(claims)
        active_count, active_sum = self._active_now()
        active = [active_count, f"{active_sum:064x}"]
        dirty = sum(len(entries) for entries in self._dirty.values())
        total = sum(len(entries) for entries in self.sources.values())
        if (not self._rewrite and self._generation and total >= JOURNAL_MIN_ENTRIES
                and self._journal_lines < JOURNAL_MAX_LINES
                and (self._journal_entries + dirty) * JOURNAL_SHARE <= total):
            line = _serialised({"generation": self._generation, "sources": self._dirty, "folders": self._dirty_folders,
                                "versions": versions, "staged": claims, "active": active, "watched": self.watched})
            with open(journal_path(self.path), "ab") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
            self._journal_lines += 1
            self._journal_entries += dirty
        else:
            self._generation = secrets.token_hex(8)
            write_bytes(self.path, _serialised({"version": VERSION, "generation": self._generation,
                                                "sources": self.sources, "folders": self.folders,
                                                "versions": self.versions, "staged": self.claims,
                                                "active": active, "watched": self.watched}))
            journal_path(self.path).unlink(missing_ok=True)  # its lines carry the old generation: ignored
            self._journal_lines = self._journal_entries = 0
            self._rewrite = False
        self._dirty, self._dirty_folders = {}, {}
        self._changed_sources, self._claiming = set(), {}
        self._changed = False

    def settled_matcher(self, source: Path, staged: Callable[[str], bool],
                        known: frozenset[str] | set[str] | Callable[[], frozenset[str]] = frozenset(),
                        staging: str | None = None, watch: "JournalView | None" = None,
                        max_file_bytes: int | None = None) -> "SettledMatcher":
        """For ``discover(..., settled=)``: ``(logical_path, size, mtime_ns)`` -> the content hash when the
        ledger holds that file as ingested or unchanged with that size and mtime and its content is still
        staged (in ``known``, else ``staged(sha256)``; the file is then ``unchanged`` without being
        opened); else None. Its ``many`` answers for a whole listing at once (what ``discover`` calls:
        the path tokens made in one tight loop), and its ``to_record`` lists the matched files whose
        entry an ``unchanged`` outcome would change (after a first ingest: every file; after that:
        none), so a rerun over 50,000 settled files builds no outcome nor entry for them. ``known`` may be
        a function giving them, called when first needed. ``staging``: the staging's listing digest now
        (``image_parts.staging_listing``): when the last run claimed that every settled entry of the SOURCE,
        as they are, had its content staged in that very staging (``record(staged_after=)``), the matcher's
        ``all_staged`` is true without a look at each content hash. ``watch``: the landing folder's change
        journal as this run synchronised with it (``medmeta.landing.journal.sync``): a folder signed by the
        last run that recorded ``folders``, and clean in the journal since that run's position (same
        session, same ``max_file_bytes``), is settled without its listing's ``stat`` (``folder_clean``)."""
        source_token = landing_token(source, self.pseudonymizer)
        clean = None
        held = self.watched.get(source_token)
        if watch is not None and isinstance(held, list) and len(held) == 3 and held[2] == max_file_bytes:
            clean = watch.clean_since(JournalPosition.from_list(held[:2]), self.pseudonymizer)
        claimed = (staging is not None and source_token not in self._changed_sources
                   and source_token in self.versions
                   and self.claims.get(source_token) == {"version": self.versions[source_token], "staging": staging})
        return SettledMatcher(self.sources.get(source_token, {}), self._tokens(), self.pseudonymizer, staged, known,
                              self.folders.get(source_token, {}), lambda: self.settled_hashes(source_token),
                              claimed=claimed, clean=clean)

    def seen_matcher(self, source: Path) -> Callable[[str, int, int], bool]:
        """``(logical_path, size, mtime_ns)`` -> whether the last run over ``source`` accounted for this
        file as it is now (ingested, unchanged, quarantined, or a zip archive it opened, with that size
        and mtime): the landing watcher's first look, which must not announce what ingest already saw.
        Ingest itself still reads a quarantined file again (``settled_matcher`` takes only ingested or
        unchanged ones)."""
        entries = self.sources.get(landing_token(source, self.pseudonymizer), {})

        def seen(logical_path: str, size: int, mtime_ns: int) -> bool:
            entry = entries.get(self._token(logical_path))
            return entry is not None and entry.get("size") == size and entry.get("mtime_ns") == mtime_ns

        return seen

    def _tokens(self) -> dict[str, str]:
        """This key's remembered path tokens (path -> token; ``_token`` fills it)."""
        tokens = _TOKENS.get(self._fingerprint)
        if tokens is None or len(tokens) > _TOKENS_KEEP:
            tokens = _TOKENS[self._fingerprint] = {}
        return tokens

    def _token(self, path: str) -> str:
        """``Pseudonymizer.path_token``, remembered in this process (a rerun asks for each file's twice)."""
        tokens = self._tokens()
        token = tokens.get(path)
        if token is None:
            token = tokens[path] = self.pseudonymizer.path_token(path)
        return token


class SettledMatcher:
    """``Ledger.settled_matcher``'s answer for one SOURCE: called per file, or ``many`` for a listing.

    ``to_record``: ``(logical_path, sha256, size, mtime_ns)`` of each matched file whose ledger entry
    is not already what an ``unchanged`` outcome with that stat records (status ``ingested``, or a
    reason): the caller records those as ``unchanged``; every other matched file is left as it is.

    Whole folders (``folder_settled``, ``sign_folder``): a folder every file of which a run found
    settled gets a listing signature, a keyed token (``Pseudonymizer.path_token``, under a prefix no
    path has) of its path and of its files' names, sizes and mtimes, kept by the ledger under the
    folder's path token (no name in clear). A later run whose listing of that folder gives the same
    signature knows each of its files is settled without a token or a lookup per file
    (``settled_in_folders`` counts them), provided every settled entry of the SOURCE still has its
    content staged (checked once: ``all_staged``). ``signatures``: the folders to record as settled
    after this run (``Ledger.record(folders=)``)."""

    def __init__(self, entries: dict[str, dict], tokens: dict[str, str], pseudonymizer: Pseudonymizer,
                 staged: Callable[[str], bool],
                 known: frozenset[str] | set[str] | Callable[[], frozenset[str]] = frozenset(),
                 folders: Mapping[str, str] | None = None, settled_hashes: Callable[[], set[str]] | None = None,
                 claimed: bool = False, clean: Callable[[str], bool] | None = None):
        self._entries, self._tokens, self._pseudonymizer = entries, tokens, pseudonymizer
        self._clean = clean
        self._settled_hashes = settled_hashes
        self._staged, self._known_given = staged, known
        self._known_set: frozenset[str] | set[str] | None = None
        self._folders = folders or {}
        self._staged_all: bool | None = True if claimed else None
        self.to_record: list[tuple[str, str, int, int]] = []
        self.signatures: dict[str, str] = {}
        self.settled_in_folders = 0
        self.folders_by_journal = 0
        self._folder_tokens: dict[str, str] = {}

    def _folder_token(self, prefix: str) -> str:
        """The folder's path token, made once per run (``folder_clean`` and ``take_clean`` ask for the same)."""
        token = self._folder_tokens.get(prefix)
        if token is None:
            token = self._folder_tokens[prefix] = self._pseudonymizer.path_token(prefix)
        return token

    def folder_clean(self, prefix: str) -> bool:
        """Whether the folder ``prefix`` is settled whole without a look at its files: the ledger signed
        it and the change journal holds it clean since (``Ledger.settled_matcher(watch=)``); then the
        caller lists its entries (no ``stat``) and counts its files with ``take_clean``."""
        if self._clean is None or not self._folders:
            return False
        recorded = self._folders.get(self._folder_token(prefix))
        return recorded is not None and self._clean(prefix) and self.all_staged()

    def take_clean(self, prefix: str, files: int) -> None:
        """The folder ``folder_clean`` answered for, with its ``files`` files: settled, its signature kept."""
        folder = self._folder_token(prefix)
        self.signatures[folder] = self._folders[folder]
        self.settled_in_folders += files
        self.folders_by_journal += 1

    def folder_settled(self, prefix: str, names: list[str], sizes: list[int], mtimes_ns: list[int]) -> bool:
        """Whether every file of the folder ``prefix`` (its logical path and ``/``; ``""`` for SOURCE
        itself), listed as ``names`` with those sizes and mtimes (all its entries but folders), is
        settled as a whole: its listing signature is the one recorded. Counted when so."""
        if not self._folders:
            return False
        folder = self._folder_token(prefix)
        recorded = self._folders.get(folder)
        if recorded is None or recorded != _listing_signature(self._pseudonymizer, prefix, names, sizes, mtimes_ns):
            return False
        if not self.all_staged():
            return False
        self.signatures[folder] = recorded
        self.settled_in_folders += len(names)
        return True

    def sign_folder(self, prefix: str, names: list[str], sizes: list[int], mtimes_ns: list[int]) -> None:
        """Record (in ``signatures``) the folder ``prefix`` whose every file (``names``, all its entries
        but folders) ``match`` found settled in this run."""
        self.signatures[self._folder_token(prefix)] = _listing_signature(
            self._pseudonymizer, prefix, names, sizes, mtimes_ns)

    @property
    def _known(self) -> frozenset[str] | set[str]:
        """The content hashes staged as images (given, or made by the function given: once, when first needed)."""
        if self._known_set is None:
            given = self._known_given
            self._known_set = given() if callable(given) else given
        return self._known_set

    def all_staged(self) -> bool:
        """Whether every ingested or unchanged entry of the SOURCE has its content staged (images
        known, else ``staged``): a folder's signature stands for its files' entries, whose content
        must still be there, as ``match`` checks file by file. Once per run; true at once when the last
        run claimed it for these very entries and this very staging (``Ledger.settled_matcher(staging=)``)."""
        if self._staged_all is None:
            hashes = (self._settled_hashes() if self._settled_hashes is not None  # the ledger's: active_hashes' too
                      else _settled_set(self._entries))
            self._staged_all = "" not in hashes and (not hashes or all(
                [self._staged(sha256) for sha256 in hashes.difference(self._known)]))
        return self._staged_all


    def __call__(self, logical_path: str, size: int, mtime_ns: int) -> str | None:
        return self.many([(logical_path, size, mtime_ns)])[0]

    def many(self, listed: list[tuple[str, int, int]]) -> list[str | None]:
        """For each ``(logical_path, size, mtime_ns)``, what a call would answer."""
        return self.match([path for path, _, _ in listed], [size for _, size, _ in listed],
                          [mtime_ns for _, _, mtime_ns in listed])

    def match(self, paths: list[str], sizes: list[int], mtimes_ns: list[int]) -> list[str | None]:
        """``many`` for a listing given as three aligned lists (what ``discover`` hands over: no tuple
        per file). One tight loop: a token per path (``Pseudonymizer.path_tokens``, remembered for
        ``Ledger.record``), one dict lookup per file and the entry's fields compared; a matched entry's
        content is looked up among the staged ones unless ``all_staged`` is already known true (claimed by
        the last run, or checked once in this one): the 20 files a +20 run ingested are matched one by one by
        the next run, which would otherwise make the set of 50,000 staged image hashes for them."""
        tokens = self._tokens
        try:
            path_tokens = [tokens[path] for path in paths]
        except KeyError:
            path_tokens = self._pseudonymizer.path_tokens(paths)
            if len(tokens) + len(paths) > _TOKENS_KEEP:
                tokens.clear()
            tokens.update(zip(paths, path_tokens))
        get, staged, to_record = self._entries.get, self._staged, self.to_record
        staged_all = self._staged_all is True
        known: frozenset[str] | set[str] | None = None  # made when a file first needs it
        answers: list[str | None] = []
        append = answers.append
        for path, token, size, mtime_ns in zip(paths, path_tokens, sizes, mtimes_ns):
            entry = get(token)
            if entry is None or entry.get("mtime_ns") != mtime_ns or entry.get("size") != size:
                append(None)
                continue
            status, sha256 = entry["status"], entry.get("sha256")
            if status not in _SETTLED_STATUSES or not sha256:
                append(None)
                continue
            if not staged_all:  # else every settled entry's content is staged (claimed, or checked once)
                if known is None:
                    known = self._known
                if not (sha256 in known or staged(sha256)):
                    append(None)
                    continue
            if status != UNCHANGED or len(entry) != 4:  # sha256, status, size, mtime_ns: as unchanged records it
                to_record.append((path, sha256, size, mtime_ns))
            append(sha256)
        return answers


_SETTLED_STATUSES = frozenset((INGESTED, UNCHANGED))


def _settled_set(entries: dict[str, dict]) -> set[str]:
    """The content hashes of ``entries`` held as ingested or unchanged (``""`` for one without)."""
    return {entry.get("sha256") or "" for entry in entries.values() if entry["status"] in _SETTLED_STATUSES}
_LISTING = "\0listing\0"  # no path holds a NUL: a listing signature is never a path's token


def _listing_signature(pseudonymizer: Pseudonymizer, prefix: str, names: list[str], sizes: list[int],
                       mtimes_ns: list[int]) -> str:
    """The keyed signature of a folder's listing: its path, then its files' names (NUL between them:
    no name holds one), then their sizes and mtimes as 64-bit integers, all in name order; made from
    bytes, not a string per file (a +20 rerun signs 50 folders of 1,000 files). Format 2 (the ``\x02``
    after the prefix): a signature of the first format never matches, so its folder is matched file by
    file once and signed again."""
    order = sorted(range(len(names)), key=names.__getitem__)
    listed = name_bytes("\0".join([names[i] for i in order]))
    numbers = array("q", [sizes[i] for i in order] + [mtimes_ns[i] for i in order]).tobytes()
    return pseudonymizer.path_token_of_bytes(b"".join([
        _LISTING.encode(), name_bytes(prefix), b"\0\x02", len(order).to_bytes(8, "little"), listed, b"\0", numbers]))


def _active_sum(held: object) -> tuple[int, int] | None:
    """``[count, "<keyed sum, hex>"]`` as the file holds it, read; None when absent or malformed."""
    try:
        count, total = held
        return int(count), int(total, 16)
    except (TypeError, ValueError):
        return None


def journal_path(path: Path) -> Path:
    """The journal beside the ledger file ``path``: ``ledger.json.journal``."""
    return path.with_name(path.name + ".journal")


def _parsed(data: bytes) -> dict:
    """A ledger file's document: orjson (about 3x faster on 50,000 entries), ``json`` for what orjson
    refuses (a version 1 ledger's names may hold lone surrogates, escaped). The cyclic garbage collector
    is paused meanwhile: the 50,000 entry dicts made would each time set off a full collection of the
    process's objects (about as long as the parse itself), and a parsed document holds no cycle."""
    paused = gc.isenabled()
    gc.disable()
    try:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            return json.loads(data.decode("utf-8"))
    finally:
        if paused:
            gc.enable()


def _serialised(doc: dict) -> bytes:
    """Compact JSON, keys sorted, one line, ASCII only: what ``json.dumps(doc, sort_keys=True,
    separators=(",", ":"))`` writes, made by orjson (about 5x faster) when it is all ASCII."""
    data = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE)
    if data.isascii():
        return data
    return (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode("ascii")


def archive_stats(items: list[InputItem]) -> dict[str, tuple[int, int]]:
    """Logical path -> (size, mtime_ns) of each zip archive whose entries are among ``items``, or that is
    among them refused whole, for ``Ledger.record(archives=)``."""
    return {item.archive_stat[0]: item.archive_stat[1:] for item in items if item.archive_stat is not None}


def item_stats(items: list[InputItem]) -> dict[str, tuple[int, int]]:
    """Logical path -> (size, mtime_ns) of the plain files among ``items``, for ``Ledger.record``."""
    return {item.logical_path: (item.size, item.mtime_ns) for item in items
            if item.mtime_ns is not None and item.problem is None}


def tokenised_v1(sources: dict[str, dict[str, dict]], pseudonymizer: Pseudonymizer) -> dict[str, dict[str, dict]]:
    """A version 1 ledger's sources with every key tokenised: a SOURCE key is the resolved path
    ``record`` was given, so its token is the landing token of that folder."""
    return {pseudonymizer.path_token(source): {pseudonymizer.path_token(path): entry for path, entry in entries.items()}
            for source, entries in sources.items()}
