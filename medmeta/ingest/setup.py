"""Everything an ingest run decides before it reads a file: home, settings, key, site mappings.

Bad configuration fails here, loudly, before any input is touched.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Iterator

from medmeta.errors import MedmetaError
from medmeta.home import Home
from medmeta.ingest.config import IngestConfig
from medmeta.ingest.image_parts import staged_batches
from medmeta.ingest.images_table import images_folder
from medmeta.ingest.landings import landing_token, resolve_landing
from medmeta.ingest.process import WorkerContext
from medmeta.store_version import check_store_version
from medmeta.pseudonyms import Pseudonymizer, load_key
from medmeta.records.site_mappings import install_default_sites, load_site_mappings


@dataclass(frozen=True)
class IngestSetup:
    source: Path
    home: Home
    config: IngestConfig
    worker_context: WorkerContext

    @property
    def pseudonymizer(self) -> Pseudonymizer:
        return Pseudonymizer(self.worker_context.key)

    @classmethod
    def create(cls, source: str | None, home: str | None = None, settings: "Settings | str | None" = None,
               workers: int | None = None, dask_address: str | None = None) -> "IngestSetup":
        """``source``: the landing folder or zip, by its path or its landing token (``resolve_landing``).
        ``settings``: medmeta's settings (their ingest section), a settings file, or None (the defaults).
        Errors name the landing by its token: they reach Prefect's state messages and logs."""
        the_home = Home.at(home)
        key = load_key(the_home.key_file)
        source_path = resolve_landing(source, Pseudonymizer(key))
        if not source_path.exists():
            raise MedmetaError(f"the landing folder {landing_token(source_path, Pseudonymizer(key))} does not exist")
        if the_home.root == source_path or source_path in the_home.root.parents:
            raise MedmetaError(f"the home {the_home.root} must not be inside the landing folder")
        the_home.ensure()
        from medmeta.settings import Settings, load_settings

        chosen = settings if isinstance(settings, Settings) else load_settings(settings)
        settings = IngestConfig.from_settings(chosen, workers=workers, dask_address=dask_address)
        check_store_version(the_home)
        _check_key_matches_store(the_home, Pseudonymizer(key))
        install_default_sites(the_home.sites_dir)
        mappings = tuple(load_site_mappings(the_home.sites_dir))
        batches = staged_batches(the_home.parts, settings.image_size)
        ctx = WorkerContext(the_home.root, settings, key, mappings, date.today(), batches)
        return cls(source_path, the_home, settings, ctx)


def _check_key_matches_store(home: Home, pseudo: Pseudonymizer) -> None:
    if not home.manifest.exists():
        return
    stored = json.loads(home.manifest.read_text()).get("key_fingerprint")
    if stored and stored != pseudo.fingerprint:
        raise MedmetaError(
            f"the pseudonym key differs from the one the store in {home.root} was built with "
            f"(fingerprint {pseudo.fingerprint}, store {stored}): ingesting would split every patient in two"
        )


@contextmanager
def home_lock(home: Home) -> Iterator[None]:
    """One ingest at a time per home; the lock goes with the process, even on kill -9."""
    fd = os.open(home.root / ".ingest.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MedmetaError(f"another ingest is running on {home.root}; wait for it to finish") from None
        remove_interrupted_writes(home)
        yield
    finally:
        os.close(fd)


def remove_interrupted_writes(home: Home) -> None:
    """Temp files and half-built parts left by a run that was killed (all start with a dot)."""
    folders = [home.store, images_folder(home), home.parts, *home.parts.glob("images-*"), home.pixels, home.pixel_shards]
    folders += [d for d in home.quarantine.iterdir() if d.is_dir()] if home.quarantine.exists() else []
    for folder in folders:
        for entry in folder.glob(".*") if folder.exists() else ():
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
