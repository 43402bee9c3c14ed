"""Fuzz the record readers: real exports, mutated, until something other than ``Rejected`` escapes.

Seeds: pieces of the shared real exports (``../shared/realdata``, or ``$MEDMETA_REALDATA``) copied
into a temporary folder at run time (never into the repository): the smallest Synthea R4 Bundles,
the first lines of each bulk-export and Epic-like NDJSON file, the first rows of each OMOP CDM
table, and a site A lab / diagnosis CSV written here. Without the real exports the written seeds alone
are used (and the report says so).

Each execution takes a seed, applies 1 to 4 random mutations (``MUTATORS``: byte flips and splices,
a token an unlucky export holds inserted anywhere -- NaN, 1e999, a 5,000-digit integer, a run of
thousands of "[", U+2028, an unpaired surrogate escape, invalid UTF-8, a NUL, a quote, a delimiter,
a newline --, a JSON node replaced by a value of another type, lines or rows duplicated, dropped or
swapped across seeds) and runs it through the target its kind belongs to:
    parse_fhir_json / parse_fhir_ndjson / parse_tabular(csv, the default site mappings), then, when
    the reader returns, ``Canonicalizer`` (what the ingest worker does next, so a row the reader
    hands on but the store can not hold counts as a crash too).
A crash is any exception but ``medmeta.errors.Rejected``; its signature is the target, the exception
type and the innermost medmeta frame. Each distinct signature's first input is written to the crash
folder (``--crashes``, default a new temporary folder: inputs hold the exports' made-up PHI).

    python bench/fuzz_readers.py [--seconds 120] [--seed 0] [--crashes DIR]
    python bench/fuzz_readers.py --replay DIR     # run saved inputs (crash-NNN.<kind>) again

Prints executions per target, the slowest execution, and each crash signature with its count; exits
1 when there was a crash. Not part of the timed test suite; the last result is in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import sys
import tempfile
import time
import traceback
import zipfile
from collections import Counter
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medmeta.errors import Rejected  # noqa: E402
from medmeta.pseudonyms import Pseudonymizer  # noqa: E402
from medmeta.records.canonical import Canonicalizer  # noqa: E402
from medmeta.records.fhir import parse_fhir_json, parse_fhir_ndjson  # noqa: E402
from medmeta.records.site_mappings import install_default_sites, load_site_mappings  # noqa: E402
from medmeta.records.tabular import parse_tabular  # noqa: E402

REALDATA = Path(os.environ.get("MEDMETA_REALDATA") or ROOT.parent / "shared" / "realdata")
BUNDLES = "synthea_r4_transaction_bundles_100p.zip"
BULK = "synthea_bulk_ndjson_10p.zip"
OMOP = "omop_cdm54_synthea27nj.zip"
SEED_LINES = 25  # NDJSON lines / CSV rows kept of each real file: small inputs, many executions
SMALL_BUNDLE = 300_000  # bytes: the Synthea Bundles up to this size are seeds

TOKENS = [
    b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999", b"1" + b"0" * 5000, b"9" * 400, b"18446744073709551616",
    b"2147483648", b"-0", b"0.0", b"[" * 3000, b"]" * 3000, b"{" * 2000, b'{"a":' * 2000, "\u2028".encode(),
    "\u2029".encode(), "\u0085".encode(), b"\\ud800", b"\\udc00", b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\x00", b'"',
    b"'", b",", b";", b"\t", b"\n", b"\r", b"\r\n", b"\\", b"null", b"true", b"[]", b"{}", b'""', b"x" * 140_000,
    b'"resourceType"', b'"Patient"', b'"Observation"', b'"Bundle"', b'"valueQuantity"', b'"valueInteger"',
    b'"reference"', b'"Patient/1"', b'"urn:uuid:1"', b'"coding"', b'"component"', b'"contained"', b'"entry"',
    b'"comparator"', b'"medicationReference"', b'"#m"', b"2024-02-30", b"0000-01-01", b"99999",
]
REPLACEMENTS = [None, True, 0, -1, 2**31, 2**64, 10**30, 1.5, float("nan"), float("inf"), "", "x", "2024-13-45",
                "Patient/", "urn:uuid:", [], {}, [None], [[]], {"coding": None}, {"coding": [{}]}, {"value": "1"}]


# ---------------------------------------------------------------------------------------------
# Seeds


def written_seeds() -> list[tuple[str, bytes]]:
    """Seeds that need no real export: site A CSVs and a small hand-written FHIR set."""
    labs = "MRN,LAB_DATE,GLUCOSE_MG_DL,CREATININE_MG_DL,HGB_G_DL,LAB_NOTES\n" + "".join(
        f"A{i},2024-01-{1 + i:02d},{80 + i},{1 + i / 10},{13 + i % 3}.5,note {i}\n" for i in range(20))
    diagnoses = "MRN,DX_CODE,DX_DATE,ATTENDING\n" + "".join(f"A{i},E11{i % 10},2023-0{1 + i % 9}-1{i % 10},Dr X\n"
                                                             for i in range(20))
    patients = "MRN,DOB,GENDER,LAST_NAME\n" + "".join(f"A{i},03/0{1 + i % 9}/19{50 + i},{'MF'[i % 2]},N\n"
                                                      for i in range(20))
    resources = [{"resourceType": "Patient", "id": "p1", "birthDate": "1980-01-02",
                  "identifier": [{"type": {"text": "MRN"}, "system": "urn:x", "value": "M1"}]},
                 {"resourceType": "Observation", "status": "final", "subject": {"reference": "Patient/p1"},
                  "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
                  "valueQuantity": {"value": 5.5, "unit": "mmol/L", "code": "mmol/L", "comparator": "<"},
                  "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                                 "valueQuantity": {"value": 120, "code": "mm[Hg]"}}]},
                 {"resourceType": "Condition", "subject": {"reference": "Patient/p1"}, "onsetDateTime": "2019",
                  "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]}},
                 {"resourceType": "MedicationRequest", "status": "active", "subject": {"reference": "Patient/p1"},
                  "medicationReference": {"reference": "#m"}, "authoredOn": "2020-02",
                  "contained": [{"resourceType": "Medication", "id": "m",
                                 "code": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                                      "code": "860975"}]}}]}]
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"fullUrl": f"urn:uuid:{i}", "resource": r} for i, r in enumerate(resources)]}
    return [("csv", labs.encode()), ("csv", diagnoses.encode()), ("csv", patients.encode()),
            ("json", json.dumps(bundle).encode()), ("ndjson", "\n".join(map(json.dumps, resources)).encode())]


def real_seeds(folder: Path) -> list[tuple[str, bytes]]:
    """Pieces of the real exports, copied under ``folder`` first (the exports are read-only and shared)."""
    seeds = []
    with zipfile.ZipFile(REALDATA / BUNDLES) as archive:
        for info in archive.infolist():
            if info.filename.endswith(".json") and info.file_size <= SMALL_BUNDLE:
                seeds.append(("json", _copy(archive, info, folder)))
    with zipfile.ZipFile(REALDATA / BULK) as archive:
        for info in archive.infolist():
            if info.filename.endswith(".ndjson"):
                seeds.append(("ndjson", _head(_copy(archive, info, folder), SEED_LINES)))
    for path in sorted((REALDATA / "epic_like").glob("*.ndjson")):
        copy = folder / "epic_like" / path.name
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(path.read_bytes())
        seeds.append(("ndjson", _head(copy.read_bytes(), SEED_LINES)))
    with zipfile.ZipFile(REALDATA / OMOP) as archive:
        for info in archive.infolist():
            if info.filename.lower().endswith(".csv") and "__MACOSX" not in info.filename:
                seeds.append(("csv", _head(_copy(archive, info, folder), SEED_LINES + 1)))
    return seeds


def _copy(archive: zipfile.ZipFile, info: zipfile.ZipInfo, folder: Path) -> bytes:
    target = folder / Path(info.filename).name
    with archive.open(info) as member:
        target.write_bytes(member.read(4 * SMALL_BUNDLE))  # a piece is enough: only the head is used
    return target.read_bytes()


def _head(data: bytes, lines: int) -> bytes:
    return b"\n".join(data.split(b"\n")[:lines]) + b"\n"


# ---------------------------------------------------------------------------------------------
# Mutations


def _flip(rng: random.Random, data: bytes, seeds) -> bytes:
    if not data:
        return data
    i = rng.randrange(len(data))
    return data[:i] + bytes([rng.randrange(256)]) + data[i + 1:]


def _insert_token(rng: random.Random, data: bytes, seeds) -> bytes:
    i = rng.randrange(len(data) + 1)
    return data[:i] + rng.choice(TOKENS) + data[i:]


def _replace_number(rng: random.Random, data: bytes, seeds) -> bytes:
    """A digit run (a value, a date part, an id) replaced by a token: where numbers matter."""
    digits = [i for i in range(len(data)) if 48 <= data[i] <= 57]
    if not digits:
        return _insert_token(rng, data, seeds)
    i = rng.choice(digits)
    j = i
    while j < len(data) and (48 <= data[j] <= 57 or data[j] in b".eE+-"):
        j += 1
    return data[:i] + rng.choice(TOKENS[:12]) + data[j:]


def _delete_span(rng: random.Random, data: bytes, seeds) -> bytes:
    if not data:
        return data
    i = rng.randrange(len(data))
    return data[:i] + data[i + rng.randrange(1, 64):]


def _lines(rng: random.Random, data: bytes, seeds) -> bytes:
    """Lines (NDJSON lines, CSV rows) duplicated, dropped, swapped, or taken from another seed."""
    lines = data.split(b"\n")
    op = rng.randrange(4)
    i = rng.randrange(len(lines))
    if op == 0:
        lines.insert(i, lines[rng.randrange(len(lines))])
    elif op == 1 and len(lines) > 1:
        del lines[i]
    elif op == 2:
        j = rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    else:
        other = rng.choice(seeds)[1].split(b"\n")
        lines.insert(i, rng.choice(other))
    return b"\n".join(lines)


def _json_node(rng: random.Random, data: bytes, seeds) -> bytes:
    """A JSON node (a line's, or the document's) replaced by a value of another type or shape."""
    lines = data.split(b"\n")
    i = rng.randrange(len(lines))
    try:
        doc = json.loads(lines[i])
    except (ValueError, RecursionError):
        return _insert_token(rng, data, seeds)
    nodes = [(doc, None, None)]
    for node, _, _ in nodes:  # breadth first, without recursion, a few hundred nodes at most
        if len(nodes) > 400:
            break
        children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        nodes.extend((child, node, key) for key, child in children)
    node, parent, key = rng.choice(nodes)
    if parent is None:
        return data
    parent[key] = rng.choice(REPLACEMENTS + [node, [node], {"value": node}])
    try:
        lines[i] = json.dumps(doc, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
    except RecursionError:  # a deep token inserted earlier
        return data
    return b"\n".join(lines)


MUTATORS = [_flip, _insert_token, _replace_number, _delete_span, _lines, _json_node]


# ---------------------------------------------------------------------------------------------
# Running


def make_targets(sites_folder: Path):
    install_default_sites(sites_folder)
    mappings = list(load_site_mappings(sites_folder))
    canonicalize = Canonicalizer(Pseudonymizer(b"fuzz-only-key-0123456789abcdef"), date(2025, 1, 1), date(2025, 1, 1))
    return {
        "json": lambda data: canonicalize(parse_fhir_json(data, "fuzz"), "fuzz"),
        "ndjson": lambda data: canonicalize(parse_fhir_ndjson(data, "fuzz"), "fuzz"),
        "csv": lambda data: canonicalize(parse_tabular(data, "csv", mappings, "fuzz"), "fuzz"),
    }


def signature(target: str, exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/medmeta/" in f.filename]
    where = f"{Path(frames[-1].filename).name}:{frames[-1].name}:{frames[-1].lineno}" if frames else "outside medmeta"
    return f"{target} {type(exc).__name__} at {where}"


def fuzz(seconds: float, seed: int, crashes: Path, seeds: list[tuple[str, bytes]], targets) -> dict:
    rng = random.Random(seed)
    executions, found, slowest = Counter(), Counter(), (0.0, "")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        kind, data = rng.choice(seeds)
        for _ in range(rng.randint(1, 4)):
            data = rng.choice(MUTATORS)(rng, data, seeds)
        start = time.perf_counter()
        try:
            targets[kind](data)
        except Rejected:
            pass
        except Exception as exc:  # noqa: BLE001 -- what the fuzzer is looking for
            key = signature(kind, exc)
            if key not in found:
                name = f"crash-{len(found) + 1:03d}.{kind}"
                (crashes / name).write_bytes(data)
                print(f"new crash {key} -> {crashes / name}", file=sys.stderr)
            found[key] += 1
        took = time.perf_counter() - start
        if took > slowest[0]:
            slowest = (took, kind)
        executions[kind] += 1
    return {"executions": dict(executions), "crashes": dict(found), "slowest_s": round(slowest[0], 3),
            "slowest_kind": slowest[1]}


def replay(folder: Path) -> int:
    """Each saved input through its target again: 1 when one still crashes."""
    with tempfile.TemporaryDirectory(prefix="medmeta-fuzz-") as work:
        targets = make_targets(Path(work) / "sites")
        still = 0
        for path in sorted(folder.glob("crash-*.*")):
            try:
                targets[path.suffix[1:]](path.read_bytes())
                outcome = "read"
            except Rejected as error:
                outcome = f"rejected ({error.code})"
            except Exception as exc:  # noqa: BLE001
                outcome, still = f"CRASH {signature(path.suffix[1:], exc)}", still + 1
            print(f"{path.name}: {outcome}")
    return 1 if still else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--crashes", type=Path, default=None, help="where crashing inputs go (default: a temp folder)")
    parser.add_argument("--replay", type=Path, default=None, help="run the saved inputs of a crash folder again")
    args = parser.parse_args(argv)
    if args.replay:
        return replay(args.replay)
    crashes = args.crashes or Path(tempfile.mkdtemp(prefix="medmeta-fuzz-crashes-"))
    crashes.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="medmeta-fuzz-") as work:
        work = Path(work)
        seeds = written_seeds()
        if REALDATA.is_dir():
            (work / "realdata").mkdir()
            seeds += real_seeds(work / "realdata")
        else:
            print(f"no real exports at {REALDATA}: written seeds only", file=sys.stderr)
        targets = make_targets(work / "sites")
        result = fuzz(args.seconds, args.seed, crashes, seeds, targets)
    total = sum(result["executions"].values())
    print(f"seeds: {len(seeds)} ({Counter(k for k, _ in seeds)}), real exports: {REALDATA.is_dir()}")
    print(f"executions: {total} in {args.seconds:.0f} s ({result['executions']}), "
          f"slowest {result['slowest_s']} s ({result['slowest_kind']})")
    print(f"distinct crash signatures: {len(result['crashes'])}")
    for key, count in sorted(result["crashes"].items(), key=lambda kv: -kv[1]):
        print(f"  {count:6d}  {key}")
    if result["crashes"]:
        print(f"crashing inputs: {crashes}")
    return 1 if result["crashes"] else 0


if __name__ == "__main__":
    sys.exit(main())
