"""A small records model published straight into a registry: a real ProtoNet learner rebuilt from
its spec, real safetensors weights and card, so ``medmeta predict`` runs on it without the pipeline.

    publish_records_model(home) -> ModelVersion      (name RECORDS_MODEL, 2-way disease model)
    support_rows(), query_rows(n)                    cases in the columns the model takes
    forge_weights(version, data)                     replace the weights and their card entry (size,
                                                     checksum) together: damage the checksum can not see
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path

RECORDS_MODEL = "toy-records"
HEADER = ["id", "label", "age_years", "sex", "lab:718-7"]
SPEC = {
    "algorithm": "protonet",
    "backbone": {"name": "mlp", "config": {"in_features": 5, "hidden": [8]}},
    "learner": {},
    "n_way": 2,
    "kind": "disease",
    "inputs": "records",
    "features": {"record": {"names": ["age_years", "sex_female", "sex_male", "lab:718-7", "missing:718-7"],
                            "mean": [60.0, 0.0, 0.0, 13.0, 0.0], "std": [15.0, 1.0, 1.0, 2.0, 1.0]}},
}


def publish_records_model(home: Path, name: str = RECORDS_MODEL):
    import torch

    from medmeta import registry
    from medmeta.training.models import build_learner

    torch.manual_seed(0)
    learner = build_learner(SPEC)
    card = {"algorithm": "protonet", "metrics": {"accuracy": 0.6}, "evaluation_id": "ev-test",
            "purpose": "A test model.", "config": {"spec": SPEC}}
    return registry.publish(home, name, learner.state_dict(), card)


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def support_rows() -> list[list]:
    return [[f"s{i}", "E11.9" if i % 2 else "I50.9", 50 + i, "female" if i % 3 else "male", 12 + i % 4]
            for i in range(6)]


def query_rows(n: int) -> list[list]:
    return [[f"q{i}", "", 40 + i % 50, "male" if i % 2 else "female", "" if i % 7 == 0 else 11 + i % 5]
            for i in range(n)]


def forge_weights(version, data: bytes) -> None:
    """Write ``data`` as ``version``'s weights and record its size and SHA-256 in the card."""
    card_path, weights = version.card_path, version.weights_path
    for path in (card_path, weights):
        os.chmod(path, 0o644)
    card = json.loads(card_path.read_text())
    card["weights"].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    card_path.write_text(json.dumps(card, indent=2))
    weights.write_bytes(data)
