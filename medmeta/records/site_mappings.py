"""Per-site column and unit mappings for CSV and Parquet exports (config/sites/*.yaml).

The mappings people edit live in the home's config/sites/; the ones shipped for the
synthetic sites are copied there on first use. A file belongs to the first table, over all
sites, whose ``match`` columns it has. A mapping with an unknown key, table or field is
refused when loaded, before any file is read.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from medmeta.errors import MedmetaError
from medmeta.terminology.systems import ATC, ICD10CM, LOINC, canonical_system, is_system_name

FIELDS: dict[str, set[str]] = {
    "patients": {"mrn", "birth_date", "sex"},
    "conditions": {"mrn", "code", "onset_date"},
    "observations": {"mrn", "code", "value", "unit", "effective_date"},
    "medication_exposures": {"mrn", "drug_code", "start_date", "outcome"},
}
DATE_FIELDS = {"birth_date", "onset_date", "effective_date", "start_date"}
SITE_KEYS = {"site", "format", "csv", "tables", "issuer"}
TABLE_KEYS = {"table", "match", "columns", "wide", "phi"}
FIELD_KEYS = {"column", "date_format", "codes", "icd10_dotless", "system"}
# The code system of a coded field when the mapping names none.
DEFAULT_SYSTEMS = {"code": {"conditions": ICD10CM, "observations": LOINC}, "drug_code": {"medication_exposures": ATC}}


@dataclass(frozen=True)
class FieldSpec:
    column: str
    date_format: str | None = None
    codes: dict[str, str] | None = None
    icd10_dotless: bool = False
    system: str | None = None  # coded fields: the code system's canonical URI


@dataclass(frozen=True)
class TableMapping:
    site: str
    format: str
    table: str
    match: tuple[str, ...]
    fields: dict[str, FieldSpec]
    wide: dict[str, dict] = field(default_factory=dict)  # column -> {code, unit}
    csv_options: dict = field(default_factory=dict)
    issuer: str | None = None  # who assigned the MRNs in this site's files (inside the pseudonym)

    def system(self, name: str) -> str | None:
        """The code system of coded field ``name`` (``code`` or ``drug_code``)."""
        spec = self.fields.get(name)
        return (spec.system if spec else None) or DEFAULT_SYSTEMS.get(name, {}).get(self.table)

    def matches(self, columns: set[str]) -> bool:
        return set(self.match) <= columns


def _field(origin: str, name: str, spec) -> FieldSpec:
    """One mapped field: a column name, or {column, date_format, codes, icd10_dotless, system}."""
    if isinstance(spec, str):
        return FieldSpec(column=spec)
    if not isinstance(spec, dict) or "column" not in spec:
        raise MedmetaError(f"{origin}: field {name!r} needs a column name")
    unknown = set(spec) - FIELD_KEYS
    if unknown:
        raise MedmetaError(f"{origin}: field {name!r} has unknown key(s) {sorted(unknown)}")
    codes = spec.get("codes")
    system = spec.get("system")
    if system is not None and name not in DEFAULT_SYSTEMS:
        raise MedmetaError(f"{origin}: field {name!r} is not coded; only code and drug_code take a system")
    if system is not None and not is_system_name(system):
        raise MedmetaError(f"{origin}: field {name!r} names an unknown code system (give a known name or a URI)")
    return FieldSpec(
        column=str(spec["column"]),
        date_format=spec.get("date_format"),
        codes={str(k): str(v) for k, v in codes.items()} if codes else None,
        icd10_dotless=bool(spec.get("icd10_dotless", False)),
        system=canonical_system(system) if system is not None else None,
    )


def parse_site(doc: dict, origin: str) -> list[TableMapping]:
    if not isinstance(doc, dict) or set(doc) - SITE_KEYS or "site" not in doc or "tables" not in doc:
        raise MedmetaError(f"{origin}: a site mapping has keys site, format, tables (and csv)")
    fmt = doc.get("format", "csv")
    if fmt not in ("csv", "parquet"):
        raise MedmetaError(f"{origin}: format must be csv or parquet")
    mappings = []
    for i, t in enumerate(doc["tables"]):
        where = f"{origin} table {i + 1}"
        if set(t) - TABLE_KEYS:
            raise MedmetaError(f"{where}: unknown key(s) {sorted(set(t) - TABLE_KEYS)}")
        table = t.get("table")
        if table not in FIELDS:
            raise MedmetaError(f"{where}: table must be one of {sorted(FIELDS)}")
        fields = {name: _field(where, name, spec) for name, spec in (t.get("columns") or {}).items()}
        unknown = set(fields) - FIELDS[table]
        if unknown:
            raise MedmetaError(f"{where}: {table} has no field(s) {sorted(unknown)}")
        if "mrn" not in fields or not t.get("match"):
            raise MedmetaError(f"{where}: needs match columns and an mrn column")
        wide = t.get("wide") or {}
        if wide and table != "observations":
            raise MedmetaError(f"{where}: only observations can be wide")
        for col, spec in wide.items():
            if not isinstance(spec, dict) or set(spec) != {"code", "unit"}:
                raise MedmetaError(f"{where}: wide column {col!r} needs exactly code and unit")
        mappings.append(TableMapping(
            site=str(doc["site"]), format=fmt, table=table, match=tuple(map(str, t["match"])),
            fields=fields, wide={str(k): {"code": str(v["code"]), "unit": str(v["unit"])} for k, v in wide.items()},
            csv_options=dict(doc.get("csv") or {}),
            issuer=str(doc["issuer"]).strip() if doc.get("issuer") else None,
        ))
    return mappings


def install_default_sites(sites_dir: Path) -> None:
    """Copy the shipped mappings into the home, leaving any the user has edited alone."""
    sites_dir.mkdir(parents=True, exist_ok=True)
    for entry in resources.files("medmeta.config.sites").iterdir():
        if entry.name.endswith(".yaml") and not (sites_dir / entry.name).exists():
            with resources.as_file(entry) as src:
                shutil.copyfile(src, sites_dir / entry.name)


def load_site_mappings(sites_dir: Path) -> list[TableMapping]:
    mappings: list[TableMapping] = []
    for path in sorted(sites_dir.glob("*.yaml")):
        try:
            doc = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise MedmetaError(f"{path}: not valid YAML ({type(exc).__name__})") from None
        mappings.extend(parse_site(doc, str(path)))
    return mappings


def find_mapping(mappings: list[TableMapping], columns: set[str], fmt: str) -> TableMapping | None:
    for mapping in mappings:
        if mapping.format == fmt and mapping.matches(columns):
            return mapping
    return None
