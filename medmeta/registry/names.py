"""Model names and references: ``NAME``, ``NAME@champion``, ``NAME@challenger``, ``NAME@3``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from medmeta.registry.errors import InvalidModelName

ALIASES = ("champion", "challenger")
_SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,62}[a-z0-9])?$")
SLUG_RULE = ("lowercase letters, digits, '-' and '_', starting and ending with a letter or digit, "
             "at most 64 characters")


def check_name(name: str) -> str:
    """``name`` when it is a safe slug, else ``InvalidModelName``."""
    if not isinstance(name, str) or not _SLUG.match(name):
        raise InvalidModelName(f"model name {name!r} is not a safe slug ({SLUG_RULE})")
    return name


@dataclass(frozen=True)
class Ref:
    """A parsed reference: a name and one of an alias or a version (neither means champion)."""

    name: str
    alias: str | None = None
    version: int | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}@{self.version}"
        return f"{self.name}@{self.alias or 'champion'}"


def parse_ref(ref: str) -> Ref:
    """Parse ``NAME[@alias|version]``; a bare ``NAME`` is its champion."""
    if not isinstance(ref, str):
        raise InvalidModelName(f"model reference {ref!r} is not a string")
    name, sep, selector = ref.partition("@")
    check_name(name)
    if not sep:
        return Ref(name, alias="champion")
    if selector in ALIASES:
        return Ref(name, alias=selector)
    if selector.isdigit() and selector.isascii() and int(selector) >= 1:
        return Ref(name, version=int(selector))
    raise InvalidModelName(f"model reference {ref!r}: after '@' comes an alias ({', '.join(ALIASES)}) "
                           f"or a version number (1, 2, ...)")
