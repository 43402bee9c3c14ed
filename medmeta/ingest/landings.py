"""Landing folders by keyed token: what Prefect holds in place of a landing folder's path.

A landing folder's path can name a patient (an export unpacked into ``~/exports/Jane_Doe/``), so
Prefect (flow-run parameters, deployments, events) only ever holds its keyed token,
``landing_token`` (the watcher's, ``medmeta.landing.changes``). A flow resolves the token back to
the folder inside its own process, from the folders that process knows:

- those registered with ``register_landing`` (the command line registers the folder it was given,
  and so does a flow called in-process with a path);
- those listed in ``$MEDMETA_LANDINGS`` (``os.pathsep``-separated), the way a served deployment's
  flow-run subprocess learns them from ``medmeta serve`` or a Prefect worker's environment (a flow
  given no landing at all takes the one folder listed there: prefect.yaml's deployments).

``resolve_landing`` also takes a path, as in-process callers pass one. Tokens are keyed with the
home's pseudonym key: without the key a token can not be turned back into a path, nor a guessed
path tested against it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from medmeta.errors import MedmetaError
from medmeta.landing.changes import landing_token as _folder_token
from medmeta.pseudonyms import Pseudonymizer

LANDINGS_ENV = "MEDMETA_LANDINGS"
_TOKEN = re.compile(r"[0-9a-f]{32}")
_registered: list[Path] = []  # this process's landing folders, in the order they were registered


def landing_token(landing: str | os.PathLike, pseudonymizer: Pseudonymizer) -> str:
    """The keyed token of a landing folder (or zip): the same in the ledger, in Prefect and in events."""
    return _folder_token(Path(landing), pseudonymizer)


def is_token(reference: str) -> bool:
    """True for a landing token (32 lowercase hex digits) that is not also a path that exists."""
    return bool(_TOKEN.fullmatch(reference)) and not Path(reference).exists()


def register_landing(landing: str | os.PathLike, pseudonymizer: Pseudonymizer) -> str:
    """Make ``landing`` resolvable from its token in this process; returns the token."""
    folder = Path(landing).expanduser().resolve()
    if folder not in _registered:
        _registered.append(folder)
    return landing_token(folder, pseudonymizer)


def landing_reference(landing: str | os.PathLike, pseudonymizer: Pseudonymizer) -> str:
    """What Prefect may hold for ``landing``: a token as it is, a path registered and tokenised."""
    if isinstance(landing, str) and is_token(landing):
        return landing
    return register_landing(landing, pseudonymizer)


def known_landings() -> list[Path]:
    """The folders this process can resolve: registered ones, then those in ``$MEDMETA_LANDINGS``."""
    listed = [Path(p).expanduser().resolve() for p in os.environ.get(LANDINGS_ENV, "").split(os.pathsep) if p]
    return [*_registered, *(p for p in listed if p not in _registered)]


def resolve_landing(reference: str | os.PathLike | None, pseudonymizer: Pseudonymizer) -> Path:
    """The landing folder a token stands for; a path is returned as it is, made absolute; None is
    the one folder this process knows (``$MEDMETA_LANDINGS`` naming a single folder).

    An unknown token is a ``MedmetaError`` that names the token, never a path.
    """
    if reference is None:
        known = known_landings()
        if len(known) != 1:
            raise MedmetaError(f"no landing folder was given and ${LANDINGS_ENV} names {len(known)} folders, "
                               "not one: give the flow the folder's token, or list one folder there")
        return known[0]
    if not (isinstance(reference, str) and is_token(reference)):
        return Path(reference).expanduser().resolve()
    for folder in known_landings():
        if landing_token(folder, pseudonymizer) == reference:
            return folder
    raise MedmetaError(
        f"no landing folder known to this process has the token {reference} under this home's key: list the "
        f"folder in ${LANDINGS_ENV} (medmeta serve sets it for its deployments; a Prefect worker needs it in its "
        "environment), or run `medmeta ingest FOLDER` / `medmeta run FOLDER`"
    )


def landings_environment(folders: list[str | os.PathLike]) -> str:
    """The ``$MEDMETA_LANDINGS`` value that lets a subprocess resolve ``folders``."""
    return os.pathsep.join(str(Path(f).expanduser().resolve()) for f in folders)
