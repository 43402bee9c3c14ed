"""``predict(home, ref, query, support)``: class probabilities of each query case from a published model.

The model comes from the registry (safetensors, checked against its card's SHA-256) and its
learner is rebuilt from the card's ``config.spec``; nothing is unpickled and nothing is written.

- A meta-model adapts on the support set: labelled cases of exactly ``n_way`` classes (disease
  models: any class codes, in sorted order; drug models: ``no_response`` and ``response``).
- An adapted model (its card has ``adaptation``) predicts from its stored state, its classes in the
  card's label order; given a support set, its parent meta-model adapts on that support instead.
"""

from __future__ import annotations

from pathlib import Path

from medmeta.errors import MedmetaError
from medmeta.home import Home
from medmeta.predict.cases import DEFAULT_MAX_INPUT_BYTES, Cases, read_cases

DRUG_CLASSES = ["no_response", "response"]
QUERY_BATCH = 4096  # query cases per forward pass, so memory stays bounded however many there are


def model_inputs(cases: Cases, spec: dict, modalities: list[str] | None, role: str,
                 max_bytes: int = DEFAULT_MAX_INPUT_BYTES):
    """The cases as the learner's input (a tensor, or ``{"image", "record"}`` for fused inputs)."""
    import torch

    from medmeta.predict.images import load_images
    from medmeta.predict.records import record_features

    inputs = spec["inputs"]
    wants_images, wants_records = inputs in ("images", "both"), inputs in ("records", "both")
    if cases.files is not None and not wants_images:
        raise MedmetaError(f"{role} {cases.source}: holds images (a file column or DICOM folder), but the model takes "
                           f"records only")
    if wants_images and cases.files is None:
        raise MedmetaError(f"{role} {cases.source}: holds no images (no file column), but the model takes "
                           f"{inputs}: DICOM files listed in a 'file' column, or a DICOM folder")
    if wants_records and not cases.records:
        raise MedmetaError(f"{role} {cases.source}: holds no record columns, but the model takes {inputs} "
                           "(age_years, sex, lab:<LOINC> ...)")
    if not wants_records and cases.records:
        raise MedmetaError(f"{role} {cases.source}: has columns {', '.join(sorted(cases.records)[:6])}, but the model "
                           "takes images only (columns: id, file, label)")
    parts = {}
    if wants_images:
        size = int(spec["features"]["image"]["size"][0])
        parts["image"] = torch.from_numpy(load_images(cases.files, size, modalities, role, max_bytes))
    if wants_records:
        parts["record"] = torch.from_numpy(record_features(cases.records, cases.ids, spec["features"]["record"],
                                                           f"{role} {cases.source}"))
    return parts if len(parts) > 1 else next(iter(parts.values()))


def support_labels(cases: Cases, spec: dict, source) -> tuple[list[str], list[int]]:
    """(class codes in label order, each case's label index); exactly ``n_way`` classes."""
    n_way = int(spec["n_way"])
    found = sorted(set(cases.labels))
    if spec["kind"] == "drug":
        odd = [c for c in found if c not in DRUG_CLASSES]
        if odd:
            raise MedmetaError(f"support {source}: a drug model's labels are no_response and response, got "
                               f"{', '.join(odd)}")
        classes = list(DRUG_CLASSES)
    else:
        classes = found
    missing = [c for c in classes if c not in found]
    if len(found) != n_way or missing:
        raise MedmetaError(f"support {source}: the model is {n_way}-way and needs labelled cases of exactly {n_way} "
                           f"classes; the support set has {len(found)} ({', '.join(found)})"
                           + (f", none of {', '.join(missing)}" if missing else ""))
    index = {c: i for i, c in enumerate(classes)}
    return classes, [index[label] for label in cases.labels]


def _resolve(home: Home, ref: str):
    from medmeta import registry

    found = registry.resolve(home, ref)  # ModelNotFound lists what exists; DamagedEntry names the file
    config = found.card.get("config")
    spec = config.get("spec") if isinstance(config, dict) else None
    if not isinstance(spec, dict):
        raise MedmetaError(f"model {found.ref} has no config.spec in its card; it was not published by medmeta "
                           "train/publish and cannot be rebuilt")
    return found, spec


def _not_compounds(found, cases: Cases) -> None:
    """Compounds (a SMILES column) given to a records or images model: one line saying which model takes them."""
    from medmeta.predict.compounds import has_smiles_column

    if has_smiles_column(cases.records):
        takes = found.card["config"]["spec"].get("inputs", "records or images")
        raise MedmetaError(f"model {found.ref} is not a compound-activity model (it takes {takes}), but the "
                           f"{cases.source} cases have a SMILES column; rank compounds with a model whose card has "
                           "task_kind compound_activity")


def _learner(found, spec: dict):
    """The learner rebuilt from a card's spec, or one line saying the card's spec does not fit."""
    from medmeta.training.models import build_learner

    try:
        return build_learner(spec)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise MedmetaError(f"model {found.ref}: its card's config.spec can not be rebuilt "
                           f"({type(error).__name__}: {str(error)[:120]})") from None


def _rows(inputs, start: int, stop: int):
    return {k: v[start:stop] for k, v in inputs.items()} if isinstance(inputs, dict) else inputs[start:stop]


def _count(inputs) -> int:
    return len(next(iter(inputs.values()))) if isinstance(inputs, dict) else len(inputs)


def in_batches(predict_fn, inputs, batch: int = QUERY_BATCH):
    """``predict_fn(inputs)`` computed ``batch`` cases at a time and concatenated."""
    import torch

    total = _count(inputs)
    return torch.cat([predict_fn(_rows(inputs, start, start + batch)) for start in range(0, max(total, 1), batch)])


def query_batch(learner, inputs) -> int:
    """``QUERY_BATCH``, or every query case at once when the backbone normalises over the set it embeds
    (conv4's batch norm: a case's output depends on the other cases of its set, so splitting the query
    would change the predictions)."""
    return _count(inputs) if getattr(learner.net, "normalises_over_set", True) else QUERY_BATCH


def predict(home: Home, ref: str, query: Path, support: Path | None = None,
            max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES) -> dict:
    """``{"model", "classes", "adapted_on", "support", "predictions": {case id: {class: probability}}}``.

    Linear in the number of query cases; every input file is read once, checked to be a regular file
    of at most ``max_input_bytes`` (``cases.py``).
    """
    from collections import Counter

    import torch

    found, spec = _resolve(home, ref)
    card = found.card
    adaptation = card.get("adaptation")
    modalities = card.get("dicom_modalities")
    query_cases = read_cases(query, "query", max_input_bytes)
    _not_compounds(found, query_cases)
    query_x = model_inputs(query_cases, spec, modalities, "query", max_input_bytes)
    torch.manual_seed(0)
    learner = _learner(found, spec)
    used = found
    if adaptation and support is None:
        state = found.load_weights()
        classes = list(adaptation["label_order"])
        counts = {c["code"]: c["support_cases"] for c in adaptation["classes"]}
        logits = in_batches(lambda x: learner.predict_with_state(state, x), query_x, query_batch(learner, query_x))
        adapted_on = "stored state"
    else:
        if support is None:
            raise MedmetaError(f"model {found.ref} is a meta-model: give --support, labelled cases of {spec['n_way']} "
                               "classes to adapt it to")
        if adaptation:  # adapt the parent meta-model on the user's support instead
            parent = card["parent"]
            used, spec = _resolve(home, f"{parent['name']}@{parent['version']}")
            learner = _learner(used, spec)
        try:
            learner.load_state_dict(used.load_weights())
        except RuntimeError as error:  # tensors that do not fit the spec's architecture
            raise MedmetaError(f"model {used.ref}: its weights do not fit its card's config.spec "
                               f"({str(error).splitlines()[0][:160]})") from None
        learner.eval()
        support_cases = read_cases(support, "support", max_input_bytes)
        classes, labels = support_labels(support_cases, spec, support_cases.source)
        support_x = model_inputs(support_cases, spec, modalities, "support", max_input_bytes)
        per_label = Counter(labels)
        counts = {c: per_label[i] for i, c in enumerate(classes)}
        logits = in_batches(learner.adapt(support_x, torch.tensor(labels, dtype=torch.int64)), query_x,
                            query_batch(learner, query_x))
        adapted_on = "support"
    probabilities = torch.softmax(logits.double(), dim=-1).tolist()
    return {"model": found.ref, "weights_from": used.ref, "algorithm": spec["algorithm"], "classes": classes,
            "adapted_on": adapted_on, "support": counts,
            "predictions": {case: {c: round(p, 6) for c, p in zip(classes, row)}
                            for case, row in zip(query_cases.ids, probabilities)}}
