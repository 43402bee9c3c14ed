"""Observation values to one canonical code and UCUM unit per analyte.

The rules live in medmeta/config/units.yaml; UCUM itself (which units exist, how they convert)
comes from the ``ucumvert`` library through medmeta/records/ucum.py, imported on the first
conversion that needs it, never at start-up.

The contract:

* ``UnitConverter.rule(system, code, unit) -> Conversion``: the canonical code and unit of a value
  of ``code`` written in ``unit``, and canonical = value * scale + offset. It depends on its three
  arguments and on units.yaml only, never on which values came before, so the same data in any
  order gives the same store. Rules are cached per (system, code, unit): the library's cost is
  paid once per distinct pair, and a caller converts all values of one pair at once
  (``Conversion.apply`` takes a number or a numpy/pandas array).
* A LOINC analyte units.yaml lists: its aliases fold into the canonical code; every value goes to
  the analyte's unit (UCUM conversions; mass <-> substance only with the analyte's molar mass,
  equivalents only with its valence, other scales only by its ``from`` rules).
* Any other LOINC analyte, and an observation in any other code system (which keeps its code;
  a code without a system is read as LOINC):
  the unit goes to the preferred unit of its dimension (units.yaml ``preferred_units``), or to
  the dimension's coherent UCUM form; no unit stays no unit.
* A unit that is not UCUM nor a known spelling, or that does not convert to the canonical unit,
  raises ``Rejected(UNKNOWN_UNIT, ...)``; the message names the analyte and its canonical unit and
  never quotes the value or the unit as written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

import yaml

from medmeta.errors import UNKNOWN_UNIT, MedmetaError, Rejected
from medmeta.terminology.systems import LOINC, short_name

UNITY_UNIT = re.compile(r"^(1|\{[^{}]*\})$")  # "1" or annotations only: UCUM's unity


@dataclass(frozen=True)
class Conversion:
    """The canonical ``code`` and ``unit`` of a value, and canonical = value * scale + offset."""

    code: str
    unit: str | None
    scale: float = 1.0
    offset: float = 0.0

    @property
    def identity(self) -> bool:
        return self.scale == 1.0 and self.offset == 0.0

    def apply(self, value):
        """``value`` (a number, None, or a numpy/pandas array) in the canonical unit."""
        if value is None or self.identity:
            return value
        return value * self.scale + self.offset


@dataclass(frozen=True)
class Analyte:
    """One analyte of units.yaml."""

    name: str
    loinc: str  # the canonical code
    unit: str  # the canonical UCUM unit
    aliases: tuple[str, ...] = ()
    molar_mass: float | None = None  # g/mol
    valence: int | None = None
    scales: dict[str, tuple[float, float]] = field(default_factory=dict)  # unit -> (scale, offset)
    ucum: bool = True  # False: only the canonical unit and ``scales`` are accepted
    spellings: dict[str, str] = field(default_factory=dict)  # lower-case spelling -> UCUM


class UnitConverter:
    """Applies units.yaml (see the module's docstring for the contract)."""

    def __init__(self, config: dict):
        self._characters = dict(config.get("characters") or {})
        self._spellings = {str(k).strip().lower(): str(v) for k, v in (config.get("spellings") or {}).items()}
        self._preferred = [str(unit) for unit in config.get("preferred_units") or []]
        self._by_code: dict[str, Analyte] = {}
        self._analytes: dict[str, Analyte] = {}
        for name, spec in config["analytes"].items():
            analyte = Analyte(
                name=name,
                loinc=str(spec["loinc"]),
                unit=str(spec["unit"]),
                aliases=tuple(str(a) for a in spec.get("aliases") or ()),
                molar_mass=float(spec["molar_mass"]) if spec.get("molar_mass") is not None else None,
                valence=int(spec["valence"]) if spec.get("valence") is not None else None,
                scales={str(unit): (float(rule["scale"]), float(rule.get("offset", 0.0)))
                        for unit, rule in (spec.get("from") or {}).items()},
                ucum=bool(spec.get("ucum", True)),
                spellings={str(k).strip().lower(): str(v) for k, v in (spec.get("spellings") or {}).items()},
            )
            for code in (analyte.loinc, *analyte.aliases):
                if code in self._by_code:
                    raise MedmetaError(f"units.yaml: LOINC {code} belongs to two analytes")
                self._by_code[code] = analyte
            self._analytes[name] = analyte
        self._rules: dict[tuple[str | None, str, str | None], Conversion | Rejected] = {}

    # ------------------------------------------------------------------ what units.yaml lists

    def canonical_units(self) -> dict[str, str]:
        """Canonical LOINC code -> canonical UCUM unit, for every analyte units.yaml lists."""
        return {a.loinc: a.unit for a in self._analytes.values()}

    def aliases(self) -> dict[str, str]:
        """LOINC alias -> the canonical code it folds into."""
        return {code: a.loinc for code, a in self._by_code.items() if code != a.loinc}

    def canonical_code(self, system: str | None, code: str) -> str:
        """The code a value of ``code`` is stored under (a LOINC alias folds; nothing else changes)."""
        analyte = self._by_code.get(code) if system in (None, LOINC) else None
        return analyte.loinc if analyte else code

    def canonical_unit(self, code: str) -> str | None:
        """The canonical unit of a listed LOINC analyte (canonical code or alias), else None."""
        analyte = self._by_code.get(code)
        return analyte.unit if analyte else None

    def analytes(self) -> dict[str, Analyte]:
        return dict(self._analytes)

    # ------------------------------------------------------------------ conversion

    def spell(self, unit: str | None, analyte: Analyte | None = None) -> str | None:
        """The UCUM spelling of a unit as sites write it ("mg/dl" -> "mg/dL"); None for no unit."""
        if unit is None:
            return None
        text = str(unit).strip()
        for character, replacement in self._characters.items():
            text = text.replace(character, replacement)
        if not text:
            return None
        key = text.lower()
        if analyte is not None and key in analyte.spellings:
            return analyte.spellings[key]
        return self._spellings.get(key, text)

    def rule(self, system: str | None, code: str, unit: str | None) -> Conversion:
        """How a value of (``system``, ``code``) in ``unit`` is stored; Rejected(UNKNOWN_UNIT) if it can't be.

        ``system`` is a canonical URI (medmeta.terminology.systems); a code without a system (None)
        is looked up as LOINC, as the three-argument ``convert`` always did. Cached per triple.
        """
        key = (system, code, unit)
        known = self._rules.get(key)
        if known is None:
            try:
                known = self._rule(system, code, unit)
            except Rejected as error:
                known = error
            self._rules[key] = known
        if isinstance(known, Rejected):
            raise Rejected(known.code, known.message)
        return known

    def convert(self, system: str | None, code: str, value, unit: str | None) -> tuple[str, float, str | None]:
        """(canonical code, value, canonical unit) for one value: ``rule(...).apply(value)``."""
        conversion = self.rule(system, code, unit)
        return conversion.code, conversion.apply(value), conversion.unit

    def _rule(self, system: str | None, code: str, unit: str | None) -> Conversion:
        analyte = self._by_code.get(code) if system in (None, LOINC) else None
        if analyte is not None:
            return self._listed_rule(analyte, code, self.spell(unit, analyte))
        return self._unlisted_rule(system, code, self.spell(unit))

    def _listed_rule(self, analyte: Analyte, code: str, unit: str | None) -> Conversion:
        name = f"{analyte.name} (LOINC {code})"
        canonical = Conversion(analyte.loinc, analyte.unit)
        if unit is None:
            if UNITY_UNIT.match(analyte.unit):
                return canonical
            raise Rejected(UNKNOWN_UNIT, f"{name}: the value has no unit; it is stored in {analyte.unit}")
        if unit == analyte.unit:
            return canonical
        if unit in analyte.scales:
            scale, offset = analyte.scales[unit]
            return Conversion(analyte.loinc, analyte.unit, scale, offset)
        from medmeta.records.ucum import NotCommensurable, UcumError, ucum

        registry = ucum()
        try:
            source = registry.parse(unit)
        except UcumError:
            raise Rejected(UNKNOWN_UNIT, f"{name}: the unit is not UCUM nor a known spelling; "
                                         f"it is stored in {analyte.unit}") from None
        try:
            target = registry.parse(analyte.unit)
        except UcumError:
            raise MedmetaError(f"units.yaml: the unit of {analyte.name} is not UCUM") from None
        if not analyte.ucum:
            if source.atoms == target.atoms and registry.linear(source, target) == (1.0, 0.0):
                return canonical
            accepted = " and ".join([analyte.unit, *analyte.scales])
            raise Rejected(UNKNOWN_UNIT, f"{name}: the unit does not convert to {analyte.unit} "
                                         f"(only {accepted} are accepted: other units are other scales)")
        try:
            scale, offset = self._ucum_linear(analyte, source, target)
        except NotCommensurable as error:
            raise Rejected(UNKNOWN_UNIT, f"{name}: the unit does not convert to {analyte.unit} ({error})") from None
        return Conversion(analyte.loinc, analyte.unit, scale, offset)

    @staticmethod
    def _ucum_linear(analyte: Analyte, source, target) -> tuple[float, float]:
        """UCUM's conversion, with the analyte's valence for eq and its molar mass for mol <-> g."""
        from medmeta.records.ucum import NotCommensurable, ucum

        registry = ucum()
        if source.guarded != target.guarded:
            raise NotCommensurable("an arbitrary unit converts only to itself")
        charge = source.equivalents - target.equivalents
        if charge and analyte.valence is None:
            raise NotCommensurable("equivalents, and units.yaml gives no valence for it")
        per_valence = (1.0 / analyte.valence) ** charge if charge else 1.0
        factors = [None]
        if analyte.molar_mass is not None:
            mass = registry.molar_mass(analyte.molar_mass)
            factors += [1 / mass, mass]
        for factor in factors:
            try:
                scale, offset = registry.linear(source, target, factor)
            except NotCommensurable:
                continue
            return scale * per_valence, offset * per_valence
        if analyte.molar_mass is None:
            unit_mass = registry.molar_mass(1.0)
            if any(registry.commensurable(source, target, f) for f in (1 / unit_mass, unit_mass)):
                raise NotCommensurable("mass and substance, and units.yaml gives no molar mass for it")
        raise NotCommensurable("another kind of quantity")

    def _unlisted_rule(self, system: str | None, code: str, unit: str | None) -> Conversion:
        if unit is None:
            return Conversion(code, None)
        if UNITY_UNIT.match(unit):
            return Conversion(code, "1")
        from medmeta.records.ucum import NotCommensurable, UcumError, ucum

        registry = ucum()
        try:
            source = registry.parse(unit)
        except UcumError:
            name = f"LOINC {code}" if system in (None, LOINC) else f"{short_name(system)} {code}"
            raise Rejected(UNKNOWN_UNIT, f"{name}: the unit is not UCUM nor a known spelling; an analyte "
                                         "units.yaml does not list is stored in the preferred unit of its "
                                         "unit's dimension") from None
        for preferred in self._preferred_and_coherent(source):
            target = registry.parse(preferred)
            if source.equivalents != target.equivalents:
                continue
            try:
                scale, offset = registry.linear(source, target)
            except NotCommensurable:
                continue
            return Conversion(code, preferred, scale, offset)
        return Conversion(code, unit)  # a special or arbitrary unit with no preferred unit: as written

    def _preferred_and_coherent(self, source) -> list[str]:
        from medmeta.records.ucum import ucum

        coherent = ucum().coherent(source)
        return [*self._preferred, *([coherent] if coherent else [])]


@lru_cache(maxsize=1)
def default_units() -> UnitConverter:
    text = resources.files("medmeta.config").joinpath("units.yaml").read_text(encoding="utf-8")
    return UnitConverter(yaml.safe_load(text))
