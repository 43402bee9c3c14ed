"""Code systems: one canonical URI per system, whatever a source calls it.

Sources name a code system by its FHIR URI (``http://snomed.info/sct``), by an HL7 OID
(``urn:oid:2.16.840.1.113883.6.96``, or the bare OID), by an OMOP ``vocabulary_id``
(``SNOMED``, ``RxNorm``, ``LOINC``, ``ICD10CM``), or by a short name people type in settings
(``sct``, ``snomed``, ``icd10cm``). ``canonical_system`` maps all of them to the canonical URI;
a system medmeta does not know is kept as given (a local code system), never guessed.

Only the systems' identities live here, never their content: no licensed terminology is shipped.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CodeSystem:
    uri: str  # the canonical URI stored in the canonical tables
    short: str  # the short name used in settings, class labels and messages
    title: str
    aliases: tuple[str, ...] = ()  # other URIs, OIDs and OMOP vocabulary ids naming it


ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ATC = "http://www.whocc.no/atc"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
NDC = "http://hl7.org/fhir/sid/ndc"
CVX = "http://hl7.org/fhir/sid/cvx"
OMOP_CONCEPT = "https://ohdsi.org/omop/concept"  # an OMOP concept_id not resolved to a vocabulary
FHIR_BOOLEAN = "http://hl7.org/fhir/boolean"  # valueBoolean kept as a categorical value: "true" | "false"

SYSTEMS: tuple[CodeSystem, ...] = (
    CodeSystem(ICD10CM, "icd10cm", "ICD-10-CM",
               ("urn:oid:2.16.840.1.113883.6.90", "2.16.840.1.113883.6.90", "ICD10CM", "icd-10-cm",
                "http://hl7.org/fhir/sid/icd-10-cm/")),
    CodeSystem(ICD10, "icd10", "ICD-10 (WHO)",
               ("urn:oid:2.16.840.1.113883.6.3", "2.16.840.1.113883.6.3", "ICD10", "icd-10")),
    CodeSystem(SNOMED, "sct", "SNOMED CT",
               ("urn:oid:2.16.840.1.113883.6.96", "2.16.840.1.113883.6.96", "SNOMED", "snomed", "snomedct",
                "http://snomed.info/sct/", "https://snomed.info/sct")),
    CodeSystem(RXNORM, "rxnorm", "RxNorm",
               ("urn:oid:2.16.840.1.113883.6.88", "2.16.840.1.113883.6.88", "RxNorm", "RxNorm Extension",
                "http://www.nlm.nih.gov/research/umls/rxnorm/")),
    CodeSystem(ATC, "atc", "ATC",
               ("urn:oid:2.16.840.1.113883.6.73", "2.16.840.1.113883.6.73", "ATC", "http://www.whocc.no/atc/")),
    CodeSystem(LOINC, "loinc", "LOINC",
               ("urn:oid:2.16.840.1.113883.6.1", "2.16.840.1.113883.6.1", "LOINC", "http://loinc.org/",
                "https://loinc.org")),
    CodeSystem(UCUM, "ucum", "UCUM", ("urn:oid:2.16.840.1.113883.6.8", "2.16.840.1.113883.6.8", "UCUM")),
    CodeSystem(NDC, "ndc", "NDC", ("urn:oid:2.16.840.1.113883.6.69", "2.16.840.1.113883.6.69", "NDC")),
    CodeSystem(CVX, "cvx", "CVX", ("urn:oid:2.16.840.1.113883.12.292", "2.16.840.1.113883.12.292", "CVX")),
    CodeSystem(OMOP_CONCEPT, "omop", "OMOP concept id", ("None",)),
    CodeSystem(FHIR_BOOLEAN, "boolean", "FHIR boolean"),
)

_BY_NAME: dict[str, CodeSystem] = {}
for _system in SYSTEMS:
    for _name in (_system.uri, _system.short, *_system.aliases):
        _BY_NAME[_name.strip().lower()] = _system
BY_URI: dict[str, CodeSystem] = {s.uri: s for s in SYSTEMS}


def canonical_system(name: str | None) -> str | None:
    """The canonical URI for any spelling of a known system; an unknown one stripped, as given."""
    if name is None:
        return None
    text = str(name).strip()
    if not text:
        return None
    known = _BY_NAME.get(text.lower())
    return known.uri if known else text


def known_system(name: str | None) -> CodeSystem | None:
    """The known system ``name`` spells, or None (a local code system, or nothing)."""
    if name is None:
        return None
    return _BY_NAME.get(str(name).strip().lower())


def short_name(uri: str) -> str:
    """``sct`` for SNOMED CT's URI; a local system's URI as it is."""
    system = BY_URI.get(uri)
    return system.short if system else uri


def is_system_name(name: str) -> bool:
    """A known system's spelling, or an absolute URI / URN naming a local one."""
    text = str(name).strip()
    return known_system(text) is not None or text.startswith(("http://", "https://", "urn:"))
