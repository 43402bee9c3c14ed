"""What a task set is asked to be: by disease or drug, which inputs, ways/shots/queries, seed, name."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from medmeta.errors import MedmetaError

KINDS = ("disease", "drug")
INPUTS = ("images", "records", "both")
DEFAULTS = {"disease": dict(ways=3, shots=5, queries=3), "drug": dict(ways=2, shots=5, queries=5)}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class TaskSetSpec:
    kind: str  # disease | drug
    inputs: str  # images | records | both (drug: records only)
    ways: int
    shots: int
    queries: int
    seed: int
    name: str

    @property
    def cases_needed(self) -> int:
        """Cases a class needs for one episode: shots + queries."""
        return self.shots + self.queries

    def as_dict(self) -> dict:
        return asdict(self)


def make_spec(kind: str, inputs: str | None = None, ways: int | None = None, shots: int | None = None,
              queries: int | None = None, seed: int = 0, name: str | None = None) -> TaskSetSpec:
    """A checked spec, defaults filled in; a ``MedmetaError`` naming any bad argument."""
    if kind not in KINDS:
        raise MedmetaError(f"--by must be one of {', '.join(KINDS)}, got {kind!r}")
    inputs = inputs or ("images" if kind == "disease" else "records")
    if inputs not in INPUTS:
        raise MedmetaError(f"--inputs must be one of {', '.join(INPUTS)}, got {inputs!r}")
    if kind == "drug" and inputs != "records":
        raise MedmetaError("drug tasks predict response from the patient's record: --inputs must be records")
    d = DEFAULTS[kind]
    ways, shots, queries = (d["ways"] if ways is None else ways, d["shots"] if shots is None else shots,
                            d["queries"] if queries is None else queries)
    if kind == "drug" and ways != 2:
        raise MedmetaError(f"drug tasks are binary (response / no response): --ways must be 2, got {ways}")
    if seed < 0:
        raise MedmetaError(f"--seed must be 0 or more, got {seed}")
    if ways < 2 or shots < 1 or queries < 1:
        raise MedmetaError(f"need --ways >= 2, --shots >= 1, --queries >= 1; got {ways}, {shots}, {queries}")
    name = name or f"{kind}-{inputs}-{ways}w{shots}s{queries}q-seed{seed}"
    if not NAME.match(name):
        raise MedmetaError(f"task set name {name!r}: letters, digits, '.', '_' and '-' only (at most 100)")
    return TaskSetSpec(kind, inputs, int(ways), int(shots), int(queries), int(seed), name)
