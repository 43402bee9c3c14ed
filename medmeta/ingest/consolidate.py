"""Parts to the canonical tables and the snapshot manifest.

Deterministic: the same set of parts gives the same bytes whatever the order files arrived
in. One fact from two files (the same patient in two exports, the same SOP instance in two
transfer syntaxes) is one row: rows are sorted by key and source hash and the first kept.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa

from medmeta import schema
from medmeta.atomic import atomic_path, write_json
from medmeta.errors import UNRESOLVED_REFERENCE
from medmeta.home import Home
from medmeta.ingest.image_parts import read_image_rows, write_pixel_cache
from medmeta.ingest.parts import read_part_meta, read_part_table, write_parquet
from medmeta.pseudonyms import Pseudonymizer
from medmeta.records.canonical import DATE_COLUMNS, PATIENT_REFS

SCHEMA_VERSION = 1


def consolidate(home: Home, hashes: list[str], pseudo: Pseudonymizer, image_size: int) -> dict:
    record_parts = sorted(set(hashes) & {p.name for p in home.parts.iterdir()}) if home.parts.exists() else []
    refs = _patient_refs(home.parts, record_parts)
    quarantine = [_read(home.parts, record_parts, "record_quarantine", schema.RECORD_QUARANTINE)]
    counts, digests = {}, {}
    for name, table_schema in schema.TABLES.items():
        if name == "images":  # DICOM always names its patient: no references to resolve
            frame = read_image_rows(home.parts, image_size, set(hashes)).to_pandas(date_as_object=True)
            frame = _attach_pixel_cache(home, _deduplicate(name, frame), image_size)
        else:
            frame = _read(home.parts, record_parts, name, table_schema.append(pa.field("patient_ref", pa.string())))
            frame, unresolved = _resolve(frame, refs, pseudo)
            quarantine.append(unresolved)
            frame = _deduplicate(name, frame)
        digests[name] = _write_table(home.table(name), frame, table_schema)
        counts[name] = len(frame)
    rejects = pd.concat(quarantine, ignore_index=True).sort_values(["source", "location", "reason"])
    digests["record_quarantine"] = _write_table(home.record_quarantine, rejects, schema.RECORD_QUARANTINE)
    counts["record_quarantine"] = len(rejects)
    snapshot = hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()[:16]
    manifest = {
        "snapshot": snapshot, "schema_version": SCHEMA_VERSION, "counts": counts, "table_sha256": digests,
        "sources": len(hashes), "key_fingerprint": pseudo.fingerprint,
        "resources_ignored": _ignored_resources(home.parts, record_parts),
    }
    write_json(home.snapshots / f"{snapshot}.json", manifest)
    write_json(home.manifest, manifest)
    return manifest


def _ignored_resources(parts: Path, hashes: list[str]) -> dict[str, int]:
    """FHIR resources of R4 types medmeta does not read (Encounter ...), counted, never silent."""
    counts: Counter = Counter()
    for h in hashes:
        counts.update(read_part_meta(parts, h).get("ignored", {}))
    return dict(sorted(counts.items()))


def _attach_pixel_cache(home: Home, frame: pd.DataFrame, image_size: int) -> pd.DataFrame:
    """Stack the snapshot's pixels in table order; each row points at its slice."""
    frame = frame.sort_values("image_id", kind="mergesort").reset_index(drop=True)
    path = write_pixel_cache(home.pixels, home.root, frame["pixels"].tolist(), image_size)
    return frame.drop(columns="pixels").assign(pixel_path=path, pixel_index=range(len(frame)))


def _read(parts: Path, hashes: list[str], name: str, table_schema: pa.Schema) -> pd.DataFrame:
    tables = [t for h in hashes if (t := read_part_table(parts, h, name)) is not None]
    table = pa.concat_tables([t.select(table_schema.names).cast(table_schema) for t in tables]) if tables \
        else table_schema.empty_table()
    return table.to_pandas(date_as_object=True)


def _patient_refs(parts: Path, hashes: list[str]) -> dict[str, str]:
    frame = _read(parts, hashes, "patient_refs", PATIENT_REFS).sort_values(["patient_ref", "patient_id"])
    frame = frame.drop_duplicates("patient_ref", keep="first")
    return dict(zip(frame["patient_ref"], frame["patient_id"]))


def _resolve(frame: pd.DataFrame, refs: dict[str, str], pseudo: Pseudonymizer) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows known by a FHIR reference get their patient and their dates re-shifted."""
    pending = frame["patient_ref"].notna() & frame["patient_id"].isna()
    if not pending.any():
        return frame.drop(columns="patient_ref"), schema.RECORD_QUARANTINE.empty_table().to_pandas()
    frame = frame.copy()
    date_columns = [c for c in frame.columns if c in DATE_COLUMNS]
    for i in frame.index[pending]:
        ref = frame.at[i, "patient_ref"]
        patient_id = refs.get(ref)
        if patient_id is None:
            continue
        delta = timedelta(days=pseudo.offset_for_token(patient_id) - pseudo.offset_for_token(ref))
        frame.at[i, "patient_id"] = patient_id
        for column in date_columns:
            if frame.at[i, column] is not None and not pd.isna(frame.at[i, column]):
                frame.at[i, column] = frame.at[i, column] + delta
    unresolved = frame["patient_id"].isna() & frame["patient_ref"].notna()
    rejects = pd.DataFrame({
        "source": frame.loc[unresolved, "source"],
        "location": "patient reference",
        "reason": f"{UNRESOLVED_REFERENCE}: no ingested Patient resource has this reference",
    })
    return frame.loc[~unresolved].drop(columns="patient_ref"), rejects


def _deduplicate(name: str, frame: pd.DataFrame) -> pd.DataFrame:
    keys = list(schema.KEYS[name])
    if name == "patients":  # prefer the row that knows the most about the patient
        frame = frame.assign(_unknown_age=frame["age_years"].isna(), _unknown_sex=frame["sex"].eq("unknown"))
        order = keys + ["_unknown_age", "_unknown_sex", "source"]
    else:
        order = keys + ["source"]
    frame = frame.sort_values(order, na_position="last", kind="mergesort")
    frame = frame.drop_duplicates(keys, keep="first")
    return frame.drop(columns=[c for c in frame.columns if c.startswith("_")]).reset_index(drop=True)


def _write_table(path: Path, frame: pd.DataFrame, table_schema: pa.Schema) -> str:
    table = pa.Table.from_pandas(frame[table_schema.names], schema=table_schema, preserve_index=False)
    with atomic_path(path) as tmp:
        write_parquet(table, tmp)
    digest = hashlib.sha256()
    digest.update(json.dumps(table_schema.names).encode())
    digest.update(pd.util.hash_pandas_object(frame[table_schema.names].astype(str), index=False).values.tobytes())
    return digest.hexdigest()
