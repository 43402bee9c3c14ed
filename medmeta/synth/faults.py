"""Hostile input files under ``out/faults/``, each with the reason code the ingest should give.

File faults (the whole file is quarantined) are reported as ``logical path -> code``, the
path relative to ``out`` in POSIX form. An archive member's logical path is
``<archive logical path>/<member name exactly as stored>``, e.g.
``faults/escape.zip/%2E%2E/%2E%2E/escaped.txt`` (the walker escapes "..").

Row faults (the file is ingested, one line or entry is rejected) are reported as
``{path, location, code}``. Locations count from 1: ``line N`` is the N-th line of an NDJSON
file, ``entry N`` the N-th element of ``Bundle.entry``. Every good line or entry of these
files repeats a fact the site B export already holds, so ingesting them changes no table.

One fault points outside ``out``: ``faults/outside_link.csv`` is a symlink to
``<out>/../<out name>-outside/secret.csv``, a file this module writes there.
"""

from __future__ import annotations

import copy
import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit

from medmeta import errors
from medmeta.landing.walk import entry_logical_path
from medmeta.synth.archive import write_zero_zip, write_zip
from medmeta.synth.cohort import Cohort, Patient
from medmeta.synth.dicom_images import ImageSpec, build_dataset, encode, image_bytes
from medmeta.synth.site_a_csv import PATIENT_COLUMNS, patient_row, write_csv
from medmeta.synth.site_b_fhir import bundle, meta, ndjson_line, patient_resource, patient_resources
from medmeta.synth.seeding import rng_for, uuid_from

FOLDER = "faults"
BOMB_BYTES = 300 * 1024 * 1024  # inflates past the 200 MiB max_zip_entry_bytes
HUGE_SIDE = 60000  # 60000 x 60000 pixels: past max_pixels_per_image
FUTURE_BIRTH = date(2091, 3, 7)  # a typo for 1991


@dataclass
class Expected:
    """What the ingest should report about the fault files."""

    files: dict[str, str] = field(default_factory=dict)  # logical path -> reason code
    rows: list[dict] = field(default_factory=list)  # {path, location, code}

    def file(self, path: str, code: str) -> None:
        self.files[path] = code

    def row(self, path: str, location: str, code: str) -> None:
        self.rows.append({"path": path, "location": location, "code": code})


@dataclass(frozen=True)
class Context:
    out: Path
    cohort: Cohort

    @property
    def folder(self) -> Path:
        return self.out / FOLDER

    def rng(self, purpose: str) -> np.random.Generator:
        return rng_for(self.cohort.seed, "faults", purpose)

    def patient(self, site: str) -> Patient:
        return self.cohort.at(site)[0]

    def write(self, name: str, data: bytes) -> str:
        """Write ``faults/<name>``; returns its logical path."""
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return f"{FOLDER}/{name}"


# ---------------------------------------------------------------- plain files


def empty_file(ctx: Context, expected: Expected) -> None:
    expected.file(ctx.write("empty.csv", b""), errors.EMPTY_FILE)


def unsupported_type(ctx: Context, expected: Expected) -> None:
    expected.file(ctx.write("scan_preview.png", tiny_png(ctx.rng("png"))), errors.UNSUPPORTED_FILE_TYPE)


def unknown_layout(ctx: Context, expected: Expected) -> None:
    rng = ctx.rng("layout")
    rows = [[f"K{int(rng.integers(10**6, 10**7))}", f"2025-0{int(rng.integers(1, 10))}-1{i}",
             str(rng.choice(["4B", "ICU", "7A"])), str(int(rng.integers(0, 9)))] for i in range(6)]
    write_csv(ctx.folder / "ward_scores.csv", ["PAT_KEY", "ADMIT_DT", "WARD", "NEWS_SCORE"], rows)
    expected.file(f"{FOLDER}/ward_scores.csv", errors.UNKNOWN_SITE_LAYOUT)


def tiny_png(rng: np.random.Generator, side: int = 16) -> bytes:
    """A valid greyscale PNG."""
    pixels = rng.integers(0, 256, size=(side, side), dtype=np.uint8)
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


# ---------------------------------------------------------------- DICOM


def fault_spec(ctx: Context, number: int, size: int = 128) -> ImageSpec:
    patient = ctx.patient("site_a")
    return ImageSpec("fault", "site_a", number, patient, "CT", size, ExplicitVRLittleEndian, patient.diagnosis_date)


def truncated_dicom(ctx: Context, expected: Expected) -> None:
    data = image_bytes(fault_spec(ctx, 1), ctx.cohort.seed)
    expected.file(ctx.write("truncated.dcm", data[: len(data) // 2]), errors.TRUNCATED_DICOM)


def not_dicom(ctx: Context, expected: Expected) -> None:
    text = "Radiology report\r\nNo acute cardiopulmonary abnormality.\r\n".encode()
    expected.file(ctx.write("report.dcm", text), errors.NOT_DICOM)
    noise = bytearray(ctx.rng("noise").bytes(4096))
    noise[128:132] = b"DICX"  # never the DICM magic by chance
    expected.file(ctx.write("noise.dcm", bytes(noise)), errors.NOT_DICOM)


def corrupt_dicom(ctx: Context, expected: Expected) -> None:
    data = bytes(128) + b"DICM" + ctx.rng("corrupt").bytes(2048)
    expected.file(ctx.write("corrupt.dcm", data), errors.CORRUPT_DICOM)


def no_pixel_data(ctx: Context, expected: Expected) -> None:
    ds = build_dataset(fault_spec(ctx, 2), ctx.cohort.seed)
    del ds.PixelData
    expected.file(ctx.write("no_pixels.dcm", encode(ds, ExplicitVRLittleEndian)), errors.NO_PIXEL_DATA)


def image_too_large(ctx: Context, expected: Expected) -> None:
    ds = build_dataset(fault_spec(ctx, 3, size=64), ctx.cohort.seed)
    ds.Rows = ds.Columns = HUGE_SIDE
    expected.file(ctx.write("huge_header.dcm", encode(ds, ExplicitVRLittleEndian)), errors.IMAGE_TOO_LARGE)


def undecodable_pixels(ctx: Context, expected: Expected) -> None:
    """JPEG Baseline whose single fragment starts like a JPEG and then is noise."""
    ds = build_dataset(fault_spec(ctx, 4), ctx.cohort.seed)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    for name in ("RescaleIntercept", "RescaleSlope", "RescaleType", "WindowCenter", "WindowWidth"):
        delattr(ds, name)
    fragment = b"\xff\xd8\xff\xe0" + ctx.rng("jpeg").bytes(3000) + b"\xff\xd9"
    ds.PixelData = encapsulate([fragment])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    expected.file(ctx.write("bad_jpeg.dcm", encode(ds, JPEGBaseline8Bit)), errors.UNDECODABLE_PIXELS)


# ---------------------------------------------------------------- JSON and FHIR


def json_bytes(document) -> bytes:
    return (json.dumps(document, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def malformed_json(ctx: Context, expected: Expected) -> None:
    """A Bundle export cut off mid-way (the server died)."""
    resources = patient_resources(ctx.patient("site_b"), ctx.cohort.seed)[:4]
    text = json_bytes(bundle(resources, uuid_from(ctx.rng("malformed"))))
    expected.file(ctx.write("export_interrupted.json", text[: len(text) * 2 // 3]), errors.MALFORMED_JSON)


def not_fhir(ctx: Context, expected: Expected) -> None:
    expected.file(ctx.write("hello.json", json_bytes({"hello": "world"})), errors.NOT_FHIR)


def unknown_resource_type(ctx: Context, expected: Expected) -> None:
    p = ctx.patient("site_b")
    starship = {"resourceType": "Starship", "id": uuid_from(ctx.rng("starship")), "meta": meta(),
                "name": "USS Enterprise", "captain": p.person.full_name}
    expected.file(ctx.write("starship.json", json_bytes(starship)), errors.UNKNOWN_RESOURCE_TYPE)


def observations_of(patients: list[Patient], seed: int) -> list[dict]:
    return [r for p in patients for r in patient_resources(p, seed) if r["resourceType"] == "Observation"]


def partial_ndjson(ctx: Context, expected: Expected) -> None:
    """Good Observations of site B patients, with line 4 cut short."""
    good = [ndjson_line(r) for r in observations_of(ctx.cohort.at("site_b")[:2], ctx.cohort.seed)[:7]]
    broken = good[3][: len(good[3]) // 2]
    lines = good[:3] + [broken] + good[3:]
    ctx.write("Observation_partial.ndjson", "".join(line + "\n" for line in lines).encode("utf-8"))
    expected.row(f"{FOLDER}/Observation_partial.ndjson", "line 4", errors.MALFORMED_JSON)


def new_patient_mrn(cohort: Cohort, rng: np.random.Generator) -> str:
    taken = set(cohort.by_mrn())
    while (mrn := f"B{int(rng.integers(10**6, 10**7)):07d}") in taken:
        pass
    return mrn


def future_birth_patient(ctx: Context) -> dict:
    """A new site B patient whose birth date was typed as 2091."""
    rng = ctx.rng("future-birth")
    template = ctx.cohort.at("site_b")[-1]
    resource = patient_resource(template, birth_date=FUTURE_BIRTH)
    resource["id"] = uuid_from(rng)
    resource["identifier"][0]["value"] = new_patient_mrn(ctx.cohort, rng)
    return resource


def lab_result(ctx: Context, p: Patient) -> dict:
    """A vendor resource type that is not FHIR."""
    return {"resourceType": "LabResult", "id": uuid_from(ctx.rng("lab-result")), "meta": meta(),
            "patient": {"reference": f"Patient/{p.fhir_id}", "display": p.person.full_name},
            "test": "HbA1c", "result": "48 mmol/mol"}


def comma_decimal(observation: dict) -> dict:
    """The Observation with its value written as a string with a decimal comma."""
    bad = copy.deepcopy(observation)
    bad["valueQuantity"]["value"] = str(bad["valueQuantity"]["value"]).replace(".", ",")
    if "," not in bad["valueQuantity"]["value"]:
        bad["valueQuantity"]["value"] += ",0"
    return bad


def bundle_with_row_faults(ctx: Context, expected: Expected) -> None:
    """A Bundle of good resources with three bad entries (2, 4 and 6)."""
    p = ctx.cohort.at("site_b")[1]
    resources = patient_resources(p, ctx.cohort.seed)
    observations = [r for r in resources if r["resourceType"] == "Observation"]
    others = [r for r in resources if r["resourceType"] in ("Condition", "MedicationStatement")]
    entries = [observations[0], comma_decimal(observations[1]), observations[2],
               lab_result(ctx, p), others[0], future_birth_patient(ctx), others[-1]]
    name = "bundle_row_faults.json"
    ctx.write(name, json_bytes(bundle(entries, uuid_from(ctx.rng("row-bundle")))))
    for location, code in (("entry 2", errors.NON_NUMERIC_VALUE), ("entry 4", errors.UNKNOWN_RESOURCE_TYPE),
                           ("entry 6", errors.FUTURE_BIRTH_DATE)):
        expected.row(f"{FOLDER}/{name}", location, code)


# ---------------------------------------------------------------- archives and links


def zip_path_escape(ctx: Context, expected: Expected) -> None:
    member = "../../escaped.txt"
    write_zip(ctx.folder / "escape.zip", {member: b"If you can read this outside the landing area, unzip escaped.\n"})
    expected.file(f"{FOLDER}/escape.zip/{entry_logical_path(member)}", errors.ZIP_PATH_ESCAPE)


def zip_bomb(ctx: Context, expected: Expected) -> None:
    member = "labs_full.csv"
    write_zero_zip(ctx.folder / "bomb.zip", member, BOMB_BYTES)
    expected.file(f"{FOLDER}/bomb.zip/{member}", errors.ZIP_ENTRY_TOO_LARGE)


def outside_folder(out: Path) -> Path:
    """The sibling folder holding the symlink's target: ``<out>-outside``."""
    return out.parent / (out.name + "-outside")


def symlink_outside(ctx: Context, expected: Expected) -> None:
    target = outside_folder(ctx.out) / "secret.csv"
    write_csv(target, PATIENT_COLUMNS, [patient_row(ctx.patient("site_a"))])
    link = ctx.folder / "outside_link.csv"
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink():
        link.unlink()
    os.symlink(os.path.relpath(target, link.parent), link)
    expected.file(f"{FOLDER}/outside_link.csv", errors.SYMLINK_OUTSIDE_SOURCE)


WRITERS = (
    empty_file, unsupported_type, unknown_layout,
    truncated_dicom, not_dicom, corrupt_dicom, no_pixel_data, image_too_large, undecodable_pixels,
    malformed_json, not_fhir, unknown_resource_type, partial_ndjson, bundle_with_row_faults,
    zip_path_escape, zip_bomb, symlink_outside,
)


def write_faults(cohort: Cohort, out: Path) -> Expected:
    """Write every fault file under ``out/faults``; returns what the ingest should report."""
    expected = Expected()
    context = Context(out, cohort)
    for writer in WRITERS:
        writer(context, expected)
    expected.files = dict(sorted(expected.files.items()))
    return expected
