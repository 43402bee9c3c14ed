"""Parts to the canonical tables and the snapshot manifest.

Deterministic: the same set of parts gives the same bytes whatever the order files arrived
in. One fact from two files (the same patient in two exports, the same SOP instance in two
transfer syntaxes) is one row: rows are sorted by key and source hash and the first kept.

Free text the parts hold sealed (displays, units as written: ``medmeta.records.sealed``) is opened
here and enters the store only by a vocabulary rule: a display attested by enough patients
(``medmeta.records.displays``), a unit that converts to UCUM (``units_step``). What a rule withheld
is counted in the manifest's ``values_withheld``.

Images are read as rows only: each row of the images table points at the pixel shard its batch
wrote (``medmeta.ingest.image_parts``), so no pixel is read or written here. Which shard an image
sits in follows how files were batched; the images table's digest (and so the snapshot id) is a
multiset hash of its rows' content hashes (content columns and each image's pixel hash:
``medmeta.ingest.images_table``) instead, so the same data gives the same snapshot id however it
arrived, and a run adding k images hashes k rows. The images table is kept as parts
(``store/images/``: ``images_table``): a run adding k images writes a part of k rows, and
``images_table.read_images`` reads it. Consolidating the same inputs again (``consolidation_inputs`` in
the manifest: the active content hashes and every setting that shapes the tables) is a no-op that
returns the current manifest.
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
from medmeta.errors import UNRESOLVED_MEDICATION, UNRESOLVED_REFERENCE
from medmeta.home import Home
import medmeta
from medmeta.ingest.active import ActiveSet
from medmeta.ingest.image_parts import StagedImages
from medmeta.ingest.images_table import images_present, update_images_table
from medmeta.ingest.parts import Part, part_hashes, read_part, rejected_rows, staged_table, write_parquet
from medmeta.pseudonyms import Pseudonymizer
from medmeta.ingest.units_step import convert_units
from medmeta.chem.activity_rows import STAGED_ACTIVITIES
from medmeta.chem.consolidate_activities import aggregate as aggregate_activities
from medmeta.records.canonical import DATE_COLUMNS, MEDICATION_REFS, PATIENT_REFS, SEALED_FIELDS, staging_schema
from medmeta.records.displays import keep_attested_displays
from medmeta.records.sealed import Sealer
from medmeta.records.masking import masked
from medmeta.records.omop_concepts import CONCEPT_SCHEMA, resolve_omop_concepts
from medmeta.records.units import default_units


DISPLAY_MIN_PATIENTS = 3  # IngestConfig.display_min_patients


def consolidate(home: Home, active: ActiveSet | list[str], pseudo: Pseudonymizer, image_size: int,
                display_min_patients: int = DISPLAY_MIN_PATIENTS) -> dict:
    """The snapshot of the staged files of the active content hashes (``Ledger.active``; or a list of them)."""
    if not isinstance(active, ActiveSet):
        active = ActiveSet.of(active, pseudo)
    inputs = consolidation_inputs(active, pseudo, image_size, display_min_patients)
    if (current := _unchanged_snapshot(home, inputs)) is not None:
        return current
    sealer = Sealer(pseudo)
    with_parts = part_hashes(home.parts)  # the active hashes are asked for only when there are record parts
    record_parts = [read_part(home.parts, h) for h in sorted(set(active.hashes()) & with_parts)] if with_parts else []
    refs = _patient_refs(record_parts)
    medications = _medication_refs(record_parts, sealer)
    concepts = _read(record_parts, "concepts", CONCEPT_SCHEMA)
    quarantine = [_read(record_parts, "record_quarantine", schema.RECORD_QUARANTINE)]
    counts, digests, withheld = {}, {}, {}
    for name, table_schema in schema.TABLES.items():
        if name == "images":  # DICOM always names its patient: no references to resolve
            images = update_images_table(home, StagedImages(home.parts, image_size, active), image_size)
            for column, missing in images.nulls.items():  # absent, or not a defined term (medmeta.dicom.defined_terms)
                if missing:
                    withheld[f"images.{column}"] = missing
            digests[name] = images.digest
            counts[name] = images.rows
            continue
        if name == "compound_activities":  # compounds, not patients: measurements aggregated per task
            frame, conflicting = aggregate_activities(_read(record_parts, name, STAGED_ACTIVITIES))
            quarantine.append(conflicting)
            digest = _write_table(home.table(name), frame, table_schema)
            if len(frame):  # a home without compounds keeps the snapshot id it had before the table existed
                digests[name] = digest
            counts[name] = len(frame)
            continue
        else:
            frame = open_sealed(_read(record_parts, name, staging_schema(name)), name, sealer)
            frame, unresolved = _resolve(frame, refs, pseudo)
            quarantine.append(unresolved)
            if name == "medication_exposures":
                frame, unresolved = _resolve_medications(frame, medications)
                quarantine.append(unresolved)
            if name != "patients":
                frame, dropped = keep_attested_displays(frame, name, display_min_patients)
                withheld.update(dropped)
                # OMOP concept ids to their vocabularies (the CONCEPT table's labels), before units and keys
                frame = resolve_omop_concepts(frame, name, concepts)
            if name == "observations":
                frame, unconvertible = convert_units(frame, default_units(),
                                                     lambda unit: masked(unit, pseudo))
                quarantine.append(unconvertible)
            frame = _deduplicate(name, frame)
        digests[name] = _write_table(home.table(name), frame, table_schema)
        counts[name] = len(frame)
    rejects = pd.concat(quarantine, ignore_index=True).sort_values(["source", "location", "reason"])
    digests["record_quarantine"] = _write_table(home.record_quarantine, rejects, schema.RECORD_QUARANTINE)
    counts["record_quarantine"] = len(rejects)
    snapshot = hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()[:16]
    manifest = {
        "snapshot": snapshot, "schema_version": schema.SCHEMA_VERSION, "counts": counts, "table_sha256": digests,
        "sources": active.count, "key_fingerprint": pseudo.fingerprint,
        **_resource_counts(record_parts), **_activity_counts(record_parts),
        "values_withheld": dict(sorted(withheld.items())),
        "consolidation_inputs": inputs,
    }
    write_json(home.snapshots / f"{snapshot}.json", manifest)
    write_json(home.manifest, manifest)
    return manifest


def _resource_counts(parts: list[Part]) -> dict[str, dict[str, int]]:
    """What the files held besides rows, counted, never silent: resources of types medmeta has no
    use for (``resources_ignored``), facts left out by a named rule (``resources_excluded``) and
    resources that contributed (``resources_read``)."""
    counts = {"resources_ignored": Counter(), "resources_excluded": Counter(), "resources_read": Counter()}
    for part in parts:
        meta = part.meta
        counts["resources_ignored"].update(meta.get("ignored", {}))
        counts["resources_excluded"].update(meta.get("excluded", {}))
        counts["resources_read"].update(meta.get("read", {}))
    return {name: dict(sorted(c.items())) for name, c in counts.items()}


def _activity_counts(parts: list[Part]) -> dict[str, dict]:
    """What the compound activity tables held (``compound_activity``: rows read and staged, units as
    read, structures whose salts or counter-ions were stripped, rows rejected by reason); absent when none."""
    found = [part.meta["activity"] for part in parts if "activity" in part.meta]
    if not found:
        return {}
    total = {"files": len(found), "rows_read": 0, "rows_staged": 0, "fragments_stripped": 0}
    units, rejected = Counter(), Counter()
    for meta in found:
        for key in ("rows_read", "rows_staged", "fragments_stripped"):
            total[key] += meta.get(key, 0)
        units.update(meta.get("units", {}))
        rejected.update(meta.get("rejected", {}))
    return {"compound_activity": {**total, "units": dict(sorted(units.items())),
                                  "rejected": dict(sorted(rejected.items()))}}


def consolidation_inputs(active: ActiveSet, pseudo: Pseudonymizer, image_size: int, display_min_patients: int) -> str:
    """A digest of everything consolidation's output depends on besides the staged files of the active
    hashes (written once per content hash, never changed): the same digest, the same tables. The hashes
    enter by their set's digest (``ActiveSet.digest``: kept up by the ledger, so 50,000 of them are not
    sorted and hashed each run)."""
    inputs = {"active": active.digest, "hashes": active.count,
              "image_size": image_size, "display_min_patients": display_min_patients,
              "key": pseudo.fingerprint, "schema_version": schema.SCHEMA_VERSION, "medmeta": medmeta.__version__,
              "format": CONSOLIDATION_FORMAT}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


CONSOLIDATION_FORMAT = 5  # 2: images point at pixel shards; 3: images digest a multiset hash; 4: the images
# table kept as parts (store/images/: images_table); 5: the active hashes by their set's digest; raise when
# output changes


def _unchanged_snapshot(home: Home, inputs: str) -> dict | None:
    """The current manifest when it was built from ``inputs`` and its tables are all there."""
    try:
        manifest = json.loads(home.manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if manifest.get("consolidation_inputs") != inputs:
        return None
    tables = [home.table(name) for name in schema.TABLES if name != "images"]
    tables += [home.record_quarantine, home.snapshots / f"{manifest.get('snapshot')}.json"]
    return manifest if images_present(home) and all(path.is_file() for path in tables) else None


def _read(parts: list[Part], name: str, table_schema: pa.Schema) -> pd.DataFrame:
    return staged_table(parts, name, table_schema).to_pandas(date_as_object=True)


def _patient_refs(parts: list[Part]) -> dict[str, str]:
    frame = _read(parts, "patient_refs", PATIENT_REFS).sort_values(["patient_ref", "patient_id"])
    frame = frame.drop_duplicates("patient_ref", keep="first")
    return dict(zip(frame["patient_ref"], frame["patient_id"]))


def _resolve(frame: pd.DataFrame, refs: dict[str, str], pseudo: Pseudonymizer) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows known by a reference get their patient and their dates re-shifted (vectorised per reference)."""
    pending = frame["patient_ref"].notna() & frame["patient_id"].isna()
    if not pending.any():
        return frame.drop(columns=["patient_ref"]), _no_rejects()
    frame = frame.copy()
    keys = frame.loc[pending, "patient_ref"]
    found = keys.map(refs)
    deltas = {ref: timedelta(days=pseudo.offset_for_token(refs[ref]) - pseudo.offset_for_token(ref))
              for ref in keys.unique() if ref in refs}
    hit = found.notna()
    index = keys.index[hit]
    frame.loc[index, "patient_id"] = found[hit]
    shift = keys[hit].map(deltas)
    for column in [c for c in frame.columns if c in DATE_COLUMNS]:
        dates = frame.loc[index, column]
        known = dates.notna()
        frame.loc[index[known.to_numpy()], column] = [d + s for d, s in zip(dates[known], shift[known])]
    unresolved = frame["patient_id"].isna() & frame["patient_ref"].notna()
    rejects = rejected_rows(frame[unresolved], f"{UNRESOLVED_REFERENCE}: no ingested Patient resource has this reference")
    return frame.loc[~unresolved].drop(columns=["patient_ref"]), rejects


def open_sealed(frame: pd.DataFrame, name: str, sealer: Sealer) -> pd.DataFrame:
    """The staged free-text columns of table ``name`` opened (``medmeta.records.sealed``)."""
    columns = [c for c in SEALED_FIELDS.get(name, ()) if frame[c].notna().any()]
    return frame.assign(**{c: sealer.open_column(frame[c]) for c in columns}) if columns else frame


def _medication_refs(parts: list[Part], sealer: Sealer) -> pd.DataFrame:
    frame = _read(parts, "medication_refs", MEDICATION_REFS)
    frame = frame.assign(drug_display=sealer.open_column(frame["drug_display"]))
    return frame.sort_values(["medication_ref", "drug_system", "drug_code"], kind="mergesort") \
        .drop_duplicates("medication_ref").set_index("medication_ref")


def _resolve_medications(frame: pd.DataFrame, medications: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Exposures whose Medication was in another file of the export get its code."""
    pending = frame["medication_ref"].notna() & frame["drug_code"].isna()
    if pending.any():
        frame = frame.copy()
        keys = frame.loc[pending, "medication_ref"]
        for column in ("drug_system", "drug_code", "drug_display"):
            frame.loc[keys.index, column] = keys.map(medications[column]).to_numpy()
    unresolved = frame["drug_code"].isna()
    rejects = rejected_rows(frame[unresolved],
                       f"{UNRESOLVED_MEDICATION}: no ingested Medication resource has this reference")
    return frame.loc[~unresolved].drop(columns=["medication_ref"]), rejects


def _no_rejects() -> pd.DataFrame:
    return schema.RECORD_QUARANTINE.empty_table().to_pandas()


def _deduplicate(name: str, frame: pd.DataFrame) -> pd.DataFrame:
    keys = list(schema.KEYS[name])
    if name == "patients":  # prefer the row that knows the most about the patient
        frame = frame.assign(_unknown_age=frame["age_years"].isna(), _unknown_sex=frame["sex"].eq("unknown"))
        order = keys + ["_unknown_age", "_unknown_sex", "source"]
    else:
        order = keys + ["source"]
    # Sort and deduplicate the key columns alone, then take the kept rows of the whole frame once.
    frame = frame.reset_index(drop=True)
    ordered = frame[order].sort_values(order, na_position="last", kind="mergesort")
    frame = frame.take(ordered.index[~ordered.duplicated(keys, keep="first").to_numpy()])
    return frame.drop(columns=[c for c in frame.columns if c.startswith("_")]).reset_index(drop=True)


def _write_table(path: Path, frame: pd.DataFrame, table_schema: pa.Schema) -> str:
    table = pa.Table.from_pandas(frame[table_schema.names], schema=table_schema, preserve_index=False)
    with atomic_path(path) as tmp:
        write_parquet(table, tmp)
    digest = hashlib.sha256()
    digest.update(json.dumps(table_schema.names).encode())
    digest.update(pd.util.hash_pandas_object(frame[table_schema.names].astype(str), index=False).values.tobytes())
    return digest.hexdigest()
