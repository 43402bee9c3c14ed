"""The ``medmeta-k8s`` work pool without a cluster: each Kubernetes deployment of prefect.yaml
rendered into its job by prefect-kubernetes' own code (the worker's ``from_template_and_values``
and ``prepare_for_flow_run``), checked against the Kubernetes ``V1Job`` model; job variables
checked by Prefect's server-side validation; the Dockerfile and .dockerignore checked by rule.

No Docker engine and no cluster run here: ``docker build`` and a real job are for docs/kubernetes.md.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import subprocess
import tomllib
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from deployments.kubernetes import POOL_NAME, RUN_AS, TEMPLATE_PATH, medmeta_base_job_template, template_text
from tests.conftest import TEST_KEY

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = json.loads(TEMPLATE_PATH.read_text())
K8S_DEPLOYMENTS = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
                   if d["work_pool"]["name"] == POOL_NAME}
WORKERS_OWN_API = "http://127.0.0.1:4200/api"  # what a worker started on a laptop would pass on


def render_job(job_variables: dict, deployment_name: str = "nightly-k8s", flow_name: str = "pipeline") -> dict:
    """The Job manifest a Kubernetes worker submits for a flow run of a deployment with these job variables."""
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.objects import Flow, FlowRun, WorkPool
    from prefect.client.schemas.responses import DeploymentResponse
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    flow = Flow(id=uuid.uuid4(), name=flow_name)
    deployment = DeploymentResponse(id=uuid.uuid4(), name=deployment_name, flow_id=flow.id,
                                    job_variables=job_variables)
    flow_run = FlowRun(id=uuid.uuid4(), name="patient-otter", flow_id=flow.id, deployment_id=deployment.id)
    pool = WorkPool(id=uuid.uuid4(), name=POOL_NAME, type="kubernetes", base_job_template=TEMPLATE)

    async def configure():
        # rendering needs no API (no block or variable placeholders): a client to nowhere proves it
        nowhere = PrefectClient(api="http://127.0.0.1:9/api")
        return await KubernetesWorkerJobConfiguration.from_template_and_values(TEMPLATE, job_variables, client=nowhere)

    with temporary_settings({PREFECT_API_URL: WORKERS_OWN_API}):
        configuration = asyncio.run(configure())
        configuration.prepare_for_flow_run(flow_run, deployment=deployment, flow=flow, work_pool=pool,
                                           worker_name="medmeta-k8s-worker")
    return configuration.job_manifest


def as_v1_job(manifest: dict):
    """The manifest read by the Kubernetes client's own deserializer into its ``V1Job`` model (which
    checks required fields), and that model written back (a key the model does not know is lost)."""
    from kubernetes_asyncio.client import ApiClient

    async def read():
        async with ApiClient() as api:
            job = api.deserialize(SimpleNamespace(data=json.dumps(manifest)), "V1Job")
            return job, api.sanitize_for_serialization(job)

    return asyncio.run(read())


def check_job_variables(job_variables: dict) -> None:
    """Prefect's server-side check of a deployment's job variables against the pool's schema
    (what `prefect deploy` meets); raises the server's HTTP 422 exception."""
    from prefect.server.api.validation import validate_job_variables_for_deployment
    from prefect.server.schemas.actions import DeploymentCreate
    from prefect.server.schemas.core import WorkPool

    pool = WorkPool(name=POOL_NAME, type="kubernetes", base_job_template=TEMPLATE)
    deployment = DeploymentCreate(name="probe", flow_id=uuid.uuid4(), job_variables=job_variables)
    # the session is used only to load blocks that defaults refer to; this template's refer to none
    asyncio.run(validate_job_variables_for_deployment(None, pool, deployment))


def _container(manifest: dict) -> dict:
    [container] = manifest["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


# prefect-kubernetes' default template puts these Job fields in the pod spec, and its job check
# requires them there; no PodSpec field has these names, so the model drops them (as the API server
# does, with a warning, under its default field validation). Any other dropped key fails the tests.
PREFECT_KUBERNETES_POD_SPEC_EXTRAS = {"parallelism": 1, "completions": 1}


def _as_the_model_writes_it(manifest: dict) -> dict:
    """The manifest as V1Job writes it back: resource quantities as strings, the extras above gone."""
    copied = json.loads(json.dumps(manifest))
    for kind in ("limits", "requests"):
        resources = _container(copied)["resources"].get(kind, {})
        resources.update({k: str(v) for k, v in resources.items()})
    pod = copied["spec"]["template"]["spec"]
    for key, value in PREFECT_KUBERNETES_POD_SPEC_EXTRAS.items():
        assert pod.pop(key) == value
    return copied


# --- the template --------------------------------------------------------------------------------

def test_the_stored_template_is_prefect_kubernetes_default_extended():
    from prefect_kubernetes.worker import KubernetesWorker

    default = KubernetesWorker.get_default_base_job_template()
    assert TEMPLATE_PATH.read_text() == template_text(medmeta_base_job_template(default)), \
        "regenerate it: python -m deployments.kubernetes > deployments/k8s/base-job-template.json"
    assert set(default["variables"]["properties"]) < set(TEMPLATE["variables"]["properties"])
    assert set(default["job_configuration"]) == set(TEMPLATE["job_configuration"])


def test_the_pool_accepts_the_template():
    """What `prefect work-pool create --base-job-template` goes through on the server."""
    from prefect.server.api.validation import validate_job_variable_defaults_for_work_pool
    from prefect.server.schemas.actions import WorkPoolCreate

    WorkPoolCreate(name=POOL_NAME, type="kubernetes", base_job_template=TEMPLATE)
    asyncio.run(validate_job_variable_defaults_for_work_pool(None, POOL_NAME, TEMPLATE))


def test_prefect_yaml_has_a_cpu_pipeline_and_a_gpu_training_job():
    assert set(K8S_DEPLOYMENTS) == {"nightly-k8s", "train-k8s-gpu"}
    assert K8S_DEPLOYMENTS["nightly-k8s"]["entrypoint"] == "flows/pipeline.py:pipeline_flow"
    assert K8S_DEPLOYMENTS["train-k8s-gpu"]["entrypoint"] == "flows/train.py:train_flow"
    for deployment in K8S_DEPLOYMENTS.values():
        check_job_variables(deployment["work_pool"]["job_variables"])
        assert deployment["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "/opt/medmeta"}}]
        assert "home" not in deployment["parameters"], "the home is the pool's home_path ($MEDMETA_HOME)"


# --- the jobs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["nightly-k8s", "train-k8s-gpu"])
def test_each_deployment_renders_a_valid_kubernetes_job(name, monkeypatch):
    monkeypatch.setenv("MEDMETA_PSEUDONYM_KEY", TEST_KEY)  # the worker's own key never travels
    deployment = K8S_DEPLOYMENTS[name]
    job_variables = deployment["work_pool"]["job_variables"]
    manifest = render_job(job_variables, deployment_name=name, flow_name=deployment["entrypoint"].split(":")[1])

    job, written_back = as_v1_job(manifest)
    assert written_back == _as_the_model_writes_it(manifest), "a key the V1Job model does not know"
    assert (job.api_version, job.kind, job.spec.backoff_limit) == ("batch/v1", "Job", 0)
    assert job.metadata.generate_name == "patient-otter-" and job.metadata.namespace == "default"
    pod = job.spec.template.spec
    assert pod.restart_policy == "Never"
    assert (pod.security_context.run_as_non_root, pod.security_context.run_as_user) == (True, RUN_AS)
    [container] = pod.containers
    assert container.image == job_variables["image"]
    assert container.args == ["prefect", "flow-run", "execute"]
    assert container.security_context.allow_privilege_escalation is False
    assert container.security_context.capabilities.drop == ["ALL"]

    defaults = {k: v.get("default") for k, v in TEMPLATE["variables"]["properties"].items()}
    volumes = {v.name: v for v in pod.volumes}
    mounts = {m.name: m for m in container.volume_mounts}
    assert volumes["medmeta-home"].persistent_volume_claim.claim_name == defaults["home_pvc"]
    assert mounts["medmeta-home"].mount_path == defaults["home_path"] and not mounts["medmeta-home"].read_only
    assert volumes["medmeta-landing"].persistent_volume_claim.read_only and mounts["medmeta-landing"].read_only
    assert mounts["dshm"].mount_path == "/dev/shm" and volumes["dshm"].empty_dir.medium == "Memory"

    env = _env(_container(manifest))
    assert env["MEDMETA_HOME"] == defaults["home_path"]
    assert env["MEDMETA_LANDINGS"] == defaults["landing_path"]
    assert env["PREFECT_API_URL"] == defaults["prefect_api_url"] != WORKERS_OWN_API
    assert env["MEDMETA_PSEUDONYM_KEY"] == {"secretKeyRef": {"name": defaults["pseudonym_key_secret"],
                                                             "key": defaults["pseudonym_key_secret_key"]}}
    assert all(env[k] == v for k, v in job_variables["env"].items())
    assert TEST_KEY not in json.dumps(manifest)

    resources = container.resources
    assert resources.requests["cpu"] == job_variables["cpu_request"]
    assert resources.limits["memory"] == resources.requests["memory"] == job_variables["memory_limit"]
    gpus = job_variables.get("gpu_count")
    if gpus is None:
        assert "nvidia.com/gpu" not in {**resources.limits, **resources.requests}
        assert "MEDMETA_TRAIN_NPROC" not in env
    else:
        assert resources.limits["nvidia.com/gpu"] == resources.requests["nvidia.com/gpu"] == str(gpus)
        assert env["MEDMETA_TRAIN_NPROC"] == str(gpus), "one torchrun rank per GPU"
        assert [(t.key, t.operator, t.effect) for t in pod.tolerations] == [("nvidia.com/gpu", "Exists", "NoSchedule")]


def test_a_site_names_its_own_volume_secret_and_server():
    site = {"home_pvc": "hospital-a-home", "home_path": "/data/medmeta", "pseudonym_key_secret": "hospital-a-key",
            "pseudonym_key_secret_key": "pseudonym.key", "namespace": "medmeta",
            "prefect_api_url": "https://prefect.hospital-a.example/api", "gpu_count": 4,
            "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}}
    check_job_variables(site)
    manifest = render_job(site)
    job, written_back = as_v1_job(manifest)
    assert written_back == _as_the_model_writes_it(manifest)
    pod = job.spec.template.spec
    [container] = pod.containers
    env = _env(_container(manifest))
    assert job.metadata.namespace == "medmeta"
    assert {v.name: v for v in pod.volumes}["medmeta-home"].persistent_volume_claim.claim_name == "hospital-a-home"
    assert {m.name: m.mount_path for m in container.volume_mounts}["medmeta-home"] == "/data/medmeta"
    assert env["MEDMETA_HOME"] == "/data/medmeta"
    assert env["MEDMETA_PSEUDONYM_KEY"]["secretKeyRef"] == {"name": "hospital-a-key", "key": "pseudonym.key"}
    assert env["PREFECT_API_URL"] == "https://prefect.hospital-a.example/api"
    assert container.resources.limits["nvidia.com/gpu"] == env["MEDMETA_TRAIN_NPROC"] == "4"
    assert pod.node_selector == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}


@pytest.mark.parametrize(("job_variables", "reason"), [
    ({"gpu_count": -1}, "less than the minimum of 1"),
    ({"gpu_count": 0}, "less than the minimum of 1"),
    ({"gpu_count": "2"}, "gpu_count"),
    ({"gpu_count": 1.5}, "gpu_count"),
    ({"gpus": 2}, "'gpus' was unexpected"),
    ({"home_path": "srv/medmeta/home"}, "does not match '^/'"),
    ({"prefect_api_url": "prefect-server:4200/api"}, "prefect_api_url"),
    ({"cpu_request": 2}, "cpu_request"),
    ({"home_pvc": ""}, "home_pvc"),
    ({"env": {"MEDMETA_TRAIN_NPROC": 2}}, "env"),
])
def test_bad_job_variables_are_refused_by_the_pool_schema(job_variables, reason):
    from fastapi import HTTPException

    with pytest.raises(HTTPException) as refused:
        check_job_variables(job_variables)
    assert refused.value.status_code == 422
    assert reason in refused.value.detail


# --- the image -----------------------------------------------------------------------------------

def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: comments dropped, continued lines joined."""
    logical, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        instruction, _, arguments = (pending + line).strip().partition(" ")
        logical.append((instruction.upper(), arguments.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return logical


DOCKERFILE = dockerfile_instructions((ROOT / "Dockerfile").read_text())


def _build_args() -> dict[str, str]:
    return dict(arg.split("=", 1) for kind, arg in DOCKERFILE if kind == "ARG" and "=" in arg)


def test_the_base_image_is_pinned():
    [base] = [arguments for kind, arguments in DOCKERFILE if kind == "FROM"]
    image = re.sub(r"\$\{(\w+)\}", lambda m: _build_args()[m.group(1)], base.split()[0])
    name, _, tag = image.partition("@")[0].rpartition(":")
    assert "@sha256:" in image or re.fullmatch(r"\d+\.\d+\.\d+(-[a-z0-9-]+)?", tag), image
    assert name == "python" and tag.startswith("3.11."), "the Python medmeta is tested on"


def test_the_image_runs_as_a_non_root_user_the_pod_template_expects():
    users = [arguments for kind, arguments in DOCKERFILE if kind == "USER"]
    assert users and users[-1] == f"{RUN_AS}:{RUN_AS}", "numeric, so runAsNonRoot can verify it"
    [creates_user] = [a for k, a in DOCKERFILE if k == "RUN" and "useradd" in a]
    assert f"--uid {RUN_AS}" in creates_user and f"--gid {RUN_AS}" in creates_user


def test_every_install_is_held_to_constraints_txt():
    installs = [shlex.split(part) for kind, arguments in DOCKERFILE if kind == "RUN"
                for part in arguments.split("&&") if "pip install" in part]
    assert len(installs) == 2
    for words in installs:
        assert "--constraint" in words and words[words.index("--constraint") + 1] == "constraints.txt", words
    assert ".[dask,kubernetes]" in installs[1]
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line)
    assert _build_args()["TORCH_VERSION"] == pins["torch"]
    assert _build_args()["TORCH_VARIANT"] == "cpu" and "${TORCH_INDEX_URL}" in " ".join(installs[0])
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"dask", "kubernetes"} <= set(extras)


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``path`` (relative to the build context) out: a pattern excludes a path
    it matches or any folder above it; ``*`` stays within a folder, ``**`` crosses them; the last
    matching pattern wins, ``!`` re-includes."""
    def regex(pattern: str) -> re.Pattern:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out)

    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        matcher = regex(pattern.lstrip("!").strip("/"))
        if any(matcher.fullmatch(prefix) for prefix in prefixes):
            ignored = not pattern.startswith("!")
    return ignored


DOCKERIGNORE = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("path", [
    ".git/HEAD", ".venv/bin/python", "venv/lib/site.py", ".medmeta/secrets/pseudonym.key",
    ".medmeta/store/conditions.parquet", "bench/.medmeta/ledger.json", "demo-data/patients.csv",
    "demo-data-outside/secret.csv", "bench-data/landing/a.dcm", "test-output/run.json", "homes/h1/secrets/k",
    "landing/site-a/export.ndjson", "exports/2026/patients.csv", "scans/ct/1.dcm", "pseudonym.key",
    "medmeta/__pycache__/home.cpython-311.pyc", "tests/test_phi.py",
])
def test_the_build_context_leaves_out_homes_data_venvs_and_git(path):
    assert dockerignored(path, DOCKERIGNORE)


def test_the_build_context_keeps_what_the_install_needs():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    needed = [p for p in tracked if p.split("/")[0] in {"medmeta", "flows", "tasks", "metalearn", "validation",
                                                        "deployments"}]
    needed += ["pyproject.toml", "constraints.txt", "README.md", "prefect.yaml"]
    assert len(needed) > 50
    assert [p for p in needed if dockerignored(p, DOCKERIGNORE)] == []
