"""Which store layout a home holds, and the refusal of one this medmeta can not read."""

from __future__ import annotations

import json

from medmeta import schema
from medmeta.errors import MedmetaError
from medmeta.home import Home


def check_store_version(home: Home) -> None:
    """Refuse a store an older medmeta wrote: its parts and tables lack the columns this one needs."""
    if not home.manifest.exists():
        return
    found = json.loads(home.manifest.read_text()).get("schema_version", schema.SCHEMA_VERSION)  # every medmeta wrote one
    if found != schema.SCHEMA_VERSION:
        raise MedmetaError(
            f"the store in {home.root} has schema version {found}, this medmeta reads {schema.SCHEMA_VERSION} "
            f"(coded facts now keep their code system): ingest into a new home, or move {home.store} and "
            f"{home.ledger} aside and ingest the landing data again"
        )
