"""Keyed pseudonyms: the same MRN always maps to the same id, and nobody without the key
can go back or even test a guess.

Every derived value (patient id, replacement UID, date offset, FHIR reference key) is an
HMAC-SHA256 of the input under the secret, with a purpose prefix so that values made for one
purpose never equal those made for another.

The key comes from, in this order: ``$MEDMETA_PSEUDONYM_KEY``; a Prefect Secret block named
by ``$MEDMETA_PSEUDONYM_KEY_BLOCK``; the home's ``secrets/pseudonym.key`` (created by
``medmeta key create``, readable by its owner only). The key is never logged or written
anywhere else; ``Pseudonymizer.fingerprint`` identifies it without revealing it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from medmeta.errors import MedmetaError

KEY_ENV = "MEDMETA_PSEUDONYM_KEY"
KEY_BLOCK_ENV = "MEDMETA_PSEUDONYM_KEY_BLOCK"
MAX_DATE_SHIFT_DAYS = 365
MIN_KEY_LENGTH = 16


class Pseudonymizer:
    def __init__(self, key: bytes | str):
        if isinstance(key, str):
            key = key.encode("utf-8")
        if len(key) < MIN_KEY_LENGTH:
            raise MedmetaError(f"the pseudonym key must be at least {MIN_KEY_LENGTH} bytes long")
        self._key = key

    def __getstate__(self) -> dict:  # for worker processes: the SHA-256 states of ``_path_hmac`` do not pickle
        return {"_key": self._key}

    def __repr__(self) -> str:  # never show the key
        return f"Pseudonymizer(fingerprint={self.fingerprint})"

    def _digest(self, purpose: str, value: str) -> bytes:
        return hmac.digest(self._key, f"{purpose}\x1f{value}".encode("utf-8"), "sha256")

    def set_term(self, sha256: str) -> int:
        """A 256-bit number for the content hash ``sha256``, keyed: the term a set of content hashes is
        summed from (``medmeta.ingest.active``), so no one without the key can make two sets sum alike."""
        return int.from_bytes(self._digest("set-term", sha256), "big")

    @property
    def fingerprint(self) -> str:
        return self._digest("fingerprint", "medmeta").hex()[:16]

    def patient_id(self, mrn: str, issuer: str | None = None) -> str:
        """The pseudonym of an MRN (surrounding spaces ignored) within its issuer's number space.

        ``issuer`` is who assigned the MRN (a FHIR identifier's system or assigner, a DICOM
        IssuerOfPatientID, a site mapping's ``issuer``): the same number from two issuers is two
        patients. Without an issuer the MRN alone is keyed, as sources that name none expect.
        """
        mrn = str(mrn).strip()
        issuer = str(issuer).strip() if issuer is not None else ""
        value = f"{issuer}\x1e{mrn}" if issuer else mrn
        return "P" + self._digest("patient", value).hex()[:20]

    def path_token(self, path: str) -> str:
        """A keyed token for a landing file's or folder's path (file names can carry PHI).

        Keyed on the name's bytes, so a name that is not UTF-8 (kept surrogate-escaped, as
        ``os.fsdecode`` gives it) has a token too; a UTF-8 name's token is what it always was.
        """
        from medmeta.landing.names import name_bytes

        return self._path_hmac(name_bytes(str(path)))

    def path_token_of_bytes(self, data: bytes) -> str:
        """``path_token`` of a name given as its bytes (a folder's listing signature is made so)."""
        return self._path_hmac(data)

    def path_tokens(self, paths: list[str]) -> list[str]:
        """``[path_token(p) for p in paths]``, in one tight loop (a rerun tokenises 50,000 listed names)."""
        from medmeta.landing.names import name_bytes

        if not paths:
            return []
        self._path_hmac(b"")  # keys the SHA-256 states once
        inner, outer = self.__dict__["_path_states"]
        tokens = []
        for path in paths:
            try:
                name = path.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                name = name_bytes(path)
            i, o = inner.copy(), outer.copy()
            i.update(name)
            o.update(i.digest())
            tokens.append(o.hexdigest()[:32])
        return tokens

    def _path_hmac(self, name: bytes) -> str:
        """``HMAC-SHA256(key, b"path\\x1f" + name)`` (RFC 2104), its first 32 hex digits: the same
        value ``hmac.digest`` gives, from SHA-256 states keyed once per Pseudonymizer and copied per
        name (about 1 us a name against 12 us for ``hmac.digest``: a rerun tokenises every listed file)."""
        states = self.__dict__.get("_path_states")
        if states is None:
            key = self._key if len(self._key) <= 64 else hashlib.sha256(self._key).digest()
            key = key.ljust(64, b"\0")
            inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
            inner.update(b"path\x1f")
            states = self.__dict__["_path_states"] = (inner, hashlib.sha256(bytes(b ^ 0x5C for b in key)))
        inner, outer = states[0].copy(), states[1].copy()
        inner.update(name)
        outer.update(inner.digest())
        return outer.hexdigest()[:32]

    def value_token(self, value: str) -> str:
        """A keyed token for a value that must never be written as text (medmeta/records/masking.py).

        The same value always gives the same token, so an operator holding the key can find the
        value in the source file; nobody without the key can test a guess. Lone surrogates (bytes
        of a non-UTF-8 input kept by ``surrogateescape``) are hashed, not refused.
        """
        data = b"value\x1f" + str(value).encode("utf-8", "surrogatepass")
        return hmac.digest(self._key, data, "sha256").hex()[:16]

    def derived_key(self, purpose: str, length: int = 32) -> bytes:
        """Key material for ``purpose`` (e.g. sealing staged text), derived from the key, never the key itself."""
        blocks = (self._digest(f"key:{purpose}", str(i)) for i in range((length + 31) // 32))
        return b"".join(blocks)[:length]

    def uid(self, uid: str) -> str:
        """A replacement DICOM UID (2.25 form), the same for the same input UID."""
        return "2.25." + str(int.from_bytes(self._digest("uid", str(uid).strip())[:16], "big"))

    def date_offset_days(self, mrn: str, issuer: str | None = None) -> int:
        """The per-patient date shift of an MRN's patient."""
        return self.offset_for_token(self.patient_id(mrn, issuer))

    def offset_for_token(self, token: str) -> int:
        """A date shift in [-365, 365] days, never 0, for a pseudonym or reference key.

        Keyed on the pseudonym rather than the MRN, so a FHIR row known only by its
        reference key can be shifted provisionally and re-shifted once its patient is known.
        """
        v = int.from_bytes(self._digest("date-shift", token)[:8], "big") % (2 * MAX_DATE_SHIFT_DAYS)
        return v - MAX_DATE_SHIFT_DAYS if v < MAX_DATE_SHIFT_DAYS else v - MAX_DATE_SHIFT_DAYS + 1

    def reference_key(self, system: str, reference: str) -> str:
        """An opaque key for a FHIR reference such as ``Patient/123`` within one source."""
        return "R" + self._digest("fhir-ref", f"{system}|{reference}").hex()[:24]


def load_key(key_file: Path | None = None) -> bytes:
    """The pseudonym key from the environment, a Prefect Secret block or the key file.

    Surrounding whitespace is never part of the key, wherever it comes from: the key file ends
    with a newline, and a Kubernetes Secret or an env file made from it keeps that newline, so the
    three sources give the same key (and the same pseudonyms) for the same file."""
    value = os.environ.get(KEY_ENV, "").strip()
    if value:
        return value.encode("utf-8")
    block = os.environ.get(KEY_BLOCK_ENV)
    if block:
        from prefect.blocks.system import Secret  # only when asked for: Prefect is slow to import

        return str(Secret.load(block).get()).strip().encode("utf-8")
    if key_file is not None and key_file.exists():
        mode = key_file.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise MedmetaError(
                f"{key_file} is readable by others (mode {oct(mode & 0o777)}): run chmod 600 on it"
            )
        return key_file.read_bytes().strip()
    where = f" or create {key_file} with `medmeta key create`" if key_file else ""
    raise MedmetaError(f"no pseudonym key: set {KEY_ENV}, or {KEY_BLOCK_ENV} to a Prefect Secret block{where}")


def create_key_file(key_file: Path) -> bool:
    """Create a random key readable by its owner only; False if one exists already."""
    key_file.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(key_file.parent, 0o700)
    try:
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32) + "\n")
    return True
