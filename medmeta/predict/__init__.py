"""``medmeta predict``: class probabilities for new cases from a published model (no Prefect).

    predict(home, "NAME[@alias|version]", query, support=None) -> {"predictions": {case id: {class: p}}, ...}

A compound-activity model (card ``task_kind == "compound_activity"``) ranks a compound library instead:
``compounds.predict_compounds(found, support, query, max_bytes)`` (the CLI routes there).

cases.py reads the CSV or DICOM folder a user gives, images.py decodes DICOM as ingest does,
records.py standardises raw record values with the card's statistics, run.py ties them to the
registry and the learner.
"""

from medmeta.predict.run import predict

__all__ = ["predict"]
