"""The versioned model registry: ``H/registry/<name>/versions/<n>/`` and champion/challenger aliases.

    publish(home, name, weights, card, gate=Gate(...), champion_score=None) -> ModelVersion
    resolve(home, "name[@champion|@challenger|@n]") -> ModelVersion   (.card, .load_weights())
    load(home, ref) -> (ModelVersion, tensors)
    set_alias(home, name, alias, version, reason=...)   (a version never holds both aliases)
    retire(home, name, reason=..., detail={})   both aliases cleared; cards as read carry ``retired``
    evaluation_id(task_set_digest, seed, episodes, **settings) -> "ev-..."   (what the gate compares on)
    list_models(home), model_names(home), versions(home, name), read_aliases(home, name)
    survey(home) -> (summaries, damaged)   every healthy model, and every damaged file with its reason

Plain code (no Prefect); torch is imported only where weights are written or read.
"""

from medmeta.registry.errors import ChecksumMismatch, DamagedEntry, InvalidCard, InvalidModelName, ModelNotFound, RegistryError
from medmeta.registry.gate import ChampionScore, Gate, evaluation_id
from medmeta.registry.names import ALIASES, Ref, check_name, parse_ref
from medmeta.registry.store import (ModelVersion, list_models, load, model_names, publish, read_aliases,
                                    registry_root, resolve, retire, set_alias, survey, versions)

__all__ = ["ALIASES", "ChampionScore", "ChecksumMismatch", "DamagedEntry", "Gate", "InvalidCard", "InvalidModelName",
           "ModelNotFound", "ModelVersion", "Ref", "RegistryError", "check_name", "evaluation_id", "list_models", "load",
           "model_names", "parse_ref", "publish", "read_aliases", "registry_root", "resolve", "retire", "set_alias",
           "survey", "versions"]
