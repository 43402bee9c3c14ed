"""The medmeta home: where all state lives, and its layout (docs/store-layout.md).

    H/
      secrets/pseudonym.key        the local pseudonym key (0600), when not given by env or block
      config/sites/*.yaml          per-site column and unit mappings (copied on first use)
      store/                       the canonical, de-identified store
        parts/<sha256>.arrow       what one input file contributed (written once, atomically)
        <table>.parquet            the consolidated tables of the current snapshot
        images/                    the images table as parts (table.json; read_images reads it)
        record_quarantine.parquet  rows rejected inside otherwise good files
        manifest.json              the current snapshot: id, counts, table hashes
      cache/pixels/shards/<sha256>.npy  one ingest batch's new images (float16, content-addressed)
      cache/pixels/<digest>.npy    an older snapshot's stacked images (still read)
      snapshots/<id>.json          every snapshot manifest ever made
      ledger.json                  input path token -> content hash and outcome (never a name)
      ledger.json.journal          entries changed since ledger.json was last written whole (a large home)
      quarantine/<sha256>/         a copy of a rejected file and reason.json: the one PHI zone (0700)
      runs/<run>.json              the summary of each ingest run

Nothing is written outside the home. Files are written with ``medmeta.atomic``.

The quarantine folder holds whole source files, PHI and all, and their names: it is the one PHI
zone of the home. It and each of its folders are mode 0700 (their files 0600), set explicitly so
the umask can not widen them; everything else in the home is kept free of PHI.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOME = ".medmeta"
PRIVATE_FOLDER_MODE = 0o700  # the quarantine folder and its sub-folders
PRIVATE_FILE_MODE = 0o600  # the files in them


def resolve_home(home: str | os.PathLike | None = None) -> Path:
    """The home given, else ``$MEDMETA_HOME``, else ``./.medmeta``; made absolute."""
    chosen = home or os.environ.get("MEDMETA_HOME") or DEFAULT_HOME
    return Path(chosen).expanduser().resolve()


@dataclass(frozen=True)
class Home:
    root: Path

    @classmethod
    def at(cls, home: str | os.PathLike | None = None) -> "Home":
        return cls(resolve_home(home))

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def key_file(self) -> Path:
        return self.secrets / "pseudonym.key"

    @property
    def sites_dir(self) -> Path:
        return self.root / "config" / "sites"

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def parts(self) -> Path:
        return self.store / "parts"

    def table(self, name: str) -> Path:
        return self.store / f"{name}.parquet"

    @property
    def record_quarantine(self) -> Path:
        return self.store / "record_quarantine.parquet"

    @property
    def manifest(self) -> Path:
        return self.store / "manifest.json"

    @property
    def pixels(self) -> Path:
        return self.root / "cache" / "pixels"

    @property
    def pixel_shards(self) -> Path:
        """``cache/pixels/shards/``: one content-addressed .npy per ingest batch's new images."""
        return self.pixels / "shards"

    @classmethod
    def of_parts(cls, parts_root: Path) -> "Home":
        """The home whose ``store/parts`` folder is ``parts_root``."""
        return cls(Path(parts_root).parents[1])

    @property
    def snapshots(self) -> Path:
        return self.root / "snapshots"

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.json"

    @property
    def watch(self) -> Path:
        """The landing folders' change journals (``medmeta.landing.journal``), one file per landing token."""
        return self.root / "watch"

    @property
    def quarantine(self) -> Path:
        """The one PHI zone of the home (mode 0700): see ``quarantine_folder``."""
        return self.root / "quarantine"

    def quarantine_folder(self, key: str) -> Path:
        """``quarantine/<key>/``, made (with ``quarantine/``) mode 0700 whatever the umask."""
        folder = self.quarantine / key
        _private_folder(self.quarantine)
        _private_folder(folder)
        return folder

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def registry(self) -> Path:
        return self.root / "registry"

    @property
    def tasksets(self) -> Path:
        return self.root / "tasksets"

    @property
    def training(self) -> Path:
        """Training runs: checkpoints and curves, one folder per run."""
        return self.root / "training"

    def ensure(self) -> "Home":
        for d in (self.root, self.store, self.parts, self.pixels, self.snapshots, self.runs, self.sites_dir):
            d.mkdir(parents=True, exist_ok=True)
        _private_folder(self.quarantine)
        return self


def _private_folder(folder: Path) -> None:
    """``folder`` (its parent must exist) made mode 0700, also when it was there with a wider mode."""
    folder.mkdir(mode=PRIVATE_FOLDER_MODE, exist_ok=True)
    if (folder.stat().st_mode & 0o777) != PRIVATE_FOLDER_MODE:
        os.chmod(folder, PRIVATE_FOLDER_MODE)
