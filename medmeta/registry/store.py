"""The versioned model registry under ``H/registry/`` (layout in docs/store-layout.md).

A version is built in ``<name>/.staging/<id>/``, fsynced, and renamed to ``<name>/versions/<n>/``
while ``<name>/.lock`` is held, so it is whole or absent and no two publishes get one number.
Aliases live in ``<name>/aliases.json`` (written atomically, under the same lock) with their
history. Versions are never changed after the rename; their files are made read-only.

Invariant, checked in one place (``_write_aliases``, the only writer of ``aliases.json``): a version
never holds both ``champion`` and ``challenger``. Promoting the challenger to champion clears the
challenger; naming the champion's version challenger is refused. A model can be **retired**
(``retire``): both aliases cleared, and ``aliases.json``'s ``retired`` says why and when; every
version's card as read (``resolve``, ``ModelVersion.card``, ``card_markdown``) then carries it. A
later publish un-retires the model.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from medmeta import atomic
from medmeta.home import Home
from medmeta.registry import card as cards
from medmeta.registry import stored
from medmeta.registry.errors import DamagedEntry, InvalidCard, InvalidModelName, ModelNotFound, RegistryError
from medmeta.registry.gate import ChampionScore, Gate, check_inputs, decide, metric_value
from medmeta.registry.lock import exclusive, try_exclusive
from medmeta.registry.names import ALIASES, Ref, check_name, parse_ref
from medmeta.registry.weights import check_weights, read_weights, write_weights

WEIGHTS_FILE, CARD_FILE, CARD_MD_FILE = "model.safetensors", "card.json", "card.md"
# Test hook: when set to a path, publish creates that file and sleeps just before the rename.
PAUSE_ENV = "MEDMETA_REGISTRY_TEST_PAUSE_BEFORE_RENAME"


@dataclass(frozen=True)
class ModelVersion:
    """One published version: its folder and its card."""

    name: str
    version: int
    path: Path
    card: dict

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_FILE

    @property
    def card_path(self) -> Path:
        return self.path / CARD_FILE

    @property
    def card_md_path(self) -> Path:
        return self.path / CARD_MD_FILE

    def load_weights(self) -> dict:
        """The weights (name -> CPU torch.Tensor), after checking their size and SHA-256 against the
        card and the safetensors header against the file (``DamagedEntry``, ``ChecksumMismatch``)."""
        return read_weights(self.weights_path, self.card["weights"]["sha256"], self.card["weights"]["bytes"])

    def card_markdown(self) -> str:
        """``card.md``, the card for people (``DamagedEntry`` when it can not be read), with a
        ``Retired`` section when the model is retired (``card["retired"]``)."""
        text = stored.read_text(self.card_md_path)
        retired = self.card.get("retired")
        if retired:
            text = text.rstrip("\n") + "\n\n" + cards.render_retirement(retired)
        return text


def registry_root(home: Home | str | os.PathLike | None = None) -> Path:
    """``H/registry``."""
    return (home if isinstance(home, Home) else Home.at(home)).registry


def publish(home: Home | str | os.PathLike | None, name: str, weights: Mapping[str, Any], card: dict, *,
            gate: Gate = Gate(), champion_score: ChampionScore | None = None) -> ModelVersion:
    """Write ``weights`` and ``card`` as the next version of ``name`` and apply the champion gate.

    The returned version's ``card["gate"]`` holds the decision (``champion`` or ``challenger``), the
    numbers compared and the reason. Bad input raises before anything is written. A card with a
    ``baseline`` entry (``{"method": ..., "features": ..., "why": ...}``: a method such as a random forest
    fitted on each support set when it predicts, published because it beat the meta-learners) may have
    empty ``weights``: its safetensors file holds no tensor.
    """
    check_name(name)
    content = cards.check_content(card)
    check_inputs(gate, content, champion_score)
    baseline = "baseline" in content  # fitted on each support set when it predicts: no weights
    weights = check_weights(weights, allow_empty=baseline)
    if "parent" in content:
        content["parent"] = _parent(home, content["parent"])
    if "device" not in content:
        content["device"] = str(next(iter(weights.values())).device) if weights else "cpu"
    model_dir = registry_root(home) / name
    staging = model_dir / ".staging"
    staging.mkdir(parents=True, exist_ok=True)
    build_id = uuid.uuid4().hex
    build, build_lock = staging / build_id, staging / f"{build_id}.lock"
    with exclusive(model_dir / ".lock"):  # so _clean_staging never sees this lock file unheld
        lock_fd = os.open(build_lock, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(lock_fd, fcntl.LOCK_EX)  # held while building; the kernel drops it if we die
    try:
        build.mkdir()
        weights_entry = write_weights(weights, build / WEIGHTS_FILE, allow_empty=baseline)
        with exclusive(model_dir / ".lock"):
            _clean_staging(staging)
            aliases = _reconcile(model_dir)
            version = max(_versions_on_disk(model_dir), default=0) + 1
            champion = aliases["champion"]
            champion_card = _read_card(model_dir, champion) if champion is not None else None
            decision = decide(gate, content, champion, champion_card, champion_score)
            full = {"format": cards.FORMAT, "name": name, "version": version, "created": _now(), **content,
                    "weights": weights_entry, "code_version": cards.code_version(), "gate": decision}
            _write_synced(build / CARD_FILE, json.dumps(full, indent=2) + "\n")
            _write_synced(build / CARD_MD_FILE, cards.render_markdown(full))
            for f in build.iterdir():
                f.chmod(0o444)
            _fsync_dir(build)
            _pause_for_tests()
            (model_dir / "versions").mkdir(exist_ok=True)
            os.rename(build, model_dir / "versions" / str(version))
            _fsync_dir(model_dir / "versions")
            _apply_publish(model_dir, aliases, version, decision)
        return ModelVersion(name, version, model_dir / "versions" / str(version), full)
    finally:
        if build.exists():
            shutil.rmtree(build, ignore_errors=True)
        build_lock.unlink(missing_ok=True)
        os.close(lock_fd)


def set_alias(home: Home | str | os.PathLike | None, name: str, alias: str, version: int | None, *,
              reason: str) -> dict:
    """Point ``alias`` (champion or challenger) at ``version``, or clear it with None; for operators.

    Recorded in ``aliases.json``'s history with ``reason``; cards are not changed. Returns the aliases.
    """
    check_name(name)
    if alias not in ALIASES:
        raise InvalidModelName(f"alias {alias!r} is not one of {', '.join(ALIASES)}")
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidCard("set_alias needs a reason, recorded in the aliases' history")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        raise InvalidCard(f"set_alias takes a version number or None, not {version!r}")
    model_dir = _model_dir(home, name)
    with exclusive(model_dir / ".lock"):
        aliases = _reconcile(model_dir)
        if version is not None and version not in _versions_on_disk(model_dir):
            raise ModelNotFound(f"model {name} has no version {version}; {_what_exists(model_dir)}")
        previous = {a: aliases[a] for a in ALIASES}
        if alias == "challenger" and version is not None and version == aliases["champion"]:
            raise InvalidCard(f"version {version} of {name} is its champion; a version is never its own challenger "
                              f"(clear or move the champion first)")
        aliases[alias] = version
        if alias == "champion" and version is not None and aliases["challenger"] == version:
            aliases["challenger"] = None  # the challenger promoted: it is the champion now, and only that
            reason += f" (version {version} was the challenger: promoted, the challenger alias cleared)"
        if version is not None and aliases.get("retired"):  # naming a version un-retires the model
            aliases["history"].append({"time": _now(), "event": "unretire", "version": version, "reason": reason,
                                       "retired": aliases["retired"]})
            aliases["retired"] = None
        aliases["history"].append({"time": _now(), "event": "set_alias", "alias": alias, "version": version,
                                   "previous": previous, "reason": reason})
        _write_aliases(model_dir, aliases)
    return aliases


def retire(home: Home | str | os.PathLike | None, name: str, *, reason: str, detail: dict | None = None) -> dict:
    """Clear both aliases of ``name`` and record why (``reason``, plain text, and ``detail``, JSON);
    idempotent: a model already retired for the same reason is left as it is. Returns the aliases.

    The versions stay (``NAME@<n>`` still resolves); their cards as read then carry ``retired``.
    """
    check_name(name)
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidCard("retire needs a reason, recorded in the card and the aliases' history")
    detail = json.loads(json.dumps(detail or {}))
    model_dir = _model_dir(home, name)
    with exclusive(model_dir / ".lock"):
        aliases = _reconcile(model_dir)
        current = aliases.get("retired")
        if (current and current.get("reason") == reason and current.get("detail") == detail
                and aliases["champion"] is None and aliases["challenger"] is None):
            return aliases
        previous = {a: aliases[a] for a in ALIASES}
        aliases["champion"] = aliases["challenger"] = None
        aliases["retired"] = {"time": _now(), "reason": reason, "detail": detail, "previous": previous}
        aliases["history"].append({"time": aliases["retired"]["time"], "event": "retire", "previous": previous,
                                   "reason": reason})
        _write_aliases(model_dir, aliases)
    return aliases


def resolve(home: Home | str | os.PathLike | None, ref: str | Ref) -> ModelVersion:
    """The version ``NAME``, ``NAME@champion``, ``NAME@challenger`` or ``NAME@<n>`` points at."""
    ref = ref if isinstance(ref, Ref) else parse_ref(ref)
    model_dir = _model_dir(home, ref.name)
    version = ref.version
    if version is None:
        version = read_aliases(home, ref.name)[ref.alias]
        if version is None:
            raise ModelNotFound(f"model {ref.name} has no {ref.alias}; {_what_exists(model_dir)}")
    if version not in _versions_on_disk(model_dir):
        raise ModelNotFound(f"model {ref.name} has no version {version}; {_what_exists(model_dir)}")
    card = _read_card(model_dir, version)
    retired = _reconcile(model_dir, write=False).get("retired")
    if retired:
        card = {**card, "retired": retired}
    return ModelVersion(ref.name, version, model_dir / "versions" / str(version), card)


def load(home: Home | str | os.PathLike | None, ref: str | Ref) -> tuple[ModelVersion, dict]:
    """The version ``ref`` points at and its checksum-verified weights."""
    found = resolve(home, ref)
    return found, found.load_weights()


def read_aliases(home: Home | str | os.PathLike | None, name: str) -> dict:
    """``{"champion": n|None, "challenger": n|None, "history": [...]}`` of a model."""
    return _reconcile(_model_dir(home, name), write=False)


def versions(home: Home | str | os.PathLike | None, name: str) -> list[int]:
    """The published version numbers of a model, ascending."""
    return _versions_on_disk(_model_dir(home, name))


def model_names(home: Home | str | os.PathLike | None = None) -> list[str]:
    """The names of the models with at least one version, sorted."""
    root = registry_root(home)
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if _is_name(d.name) and _versions_on_disk(d))


def list_models(home: Home | str | os.PathLike | None = None) -> list[dict]:
    """One summary per healthy model (``survey``'s first half): versions, aliases, and the champion's
    (else the latest's) gate metric."""
    return survey(home)[0]


def survey(home: Home | str | os.PathLike | None = None) -> tuple[list[dict], list[dict]]:
    """``(summaries, damaged)``: every model that can be summarised, and every damaged file.

    A model is summarised when its aliases and the card it shows (the champion's, else the latest's)
    read back whole. Each damaged file is one ``{"name", "version" (None for aliases.json), "file",
    "reason", "fix"}``: any version's card, or its weights file when missing or not of the size its
    card records (checked with ``stat``; the checksum is checked when weights are loaded).
    """
    summaries, damaged = [], []
    for name in model_names(home):
        model_dir = registry_root(home) / name
        found = _versions_on_disk(model_dir)
        cards_read, broken = {}, set()
        for version in found:
            try:
                cards_read[version] = card = _read_card(model_dir, version)
            except DamagedEntry as error:
                damaged.append(_damage(name, version, error))
                broken.add(version)
                continue
            problem = stored.weights_problem(model_dir / "versions" / str(version) / WEIGHTS_FILE, card)
            if problem:
                damaged.append(_damage(name, version, DamagedEntry(
                    model_dir / "versions" / str(version) / WEIGHTS_FILE, problem, stored.WEIGHTS_FIX)))
        try:
            aliases = _reconcile(model_dir, write=False)
        except DamagedEntry as error:
            if not any(d["file"] == str(error.path) for d in damaged):
                damaged.append(_damage(name, None, error))
            continue
        shown = aliases["champion"] if aliases["champion"] in found else found[-1]
        if shown in broken:
            continue  # named in damaged
        shown_card = cards_read[shown]
        metric = shown_card["gate"]["metric"]
        summaries.append({"name": name, "versions": found, "latest": found[-1], "champion": aliases["champion"],
                          "challenger": aliases["challenger"], "algorithm": shown_card["algorithm"],
                          "metric": {"name": metric, "value": metric_value(shown_card["metrics"], metric),
                                     "version": shown, "evaluation_id": shown_card["evaluation_id"]}})
    return summaries, damaged


def _damage(name: str, version: int | None, error: DamagedEntry) -> dict:
    return {"name": name, "version": version, "file": str(error.path), "reason": error.reason, "fix": error.fix}


# ---- internals ---------------------------------------------------------------------------------

def _is_name(name: str) -> bool:
    try:
        check_name(name)
        return True
    except InvalidModelName:
        return False


def _model_dir(home, name: str) -> Path:
    check_name(name)
    model_dir = registry_root(home) / name
    if not _versions_on_disk(model_dir):
        names = model_names(home)
        listing = f"models: {', '.join(names)}" if names else "the registry is empty"
        raise ModelNotFound(f"no model named {name} in {registry_root(home)}; {listing}")
    return model_dir


def _versions_on_disk(model_dir: Path) -> list[int]:
    folder = model_dir / "versions"
    if not folder.is_dir():
        return []
    return sorted(int(d.name) for d in folder.iterdir() if d.name.isdigit() and d.name.isascii() and d.is_dir())


def _what_exists(model_dir: Path) -> str:
    aliases = _reconcile(model_dir, write=False)
    named = ", ".join(f"{a} -> {aliases[a]}" for a in ALIASES if aliases[a] is not None) or "none"
    retired = aliases.get("retired")
    why = f"; retired {retired['time']}: {retired['reason']}" if retired else ""
    return f"versions: {', '.join(map(str, _versions_on_disk(model_dir)))}; aliases: {named}{why}"


def _read_card(model_dir: Path, version: int) -> dict:
    return stored.read_card(model_dir / "versions" / str(version) / CARD_FILE, model_dir.name, version)


def _read_aliases(model_dir: Path) -> dict:
    aliases = stored.read_aliases_file(model_dir / "aliases.json")
    if aliases is None:
        return {"champion": None, "challenger": None, "history": []}
    if aliases["champion"] is not None and aliases["champion"] == aliases.get("challenger"):
        aliases["challenger"] = None  # written before the invariant: the version is the champion
    return aliases


def _write_aliases(model_dir: Path, aliases: dict) -> None:
    """The one writer of ``aliases.json``; refuses a version holding both aliases."""
    if aliases["champion"] is not None and aliases["champion"] == aliases["challenger"]:
        raise RegistryError(f"{model_dir.name}: version {aliases['champion']} would hold both champion and "
                            "challenger; nothing was written")
    atomic.write_json(model_dir / "aliases.json", aliases)


def _apply_publish(model_dir: Path, aliases: dict, version: int, decision: dict, note: str = "",
                   write: bool = True) -> None:
    """Apply a gate decision: a new champion clears the challenger (it lost to the old champion)."""
    previous = {a: aliases[a] for a in ALIASES}
    if decision["decision"] == "champion":
        aliases["champion"], aliases["challenger"] = version, None
    else:
        aliases["challenger"] = version
    if aliases.get("retired"):  # a new version un-retires the model
        aliases["history"].append({"time": _now(), "event": "unretire", "version": version,
                                   "reason": "a new version was published", "retired": aliases["retired"]})
        aliases["retired"] = None
    aliases["history"].append({"time": _now(), "event": "publish", "version": version,
                               "decision": decision["decision"], "reason": decision["reason"] + note,
                               "metric": decision["metric"], "candidate": decision["candidate"],
                               "champion_score": decision["champion"], "previous": previous})
    if write:
        _write_aliases(model_dir, aliases)


def _reconcile(model_dir: Path, write: bool = True) -> dict:
    """The aliases, after applying the gate decision of any version whose publisher died (or is
    still busy) between the rename and the aliases update: at most the latest version. Written
    only under the lock; readers apply it in memory and so see what the publisher will write."""
    aliases = _read_aliases(model_dir)
    recorded = {e["version"] for e in aliases["history"] if e["event"] == "publish"}
    for version in _versions_on_disk(model_dir):
        if version not in recorded:
            _apply_publish(model_dir, aliases, version, _read_card(model_dir, version)["gate"],
                           " (applied later: the publishing process stopped before updating the aliases)", write)
    return aliases


def _clean_staging(staging: Path) -> None:
    """Remove builds whose publisher died (their lock file is free, or gone). Called under the model lock."""
    for entry in staging.iterdir():
        if entry.suffix == ".lock":
            fd = try_exclusive(entry)
            if fd is None:
                continue  # a live publish is building it
            try:
                shutil.rmtree(staging / entry.stem, ignore_errors=True)
                entry.unlink(missing_ok=True)
            finally:
                os.close(fd)
        elif entry.is_dir() and not (staging / f"{entry.name}.lock").exists():
            shutil.rmtree(entry, ignore_errors=True)  # its lock file is created first and removed last


def _parent(home, parent) -> dict:
    """A card's ``parent`` (``"NAME@n"``/``"NAME@alias"`` or ``{"name", "version"}``) pinned to a version."""
    if isinstance(parent, dict) and {"name", "version"} <= set(parent):
        parent = f"{parent['name']}@{parent['version']}"
    if not isinstance(parent, str):
        raise InvalidCard("the card's parent must be 'NAME@version' or {'name': ..., 'version': ...}")
    found = resolve(home, parent)
    return {"name": found.name, "version": found.version, "weights_sha256": found.card["weights"]["sha256"]}


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pause_for_tests() -> None:
    marker = os.environ.get(PAUSE_ENV)
    if marker:
        Path(marker).write_text(str(os.getpid()))
        time.sleep(600)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
