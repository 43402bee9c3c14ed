"""Outcome rules: what counts as a response to a drug, as data (medmeta/config/outcomes.yaml).

A rule file is YAML::

    defaults: {baseline_days: 365, follow_up_days: [90, 365]}   # optional
    rules:
      - name: metformin
        match: {ingredients: [metformin]}          # which exposures the rule labels (any of the keys)
        analytes: ["4548-4"]                        # the first with a baseline and a follow-up decides
        analyte_system: loinc                       # default loinc
        unit: "%"                                   # the analyte's canonical unit; other units are not read
        direction: decrease                         # decrease | increase
        at_least: 0.5                               # in ``unit``; with ``relative: true`` a percentage of the baseline
        relative: false
        baseline_days: 365                          # the last value this many days before the start, start day included
        follow_up_days: [90, 365]                   # the first value this many days after the start

``match`` keys: ``ingredients`` (words looked for in the drug's display, case-insensitive),
``system`` with ``codes`` (exact codes; matched against the drug as stored and as the concept maps
map it, so ``system: atc`` works on RxNorm data given an RxNorm -> ATC map) and ``atc`` (ATC class
prefixes, e.g. ``C10AA``, against an ATC code as stored or mapped). An exposure takes the first rule
(in file order) that matches it.

``load_rules`` refuses (``MedmetaError`` naming the file, the rule and its line) an unknown key, a
rule without a name, match or analyte, an unknown code system, a bad window or threshold, and two
rules of one name, before anything runs.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from medmeta.errors import MedmetaError
from medmeta.terminology.concept_maps import checked_system
from medmeta.terminology.systems import ATC, LOINC

DEFAULT_FILE = "outcomes.yaml"
DEFAULTS = {"baseline_days": 365, "follow_up_days": [90, 365]}
RULE_KEYS = {"name", "match", "analytes", "analyte_system", "unit", "direction", "at_least", "relative",
             "baseline_days", "follow_up_days"}
MATCH_KEYS = {"ingredients", "system", "codes", "atc"}
DIRECTIONS = ("decrease", "increase")
_LINE = "__line__"


@dataclass(frozen=True)
class OutcomeRule:
    name: str
    line: int  # where the rule starts in its file
    ingredients: tuple[str, ...]
    system: str | None  # canonical URI, with ``codes``
    codes: tuple[str, ...]
    atc_prefixes: tuple[str, ...]
    analyte_system: str
    analytes: tuple[str, ...]
    unit: str
    direction: str
    at_least: float
    relative: bool
    baseline_days: int
    follow_up_days: tuple[int, int]

    def matches(self, system: str | None, code: str | None, display: str | None) -> bool:
        """Whether one concept (as stored, or as mapped) is this rule's drug."""
        if self.ingredients and isinstance(display, str) and any(_word(i).search(display) for i in self.ingredients):
            return True
        if self.codes and system == self.system and code in self.codes:
            return True
        return bool(self.atc_prefixes and system == ATC and code and code.upper().startswith(self.atc_prefixes))

    def describe(self) -> str:
        change = f"{self.at_least:g}%" if self.relative else f"{self.at_least:g} {self.unit}"
        return (f"{'/'.join(self.analytes)} {'falls' if self.direction == 'decrease' else 'rises'} by at least {change} "
                f"from the last value up to {self.baseline_days} days before the start to the first "
                f"{self.follow_up_days[0]}-{self.follow_up_days[1]} days after")


@dataclass(frozen=True)
class RuleFile:
    path: str
    sha256: str
    user: bool  # a user's file: every rule must match a drug in the snapshot
    rules: tuple[OutcomeRule, ...]

    def describe(self) -> dict:
        return {"file": self.path if not self.user else Path(self.path).name, "sha256": self.sha256,
                "rules": [r.name for r in self.rules]}


_WORDS: dict[str, re.Pattern] = {}


def _word(text: str) -> re.Pattern:
    if text not in _WORDS:
        _WORDS[text] = re.compile(rf"(?<![A-Za-z]){re.escape(text)}(?![A-Za-z])", re.IGNORECASE)
    return _WORDS[text]


class _LineLoader(yaml.SafeLoader):
    """Safe YAML whose mappings carry their starting line under ``__line__``."""


def _mapping_with_line(loader: _LineLoader, node: yaml.MappingNode) -> dict:
    mapping = loader.construct_mapping(node, deep=True)
    mapping[_LINE] = node.start_mark.line + 1
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_with_line)


def load_rules(path: str | Path | None = None) -> RuleFile:
    """The rule file at ``path`` (a user's), or medmeta's default rules; checked, or a ``MedmetaError``."""
    if path is None:
        text = resources.files("medmeta.config").joinpath(DEFAULT_FILE).read_text()
        where, user = f"medmeta/config/{DEFAULT_FILE}", False
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise MedmetaError(f"{path}: cannot read the outcome rules ({getattr(error, 'strerror', None) or error})") from None
        where, user = str(path), True
    try:
        raw = yaml.load(text, Loader=_LineLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark else ""
        raise MedmetaError(f"{where}{line}: not valid YAML") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("rules"), list) or not raw["rules"]:
        raise MedmetaError(f"{where}: an outcome rule file is a mapping with a non-empty list under 'rules'")
    unknown = set(raw) - {"rules", "defaults", _LINE}
    if unknown:
        raise MedmetaError(f"{where}, line {raw[_LINE]}: unknown key(s) {sorted(unknown)}; known: defaults, rules")
    defaults = {**DEFAULTS, **{k: v for k, v in (raw.get("defaults") or {}).items() if k != _LINE}}
    bad = set(defaults) - set(DEFAULTS)
    if bad:
        raise MedmetaError(f"{where}, line {raw['defaults'][_LINE]}: unknown default(s) {sorted(bad)}; "
                           f"known: {', '.join(DEFAULTS)}")
    rules, names = [], {}
    for i, entry in enumerate(raw["rules"]):
        if not isinstance(entry, dict):
            raise MedmetaError(f"{where}: rule {i + 1} must be a mapping")
        rule = _rule({**defaults, **entry}, f"{where}, rule {entry.get('name', i + 1)!s} (line {entry[_LINE]})",
                     entry[_LINE])
        if rule.name in names:
            raise MedmetaError(f"{where}, line {rule.line}: a second rule named {rule.name!r} (first at line "
                               f"{names[rule.name]})")
        names[rule.name] = rule.line
        rules.append(rule)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return RuleFile(where, digest, user, tuple(rules))


def _strings(value, where: str, key: str) -> tuple[str, ...]:
    values = [value] if isinstance(value, (str, int)) and not isinstance(value, bool) else value
    if not isinstance(values, list) or not values or not all(isinstance(v, (str, int)) and str(v).strip()
                                                             for v in values):
        raise MedmetaError(f"{where}: {key} must be a non-empty string or list of strings")
    return tuple(str(v).strip() for v in values)


def _rule(entry: dict, where: str, line: int) -> OutcomeRule:
    unknown = set(entry) - RULE_KEYS - {_LINE}
    if unknown:
        raise MedmetaError(f"{where}: unknown key(s) {sorted(unknown)}; known: {', '.join(sorted(RULE_KEYS))}")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise MedmetaError(f"{where}: a rule needs a name")
    match = entry.get("match")
    if not isinstance(match, dict) or not set(match) - {_LINE}:
        raise MedmetaError(f"{where}: a rule needs a match (any of {', '.join(sorted(MATCH_KEYS))})")
    unknown = set(match) - MATCH_KEYS - {_LINE}
    if unknown:
        raise MedmetaError(f"{where}: unknown match key(s) {sorted(unknown)}; known: {', '.join(sorted(MATCH_KEYS))}")
    if ("system" in match) != ("codes" in match):
        raise MedmetaError(f"{where}: match.system and match.codes go together")
    system = checked_system(match["system"], f"{where}, match.system") if "system" in match else None
    if "analytes" not in entry:
        raise MedmetaError(f"{where}: a rule needs analytes (the codes whose change is the response)")
    for key in ("unit", "direction", "at_least"):
        if key not in entry:
            raise MedmetaError(f"{where}: a rule needs {key}")
    if entry["direction"] not in DIRECTIONS:
        raise MedmetaError(f"{where}: direction must be one of {', '.join(DIRECTIONS)}")
    at_least = entry["at_least"]
    if isinstance(at_least, bool) or not isinstance(at_least, (int, float)) or not at_least > 0:
        raise MedmetaError(f"{where}: at_least must be a positive number")
    if not isinstance(entry.get("relative", False), bool):
        raise MedmetaError(f"{where}: relative must be true or false")
    if not isinstance(entry["unit"], str) or not entry["unit"].strip():
        raise MedmetaError(f"{where}: unit must be a UCUM unit (the analyte's canonical unit)")
    baseline = entry["baseline_days"]
    if isinstance(baseline, bool) or not isinstance(baseline, int) or baseline < 0:
        raise MedmetaError(f"{where}: baseline_days must be a whole number of days, 0 or more")
    window = entry["follow_up_days"]
    if (not isinstance(window, list) or len(window) != 2 or not all(isinstance(d, int) and not isinstance(d, bool)
                                                                   for d in window)
            or not 0 < window[0] <= window[1]):
        raise MedmetaError(f"{where}: follow_up_days must be [first, last] whole days, 0 < first <= last")
    return OutcomeRule(
        name=name.strip(), line=line,
        ingredients=_strings(match["ingredients"], where, "match.ingredients") if "ingredients" in match else (),
        system=system, codes=_strings(match["codes"], where, "match.codes") if "codes" in match else (),
        atc_prefixes=tuple(p.upper() for p in _strings(match["atc"], where, "match.atc")) if "atc" in match else (),
        analyte_system=checked_system(entry.get("analyte_system", LOINC), f"{where}, analyte_system"),
        analytes=_strings(entry["analytes"], where, "analytes"), unit=entry["unit"].strip(),
        direction=entry["direction"], at_least=float(at_least), relative=bool(entry.get("relative", False)),
        baseline_days=baseline, follow_up_days=(window[0], window[1]))
