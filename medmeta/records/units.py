"""Lab and vital-sign values to one canonical LOINC code and UCUM unit per analyte.

The rules live in medmeta/config/units.yaml; this module only applies them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import yaml

from medmeta.errors import UNKNOWN_UNIT, MedmetaError, Rejected

LOINC = "http://loinc.org"


@dataclass(frozen=True)
class Conversion:
    code: str  # the analyte's canonical code
    unit: str  # its canonical unit
    scale: float
    offset: float = 0.0


@dataclass(frozen=True)
class Analyte:
    name: str
    loinc: str
    unit: str
    conversions: dict[str, tuple[float, float]]  # unit -> (scale, offset)


class UnitConverter:
    def __init__(self, config: dict):
        self._spellings = {k.strip().lower(): v for k, v in config.get("spellings", {}).items()}
        self._by_code: dict[str, Analyte] = {}
        for name, spec in config["analytes"].items():
            conversions = {
                self.spell(unit): (float(rule["scale"]), float(rule.get("offset", 0.0)))
                for unit, rule in (spec.get("from") or {}).items()
            }
            analyte = Analyte(name, str(spec["loinc"]), self.spell(spec["unit"]), conversions)
            for code in [analyte.loinc, *map(str, spec.get("aliases", []))]:
                if code in self._by_code:
                    raise MedmetaError(f"units.yaml: LOINC {code} belongs to two analytes")
                self._by_code[code] = analyte

    def spell(self, unit: str) -> str:
        """The UCUM spelling of a unit as sites write it ("mg/dl" -> "mg/dL")."""
        unit = str(unit).strip()
        return self._spellings.get(unit.lower(), unit)

    def canonical_unit(self, code: str) -> str | None:
        analyte = self._by_code.get(code)
        return analyte.unit if analyte else None

    def rule(self, system: str | None, code: str, unit: str | None) -> Conversion:
        """How to bring a value of ``code`` written in ``unit`` to the canonical code and unit."""
        unit = self.spell(unit or "")
        analyte = self._by_code.get(code) if system in (None, LOINC) else None
        if analyte is None:
            return Conversion(code, unit, 1.0)
        if unit == analyte.unit:
            return Conversion(analyte.loinc, unit, 1.0)
        rule = analyte.conversions.get(unit)
        if rule is None:
            raise Rejected(UNKNOWN_UNIT, f"the value's unit has no conversion to {analyte.unit} ({analyte.name})")
        return Conversion(analyte.loinc, analyte.unit, *rule)

    def convert(self, code: str, value: float, unit: str) -> tuple[str, float, str]:
        """(canonical code, value, unit); codes we have no rule for pass through unchanged."""
        unit = self.spell(unit)
        analyte = self._by_code.get(code)
        if analyte is None:
            return code, value, unit
        if unit == analyte.unit:
            return analyte.loinc, value, unit
        rule = analyte.conversions.get(unit)
        if rule is None:
            raise Rejected(UNKNOWN_UNIT, f"the value's unit has no conversion to {analyte.unit} ({analyte.name})")
        scale, offset = rule
        return analyte.loinc, value * scale + offset, analyte.unit


@lru_cache(maxsize=1)
def default_units() -> UnitConverter:
    text = resources.files("medmeta.config").joinpath("units.yaml").read_text()
    return UnitConverter(yaml.safe_load(text))
