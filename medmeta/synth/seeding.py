"""Seeded random streams: every draw in the synthetic data comes from here.

A stream is keyed by the run's seed plus names (``rng_for(seed, "labs", mrn)``), so adding a
new kind of draw never shifts the values of another, and each file can be made on its own.
"""

from __future__ import annotations

import uuid
import zlib

import numpy as np


def _key_int(key: object) -> int:
    """A stable 32-bit integer for a stream key (ints pass through, strings are hashed)."""
    if isinstance(key, (int, np.integer)) and key >= 0:
        return int(key)
    return zlib.crc32(str(key).encode("utf-8"))


def rng_for(seed: int, *keys: object) -> np.random.Generator:
    """The random generator for ``seed`` and the named purpose ``keys``."""
    return np.random.default_rng(np.random.SeedSequence([_key_int(seed), *map(_key_int, keys)]))


def uuid_from(rng: np.random.Generator) -> str:
    """A random (version 4) UUID string drawn from ``rng``."""
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def uid_from(rng: np.random.Generator) -> str:
    """A DICOM UID in the ``2.25.<uuid as integer>`` form, drawn from ``rng``."""
    return "2.25." + str(uuid.UUID(bytes=rng.bytes(16), version=4).int)
