"""UCUM units through a real UCUM library (``ucumvert``: the full UCUM grammar, units on pint).

This module is the only one that touches the library. It is imported lazily (by
``medmeta.records.units`` on the first conversion that needs it), so the CLI's start-up and a
worker that only meets canonical units never pay for it (about 1 s: importing pint and building
a registry with every UCUM unit).

What the library does not decide, this module does, following UCUM's own rules:

* arbitrary units (``[iU]``, ``[arb'U]``, ...; UCUM's ``isArbitrary``) are commensurable only with
  themselves: pint defines them as the number 1, so ``[IU]/L`` would otherwise convert to ``/L``;
* equivalents (``eq``) and osmoles (``osm``) are moles to UCUM and to pint, which is right only for a
  monovalent ion: they are tracked here, so the caller can apply a valence or refuse;
* a unit made of annotations only (``{score}``, ``/{count}``) is the unity ``1``, as UCUM says
  (ucumvert returns a bare token for it);
* special units pint has no definition for (``[pH]``) parse as UCUM but have no quantity: they
  convert to nothing but themselves.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

# UCUM defines [IU] as 1 [iU]: the same arbitrary unit under two codes.
SAME_ATOM = {"[IU]": "[iU]"}
# pint's base dimensions as UCUM atoms, for the coherent form of a dimension.
BASE_ATOMS = {"[mass]": "g", "[length]": "m", "[time]": "s", "[substance]": "mol", "[temperature]": "K",
              "[current]": "A", "[luminosity]": "cd"}


class UcumError(ValueError):
    """A unit string that is not UCUM (the message never quotes it)."""


class NotCommensurable(ValueError):
    """Two units that measure different things (the message never quotes either)."""


@dataclass(frozen=True)
class UcumUnit:
    """A parsed UCUM unit: its text, its pint quantity and the atoms UCUM treats specially."""

    text: str
    quantity: Any  # a pint Quantity (magnitude x unit); None for a special unit pint lacks ([pH])
    guarded: tuple[tuple[str, int], ...]  # arbitrary atoms with their net exponents, sorted
    equivalents: int  # the net exponent of eq in the unit (meq/L: 1)
    osmoles: int  # the net exponent of osm
    atoms: tuple[tuple[str, int], ...]  # every atom (prefix dropped) with its net exponent, sorted


class Ucum:
    """The UCUM registry: parse units, say whether two are commensurable, convert between them."""

    def __init__(self):
        from ucumvert import PintUcumRegistry
        from ucumvert.parser import get_ucum_parser, parse_ucum
        from ucumvert.xml_util import get_units_with_full_definition

        self._registry = PintUcumRegistry()
        # ucumvert builds its quantities in pint's application registry, not in this one: every
        # quantity made here comes from that class, or pint refuses to mix them.
        self._quantity = type(self._registry.from_ucum("g"))
        self._parser = get_ucum_parser()
        self._parse_tree = parse_ucum
        self._arbitrary = {u.code_cs for u in get_units_with_full_definition() if u.is_arbitrary}
        self._units: dict[str, UcumUnit] = {}

    def parse(self, text: str) -> UcumUnit:
        """``text`` as a UCUM unit (case-sensitive, as UCUM is); UcumError when it is not UCUM."""
        known = self._units.get(text)
        if known is not None:
            return known
        from lark.exceptions import LarkError
        from pint.errors import PintError

        try:
            tree = self._parse_tree(text, self._parser)
        except LarkError as error:
            raise UcumError("not a UCUM unit") from error
        atoms = Counter()
        self._collect_atoms(tree, 1, atoms)
        atoms = Counter({atom: n for atom, n in atoms.items() if n})
        try:
            quantity = self._registry.from_ucum(text)
            if not hasattr(quantity, "dimensionality"):  # annotations only: UCUM's unity
                quantity = self._quantity(1)
        except (LarkError, PintError):  # the library can not express it (a special unit such as [pH])
            quantity = None
        unit = UcumUnit(
            text=text,
            quantity=quantity,
            guarded=tuple(sorted((a, n) for a, n in atoms.items() if a in self._arbitrary or a in SAME_ATOM.values())),
            equivalents=atoms.get("eq", 0),
            osmoles=atoms.get("osm", 0),
            atoms=tuple(sorted(atoms.items())),
        )
        self._units[text] = unit
        return unit

    def _collect_atoms(self, tree, sign: int, atoms: Counter) -> None:
        """Add every unit atom under ``tree`` with its net exponent (divisions flip the sign)."""
        from lark import Token, Tree

        if tree.data == "simple_unit":
            atom = str(tree.children[-1])
            atoms[SAME_ATOM.get(atom, atom)] += sign
            return
        if tree.data == "annotatable":
            exponent = int(tree.children[1]) if len(tree.children) > 1 else 1
            self._collect_atoms(tree.children[0], sign * exponent, atoms)
            return
        operand_sign = sign
        for child in tree.children:
            if isinstance(child, Token):
                if str(child) == "/":
                    operand_sign = -sign
                continue
            if isinstance(child, Tree):
                self._collect_atoms(child, operand_sign, atoms)
                operand_sign = sign

    def molar_mass(self, grams_per_mole: float):
        """A molar mass as a quantity, to multiply or divide a unit by."""
        return grams_per_mole * self._registry.from_ucum("g/mol")

    def linear(self, source: UcumUnit, target: UcumUnit, factor=None) -> tuple[float, float]:
        """(scale, offset) with value_in_target = value_in_source * scale + offset.

        ``factor`` (a quantity, e.g. 1/molar mass) multiplies the source unit first. Raises
        NotCommensurable when the units (times the factor) measure different things, or when an
        arbitrary unit would have to change. Equivalents and osmoles are moles here: the caller
        applies a valence (see UcumUnit.equivalents).
        """
        if source.guarded != target.guarded or source.osmoles != target.osmoles:
            raise NotCommensurable("an arbitrary unit or osmoles on one side only")
        if source.quantity is None or target.quantity is None:
            raise NotCommensurable("a special unit without a conversion")
        from pint.errors import DimensionalityError, OffsetUnitCalculusError

        try:
            start = source.quantity if factor is None else source.quantity * factor
            if not (start.units.dimensionality == target.quantity.units.dimensionality):
                raise NotCommensurable("different dimensions")
            zero = self._quantity(0.0 * start.magnitude, start.units).to(target.quantity.units)
            one = self._quantity(1.0 * start.magnitude, start.units).to(target.quantity.units)
        except (DimensionalityError, OffsetUnitCalculusError) as error:
            raise NotCommensurable("not convertible") from error
        offset = zero.magnitude / target.quantity.magnitude
        scale = one.magnitude / target.quantity.magnitude - offset
        return float(scale), float(offset)

    def commensurable(self, source: UcumUnit, target: UcumUnit, factor=None) -> bool:
        try:
            self.linear(source, target, factor)
        except NotCommensurable:
            return False
        return True

    def coherent(self, unit: UcumUnit) -> str | None:
        """The unit's dimension in UCUM base atoms (``g.m-3``), or None when it has none such."""
        if unit.quantity is None or unit.guarded or unit.equivalents or unit.osmoles:
            return None
        dimensions = unit.quantity.units.dimensionality
        if not dimensions:
            return "1"
        parts = []
        for name, exponent in sorted(dimensions.items()):
            atom = BASE_ATOMS.get(name)
            if atom is None:
                return None
            parts.append(atom if exponent == 1 else f"{atom}{int(exponent) if exponent == int(exponent) else exponent}")
        return ".".join(parts)


_BUILDING = threading.Lock()


def ucum() -> Ucum:
    """The process's UCUM registry, built on first use (once: a caller arriving while another thread
    builds it waits for that one)."""
    with _BUILDING:
        return _registry()


@lru_cache(maxsize=1)
def _registry() -> Ucum:
    return Ucum()


def build_in_background() -> threading.Thread:
    """Start building the registry in a daemon thread (about a second of pint parsing), so that the
    ingest's consolidation finds it ready; ``ucum()`` waits for it if it is not."""
    thread = threading.Thread(target=ucum, name="ucum-registry", daemon=True)
    thread.start()
    return thread
