"""Everything an ingest run decides before it reads a file: home, settings, key, site mappings.

Bad configuration fails here, loudly, before any input is touched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from medmeta.errors import MedmetaError
from medmeta.home import Home
from medmeta.ingest.config import IngestConfig
from medmeta.ingest.process import WorkerContext
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
    def create(cls, source: str, home: str | None = None, config: str | None = None,
               workers: int | None = None) -> "IngestSetup":
        source_path = Path(source).expanduser().resolve()
        if not source_path.exists():
            raise MedmetaError(f"{source}: no such file or folder")
        the_home = Home.at(home).ensure()
        if the_home.root == source_path or source_path in the_home.root.parents:
            raise MedmetaError(f"the home {the_home.root} must not be inside the source {source_path}")
        settings = IngestConfig.load(config, workers=workers)
        key = load_key(the_home.key_file)
        _check_key_matches_store(the_home, Pseudonymizer(key))
        install_default_sites(the_home.sites_dir)
        mappings = tuple(load_site_mappings(the_home.sites_dir))
        ctx = WorkerContext(the_home.root, settings, key, mappings, date.today())
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
