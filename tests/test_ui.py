"""The Prefect UI in headless Chromium shows a completed pipeline run's artifacts (the run that
tests/test_deployments.py triggered, on the same real server)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.slow

RENDER_TIMEOUT_S = 180


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed with apt when missing (never a browser download)."""
    found = shutil.which("chromium")
    if found:
        return found
    if not shutil.which("apt-get"):
        pytest.skip("chromium is not installed and apt-get is not available to install it")
    result = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        subprocess.run(["apt-get", "update"], capture_output=True, timeout=600)
        result = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
                                capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"apt-get install chromium failed: {result.stderr[-2000:]}"
    return shutil.which("chromium")


def render(chromium: str, url: str, folder, screenshot=None) -> str:
    """The DOM of ``url`` after the single-page app has rendered (and a screenshot when asked)."""
    folder.mkdir(parents=True, exist_ok=True)
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={folder / 'profile'}", "--window-size=1400,1000", "--virtual-time-budget=15000",
             "--hide-scrollbars"]
    if screenshot is not None:
        result = subprocess.run([*flags, f"--screenshot={screenshot}", url], capture_output=True, text=True,
                                timeout=RENDER_TIMEOUT_S)
        assert screenshot.is_file(), result.stderr[-2000:]
    result = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=RENDER_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-2000:]
    (folder / "dom.html").write_text(result.stdout)  # kept beside the screenshot, to see what was asserted on
    return result.stdout


def visible_text(dom: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


def _keys(triggered_run) -> dict[str, list[str]]:
    """The artifact keys each of the run's flow runs made (by flow name)."""
    from medmeta import registry
    from tasks.training import artifact_key

    home = triggered_run.served.home
    [name] = registry.model_names(home)
    taskset = _summary(triggered_run)["models"][0]["taskset"]
    return {
        "pipeline": ["medmeta-pipeline-summary"],
        "ingest": ["medmeta-ingest-summary", "medmeta-ingest-tables"],
        "validate": ["medmeta-validation-report", "medmeta-validation-rules"],
        "build-tasksets": ["medmeta-taskset"],
        "train": [artifact_key("medmeta-training-progress", taskset, "protonet"),
                  artifact_key("medmeta-training-curve", taskset, "protonet")],
        "evaluate": [artifact_key("medmeta-evaluation", taskset, "protonet"),
                     artifact_key("medmeta-accuracy-vs-shots", taskset, "protonet")],
        "publish": [artifact_key("medmeta-model-card", name), artifact_key("medmeta-model-link", name)],
        "_name": [name],
    }


def _summary(triggered_run) -> dict:
    import json

    path = sorted((triggered_run.served.home / "runs").glob("pipeline-*.json"))[0]  # the triggered run's (the first)
    return json.loads(path.read_text())


def test_the_ui_shows_the_pipeline_runs_artifacts(triggered_run, chromium, tmp_path):
    ui = triggered_run.served.server.ui
    keys = _keys(triggered_run)
    from tests.operate_fixtures import subflow_runs

    runs = {"pipeline": triggered_run.run, **{name: run for name, run in triggered_run.subflows}}
    [(_, runs["validate"])] = subflow_runs(triggered_run.served.server.url, runs["ingest"].id)
    screenshot = tmp_path / "pipeline-run-artifacts.png"
    for flow_name in ("pipeline", "ingest", "validate", "build-tasksets", "train", "evaluate", "publish"):
        url = f"{ui}/v2/runs/flow-run/{runs[flow_name].id}?tab=Artifacts"
        dom = render(chromium, url, tmp_path / flow_name, screenshot if flow_name == "pipeline" else None)
        text = visible_text(dom)
        missing = [key for key in keys[flow_name] if key not in text]
        assert not missing, f"{url} does not show {missing}"
    print(f"screenshot of the pipeline run's artifacts: {screenshot}")
    assert screenshot.stat().st_size > 10_000

    card_key, name = keys["publish"][0], keys["_name"][0]
    text = visible_text(render(chromium, f"{ui}/v2/artifacts/key/{card_key}", tmp_path / "card-key"))
    # a key's page lists every artifact with that key on the server, newest first: this run's is among them
    assert card_key in text and runs["publish"].name in text, f"the page of {card_key} does not show this run's card"
    dom = render(chromium, f"{ui}/v2/artifacts/artifact/{_artifact_id(triggered_run, card_key)}", tmp_path / "card")
    # the card rendered (its page also holds a hidden raw copy of the markdown: match elements)
    assert re.search(rf"<h1[^>]*>\s*{re.escape(name)} v1\s*</h1>", dom), "the model card's title is not rendered"
    assert re.search(r"<h2[^>]*>\s*Compared with the baselines\s*</h2>", dom), "the card's baselines are not rendered"


def _artifact_id(triggered_run, key: str):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, ArtifactFilterFlowRunId

    from tests.operate_fixtures import api

    runs = [run.id for _, run in triggered_run.subflows]
    with api(triggered_run.served.server.url) as client:
        [artifact] = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=runs)))
    return artifact.id


def _ready_when(needles: list[str], images: bool = False) -> str:
    """JavaScript: the page's visible text and inline PNGs once every needle shows (and, with
    ``images``, at least one PNG is decoded with a non-zero size); null before."""
    import json

    from tests.chromium_page import IMAGES_AND_TEXT

    wait_images = "true" if images else "false"
    return (f"(() => {{ const page = {IMAGES_AND_TEXT}; const needles = {json.dumps(needles)};"
            f" if (!needles.every(n => page.text.includes(n))) return null;"
            f" if ({wait_images} && !(page.images.length && page.images.every(i => i.complete && i.width > 0)))"
            f" return null; return page; }})()")


SCORE = re.compile(r"\d+\.\d% \[\d+\.\d, \d+\.\d\]")  # an accuracy with its 95% interval
DIFFERENCE = re.compile(r"[+-]\d+\.\d pts ± \d+\.\d")  # a paired difference with its 95% interval


def test_the_ui_answers_the_operators_three_questions(triggered_run, chromium, tmp_path):
    """From the pipeline's page and its summary artifact: did validation pass, what did each model
    score against both baselines (intervals), which version is champion and challenger now, how
    long each stage took; runs named by what they do; the training curve an image, not a URL."""
    from tests.chromium_page import read_pages

    ui, run = triggered_run.served.server.ui, triggered_run.run
    summary = _summary(triggered_run)
    [model] = summary["models"]
    taskset, name = model["taskset"], model["published"]["name"]
    assert re.fullmatch(r"pipeline-\d{4}-\d\d-\d\dT\d\d-\d\d", run.name), run.name

    # the run lists of the pipeline and of training name runs by what they do; the pipeline run's
    # page (its logs) answers the questions; its summary artifact answers them with the curve drawn
    flow_ids = {flow: subflow.flow_id for flow, subflow in triggered_run.subflows}
    logs_needles = ["validation passed", f"registry {name}: champion v1, challenger none", "stages: ",
                    f"train-protonet-{taskset}"]
    _, _, logs, page = read_pages(chromium, tmp_path / "pages", [
        (f"{ui}/v2/flows/flow/{run.flow_id}", _ready_when([run.name])),
        (f"{ui}/v2/flows/flow/{flow_ids['train']}", _ready_when([f"train-protonet-{taskset}"])),
        (f"{ui}/v2/runs/flow-run/{run.id}", _ready_when(logs_needles)),
        (f"{ui}/v2/artifacts/artifact/{_summary_artifact_id(triggered_run)}",
         _ready_when(["Registry after the run", "Stages"], images=True))])
    assert len(SCORE.findall(logs["text"])) >= 3, logs["text"][-3000:]
    text = page["text"]
    assert "validation passed" in text, text[:2000]
    [row] = [line for line in text.splitlines() if line.startswith(f"protonet on {taskset}")]
    assert len(SCORE.findall(row)) == 3, f"meta-learner and both baselines with intervals: {row}"
    assert len(DIFFERENCE.findall(row)) == 2, f"the paired difference to each baseline: {row}"
    assert "champion v1, challenger none" in row and f"{name}@1 (champion)" in row, row
    for stage in summary["stages"]:
        assert stage["run"] in text, f"the stage {stage['run']} is not in the summary's Stages"
    [curve] = page["images"]
    assert curve["width"] > 300 and curve["height"] > 100 and curve["alt"].startswith("Training curve"), curve
    assert "data:image" not in text, "an image's URL is printed as text"

    # the same answers in the run summary JSON and the pipeline's log lines
    flows = {s["stage"] for s in summary["stages"]}
    assert {"ingest", "validate", "build-tasksets", "train", "evaluate", "publish"} <= flows, summary["stages"]
    assert all(s["seconds"] is not None and s["seconds"] >= 0 for s in summary["stages"]) and summary["seconds"] > 0
    assert summary["registry"] == {name: {"champion": 1, "challenger": None}}
    logs = _log_messages(triggered_run)
    assert any(m.startswith("validation passed") for m in logs), logs
    assert any(m.startswith(f"protonet on {taskset}") and len(SCORE.findall(m)) == 3 for m in logs), logs
    assert f"registry {name}: champion v1, challenger none" in logs, logs
    assert any(m.startswith("stages: ") and f"train-protonet-{taskset}" in m for m in logs), logs


def _summary_artifact_id(triggered_run):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    from tests.operate_fixtures import api

    with api(triggered_run.served.server.url) as client:
        [artifact] = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["medmeta-pipeline-summary"]),
            flow_run_id=ArtifactFilterFlowRunId(any_=[triggered_run.run.id])))
    return artifact.id


def _log_messages(triggered_run) -> list[str]:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from tests.operate_fixtures import api

    with api(triggered_run.served.server.url) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[triggered_run.run.id])),
                                limit=200)
    return [log.message for log in logs]
