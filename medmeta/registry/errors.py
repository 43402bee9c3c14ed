"""Errors the model registry raises; each names what is wrong and, where useful, what exists."""

from __future__ import annotations

from medmeta.errors import MedmetaError


class RegistryError(MedmetaError):
    """A registry request that can not be served as asked."""


class InvalidModelName(RegistryError):
    """A model name that is not a safe slug, or a reference that does not parse."""


class ModelNotFound(RegistryError):
    """A model, version or alias that does not exist; the message lists what does."""


class ChecksumMismatch(RegistryError):
    """A weights file whose SHA-256 differs from the one its card recorded at publish."""


class InvalidCard(RegistryError):
    """Card content, weights or gate input given to ``publish`` that can not be recorded."""


class DamagedEntry(RegistryError):
    """A registry file (card, aliases, weights) that is not what medmeta wrote: truncated, edited,
    unreadable or of the wrong kind. ``path`` is the file, ``reason`` what is wrong with it."""

    def __init__(self, path, reason: str, fix: str):
        super().__init__(f"{path} is damaged: {reason}; {fix}")
        self.path, self.reason, self.fix = path, reason, fix

    def __reduce__(self):
        return (type(self), (self.path, self.reason, self.fix))
