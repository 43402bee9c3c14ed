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
