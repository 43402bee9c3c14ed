"""medmeta's settings: one pydantic model, defaults in medmeta/config/pipeline.yaml, a user file over them.

``load_settings(FILE)`` reads the file once, where a command starts (medmeta/cli.py, ``medmeta
serve``, the deployments); flows take the ``Settings`` as a typed parameter, so Prefect shows it
in a custom run's form. A user file may leave keys out (the defaults stay). An unknown key, a
value of the wrong type or out of range is refused with one line that names the file and the key
(``settings.yaml: train.steps must be a positive integer, got 0``), never a traceback.

The sections keep the access the code has always used: ``settings.train["steps"]``,
``settings.evaluate["shots"]``, ``settings.publish["margin"]``, ``settings.ingest["image_size"]``
and ``settings.tasksets`` (a list of dicts) are plain dicts, checked by the ``TypedDict`` of their
section. A key in pipeline.yaml that no ``TypedDict`` declares yet is still accepted (its
default's place in the YAML is what makes it known) and kept unchecked: give it a line in its
section's ``TypedDict`` to check its type.

An old ingest settings file (medmeta/config/ingest.yaml, flat: ``image_size: 128`` at the top)
keeps working: a file whose top-level keys are all ingest keys is read as its ``ingest:`` section.
A file that mixes ingest keys with sections is refused, saying which keys to move under ``ingest:``.

The pseudonym key and the landing folder are never settings: Prefect stores the settings of
every flow run.
"""

from __future__ import annotations

import copy
import os
import re
from datetime import date
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import yaml
from pydantic import (BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, ValidationError,
                      model_validator)
from typing_extensions import NotRequired, Required, TypedDict

from medmeta.errors import MedmetaError

DEFAULT_FILE = "pipeline.yaml"
DEFAULT_SOURCE = f"medmeta/config/{DEFAULT_FILE}"
ALGORITHMS = ("maml", "fomaml", "reptile", "protonet", "matchingnet")
NPROC_ENV = "MEDMETA_TRAIN_NPROC"  # overrides train.nproc (a Kubernetes job sets the world size with it)
SECTIONS = ("ingest", "validation", "tasksets", "train", "evaluate", "publish", "serve", "arrival", "compounds")
# mappings whose keys are the user's (merged one level: a user's `learner: {maml: {...}}` replaces maml's)
_FREE = {("train", "backbone"), ("train", "learner"), ("ingest", "issuer_aliases"), ("compounds", "learner")}

Algorithm = Literal["maml", "fomaml", "reptile", "protonet", "matchingnet"]
PositiveInt = Annotated[StrictInt, Field(ge=1)]
Count = Annotated[StrictInt, Field(ge=0)]
Number = StrictFloat  # an integer is taken too (as a float); text and true/false are not
Fraction = Annotated[Number, Field(ge=0, lt=1)]
_SITE = r"^[A-Za-z0-9_-]{1,64}$"
_OPEN = ConfigDict(extra="allow")  # keys the YAML knows but no TypedDict declares yet: kept unchecked


class IngestSection(TypedDict):
    """medmeta.ingest.config.IngestConfig's fields (its docstrings say what each does)."""

    __pydantic_config__ = _OPEN
    image_size: Annotated[StrictInt, Field(ge=8)]
    max_pixels_per_image: PositiveInt
    max_file_bytes: PositiveInt
    max_zip_entry_bytes: PositiveInt
    max_zip_total_bytes: PositiveInt
    max_zip_entries: PositiveInt
    age_reference_date: date
    workers: Count
    batch_size: PositiveInt
    dask_address: Optional[str]
    dask_task_seconds: Count
    reread_unchanged: StrictBool
    display_min_patients: PositiveInt
    site: Optional[Annotated[str, Field(pattern=_SITE)]]
    issuer_aliases: dict[str, str]


class ValidationSection(TypedDict):
    __pydantic_config__ = _OPEN
    rules: Optional[str]  # a rules file replacing the defaults per table; `--rules` overrides it


class TaskSetEntry(TypedDict, total=False):
    """One task set: ``medmeta tasks build``'s options (medmeta.tasksets.spec.make_spec); only the keys given."""

    __pydantic_config__ = ConfigDict(extra="forbid")
    by: Required[Literal["disease", "drug", "target"]]
    inputs: NotRequired[Optional[Literal["images", "records", "both", "compounds"]]]
    ways: NotRequired[Optional[Annotated[StrictInt, Field(ge=2)]]]
    shots: NotRequired[Optional[PositiveInt]]
    queries: NotRequired[Optional[PositiveInt]]
    seed: NotRequired[StrictInt]
    name: NotRequired[Optional[str]]
    system: NotRequired[str]
    concept_maps: NotRequired[list[str]]
    outcomes: NotRequired[Optional[str]]
    label_policy: NotRequired[Literal["auto", "rarest", "per-split"]]
    conditions: NotRequired[Literal["disorders", "all"]]
    feature_min_patients_fraction: NotRequired[Annotated[Number, Field(ge=0, le=1)]]
    threshold: NotRequired[Optional[Annotated[Number, Field(ge=0, le=14)]]]  # target tasks: a fixed pActivity cut
    test_tasks: NotRequired[Optional[PositiveInt]]  # target tasks: exactly N meta-test tasks, no meta-val (FS-Mol)


class TrainSection(TypedDict):
    __pydantic_config__ = _OPEN
    algorithms: Annotated[list[Algorithm], Field(min_length=1)]
    steps: PositiveInt
    meta_batch: PositiveInt
    lr: Annotated[Number, Field(gt=0)]
    val_every: PositiveInt
    val_episodes: PositiveInt
    patience: Optional[PositiveInt]  # null: no early stopping
    checkpoint_every: PositiveInt
    seed: StrictInt
    device: str
    nproc: PositiveInt
    backbone: dict[str, dict[str, Any]]  # per input kind; metalearn checks the values
    learner: dict[Algorithm, dict[str, Any]]  # per algorithm: metalearn.build_learner's keyword arguments


class EvaluateSection(TypedDict):
    __pydantic_config__ = _OPEN
    episodes: Annotated[StrictInt, Field(ge=2)]
    shots: Annotated[list[PositiveInt], Field(min_length=1)]
    baseline_steps: Count
    baseline_stop_loss: Annotated[Number, Field(ge=0)]
    baseline_lr: Annotated[Number, Field(gt=0)]
    pretrain_steps: Count


class PublishSection(TypedDict):
    __pydantic_config__ = _OPEN
    metric: Literal["accuracy"]
    shots: PositiveInt
    margin: Fraction
    adapt: StrictBool


class ServeSection(TypedDict):
    __pydantic_config__ = _OPEN
    cron: str
    timezone: str
    watch_every: PositiveInt


class ArrivalSection(TypedDict):
    __pydantic_config__ = _OPEN
    warm_steps: PositiveInt


SupportSize = Annotated[StrictInt, Field(ge=2, multiple_of=2)]
CompoundAlgorithm = Literal["activity_gp", "maml", "fomaml", "reptile", "protonet", "matchingnet"]
COMPOUND_BACKBONE_KEYS = ("name", "featuriser", "hidden")  # train.backbone.compounds


class EpisodicSection(TypedDict):
    """compounds.episodic: meta-training of the episodic learners on a target task set (medmeta.chem.episodic)."""

    __pydantic_config__ = _OPEN
    steps: PositiveInt
    meta_batch: PositiveInt
    lr: Annotated[Number, Field(gt=0)]
    query_size: PositiveInt


class CompoundsSection(TypedDict):
    """Compound-activity models of target task sets (medmeta.chem.training / publish, issue 15)."""

    __pydantic_config__ = _OPEN
    algorithms: Annotated[list[CompoundAlgorithm], Field(min_length=1)]  # each trained and evaluated per task set
    episodic: EpisodicSection
    featuriser: str  # ActivityGP's: a name in medmeta.chem.features.FEATURISERS (checked in Settings._consistent)
    learner: dict[str, Any]  # metalearn.activity.ActivityGP keyword arguments (in_features and blocks: the featuriser's)
    steps: PositiveInt  # meta-training steps
    checkpoint_every: PositiveInt
    seed: StrictInt
    device: str  # auto: cuda when present, else cpu
    support_sizes: Annotated[list[SupportSize], Field(min_length=1)]
    draws: PositiveInt  # draws per test task and support size
    validation_draws: Count  # draws per validation task (0: no validation report)
    gate_support_size: SupportSize
    baselines: Annotated[list[Literal["rf", "logistic_regression", "tanimoto_knn"]], Field(min_length=1)]
    margin: Annotated[Number, Field(ge=0)]


class Settings(BaseModel):
    """The whole pipeline's settings. Built by ``load_settings`` (a file over the defaults); a dict
    (a deployment's parameter, the custom-run form) is laid over the defaults the same way, and a
    string is taken as a settings file's path (prefect.yaml's ``settings: /path/settings.yaml``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ingest: IngestSection
    validation: ValidationSection
    tasksets: Annotated[list[TaskSetEntry], Field(min_length=1)]
    train: TrainSection
    evaluate: EvaluateSection
    publish: PublishSection
    serve: ServeSection
    arrival: ArrivalSection
    compounds: CompoundsSection
    source: str = Field(DEFAULT_SOURCE, description="Where the settings came from (messages, model cards).")

    @model_validator(mode="before")
    @classmethod
    def _over_the_defaults(cls, value: Any) -> Any:
        if isinstance(value, (str, os.PathLike)):
            return _raw_from_file(Path(value))
        if isinstance(value, dict):
            raw = dict(value)
            source = str(raw.pop("source", None) or DEFAULT_SOURCE)
            raw = _overlay(_defaults(), raw, (), source)
            return {**raw, "source": _nproc_from_env(raw, source)}
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "Settings":
        address = self.ingest.get("dask_address")
        if address is not None:
            from medmeta.ingest.config import dask_address

            try:
                dask_address(address, "ingest")
            except MedmetaError:
                raise ValueError(f"ingest.dask_address must be a Dask scheduler address such as tcp://host:8786, "
                                 f"got {_shown(address)}") from None
        if self.publish["shots"] not in self.evaluate["shots"]:
            raise ValueError(f"publish.shots ({self.publish['shots']}) must be one of evaluate.shots "
                             f"{self.evaluate['shots']}")
        if self.compounds["gate_support_size"] not in self.compounds["support_sizes"]:
            raise ValueError(f"compounds.gate_support_size ({self.compounds['gate_support_size']}) must be one of "
                             f"compounds.support_sizes {self.compounds['support_sizes']}")
        _check_compounds(self.compounds, self.train["backbone"].get("compounds"))
        return self

    def as_dict(self) -> dict:
        """The settings as JSON values, without ``source`` (``settings_from_dict`` reads them back)."""
        return self.model_dump(mode="json", exclude={"source"})

    def ingest_config(self, **overrides):
        """The ``IngestConfig`` of the ingest section (``$MEDMETA_DASK_ADDRESS`` and non-None ``overrides`` win)."""
        from medmeta.ingest.config import IngestConfig

        return IngestConfig.from_settings(self, **overrides)


PipelineSettings = Settings  # the name the training code imports


def _check_compounds(compounds: dict, backbone: Any) -> None:
    """The compound models' featurisers and algorithms, and train.backbone.compounds (an MLP over a featuriser's
    columns): a ``ValueError`` of one line naming the key."""
    from medmeta.chem.features import FEATURISERS  # numpy only: RDKit is imported when a featuriser runs

    known = ", ".join(FEATURISERS)
    if compounds["featuriser"] not in FEATURISERS:
        raise ValueError(f"compounds.featuriser must be one of {known}, got {_shown(compounds['featuriser'])}")
    algorithms = list(compounds["algorithms"])
    if len(set(algorithms)) != len(algorithms):
        raise ValueError(f"compounds.algorithms names an algorithm twice: {algorithms}")
    if backbone is None:
        if set(algorithms) - {"activity_gp"}:
            raise ValueError("train.backbone.compounds is required for the episodic learners in compounds.algorithms")
        return
    where = "train.backbone.compounds"
    if not isinstance(backbone, dict):
        raise ValueError(f"{where} must be a mapping, got {_shown(backbone)}")
    unknown = sorted(set(backbone) - set(COMPOUND_BACKBONE_KEYS))
    if unknown:
        raise ValueError(f"{where}.{unknown[0]} is not a known key; known: {', '.join(COMPOUND_BACKBONE_KEYS)}")
    if backbone.get("name", "mlp") != "mlp":
        raise ValueError(f"{where}.name must be mlp (an MLP over the featuriser's columns), got {_shown(backbone['name'])}")
    if backbone.get("featuriser") not in FEATURISERS:
        raise ValueError(f"{where}.featuriser must be one of {known}, got {_shown(backbone.get('featuriser'))}")
    hidden = backbone.get("hidden")
    if (not isinstance(hidden, list) or not hidden
            or not all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden)):
        raise ValueError(f"{where}.hidden must be a list of positive integers (the MLP's layer widths), got {_shown(hidden)}")


@lru_cache(maxsize=1)
def _default_text() -> str:
    return resources.files("medmeta.config").joinpath(DEFAULT_FILE).read_text()


def _defaults() -> dict:
    return yaml.safe_load(_default_text())


def _overlay(base: dict, user: dict, where: tuple[str, ...], source: str) -> dict:
    """``user`` laid over ``base``: a key ``base`` does not have is refused, naming it."""
    out = copy.deepcopy(base)
    for key, value in user.items():
        here = (*where, str(key))
        if key not in base:
            raise MedmetaError(f"{source}: unknown setting {'.'.join(here)}; known: {', '.join(sorted(map(str, base)))}")
        if here in _FREE and isinstance(value, dict) and isinstance(base[key], dict):
            out[key] = {**base[key], **value}
        elif isinstance(base[key], dict) and isinstance(value, dict):
            out[key] = _overlay(base[key], value, here, source)
        else:
            out[key] = value  # the model checks it (a mapping given a scalar, too)
    return out


def _nproc_from_env(raw: dict, source: str) -> str:
    value = os.environ.get(NPROC_ENV)
    if value is None or value.strip() == "" or not isinstance(raw.get("train"), dict):
        return source
    try:
        nproc = int(value)
    except ValueError:
        raise MedmetaError(f"{NPROC_ENV} must be a positive integer (training processes), got {value!r}") from None
    raw["train"]["nproc"] = nproc
    return source if source.endswith(f" with {NPROC_ENV}") else f"{source} with {NPROC_ENV}"


def _ingest_keys() -> set[str]:
    return set(_defaults()["ingest"])


def _raw_from_file(path: Path) -> dict:
    """The user's file over the defaults, not yet checked: a dict with ``source`` = the file."""
    try:
        user = yaml.safe_load(path.read_text())
    except OSError as error:
        raise MedmetaError(f"{path}: cannot read the settings ({error.strerror or error})") from None
    except yaml.YAMLError as error:
        raise MedmetaError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from None
    user = user or {}
    if not isinstance(user, dict):
        raise MedmetaError(f"{path}: the settings must be a mapping of sections ({', '.join(SECTIONS)})")
    flat = sorted(str(k) for k in user if k in _ingest_keys() and k not in SECTIONS)
    if flat and len(flat) == len(user):  # an old ingest.yaml-shaped file: its keys are the ingest section
        user = {"ingest": user}
    elif flat:
        raise MedmetaError(f"{path}: {', '.join(flat)} {'is an ingest setting' if len(flat) == 1 else 'are ingest settings'}"
                           f": move {'it' if len(flat) == 1 else 'them'} under `ingest:`")
    raw = _overlay(_defaults(), user, (), str(path))
    return {**raw, "source": str(path)}


def load_settings(path: str | os.PathLike | None = None) -> Settings:
    """The settings of ``path`` over the defaults (the defaults alone for None); ``$MEDMETA_TRAIN_NPROC``
    overrides ``train.nproc``. A bad file: a ``MedmetaError`` of one line naming the file and the key."""
    raw = _defaults() if path is None else _raw_from_file(Path(path))
    return checked(raw, str(path) if path is not None else DEFAULT_SOURCE)


def settings_from_dict(raw: dict, source: str) -> Settings:
    """Settings as ``Settings.as_dict()`` wrote them (a torchrun rank gets them so), checked again."""
    return checked({**raw, "source": source}, source)


def checked(raw: Any, source: str) -> Settings:
    """``Settings.model_validate(raw)``; a ``ValidationError`` becomes one line naming ``source`` and the key."""
    try:
        return Settings.model_validate(raw)
    except ValidationError as error:
        raise MedmetaError(error_line(error, source)) from None


def error_line(error: ValidationError, source: str) -> str:
    """The first problem of ``error`` as ``FILE: section.key must be ..., got VALUE`` (and how many more)."""
    problems = error.errors(include_url=False)
    first = problems[0]
    where = _location(first["loc"])
    line = f"{source}: {where + ' ' if where else ''}{_reason(first)}"
    more = len(problems) - 1
    return line + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


def _location(loc: tuple) -> str:
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts[-1:] = [f"{parts[-1] if parts else ''}[{part}]"]
        elif part == "[key]":  # a mapping's key, not its value, is wrong
            continue
        elif not re.fullmatch(r"function-[a-z]+\[.*\]|[a-z-]+\[.*\]", str(part)):  # pydantic's union branches
            parts.append(str(part))
    return ".".join(parts)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _reason(problem: dict) -> str:
    kind, ctx, value = problem["type"], problem.get("ctx") or {}, problem.get("input")
    if kind == "greater_than_equal" and ctx.get("ge") == 1 and isinstance(value, int):
        return f"must be a positive integer, got {_shown(value)}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be an integer, got {_shown(value)}"
    if kind == "bool_type":
        return f"must be true or false, got {_shown(value)}"
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a known key"
    if kind == "value_error":
        return str(ctx.get("error", problem["msg"]))
    if kind in ("dict_type", "model_type"):
        return f"must be a mapping, got {_shown(value)}"
    message = problem["msg"].replace("Input should be", "must be").replace("Value should have", "must have")
    message = message.replace("String should match pattern", "must match")
    return f"{message[0].lower()}{message[1:]}, got {_shown(value)}"
