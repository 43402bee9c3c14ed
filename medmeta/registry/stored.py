"""The registry's files as read back: each checked to be what publish wrote, else ``DamagedEntry``.

A damaged file (truncated, edited, not JSON, of the wrong shape, swapped for a FIFO or a folder,
unreadable) is refused with one message naming the file, what is wrong and what to do; it never
becomes a traceback, and one damaged model never hides the others (``store.survey``).

    read_card(path, name, version) -> dict      card.json, its registry fields checked
    read_aliases_file(path) -> dict | None      aliases.json (None when there is none yet)
    read_text(path, fix) -> str                 card.md
    weights_problem(path, card) -> str | None   cheap check (no read): the file is there, a regular
                                                file of the size the card records
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from medmeta.checked_file import file_kind, read_checked
from medmeta.errors import Rejected
from medmeta.registry.errors import DamagedEntry
from medmeta.registry.names import ALIASES

MAX_JSON_BYTES = 64 * 1024**2  # a card with its task-set manifest is a few hundred KiB
CARD_FIX = ("this version can not be used; restore its folder from a backup, or move it out of versions/ "
            "(the other versions stay usable)")
ALIASES_FIX = ("move it aside (mv aliases.json aliases.json.damaged): the aliases are then rebuilt from the "
               "cards' gate decisions, without the operator changes of its history")
WEIGHTS_FIX = "this version can not be used; restore its folder from a backup, or move it out of versions/"


def _read_json(path: Path, fix: str):
    try:
        data = read_checked(path, MAX_JSON_BYTES, setting="registry file")
    except Rejected as rejected:
        raise DamagedEntry(path, rejected.message, fix) from None
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise DamagedEntry(path, "not UTF-8 text", fix) from None
    except json.JSONDecodeError as error:
        raise DamagedEntry(path, f"not valid JSON ({error.msg} at line {error.lineno} column {error.colno}; "
                                 "truncated or edited?)", fix) from None
    except RecursionError:
        raise DamagedEntry(path, "not valid JSON: nested too deep", fix) from None


def read_text(path: Path, fix: str = CARD_FIX) -> str:
    """A text file of a version (card.md), or ``DamagedEntry``."""
    try:
        return read_checked(path, MAX_JSON_BYTES, setting="registry file").decode("utf-8")
    except Rejected as rejected:
        raise DamagedEntry(path, rejected.message, fix) from None
    except UnicodeDecodeError:
        raise DamagedEntry(path, "not UTF-8 text", fix) from None


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# key -> (type, keys it must hold when a dict); what publish always writes and readers rely on.
_CARD_SHAPE = {
    "name": (str, ()), "version": (int, ()), "created": (str, ()), "algorithm": (str, ()),
    "evaluation_id": (str, ()), "metrics": (dict, ()),
    "weights": (dict, ("file", "sha256", "bytes", "parameters")),
    "gate": (dict, ("decision", "reason", "metric")),
    "code_version": (dict, ("package",)),
}


def read_card(path: Path, name: str, version: int) -> dict:
    """``card.json`` of ``name`` version ``version``, with the fields the registry wrote checked."""
    card = _read_json(path, CARD_FIX)
    if not isinstance(card, dict):
        raise DamagedEntry(path, "not a JSON object", CARD_FIX)
    for key, (kind, inner) in _CARD_SHAPE.items():
        value = card.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise DamagedEntry(path, f"its {key!r} is missing or not a {kind.__name__}", CARD_FIX)
        missing = [k for k in inner if k not in value]
        if missing:
            raise DamagedEntry(path, f"its {key!r} lacks {', '.join(missing)}", CARD_FIX)
    if (card["name"], card["version"]) != (name, version):
        raise DamagedEntry(path, f"it is the card of {card['name']!r} version {card['version']}, not of this "
                                 "folder's model and version", CARD_FIX)
    weights = card["weights"]
    if not (isinstance(weights["sha256"], str) and _is_int(weights["bytes"]) and weights["bytes"] >= 0):
        raise DamagedEntry(path, "its weights entry has no usable sha256 and bytes", CARD_FIX)
    if card["gate"]["decision"] not in ALIASES:
        raise DamagedEntry(path, f"its gate decision is not one of {', '.join(ALIASES)}", CARD_FIX)
    return card


def read_aliases_file(path: Path) -> dict | None:
    """``aliases.json`` checked (champion and challenger version numbers or null, a history of events),
    or None when it does not exist yet (no publish has finished)."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError:
        pass  # read_checked names the problem
    aliases = _read_json(path, ALIASES_FIX)
    if not isinstance(aliases, dict):
        raise DamagedEntry(path, "not a JSON object", ALIASES_FIX)
    for alias in ALIASES:
        value = aliases.get(alias, "absent")
        if value is not None and not (_is_int(value) and value >= 1):
            raise DamagedEntry(path, f"its {alias!r} is not a version number or null", ALIASES_FIX)
    history = aliases.get("history")
    if not isinstance(history, list) or not all(isinstance(e, dict) and isinstance(e.get("event"), str)
                                                 for e in history):
        raise DamagedEntry(path, "its history is not a list of events", ALIASES_FIX)
    if not all(_is_int(e.get("version")) for e in history if e["event"] == "publish"):
        raise DamagedEntry(path, "a publish event of its history has no version number", ALIASES_FIX)
    return aliases


def weights_problem(path: Path, card: dict) -> str | None:
    """What is wrong with a version's weights file that ``stat`` alone can tell, else None.

    The checksum and the safetensors header are checked when the weights are loaded (weights.py)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return "missing"
    except OSError as error:
        return f"can not be examined ({error.strerror or type(error).__name__})"
    if not stat.S_ISREG(info.st_mode):
        return f"is {file_kind(info.st_mode) if not stat.S_ISLNK(info.st_mode) else 'a symbolic link'}, not a regular file"
    if info.st_size != card["weights"]["bytes"]:
        return f"holds {info.st_size} bytes, but its card records {card['weights']['bytes']}"
    return None
