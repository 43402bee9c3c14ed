"""A pipeline run whose snapshot fails a critical validation rule trains and publishes nothing."""

from __future__ import annotations

import json

import pytest

from tests.operate_fixtures import flow_runs, medmeta, medmeta_env, write_settings

pytestmark = pytest.mark.slow

FAILING_RULES = """\
tables:
  patients:
    - {id: at_most_one_patient, expectation: ExpectTableRowCountToBeBetween, min_value: 0, max_value: 1,
       severity: critical}
"""


def test_a_snapshot_failing_validation_stops_the_pipeline_before_training(operate_server, tmp_path):
    from medmeta import registry

    landing, home = tmp_path / "landing", tmp_path / "home"
    env = medmeta_env(operate_server.url)
    assert medmeta("synth", "--out", str(landing), "--patients", "20", "--seed", "3", env=env).returncode == 0
    rules = tmp_path / "rules.yaml"
    rules.write_text(FAILING_RULES)
    result = medmeta("run", str(landing), "--home", str(home), "--config", str(write_settings(tmp_path / "tiny.yaml")),
                     "--rules", str(rules), "--json", env=env)
    assert result.returncode == 1, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["state"] == "FAILED" and summary["status"] == "validation_failed"
    assert "failed validation (critical: patients.at_most_one_patient)" in summary["message"]
    assert "nothing was trained or published" in summary["message"]
    assert summary["validation"]["success"] is False and summary["models"] == [] and summary["tasksets"] == []
    assert "patients.at_most_one_patient" in result.stderr
    assert registry.model_names(home) == [] and not (home / "registry").exists()

    [run] = [r for r in flow_runs(operate_server.url, "pipeline") if r.parameters.get("home") == str(home)]
    assert run.state.is_failed() and "patients.at_most_one_patient" in run.state.message
    from medmeta.ingest.landings import landing_token
    from medmeta.pseudonyms import Pseudonymizer
    from tests.conftest import TEST_KEY

    assert run.parameters["landing"] == landing_token(landing, Pseudonymizer(TEST_KEY)), "Prefect holds no path"
