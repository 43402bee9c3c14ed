"""One input file to its contribution to the store, or to quarantine: an ingest worker's work.

A record file becomes a part (``medmeta.ingest.parts``); a DICOM file becomes an image row and
its pixels, handed back to be staged with its batch. ``Worker.process`` never raises for bad input: whatever is wrong with a file becomes a
``quarantined`` outcome with a reason, and the batch goes on.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import warnings
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pyarrow as pa

from medmeta.atomic import atomic_path, write_json
from medmeta.errors import EMPTY_TABLE, INTERNAL_ERROR, NO_VALID_RECORDS, Rejected, os_fault
from medmeta.home import PRIVATE_FILE_MODE, Home
from medmeta.ingest.config import IngestConfig
from medmeta.ingest.image_parts import ImagePayload, known_image_sources
from medmeta.ingest.outcome import INGESTED, QUARANTINED, UNCHANGED, FileOutcome
from medmeta.ingest.parts import part_exists, record_quarantine_table, write_part
from medmeta.landing.sniff import ACTIVITY, activity_layout, sniff
from medmeta.landing.names import display_name, json_name, name_bytes
from medmeta.landing.walk import InputItem, read_item
from medmeta.pseudonyms import Pseudonymizer
from medmeta.records.canonical import CONCEPTS, Canonicalizer, StagedRecords
from medmeta.records.site_mappings import TableMapping


@dataclass(frozen=True)
class WorkerContext:
    """Everything a worker process needs; picklable, built once per run."""

    home: Path
    config: IngestConfig
    key: bytes
    mappings: tuple[TableMapping, ...]
    today: date
    # the image batch files staged when the run started (``image_parts.staged_batches``): each worker reads
    # the content hashes they hold (``known_images``) itself, so none is sent to it, and none staged by
    # this run's own batches counts (a file's outcome never depends on which worker ran first)
    staged_batches: tuple[str, ...] = ()

    def __repr__(self) -> str:  # keep the key out of any repr or log line
        return f"WorkerContext(home={self.home})"


class Worker:
    def __init__(self, ctx: WorkerContext):
        self.ctx = ctx
        self.home = Home(ctx.home)
        self.pseudo = Pseudonymizer(ctx.key)
        self.known_images = known_image_sources(self.home.parts, ctx.config.image_size, ctx.staged_batches)
        self.canonicalize = Canonicalizer(self.pseudo, ctx.config.age_reference_date, ctx.today)
        self.operator_sites = frozenset({DEFAULT_FOLDER_SITE, *([ctx.config.site] if ctx.config.site else []),
                                         *(mapping.site for mapping in ctx.mappings)})
        logging.getLogger("pydicom").setLevel(logging.CRITICAL)  # its messages can quote values

    def process(self, item: InputItem) -> tuple[FileOutcome, ImagePayload | None]:
        """The file's outcome, and for a DICOM file its image row and pixels to stage."""
        if item.problem is not None:
            return self._quarantine(item, item.problem, sha256=None, data=None), None
        try:
            data = read_item(item, self.ctx.config)
        except Rejected as error:
            return self._quarantine(item, error, sha256=None, data=None), None
        sha256 = hashlib.sha256(data).hexdigest()
        if sha256 in self.known_images or part_exists(self.home.parts, sha256):
            return FileOutcome(item.logical_path, UNCHANGED, sha256), None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return self._ingest(item, data, sha256)
        except Rejected as error:
            return self._quarantine(item, error, sha256, data), None
        except Exception as exc:  # a parser bug must not stop the batch, nor leak data
            if os_fault(exc) is not None:  # a full disk or read-only home stops the run; the file is not to blame
                raise
            error = Rejected(INTERNAL_ERROR, f"unexpected {type(exc).__name__} while ingesting")
            return self._quarantine(item, error, sha256, data), None

    def _ingest(self, item: InputItem, data: bytes, sha256: str) -> tuple[FileOutcome, ImagePayload | None]:
        kind = sniff(data, item.content_name)
        if kind == "dicom":
            return self._ingest_dicom(item, data, sha256)
        if kind == "fhir_export_log":  # a bulk export's log.ndjson: accounted for, no facts in it
            write_part(self.home.parts, sha256, {}, {"kind": kind, "rows": {}, "rows_rejected": 0})
            return FileOutcome(item.logical_path, INGESTED, sha256, kind), None
        site = site_for(item.logical_path, self.ctx.config)
        frame = None
        if kind in ("csv", "parquet"):  # records, or a compound activity table: told apart by the header
            from medmeta.records.tabular import is_records_header, read_table

            frame = read_table(data, kind)
            records_header = is_records_header(frame[0].columns, kind, list(self.ctx.mappings))
            layout = activity_layout(frame[0].columns, item.content_name, records_header)
            if layout is not None:
                return self._ingest_activity(item, frame, layout, site, sha256), None
        raw = self._parse_records(kind, data, site, frame)
        staged = self.canonicalize(raw, sha256)
        staged.tables = with_site(staged.tables, stored_site(raw.site, site, self.operator_sites, self.pseudo))
        if staged.row_count == 0 and staged.patient_refs.num_rows == 0 and not raw.concepts and staged.rejects:
            codes = sorted({e.code for e in staged.rejects})
            if len(codes) == 1:
                raise Rejected(codes[0], f"every record was rejected ({staged.rejects[0].message})")
            raise Rejected(NO_VALID_RECORDS, f"every record was rejected ({', '.join(codes)})")
        self._write_records_part(sha256, kind, staged, raw)
        outcome = FileOutcome(item.logical_path, INGESTED, sha256, kind, records=staged.row_count,
                              rows_rejected=len(staged.rejects))
        return outcome, None

    def _parse_records(self, kind: str, data: bytes, site: str, frame=None):
        from medmeta.records import fhir, tabular

        if kind == "json":
            return fhir.parse_fhir_json(data, site)
        if kind == "ndjson":
            return fhir.parse_fhir_ndjson(data, site)
        if frame is not None:
            return tabular.parse_tabular_frame(*frame, kind, list(self.ctx.mappings), site)
        return tabular.parse_tabular(data, kind, list(self.ctx.mappings), site)

    def _ingest_activity(self, item: InputItem, frame, layout, site: str, sha256: str) -> FileOutcome:
        """A compound activity table to its part (``compound_activities`` staged rows and the rejected
        rows), or ``Rejected`` when it has no row (``empty_table``) or no row could be read."""
        from medmeta.chem.activity_rows import stage_activities

        table, unreadable = frame
        if len(table) == 0 and not unreadable:
            raise Rejected(EMPTY_TABLE, "the activity table has a header and no rows")
        staged = stage_activities(table, layout, stored_site(site, site, self.operator_sites, self.pseudo), sha256)
        staged.rejects[:0] = unreadable
        if staged.table.num_rows == 0:
            codes = sorted({e.code for e in staged.rejects})
            if len(codes) == 1:
                raise Rejected(codes[0], f"every row of the activity table was rejected ({staged.rejects[0].message})")
            raise Rejected(NO_VALID_RECORDS, f"every row of the activity table was rejected ({', '.join(codes)})")
        rejects = [{"source": sha256, "location": e.location or "", "reason": e.reason} for e in staged.rejects]
        meta = {"kind": ACTIVITY, "rows": {"compound_activities": staged.table.num_rows},
                "rows_rejected": len(rejects), "activity": staged.meta()}
        write_part(self.home.parts, sha256, {"compound_activities": staged.table,
                                             "record_quarantine": record_quarantine_table(rejects)}, meta)
        return FileOutcome(item.logical_path, INGESTED, sha256, ACTIVITY, records=staged.table.num_rows,
                           rows_rejected=len(rejects))

    def _write_records_part(self, sha256: str, kind: str, staged: StagedRecords, raw) -> None:
        rejects = [{"source": sha256, "location": e.location or "", "reason": e.reason} for e in staged.rejects]
        tables = dict(staged.tables)
        tables["patient_refs"] = staged.patient_refs
        tables["medication_refs"] = staged.medication_refs
        tables["concepts"] = pa.Table.from_pylist(staged.concepts, schema=CONCEPTS)
        tables["record_quarantine"] = record_quarantine_table(rejects)
        meta = {"kind": kind, "rows": {k: t.num_rows for k, t in sorted(staged.tables.items())},
                "rows_rejected": len(rejects), "ignored": dict(raw.ignored), "excluded": dict(raw.excluded),
                "read": dict(raw.read), "concepts": len(raw.concepts)}
        write_part(self.home.parts, sha256, tables, meta)

    def _ingest_dicom(self, item: InputItem, data: bytes, sha256: str) -> tuple[FileOutcome, ImagePayload]:
        from medmeta.dicom.defined_terms import BODY_PARTS, MODALITIES, defined_term
        from medmeta.dicom.deidentify import deidentify
        from medmeta.dicom.pixels import decode_pixels, read_dicom

        ds = read_dicom(data, max_pixels=self.ctx.config.max_pixels_per_image)
        pixels = decode_pixels(ds, size=self.ctx.config.image_size)
        transfer_syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
        ids = deidentify(ds, self.pseudo, issuer_aliases=self.ctx.config.issuer_aliases)
        row = {
            "image_id": str(ds.get("SOPInstanceUID", "") or self.pseudo.uid(sha256)),
            "patient_id": ids.patient_id,
            "study_uid": _text(ds, "StudyInstanceUID"),
            "series_uid": _text(ds, "SeriesInstanceUID"),
            "modality": defined_term(ds.get("Modality"), MODALITIES),  # else null: a name typed there stays out
            "body_part": defined_term(ds.get("BodyPartExamined"), BODY_PARTS),
            "transfer_syntax": transfer_syntax,
            "photometric": pixels.photometric,
            "rows": pixels.rows, "columns": pixels.columns, "frames": pixels.frames,
            "study_date": _dicom_date(ds.get("StudyDate")),
            "height": int(pixels.array.shape[0]), "width": int(pixels.array.shape[1]),
            "pixel_min": float(pixels.pixel_min), "pixel_max": float(pixels.pixel_max),
            "site": "dicom",  # the institution is removed by de-identification
            "source": sha256,
        }
        outcome = FileOutcome(item.logical_path, INGESTED, sha256, "dicom", images=1)
        return outcome, ImagePayload(row, pixels.array)

    def _quarantine(self, item: InputItem, error: Rejected, sha256: str | None, data: bytes | None) -> FileOutcome:
        """Copy the file (when it was read) and its reason into ``quarantine/<sha256>/``, the home's one
        PHI zone (0700, files 0600). Any name is safe here: the key is the content's hash (else the
        hash of the name's bytes), the copy is named by ``quarantine_copy_name``, and reason.json holds
        the name as ``json_name`` makes it."""
        key = sha256 or hashlib.sha256(name_bytes(item.logical_path)).hexdigest()
        folder = self.home.quarantine_folder(key)
        copy = quarantine_copy_name(item.logical_path) if data is not None else None
        if data is not None:
            with atomic_path(folder / copy, mode=PRIVATE_FILE_MODE) as tmp:
                tmp.write_bytes(data)
        write_json(folder / "reason.json", {"path": json_name(item.logical_path), "code": error.code,
                                            "reason": error.reason, "copied": data is not None, "copy": copy},
                   mode=PRIVATE_FILE_MODE)
        return FileOutcome(item.logical_path, QUARANTINED, sha256, reason=error.reason)


DEFAULT_FOLDER_SITE = "default"  # the site of a file at the top of SOURCE


def stored_site(site: str, folder_site: str, operator_sites: frozenset[str], pseudo: Pseudonymizer) -> str:
    """The store's ``site`` value for records of ``site``. A site id the operator chose (the
    ``site`` setting, a site mapping's ``site``, ``default``) is kept; the name of the landing folder
    a file sits in (``folder_site``, when the records took it as their site) is stored as
    ``folder-<keyed token>``: folder names can carry PHI. References and pseudonyms are keyed on
    the site itself, so they stay what they were."""
    if site != folder_site or site in operator_sites:
        return site
    return "folder-" + pseudo.path_token(site)[:16]


def with_site(tables: dict[str, pa.Table], site: str) -> dict[str, pa.Table]:
    """``tables`` with their ``site`` column set to ``site``."""
    out = {}
    for name, table in tables.items():
        at = table.schema.get_field_index("site")
        column = pa.array([site] * table.num_rows, pa.string())
        out[name] = table if at < 0 else table.set_column(at, table.schema.field(at), column)
    return out


# A file name is at most 255 bytes, and atomic_path adds a dot, a random part and ".tmp" around it.
_COPY_NAME_BYTES = 200


def quarantine_copy_name(logical_path: str) -> str:
    """The name of a quarantined file's copy: its own name as ``display_name`` shows it (so listing the
    folder shows no control character and obeys no escape), cut from the front to 200 bytes so
    its ending stays, never empty."""
    name = display_name(logical_path.rsplit("/", 1)[-1]) or "file"
    while len(name.encode("utf-8")) > _COPY_NAME_BYTES:
        name = name[1:]
    return name


def site_for(logical_path: str, config: IngestConfig) -> str:
    """The site of a FHIR or OMOP file: the ``site`` setting, else the landing folder it sits in.

    The first folder of the file's path under SOURCE names its site (``site_b/bulk/Patient.ndjson``
    is site ``site_b``; an archive counts as a folder, without its ``.zip``); a file at the top of
    SOURCE belongs to ``default``. Never taken from the data (FHIR ``meta.source`` names a server
    request, not a site): references between the files of one export resolve within their site.
    A folder name that is not UTF-8 names the site as ``json_name`` shows it. The store holds a
    folder's site as a token (``stored_site``); pseudonyms and references are keyed on the name.
    """
    if config.site:
        return config.site
    parts = logical_path.split("/")
    if len(parts) < 2:
        return DEFAULT_FOLDER_SITE
    first = json_name(parts[0])
    return first[:-4] if first.lower().endswith(".zip") else first


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


_worker: Worker | None = None


# A parsed FHIR file is hundreds of thousands of small dicts and lists: with the default thresholds
# the collector runs every 700 allocations and keeps re-walking the imported modules. In a worker
# process those are frozen once and young objects are collected less often (cycles still are).
WORKER_GC_THRESHOLDS = (20_000, 50, 50)


def init_worker(ctx: WorkerContext) -> None:
    """Process-pool initializer: build the worker once per process."""
    global _worker
    _worker = Worker(ctx)
    gc.collect()
    gc.freeze()
    gc.set_threshold(*WORKER_GC_THRESHOLDS)


def process_items(items: list[InputItem]) -> list[tuple[FileOutcome, ImagePayload | None]]:
    """Run in a pool process initialised with ``init_worker``."""
    assert _worker is not None, "init_worker was not called in this process"
    return [_worker.process(item) for item in items]

