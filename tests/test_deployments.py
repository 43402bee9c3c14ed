"""``medmeta serve`` against a real Prefect server: the three deployments, and new case files in the
landing folder starting a pipeline run (through the watcher's event) that publishes a model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deployments.definitions import NIGHTLY, ON_NEW_CASES, WATCHER, arrival_resource
from tests.operate_fixtures import CRON, TIMEZONE, api, flow_runs, medmeta, medmeta_env
from tasks.concurrency import TRAINING_LIMIT
from tasks.watch import CASES_ARRIVED


def test_serve_without_a_server_says_how_to_get_one(tmp_path):
    (tmp_path / "landing").mkdir()
    result = medmeta("serve", "--landing", str(tmp_path / "landing"), "--home", str(tmp_path / "h"),
                     env=medmeta_env(None), timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("settings: the defaults, medmeta/config/pipeline.yaml (300 training steps, "
                                    "600 meta-test episodes"), result.stderr  # serve says which settings it uses
    assert "no Prefect server: set PREFECT_API_URL" in result.stderr and "medmeta server" in result.stderr


def test_serve_against_a_dead_server_says_it_does_not_answer(tmp_path):
    (tmp_path / "landing").mkdir()
    result = medmeta("serve", "--landing", str(tmp_path / "landing"), "--home", str(tmp_path / "h"),
                     env=medmeta_env("http://127.0.0.1:9/api"), timeout=120)
    assert result.returncode == 2
    assert "http://127.0.0.1:9/api does not answer" in result.stderr


@pytest.mark.slow
def test_serve_registers_the_nightly_and_the_triggered_deployments_and_no_watcher_runs(served):
    with api(served.server.url) as client:
        nightly = client.read_deployment_by_name(f"pipeline/{NIGHTLY}")
        on_new_cases = client.read_deployment_by_name(f"arrival/{ON_NEW_CASES}")
        names = {d.name for d in client.read_deployments()}
        automations = client.read_automations()
        training_limit = client.read_global_concurrency_limit_by_name(TRAINING_LIMIT)
    assert (training_limit.limit, training_limit.active) == (1, True)
    assert WATCHER not in names, "the watcher lives in the serve process: no deployment, no flow run per look"
    assert not flow_runs(served.server.url, "watch-landing")
    [schedule] = nightly.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone, schedule.active) == (CRON, TIMEZONE, True)
    landing = _landing_token(served.landing)  # Prefect holds the landing folder by its keyed token only
    from medmeta.settings import load_settings

    settings = load_settings(Path(served.config).resolve()).model_dump(mode="json")  # the form shows them, editable
    assert nightly.parameters == {"landing": landing, "home": str(served.home), "settings": settings}
    assert on_new_cases.schedules == [] and on_new_cases.parameters == nightly.parameters
    assert _one_at_a_time(nightly) == _one_at_a_time(on_new_cases) == (1, "ENQUEUE")
    assert str(served.landing) not in json.dumps([d.model_dump(mode="json") for d in (nightly, on_new_cases)])
    triggers = [a for a in automations if CASES_ARRIVED in a.trigger.expect]
    assert len(triggers) == 1, [a.name for a in automations]
    assert triggers[0].trigger.match.model_dump() == {"prefect.resource.id": arrival_resource(landing)}
    [action] = triggers[0].actions
    assert action.type == "run-deployment" and action.deployment_id == on_new_cases.id
    # beside its watcher, serve keeps the landing's change journal (medmeta/landing/journal.py) in the home
    assert "change journal kept" in served.log.read_text(errors="replace")
    journal = json.loads((served.home / "watch" / f"{landing}.json").read_text())
    assert journal["valid"] and journal["landing"] == landing and str(served.landing) not in json.dumps(journal)


@pytest.mark.slow
def test_new_cases_start_a_pipeline_run_that_publishes_a_model(triggered_run):
    from medmeta import registry

    run, served = triggered_run.run, triggered_run.served
    assert run.state.is_completed()
    assert [name for name, _ in triggered_run.subflows] == ["ingest", "build-tasksets", "train", "evaluate", "publish"]
    assert all(sub.state.is_completed() for _, sub in triggered_run.subflows)
    [ingest] = [sub for name, sub in triggered_run.subflows if name == "ingest"]
    assert ingest.parameters["source"] == _landing_token(served.landing), "the subflow got the token, not the path"
    [name] = registry.model_names(served.home)
    assert registry.versions(served.home, name) == [1]
    assert registry.read_aliases(served.home, name)["champion"] == 1


@pytest.mark.slow
def test_the_arrival_event_carries_counts_only(triggered_run, cohort):
    from prefect.events.filters import EventFilter, EventNameFilter

    with api(triggered_run.served.server.url) as client:
        events = client.read_events(EventFilter(event=EventNameFilter(name=[CASES_ARRIVED])), limit=50).events
    assert events, "the watcher emitted no event"
    files = [p for p in cohort.rglob("*") if p.is_file()]
    for event in events:
        assert set(event.payload) <= {"files", "new", "changed", "removed"}, event.payload
        assert all(isinstance(v, int) for v in event.payload.values()), event.payload
        text = json.dumps(event.model_dump(mode="json"))
        assert str(triggered_run.served.landing) not in text
        assert not [p.name for p in files if p.name in text]
    assert sum(e.payload["new"] for e in events) == len(files)
    assert len(events) == 1, "the cohort, dropped at once, is one arrival"


@pytest.mark.slow
def test_one_arrival_is_one_run_and_another_landings_arrival_starts_nothing(triggered_run, tmp_path):
    """At most one flow run per arrival (the cohort's 240 patients' files), none while nothing
    arrives; an arrival event of a second landing folder (its own token) starts nothing here."""
    import time

    from prefect.client.schemas.filters import FlowRunFilterDeploymentId
    from prefect.client.schemas.objects import StateType
    from prefect.events.clients import PrefectEventsClient
    from prefect.events.filters import EventFilter, EventNameFilter
    from prefect.events.schemas.events import Event
    from prefect.utilities.asyncutils import run_coro_as_sync

    url = triggered_run.served.server.url
    with api(url) as client:
        ids = [client.read_deployment_by_name(name).id for name in (f"pipeline/{NIGHTLY}", f"arrival/{ON_NEW_CASES}")]

    def runs() -> list:
        """Runs that started (the nightly's future runs the scheduler creates ahead are Scheduled)."""
        return [r for r in flow_runs(url, deployment_id=FlowRunFilterDeploymentId(any_=ids))
                if r.state_type != StateType.SCHEDULED or r.deployment_id == ids[1]]

    assert [r.id for r in runs()] == [triggered_run.run.id]
    other = tmp_path / "other-landing"
    other.mkdir()
    event = Event(event=CASES_ARRIVED, resource={"prefect.resource.id": arrival_resource(_landing_token(other))},
                  payload={"files": 1, "new": 1, "changed": 0, "removed": 0})

    async def send() -> None:
        async with PrefectEventsClient(api_url=url) as events:
            await events.emit(event)

    run_coro_as_sync(send())
    time.sleep(10)  # an automation reacts within a second or two
    with api(url) as client:
        seen = client.read_events(EventFilter(event=EventNameFilter(name=[CASES_ARRIVED])), limit=50).events
    assert event.id in {e.id for e in seen}, "the other landing's event reached the server"
    assert [r.id for r in runs()] == [triggered_run.run.id], "another landing's arrival started a run here"
    assert not flow_runs(url, "watch-landing")


@pytest.mark.slow
def test_prefect_yaml_deploys_the_deployments_on_their_work_pools(tmp_path):
    """`prefect deploy --all` with the repository's prefect.yaml, on a server of its own (its
    deployments have the same names as those `medmeta serve` registers)."""
    import subprocess
    import sys
    from pathlib import Path

    from prefect.client.schemas.actions import WorkPoolCreate

    from deployments.kubernetes import POOL_NAME as K8S_POOL
    from deployments.kubernetes import TEMPLATE_PATH as K8S_TEMPLATE
    from tests.operate_fixtures import ROOT
    from tests.prefect_server import prefect_server

    with prefect_server(tmp_path / "server", tmp_path / "server.log") as url:
        with api(url) as client:
            for pool in ("medmeta-process", "medmeta-gpu"):
                client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            client.create_work_pool(WorkPoolCreate(name=K8S_POOL, type="kubernetes",
                                                   base_job_template=json.loads(K8S_TEMPLATE.read_text())))
        prefect = str(Path(sys.executable).with_name("prefect"))
        result = subprocess.run([prefect, "--no-prompt", "deploy", "--all"], cwd=ROOT, capture_output=True, text=True,
                                env=medmeta_env(url, MEDMETA_REPO=str(ROOT)), timeout=300)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        with api(url) as client:
            deployments = {f"{d.name}": d for d in client.read_deployments()}
            automations = client.read_automations()
            refusals = [_k8s_refusal(client, deployments["train-k8s-gpu"].flow_id, bad)
                        for bad in ({"gpu_count": -1}, {"gpu_count": "2"}, {"gpus": 2})]
    assert [status for status, _ in refusals] == [422, 422, 422], refusals
    assert "gpu_count" in refusals[0][1] and "'gpus' was unexpected" in refusals[2][1]
    assert set(deployments) == {NIGHTLY, ON_NEW_CASES, WATCHER, "train-gpu", "nightly-k8s", "train-k8s-gpu"}
    assert {d.work_pool_name for n, d in deployments.items() if n in (NIGHTLY, ON_NEW_CASES, WATCHER)} == {"medmeta-process"}
    assert {deployments[n].work_pool_name for n in ("nightly-k8s", "train-k8s-gpu")} == {K8S_POOL}
    assert deployments["train-k8s-gpu"].job_variables["gpu_count"] == 2
    assert deployments["nightly-k8s"].pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "/opt/medmeta"}}]
    assert deployments["train-gpu"].work_pool_name == "medmeta-gpu"
    assert deployments["train-gpu"].job_variables["env"]["CUDA_VISIBLE_DEVICES"] == "0"
    [schedule] = deployments[NIGHTLY].schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 2 * * *", "UTC")
    assert _one_at_a_time(deployments[ON_NEW_CASES]) == (1, "ENQUEUE")
    assert _one_at_a_time(deployments[WATCHER]) == (1, "CANCEL_NEW")
    assert deployments[WATCHER].schedules == [], "one long-lived watcher run, started once, not a look per interval"
    [trigger] = [a for a in automations if CASES_ARRIVED in a.trigger.expect]
    assert trigger.actions[0].deployment_id == deployments[ON_NEW_CASES].id
    assert deployments[NIGHTLY].pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]


def _k8s_refusal(client, flow_id, job_variables: dict) -> tuple[int, str]:
    """The server's answer to a deployment on the medmeta-k8s pool with these job variables."""
    from prefect.exceptions import PrefectHTTPStatusError

    from deployments.kubernetes import POOL_NAME

    try:
        client.create_deployment(flow_id=flow_id, name="bad-job-variables", work_pool_name=POOL_NAME,
                                 job_variables=job_variables)
    except PrefectHTTPStatusError as refused:
        return refused.response.status_code, refused.response.text
    return 201, "created"


def _landing_token(landing) -> str:
    from medmeta.ingest.landings import landing_token
    from medmeta.pseudonyms import Pseudonymizer
    from tests.conftest import TEST_KEY

    return landing_token(landing, Pseudonymizer(TEST_KEY))


def _one_at_a_time(deployment) -> tuple[int, str]:
    """The deployment's concurrency limit and what happens to a run beyond it."""
    return deployment.global_concurrency_limit.limit, deployment.concurrency_options.collision_strategy.value
