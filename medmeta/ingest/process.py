"""One input file to one part of the store, or to quarantine: the work of an ingest worker.

``process_item`` never raises for bad input: whatever is wrong with a file becomes a
``quarantined`` outcome with a reason, and the batch goes on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa

from medmeta import schema
from medmeta.atomic import atomic_path, write_json
from medmeta.errors import INTERNAL_ERROR, NO_VALID_RECORDS, Rejected
from medmeta.home import Home
from medmeta.ingest.config import IngestConfig
from medmeta.ingest.outcome import INGESTED, QUARANTINED, UNCHANGED, FileOutcome
from medmeta.ingest.parts import part_exists, record_quarantine_table, write_part
from medmeta.landing.walk import InputItem, read_item
from medmeta.pseudonyms import Pseudonymizer
from medmeta.records.canonical import Canonicalizer, StagedRecords
from medmeta.records.site_mappings import TableMapping
from medmeta.records.units import default_units

RECORD_KINDS = {"csv", "parquet", "json", "ndjson"}


@dataclass(frozen=True)
class WorkerContext:
    """Everything a worker process needs; picklable, built once per run."""

    home: Path
    config: IngestConfig
    key: bytes
    mappings: tuple[TableMapping, ...]
    today: date

    def __repr__(self) -> str:  # keep the key out of any repr or log line
        return f"WorkerContext(home={self.home})"


class Worker:
    def __init__(self, ctx: WorkerContext):
        self.ctx = ctx
        self.home = Home(ctx.home)
        self.pseudo = Pseudonymizer(ctx.key)
        self.canonicalize = Canonicalizer(self.pseudo, default_units(), ctx.config.age_reference_date, ctx.today)
        logging.getLogger("pydicom").setLevel(logging.CRITICAL)  # its messages can quote values

    def process(self, item: InputItem) -> FileOutcome:
        if item.problem is not None:
            return self._quarantine(item, item.problem, sha256=None, data=None)
        try:
            data = read_item(item, self.ctx.config)
        except Rejected as error:
            return self._quarantine(item, error, sha256=None, data=None)
        sha256 = hashlib.sha256(data).hexdigest()
        if part_exists(self.home.parts, sha256):
            return FileOutcome(item.logical_path, UNCHANGED, sha256)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return self._ingest(item, data, sha256)
        except Rejected as error:
            return self._quarantine(item, error, sha256, data)
        except Exception as exc:  # a parser bug must not stop the batch, nor leak data
            error = Rejected(INTERNAL_ERROR, f"unexpected {type(exc).__name__} while ingesting")
            return self._quarantine(item, error, sha256, data)

    def _ingest(self, item: InputItem, data: bytes, sha256: str) -> FileOutcome:
        from medmeta.landing.sniff import sniff

        kind = sniff(data, item.logical_path)
        if kind == "dicom":
            return self._ingest_dicom(item, data, sha256)
        staged = self.canonicalize(self._parse_records(kind, data, item.logical_path), sha256)
        if staged.row_count == 0 and staged.patient_refs.num_rows == 0 and staged.rejects:
            codes = sorted({e.code for e in staged.rejects})
            if len(codes) == 1:
                raise Rejected(codes[0], f"every record was rejected ({staged.rejects[0].message})")
            raise Rejected(NO_VALID_RECORDS, f"every record was rejected ({', '.join(codes)})")
        self._write_records_part(sha256, kind, staged)
        return FileOutcome(item.logical_path, INGESTED, sha256, kind, records=staged.row_count,
                           rows_rejected=len(staged.rejects))

    def _parse_records(self, kind: str, data: bytes, name: str):
        from medmeta.records import fhir, tabular

        if kind == "json":
            return fhir.parse_fhir_json(data)
        if kind == "ndjson":
            return fhir.parse_fhir_ndjson(data)
        return tabular.parse_tabular(data, kind, name, list(self.ctx.mappings))

    def _write_records_part(self, sha256: str, kind: str, staged: StagedRecords) -> None:
        rejects = [{"source": sha256, "location": e.location or "", "reason": e.reason} for e in staged.rejects]
        tables = dict(staged.tables)
        tables["patient_refs"] = staged.patient_refs
        tables["record_quarantine"] = record_quarantine_table(rejects)
        meta = {"kind": kind, "rows": {k: t.num_rows for k, t in sorted(staged.tables.items())},
                "rows_rejected": len(rejects)}
        write_part(self.home.parts, sha256, tables, meta)

    def _ingest_dicom(self, item: InputItem, data: bytes, sha256: str) -> FileOutcome:
        from medmeta.dicom.deidentify import deidentify
        from medmeta.dicom.pixels import decode_pixels, read_dicom

        ds = read_dicom(data, max_pixels=self.ctx.config.max_pixels_per_image)
        pixels = decode_pixels(ds, size=self.ctx.config.image_size)
        transfer_syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
        ids = deidentify(ds, self.pseudo)
        for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            if keyword in ds:
                delattr(ds, keyword)
        pixel_rel = f"cache/pixels/{sha256}.npy"
        with atomic_path(self.home.root / pixel_rel) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, pixels.array, allow_pickle=False)
        row = {
            "image_id": str(ds.get("SOPInstanceUID", "") or self.pseudo.uid(sha256)),
            "patient_id": ids.patient_id,
            "study_uid": _text(ds, "StudyInstanceUID"),
            "series_uid": _text(ds, "SeriesInstanceUID"),
            "modality": _text(ds, "Modality"),
            "body_part": _text(ds, "BodyPartExamined"),
            "transfer_syntax": transfer_syntax,
            "photometric": pixels.photometric,
            "rows": pixels.rows, "columns": pixels.columns, "frames": pixels.frames,
            "study_date": _dicom_date(ds.get("StudyDate")),
            "pixel_path": pixel_rel,
            "height": int(pixels.array.shape[0]), "width": int(pixels.array.shape[1]),
            "pixel_min": float(pixels.pixel_min), "pixel_max": float(pixels.pixel_max),
            "header": _header_json(ds),
            "site": "dicom",  # the institution is removed by de-identification
            "source": sha256,
        }
        images = pa.Table.from_pylist([{**row, "patient_ref": None}],
                                      schema=schema.IMAGES.append(pa.field("patient_ref", pa.string())))
        write_part(self.home.parts, sha256, {"images": images}, {"kind": "dicom", "rows": {"images": 1}})
        return FileOutcome(item.logical_path, INGESTED, sha256, "dicom", images=1)

    def _quarantine(self, item: InputItem, error: Rejected, sha256: str | None, data: bytes | None) -> FileOutcome:
        key = sha256 or hashlib.sha256(item.logical_path.encode()).hexdigest()
        folder = self.home.quarantine / key
        if data is not None:
            name = Path(item.logical_path).name or "file"
            with atomic_path(folder / name) as tmp:
                tmp.write_bytes(data)
        write_json(folder / "reason.json", {"path": item.logical_path, "code": error.code, "reason": error.reason,
                                            "copied": data is not None})
        return FileOutcome(item.logical_path, QUARANTINED, sha256, reason=error.reason)


def _text(ds, keyword: str) -> str | None:
    value = ds.get(keyword)
    return str(value).strip() if value not in (None, "") else None


def _dicom_date(value) -> date | None:
    text = str(value or "").strip()
    if len(text) >= 8 and text[:8].isdigit():
        try:
            return date(int(text[:4]), int(text[4:6]), int(text[6:8]))
        except ValueError:
            return None
    return None


def _header_json(ds) -> str:
    """The de-identified header in the DICOM JSON model; bulk data left out."""
    header = ds.to_json_dict(bulk_data_threshold=4096, bulk_data_element_handler=lambda _: "",
                             suppress_invalid_tags=True)
    return json.dumps(header, sort_keys=True, separators=(",", ":"))


_worker: Worker | None = None


def init_worker(ctx: WorkerContext) -> None:
    """Process-pool initializer: build the worker once per process."""
    global _worker
    _worker = Worker(ctx)


def process_items(items: list[InputItem]) -> list[FileOutcome]:
    """Run in a pool process initialised with ``init_worker``."""
    assert _worker is not None, "init_worker was not called in this process"
    return [_worker.process(item) for item in items]

