"""Good FHIR lines and CSV rows, and the bad ones an unlucky export holds: built with plain json here,
never with medmeta, so the tests that use them count the input with their own code.

``BAD_LINES``: name -> (the NDJSON line, the reason medmeta must give it). Each is one line that can
not be read as a resource (too deep, a number too large, not finite, truncated, not UTF-8); the
resource around it is a well-formed Observation, so only the named fault is wrong with it.
"""

from __future__ import annotations

import json

DEEP = 100_000
SUBJECT = "Patient/p0"
GLUCOSE = {"system": "http://loinc.org", "code": "2345-7"}


def patient_line(n: int, mrn: str | None = None) -> str:
    return json.dumps({"resourceType": "Patient", "id": f"p{n}", "gender": "female", "birthDate": "1970-03-04",
                       "identifier": [{"system": "urn:test:mrn", "value": mrn or f"M{n:05d}"}]})


def observation(n: int, value="4.5", unit="mmol/L", subject: str = SUBJECT) -> str:
    """An Observation line with ``value`` written as given (so a literal like NaN or 1e999 stays one)."""
    head = json.dumps({"resourceType": "Observation", "id": f"o{n}", "status": "final", "subject": {"reference": subject},
                       "code": {"coding": [GLUCOSE]}, "effectiveDateTime": "2024-01-02"}, ensure_ascii=False)
    quantity = '{"value": %s, "unit": %s, "system": "http://unitsofmeasure.org", "code": %s}' % (
        value, json.dumps(unit, ensure_ascii=False), json.dumps(unit, ensure_ascii=False))
    return head[:-1] + ', "valueQuantity": ' + quantity + "}"


def condition(n: int, code: str = "44054006", subject: str = SUBJECT) -> str:
    return json.dumps({"resourceType": "Condition", "id": f"c{n}", "subject": {"reference": subject},
                       "code": {"coding": [{"system": "http://snomed.info/sct", "code": code}]},
                       "onsetDateTime": "2019-05-06"})


def deep_object_line(depth: int = DEEP) -> str:
    """An Observation whose extension nests ``depth`` arrays: it starts like any resource line."""
    return '{"resourceType": "Observation", "id": "deep", "extension": ' + "[" * depth + "]" * depth + "}"


def truncated(line: str, keep: int | None = None) -> str:
    return line[:len(line) // 2 if keep is None else keep]


BAD_LINES: dict[str, tuple[bytes, str]] = {
    "deep object": (deep_object_line().encode(), "json_too_deep"),
    "deep array": (("[" * DEEP + "]" * DEEP).encode(), "json_too_deep"),
    "5000-digit integer": (observation(900, "1" + "0" * 5000).encode(), "number_too_large"),
    "integer beyond a float": (observation(901, "1" + "0" * 400).encode(), "number_too_large"),
    "valueInteger beyond 32 bits": (json.dumps({"resourceType": "Observation", "id": "o902", "status": "final",
                                                "subject": {"reference": SUBJECT}, "code": {"coding": [GLUCOSE]},
                                                "valueInteger": 2**40}).encode(), "number_too_large"),
    "1e999": (observation(903, "1e999").encode(), "not_finite"),
    "-1e999": (observation(904, "-1e999").encode(), "not_finite"),
    "NaN": (observation(905, "NaN").encode(), "not_finite"),
    "Infinity": (observation(906, "Infinity").encode(), "not_finite"),
    "truncated": (truncated(observation(907)).encode(), "malformed_json"),
    "bad UTF-8": (observation(908, unit="mg/dL").replace("mg/dL", "mg\udcffdL", 1).encode("utf-8", "surrogateescape"),
                  "malformed_json"),
    "unpaired surrogate escape": (observation(909, unit="mg/dL").replace('"mg/dL"', '"mg\\ud800dL"', 1).encode(),
                                  "malformed_json"),
}
LINE_BREAKS_IN_STRINGS = {"U+2028": "\u2028", "U+2029": "\u2029", "U+0085": "\u0085"}
