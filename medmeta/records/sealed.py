"""Free text a record carries that the store may keep only once it is known to be vocabulary.

A coding's display ("Hypertension (disorder)") and a quantity's unit as the source wrote it are
text a person can type a name into. Whether such a value may enter the store is decided at
consolidation, over the whole snapshot (a display attested by enough patients, a unit that is
UCUM and converts). Until then the part files hold it **sealed**: encrypted with AES-SIV under a
key derived from the pseudonym key (deterministic, so the same content gives the same part bytes;
authenticated, so a value that was not sealed with this key opens to nothing). Without the key a
part holds no readable free text; consolidation opens the values (``Sealer.open_column``), applies
its rules, and stores what passes or quarantines the row with the value hashed.
"""

from __future__ import annotations

import base64

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from medmeta.pseudonyms import Pseudonymizer

PREFIX = "sealed:"


class Sealer:
    def __init__(self, pseudo: Pseudonymizer):
        self._aead = AESSIV(pseudo.derived_key("seal-staged-text", 64))
        self._sealed: dict[str, str] = {}

    def seal(self, text: str | None) -> str | None:
        """``text`` sealed (None stays None); the same text always seals to the same string."""
        if text is None:
            return None
        found = self._sealed.get(text)
        if found is None:
            found = PREFIX + base64.urlsafe_b64encode(self._aead.encrypt(text.encode("utf-8", "surrogatepass"), None)).decode()
            if len(self._sealed) < 100_000:
                self._sealed[text] = found
        return found

    def open(self, value: str | None) -> str | None:
        """The text a sealed value holds; None for None or for a value this key did not seal (a part
        an older medmeta wrote, before sealing, holds plain text: it is returned as it is)."""
        if value is None:
            return None
        if not value.startswith(PREFIX):
            return value
        try:
            return self._aead.decrypt(base64.urlsafe_b64decode(value[len(PREFIX):]), None).decode("utf-8", "surrogatepass")
        except (InvalidTag, ValueError):
            return None

    def open_column(self, column):
        """A pandas Series of sealed values opened, once per distinct value."""
        opened = column.map({value: self.open(value) for value in column.dropna().unique()}).astype(object)
        return opened.where(opened.notna(), None)
