"""Ingest settings: the ``ingest:`` section of medmeta's settings (medmeta/settings.py, defaults in
medmeta/config/pipeline.yaml) as the frozen ``IngestConfig`` the ingest workers get."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields
from datetime import date

from medmeta.errors import MedmetaError

_SITE = re.compile(r"[A-Za-z0-9_-]{1,64}")
# A Dask scheduler address: [tcp|tls|ucx://]host:port (host a name, an IPv4 address or [IPv6])
_DASK_ADDRESS = re.compile(r"(?:(?:tcp|tls|ucx)://)?(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}")
DASK_ADDRESS_ENV = "MEDMETA_DASK_ADDRESS"


@dataclass(frozen=True)
class IngestConfig:
    image_size: int = 64
    max_pixels_per_image: int = 8192 * 8192
    max_file_bytes: int = 2 * 1024**3
    max_zip_entry_bytes: int = 200 * 1024**2
    max_zip_total_bytes: int = 4 * 1024**3
    max_zip_entries: int = 100_000
    age_reference_date: date = date(2026, 1, 1)
    workers: int = 0
    batch_size: int = 256
    # read and hash every file on a rerun; by default a plain file whose size and mtime are the
    # ledger's and whose content is still staged is unchanged unread (medmeta.ingest.ledger)
    reread_unchanged: bool = False
    # a display is stored only when that (system, code, display) is attested by this many distinct
    # patients (medmeta.records.displays); a vocabulary table's labels (OMOP CONCEPT) are always kept
    display_min_patients: int = 3
    site: str | None = None  # the site of every FHIR / OMOP file; None: the landing folder it sits in
    # issuer spellings -> one issuer, e.g. a DICOM IssuerOfPatientID -> the FHIR identifier system
    issuer_aliases: tuple[tuple[str, str], ...] = ()
    # decode/de-identify on this external Dask cluster's workers (medmeta.ingest.dask_engine); None: the
    # local process pool. $MEDMETA_DASK_ADDRESS overrides the file, an explicit override both
    dask_address: str | None = None
    # estimated seconds of decoding per Dask task (whole staging batches, consecutive in the sorted
    # listing: medmeta.ingest.batches): Prefect's own cost per task (~0.25 s) stays under 5% of it
    dask_task_seconds: int = 5

    @property
    def worker_count(self) -> int:
        return self.workers if self.workers > 0 else (os.cpu_count() or 1)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, **overrides) -> "IngestConfig":
        """The ingest section of the settings file ``path`` (an old flat ingest file works too)."""
        from medmeta.settings import load_settings

        return cls.from_settings(load_settings(path), **overrides)

    @classmethod
    def from_settings(cls, settings, **overrides) -> "IngestConfig":
        """``settings.ingest`` (a ``medmeta.settings.Settings``); ``$MEDMETA_DASK_ADDRESS`` overrides its
        ``dask_address``, a non-None override (``--workers``, ``--dask``) both."""
        values = dict(settings.ingest)
        if os.environ.get(DASK_ADDRESS_ENV):
            values["dask_address"] = dask_address(os.environ[DASK_ADDRESS_ENV], f"${DASK_ADDRESS_ENV}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_mapping(values, origin=settings.source)

    @classmethod
    def from_mapping(cls, values: dict, origin: str = "config") -> "IngestConfig":
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise MedmetaError(f"{origin}: unknown ingest setting(s): {', '.join(unknown)}")
        kwargs = {}
        for name, value in values.items():
            if name == "age_reference_date":
                kwargs[name] = value if isinstance(value, date) else date.fromisoformat(str(value))
            elif name == "site":
                if value is not None and not (isinstance(value, str) and _SITE.fullmatch(value)):
                    raise MedmetaError(f"{origin}: site must be letters, digits, '_' or '-' (at most 64), not {value!r}")
                kwargs[name] = value
            elif name == "issuer_aliases":
                if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                          for k, v in value.items()):
                    raise MedmetaError(f"{origin}: issuer_aliases must map issuer spellings to issuers (text to text)")
                kwargs[name] = tuple(sorted((k.strip(), v.strip()) for k, v in value.items()))
            elif name == "reread_unchanged":
                if not isinstance(value, bool):
                    raise MedmetaError(f"{origin}: reread_unchanged must be true or false, not {value!r}")
                kwargs[name] = value
            elif name == "dask_address":
                kwargs[name] = None if value is None else dask_address(value, origin)
            else:
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise MedmetaError(f"{origin}: {name} must be a whole number >= 0, not {value!r}")
                kwargs[name] = value
        cfg = cls(**kwargs)
        if cfg.display_min_patients < 1:
            raise MedmetaError(f"{origin}: display_min_patients must be at least 1")
        if cfg.batch_size < 1:
            raise MedmetaError(f"{origin}: batch_size must be at least 1")
        if cfg.image_size < 8:
            raise MedmetaError(f"{origin}: image_size must be at least 8")
        return cfg


def dask_address(value: object, origin: str) -> str:
    """``value`` as a Dask scheduler address (``[tcp|tls|ucx://]host:port``); a ``MedmetaError`` naming
    ``origin`` otherwise."""
    if not (isinstance(value, str) and _DASK_ADDRESS.fullmatch(value.strip())):
        raise MedmetaError(f"{origin}: dask_address must be a Dask scheduler address such as tcp://host:8786, "
                           f"not {value!r}")
    return value.strip()
