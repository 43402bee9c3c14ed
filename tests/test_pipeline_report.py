"""The pipeline's report answers the operator's questions in words (medmeta.training.report), the
flows' run names say what each run does (flows/run_names.py), and the training curve stays
readable when the first steps' losses are a hundred times the rest (medmeta.training.plots)."""

from __future__ import annotations

import re

from medmeta.training.report import headline, log_lines, pipeline_markdown, summary_text

EVALUATION = {"by_shots": [{"shots": 5, "episodes": 40, "rows": [
    {"method": "meta", "mean": 0.71, "ci95": 0.05, "low": 0.66, "high": 0.76},
    {"method": "from_scratch", "mean": 0.42, "ci95": 0.06, "low": 0.36, "high": 0.48},
    {"method": "pretrain_finetune", "mean": 0.55, "ci95": 0.04, "low": 0.51, "high": 0.59}],
    "paired": [{"method": "meta", "vs": "from_scratch", "mean_difference": 0.29, "ci95": 0.07},
               {"method": "meta", "vs": "pretrain_finetune", "mean_difference": 0.16, "ci95": 0.05}]}]}


def _summary(**more) -> dict:
    return {"started": "20261204T074500000000Z",
            "ingest": {"snapshot": "abc", "files_seen": 3, "files_ingested": 3, "files_unchanged": 0,
                       "files_quarantined": 0, "patients": 9, "images": 0},
            "validation": {"success": True, "rows_quarantined": 0, "critical_failures": []},
            "tasksets": [], "adapted": [],
            "models": [{"model": "m-1", "algorithm": "protonet", "taskset": "disease-records", "trained": True,
                        "steps": 4, "device": "cpu", "evaluation": headline(EVALUATION),
                        "published": {"name": "disease-records-protonet", "version": 2,
                                      "ref": "disease-records-protonet@2", "decision": "challenger"}}],
            **more}


def test_the_summary_states_scores_with_intervals_paired_differences_and_aliases():
    summary = _summary(registry={"disease-records-protonet": {"champion": 1, "challenger": 2}},
                       stages=[{"stage": "ingest", "run": "ingest-2026-12-04T07-45", "within": None,
                                "state": "COMPLETED", "seconds": 12.34},
                               {"stage": "validate", "run": "validate-2026-12-04T07-45",
                                "within": "ingest-2026-12-04T07-45", "state": "COMPLETED", "seconds": 3.0}],
                       seconds=185.0)
    markdown = pipeline_markdown(summary, {"Training curve: x": "![Training curve: x](data:image/png;base64,AA)"})
    [row] = [line for line in markdown.splitlines() if line.startswith("| protonet on disease-records")]
    assert "71.0% [66.0, 76.0]" in row and "42.0% [36.0, 48.0]" in row and "55.0% [51.0, 59.0]" in row
    assert "+29.0 pts ± 7.0" in row and "+16.0 pts ± 5.0" in row
    assert "`disease-records-protonet@2` (challenger)" in row and "champion v1, challenger v2" in row
    assert "**validation** **passed**" in markdown and "**took** 3 min 05 s" in markdown
    assert "| validate (within `ingest-2026-12-04T07-45`) | `validate-2026-12-04T07-45` | COMPLETED | 3.0 s |" in markdown
    assert "![Training curve: x](data:image/png;base64,AA)" in markdown
    lines = log_lines(summary)
    assert lines[0] == "validation passed; 0 rows quarantined"
    assert "registry disease-records-protonet: champion v1, challenger v2" in lines
    assert lines[-1].startswith("stages: ingest-2026-12-04T07-45 12.3 s, validate-2026-12-04T07-45 3.0 s (within")
    assert lines[-1].endswith("total 3 min 05 s")


def test_a_failed_validation_names_its_critical_expectations():
    summary = _summary(models=[], validation={"success": False, "rows_quarantined": 4,
                                              "critical_failures": ["patients.patient_id unique"]},
                       stages_error="the Prefect API did not answer (ConnectError)")
    markdown = pipeline_markdown(summary)
    assert "**FAILED**: critical expectations `patients.patient_id unique`" in markdown
    assert "durations not recorded: the Prefect API did not answer" in markdown
    assert "validation FAILED (critical: patients.patient_id unique)" in summary_text(summary)


def test_an_older_summary_without_intervals_or_registry_still_reads():
    summary = _summary()
    summary["models"][0]["evaluation"] = [{"shots": 5, "meta": {"accuracy": 0.7, "ci95": 0.05},
                                           "from_scratch": {"accuracy": 0.4, "ci95": 0.1}}]
    text = summary_text(summary)
    assert "70.0% [65.0, 75.0]" in text and "pretrain+fine-tune -" in text


def test_run_names_say_what_each_run_does_and_hold_no_path():
    from flows import run_names

    assert re.fullmatch(r"pipeline-\d{4}-\d\d-\d\dT\d\d-\d\d", run_names.dated("pipeline")())
    assert run_names.TRAIN.format(algorithm="protonet", taskset="t") == "train-protonet-t"
    assert run_names.taskset_run_name({"by": "disease", "inputs": "images", "ways": 3, "shots": 5, "queries": 3,
                                       "seed": 0}) == "tasksets-disease-images-3w5s3q-seed0"
    assert run_names.taskset_run_name({"by": "drug", "name": "rare-drugs"}) == "tasksets-rare-drugs"
    assert run_names.taskset_run_name({"by": "nope"}) == "tasksets-nope-invalid"
    from flows.evaluate import evaluate_flow
    from flows.ingest import ingest_flow
    from flows.pipeline import pipeline_flow
    from flows.publish import publish_flow
    from flows.tasksets import build_tasksets_flow
    from flows.train import train_flow
    from flows.validate import validate_flow
    from flows.watch import watch_landing_flow
    from flows.adapt import adapt_flow

    flows = [evaluate_flow, ingest_flow, pipeline_flow, publish_flow, build_tasksets_flow, train_flow,
             validate_flow, watch_landing_flow, adapt_flow]
    assert all(f.flow_run_name for f in flows), [f.name for f in flows if not f.flow_run_name]
    for landing_flow in (ingest_flow, pipeline_flow, watch_landing_flow):  # no parameter in a landing's name
        assert callable(landing_flow.flow_run_name)


def test_the_training_curve_keeps_the_later_losses_readable(tmp_path):
    from medmeta.training.plots import _loss_axis_top, training_curve

    losses = [155.0, 40.0] + [1.0 - i / 400 for i in range(198)]
    top = _loss_axis_top(losses)
    assert top is not None and top < 3, "the first steps' losses set the axis"
    assert _loss_axis_top([1.0 - i / 400 for i in range(200)]) is None
    history = [{"step": i + 1, "loss": loss, "accuracy": 0.5} for i, loss in enumerate(losses)]
    history[5]["loss"] = 0.0  # a zero loss on a log axis
    path = training_curve({"algorithm": "protonet", "taskset": "t", "history": history,
                           "validations": [{"step": 100, "accuracy": 0.6}]}, tmp_path / "curve.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
