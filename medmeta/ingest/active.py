"""The active content hashes, as consolidation takes them: every content hash the ledger holds as ingested
or unchanged (``Ledger.active``), named by a digest that a run adding k files updates in O(k).

The digest is that of the set's size and of the sum, modulo 2**256, of a keyed term per hash
(``Pseudonymizer.set_term``: an HMAC of the hash under the pseudonym key). A sum is updated by adding the
terms of the hashes that joined the set, so the ledger keeps it (``ledger.json``'s ``active``) and a run
adding 20 files to 50,000 adds 20 terms; keyed, so no one without the key can make two sets of files sum
alike. ``before`` and ``added`` say how the set grew since the ledger was loaded (when nothing left it):
consolidation then extends the images table by the new rows alone (``images_table``)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable

from medmeta.pseudonyms import Pseudonymizer

MODULUS = 1 << 256


def set_digest(count: int, total: int) -> str:
    """The digest of a set of ``count`` hashes whose keyed terms sum to ``total``."""
    return hashlib.sha256(json.dumps({"count": count, "keyed_sum": f"{total % MODULUS:064x}"}).encode()).hexdigest()


def keyed_sum(hashes: Iterable[str], pseudo: Pseudonymizer) -> int:
    """The sum of the keyed terms of ``hashes`` (each counted once per time it is given), modulo 2**256."""
    return sum(pseudo.set_term(sha256) for sha256 in hashes) % MODULUS


class ActiveSet:
    """The active content hashes: ``digest`` (``set_digest``), ``count``; ``before``: the digest when the
    ledger was loaded, when the set only grew since (else None), ``added``: the hashes that joined it
    since; ``hashes()``: the hashes themselves, sorted (made when first asked: 50,000 of them cost more
    than everything else a run adding 20 files does with them)."""

    def __init__(self, digest: str, count: int, hashes: Callable[[], list[str]],
                 before: str | None = None, added: frozenset[str] = frozenset()):
        self.digest, self.count, self.before, self.added = digest, count, before, added
        self._make, self._hashes = hashes, None

    @classmethod
    def of(cls, hashes: Iterable[str], pseudo: Pseudonymizer) -> "ActiveSet":
        """The active set of the content hashes ``hashes`` (a list, as tests and tools give it)."""
        unique = sorted(set(hashes) - {""})
        return cls(set_digest(len(unique), keyed_sum(unique, pseudo)), len(unique), lambda: unique)

    def hashes(self) -> list[str]:
        if self._hashes is None:
            self._hashes = self._make()
        return self._hashes

    def __repr__(self) -> str:  # counts only
        return f"ActiveSet(count={self.count}, added={len(self.added)})"
