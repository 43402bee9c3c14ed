"""Closed vocabularies: which values may enter the store as text.

The store holds numbers, dates, keyed tokens and values from a closed vocabulary, never free text
from a record. This module says, for each coded value, whether it belongs to its vocabulary:

- a **code** passes its system's format check (the same formats validation checks, stricter ones
  left to validation): SNOMED CT identifiers with their Verhoeff check digit and LOINC codes with
  their mod-10 check digit (``medmeta.terminology.check_digits``), ICD-10-CM and WHO ICD-10, RxNorm
  (a positive whole number), ATC (any level, ``A`` to ``A10BA02``), NDC, CVX, UCUM (its grammar's
  characters), OMOP concept ids and the FHIR booleans. A code of a local or unknown system can not be checked against its system,
  so it must look like a code: ``LOCAL_CODE`` (letters, digits and ``. _ - : / + |``, no space and
  no comma, at most 40 characters);
- a **code system** is a known one (``medmeta.terminology.systems``) or an absolute URI, URN or
  OID without spaces (``SYSTEM_URI``, at most 200 characters).

A vocabulary table (an OMOP CDM CONCEPT table) is the vocabulary itself, so its rows are held to its
own column types (``vocabulary_code_fits``): a system may be an OMOP ``vocabulary_id`` ("Condition
Type"), and a code of a system without a format check (UCUM's ``{mitoses}/[10 HPF]``, Ethnicity's
"Not Hispanic") any printable ASCII up to concept_code's 50 characters.

A value that fails is never written as text anywhere: the record quarantine keeps it as
``medmeta.records.masking.masked`` writes it, a keyed hash of the value, its length and its
character classes (``value:3f9a0c1d22b7e845, 12 chars, letters+space+punct``), enough for an
operator who holds the key to find the value in the source file, and nothing a reader without it can use.
"""

from __future__ import annotations

import re
from typing import Callable

from medmeta.terminology.check_digits import is_valid_loinc, is_valid_sctid
from medmeta.terminology.systems import (
    ATC,
    CVX,
    FHIR_BOOLEAN,
    ICD10,
    ICD10CM,
    LOINC,
    NDC,
    OMOP_CONCEPT,
    RXNORM,
    SNOMED,
    UCUM,
    known_system,
)

ICD10_CODE = re.compile(r"[A-Z][0-9][0-9A-Z](?:\.?[0-9A-Z]{1,4})?")  # E11.9, E119, C4A.0, S52.521A
RXNORM_CODE = re.compile(r"[1-9][0-9]{0,9}")
ATC_CODE = re.compile(r"[A-Z](?:[0-9]{2}(?:[A-Z](?:[A-Z](?:[0-9]{2})?)?)?)?")  # A, A10, A10B, A10BA, A10BA02
NDC_CODE = re.compile(r"[0-9]{4}-[0-9]{4}-[0-9]{2}|[0-9]{5}-[0-9]{3}-[0-9]{2}|[0-9]{5}-[0-9]{4}-[0-9]{1,2}|[0-9]{10,11}")
CVX_CODE = re.compile(r"[0-9]{1,3}")
OMOP_CONCEPT_ID = re.compile(r"-?[0-9]{1,12}")
UCUM_CODE = re.compile(r"[A-Za-z0-9.\/*\[\]{}()'%^+\-_]{1,64}")  # mg/dL, [degF], 10*3/uL, {beats}/min
VOCABULARY_CODE = re.compile(r"[ -~]{1,50}")  # OMOP CDM concept_code, varchar(50), printable ASCII
VOCABULARY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _\-/.]{0,19}")  # OMOP CDM vocabulary_id, varchar(20)
LOCAL_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-:/+|]{0,39}")
SYSTEM_URI = re.compile(r"(?:[A-Za-z][A-Za-z0-9+.\-]*:|[0-2](?:\.[0-9]+)+$)[A-Za-z0-9._~:/?#\[\]@!$&'()*+;=%\-]{0,199}")

CODE_FORMATS: dict[str, Callable[[str], bool]] = {
    SNOMED: is_valid_sctid,
    LOINC: is_valid_loinc,
    ICD10CM: lambda code: ICD10_CODE.fullmatch(code) is not None,
    ICD10: lambda code: ICD10_CODE.fullmatch(code) is not None,
    RXNORM: lambda code: RXNORM_CODE.fullmatch(code) is not None,
    ATC: lambda code: ATC_CODE.fullmatch(code) is not None,
    NDC: lambda code: NDC_CODE.fullmatch(code) is not None,
    CVX: lambda code: CVX_CODE.fullmatch(code) is not None,
    UCUM: lambda code: UCUM_CODE.fullmatch(code) is not None,
    OMOP_CONCEPT: lambda code: OMOP_CONCEPT_ID.fullmatch(code) is not None,
    FHIR_BOOLEAN: lambda code: code in ("true", "false"),
}


def system_fits(system: str | None) -> bool:
    """A known code system, or an absolute URI / URN / OID that holds no space."""
    if not isinstance(system, str):
        return False
    return known_system(system) is not None or SYSTEM_URI.fullmatch(system) is not None


def vocabulary_system_fits(system: str | None) -> bool:
    """A code system as a vocabulary table may name it: ``system_fits``, or an OMOP vocabulary_id."""
    return system_fits(system) or (isinstance(system, str) and VOCABULARY_ID.fullmatch(system) is not None)


def vocabulary_code_fits(system: str, code: str | None) -> bool:
    """A code as a vocabulary table may hold it: a checked system's format, else concept_code's type."""
    if not isinstance(code, str):
        return False
    if system in CODE_FORMATS and system != UCUM:
        return CODE_FORMATS[system](code)
    return VOCABULARY_CODE.fullmatch(code) is not None


def code_fits(system: str, code: str | None) -> bool:
    """``code`` is well formed in ``system`` (a canonical URI); a local system's code looks like a code."""
    if not isinstance(code, str):
        return False
    check = CODE_FORMATS.get(system)
    return check(code) if check is not None else LOCAL_CODE.fullmatch(code) is not None
