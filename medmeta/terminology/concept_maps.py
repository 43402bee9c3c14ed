"""Concept maps: group or cross-walk codes before task classes are formed.

A map sends a source concept ``(system, code)`` to one target concept, e.g. SNOMED CT to
ICD-10-CM, SNOMED CT to a user-defined disease group under a local system URI, an RxNorm product
to its ingredient or to an ATC class. Two file formats:

- **CSV** with the header ``source_system,source_code,target_system,target_code`` (an optional
  ``target_display`` column after them), one mapping a row;
- **FHIR ConceptMap JSON** (R4 or R5): ``group[].source`` / ``group[].target`` name the systems,
  ``group[].element[].code`` the source code, ``element[].target[].code`` the target code.
  Grouping needs a target that means the source or more, so only these mappings are taken:
  R4 ``equivalence`` ``equivalent``, ``equal``, ``wider``, ``subsumes``; R5 ``relationship``
  ``equivalent``, ``source-is-narrower-than-target``. The others (``narrower``, ``specializes``,
  ``inexact``, ``relatedto``, ``unmatched``, ``disjoint``; R5 ``related-to``,
  ``source-is-broader-than-target``, ``not-related-to``) are not used and are counted per value in
  ``ConceptMap.skipped``.

Systems are written as any spelling ``canonical_system`` knows or as an absolute URI or URN (a
local system); anything else is an unknown system. A file with an unknown system, a malformed row
or element, or one source mapped to two different targets is refused (``MedmetaError`` naming the
file and line) when it is loaded, before anything runs. Messages name the place, never the codes.

Maps are applied in the order given, each to the result of the one before (so RxNorm product ->
ingredient, then ingredient -> ATC, chain); a concept no map names stays as it is.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import io
import json
import json.decoder
import json.scanner
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd

from medmeta.errors import MedmetaError
from medmeta.terminology.systems import canonical_system, known_system

CSV_COLUMNS = ("source_system", "source_code", "target_system", "target_code")
CSV_OPTIONAL = ("target_display",)
GROUPING_R4 = ("equivalent", "equal", "wider", "subsumes")
GROUPING_R5 = ("equivalent", "source-is-narrower-than-target")
_LINE = "\x00line"  # the key under which the JSON reader keeps each object's line


@dataclass(frozen=True)
class ConceptMap:
    """One loaded map: ``(source system URI, source code) -> (target system URI, target code, display)``."""

    path: str
    sha256: str
    mappings: dict[tuple[str, str], tuple[str, str, str | None]]
    skipped: dict[str, int] = field(default_factory=dict)  # FHIR mappings not used for grouping, per equivalence

    def describe(self) -> dict:
        """What the manifest records about the map."""
        return {"file": Path(self.path).name, "sha256": self.sha256, "mappings": len(self.mappings),
                "source_systems": sorted({s for s, _ in self.mappings}),
                "target_systems": sorted({t[0] for t in self.mappings.values()}), "skipped": dict(self.skipped)}


def checked_system(name, where: str) -> str:
    """The canonical URI of ``name``; a ``MedmetaError`` at ``where`` for an unknown system."""
    text = str(name).strip() if name is not None else ""
    if not text:
        raise MedmetaError(f"{where}: no code system")
    if known_system(text):
        return canonical_system(text)
    parsed = urlparse(text)
    if (parsed.scheme in ("http", "https") and parsed.netloc) or (parsed.scheme in ("urn",) and parsed.path):
        return text
    raise MedmetaError(f"{where}: unknown code system (neither a known system name nor an absolute URI or URN)")


def load_concept_map(path: str | Path) -> ConceptMap:
    """Read and check one map file (``.csv`` or ``.json``); refuses a bad file, naming it and the line."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise MedmetaError(f"{path}: cannot read the concept map ({error.strerror})") from None
    digest = hashlib.sha256(data).hexdigest()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise MedmetaError(f"{path}: a concept map must be UTF-8 text") from None
    suffix = path.suffix.lower()
    if suffix == ".csv":
        mappings, skipped = _read_csv(path, text), {}
    elif suffix == ".json":
        mappings, skipped = _read_fhir(path, text)
    else:
        raise MedmetaError(f"{path}: a concept map is a .csv (source_system,source_code,target_system,target_code) "
                           "or a FHIR ConceptMap .json")
    if not mappings:
        raise MedmetaError(f"{path}: the concept map holds no usable mapping")
    return ConceptMap(str(path), digest, mappings, skipped)


def load_concept_maps(paths) -> list[ConceptMap]:
    return [load_concept_map(p) for p in paths or ()]


def _add(mappings: dict, source: tuple[str, str], target: tuple[str, str, str | None], where: str,
         first_line: dict, line: int) -> None:
    known = mappings.get(source)
    if known is not None and known[:2] != target[:2]:
        raise MedmetaError(f"{where}: maps a source code that line {first_line[source]} already maps to a different "
                           "target (one source needs one target to group)")
    if known is None:
        mappings[source] = target
        first_line[source] = line


def _read_csv(path: Path, text: str) -> dict:
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or tuple(h.strip() for h in header[:4]) != CSV_COLUMNS:
        raise MedmetaError(f"{path}, line 1: the header must be {','.join(CSV_COLUMNS)} (then optionally "
                           f"{','.join(CSV_OPTIONAL)})")
    extra = [h.strip() for h in header[4:]]
    if extra and extra != list(CSV_OPTIONAL[:len(extra)]):
        raise MedmetaError(f"{path}, line 1: unknown columns after {','.join(CSV_COLUMNS)}; only "
                           f"{','.join(CSV_OPTIONAL)} may follow")
    width = len(header)
    mappings: dict = {}
    first_line: dict = {}
    for row in reader:
        line = reader.line_num
        where = f"{path}, line {line}"
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != width:
            raise MedmetaError(f"{where}: {len(row)} fields, the header has {width}")
        cells = [cell.strip() for cell in row]
        if not cells[1] or not cells[3]:
            raise MedmetaError(f"{where}: an empty {'source_code' if not cells[1] else 'target_code'}")
        source = (checked_system(cells[0], f"{where}, source_system"), cells[1])
        target = (checked_system(cells[2], f"{where}, target_system"), cells[3], (cells[4] or None) if width > 4 else None)
        _add(mappings, source, target, where, first_line, line)
    return mappings


class _LineDecoder(json.JSONDecoder):
    """A JSON decoder that writes each object's starting line under ``_LINE`` (pure-Python scanner)."""

    def __init__(self, text: str):
        super().__init__()
        starts = [i for i, ch in enumerate(text) if ch == "\n"]

        def parse_object(s_and_end, *args):
            obj, end = json.decoder.JSONObject(s_and_end, *args)
            obj[_LINE] = bisect.bisect_left(starts, s_and_end[1]) + 1
            return obj, end

        self.parse_object = parse_object
        self.scan_once = json.scanner.py_make_scanner(self)


def _read_fhir(path: Path, text: str) -> tuple[dict, dict]:
    try:
        resource = _LineDecoder(text).decode(text)
    except json.JSONDecodeError as error:
        raise MedmetaError(f"{path}, line {error.lineno}: not valid JSON ({error.msg})") from None
    if not isinstance(resource, dict) or resource.get("resourceType") != "ConceptMap":
        raise MedmetaError(f"{path}, line 1: not a FHIR ConceptMap (resourceType must be ConceptMap)")
    groups = resource.get("group")
    if not isinstance(groups, list) or not groups:
        raise MedmetaError(f"{path}, line {resource[_LINE]}: a ConceptMap needs a non-empty group list")
    mappings: dict = {}
    first_line: dict = {}
    skipped: Counter = Counter()
    for group in groups:
        if not isinstance(group, dict):
            raise MedmetaError(f"{path}: a ConceptMap group must be an object")
        at = f"{path}, line {group[_LINE]}"
        source_system = checked_system(group.get("source"), f"{at}, group.source")
        target_system = checked_system(group.get("target"), f"{at}, group.target")
        elements = group.get("element")
        if not isinstance(elements, list):
            raise MedmetaError(f"{at}: a group needs an element list")
        for element in elements:
            if not isinstance(element, dict) or not str(element.get("code", "")).strip():
                line = element.get(_LINE, group[_LINE]) if isinstance(element, dict) else group[_LINE]
                raise MedmetaError(f"{path}, line {line}: an element needs a code")
            code = str(element["code"]).strip()
            for target in element.get("target", []) or []:
                line = target.get(_LINE, element[_LINE]) if isinstance(target, dict) else element[_LINE]
                where = f"{path}, line {line}"
                if not isinstance(target, dict):
                    raise MedmetaError(f"{where}: a target must be an object")
                relation = target.get("equivalence", target.get("relationship"))
                if not relation:
                    raise MedmetaError(f"{where}: a target needs an equivalence (R4) or relationship (R5)")
                if relation not in (GROUPING_R4 if "equivalence" in target else GROUPING_R5):
                    skipped[str(relation)] += 1
                    continue
                target_code = str(target.get("code", "")).strip()
                if not target_code:
                    raise MedmetaError(f"{where}: a {relation} target needs a code")
                _add(mappings, (source_system, code), (target_system, target_code, target.get("display")), where,
                     first_line, line)
    return mappings, dict(sorted(skipped.items()))


def apply_concept_maps(frame: pd.DataFrame, maps: list[ConceptMap], system: str, code: str,
                       display: str | None = None) -> pd.DataFrame:
    """``frame`` with ``(system, code[, display])`` mapped by each map in turn; unmapped rows unchanged."""
    if not maps or frame.empty:
        return frame
    out = frame.copy()
    for concept_map in maps:
        keys = list(zip(out[system].astype(object), out[code].astype(object)))
        hits = [concept_map.mappings.get(k) for k in keys]
        mapped = [h is not None for h in hits]
        if not any(mapped):
            continue
        out.loc[mapped, system] = [h[0] for h in hits if h is not None]
        out.loc[mapped, code] = [h[1] for h in hits if h is not None]
        if display:
            out.loc[mapped, display] = [h[2] for h in hits if h is not None]
    return out
