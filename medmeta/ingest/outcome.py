"""What became of one input file: the unit of ingest accounting.

Every file seen is exactly one of ``ingested``, ``unchanged`` (this content was ingested
before and is not processed again) or ``quarantined`` (with a reason).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

INGESTED = "ingested"
UNCHANGED = "unchanged"
QUARANTINED = "quarantined"


@dataclass(frozen=True)
class FileOutcome:
    path: str  # logical path, relative to SOURCE
    status: str
    sha256: str | None = None
    kind: str | None = None  # dicom | csv | parquet | json | ndjson
    reason: str | None = None  # "<code>: <message>" when quarantined
    records: int = 0
    images: int = 0
    rows_rejected: int = 0

    def to_dict(self) -> dict:
        return asdict(self)
