"""The ``medmeta-k8s`` work pool's base job template: prefect-kubernetes' default, extended with
what a medmeta flow run needs in its pod (docs/kubernetes.md).

The template in the repository (``deployments/k8s/base-job-template.json``) is this module's
output; regenerate it after upgrading prefect-kubernetes with

    python -m deployments.kubernetes > deployments/k8s/base-job-template.json

and create the pool with it:

    prefect work-pool create medmeta-k8s --type kubernetes --base-job-template deployments/k8s/base-job-template.json

What medmeta adds to every job (each value a pool variable a deployment may override):

- the image, always medmeta's own (``image``; no Prefect image fallback);
- the home: a PersistentVolumeClaim (``home_pvc``) mounted at ``home_path``, also given as
  ``$MEDMETA_HOME``. It must be ReadWriteMany: the pipeline's pod, the Dask ingest workers and
  the training pods read and write the same home, on different nodes;
- the landing folder: a PersistentVolumeClaim (``landing_pvc``) mounted read-only at
  ``landing_path``, listed in ``$MEDMETA_LANDINGS`` (the flows, given no landing, take it);
- the pseudonym key from a Kubernetes Secret (``pseudonym_key_secret``, entry
  ``pseudonym_key_secret_key``) as ``$MEDMETA_PSEUDONYM_KEY``: never in the template, the
  deployment or the Prefect database;
- ``$PREFECT_API_URL`` (``prefect_api_url``): the server as the pods reach it, set over the
  worker's own URL (a worker outside the cluster knows a URL the pods may not reach);
- GPUs (``gpu_count``): ``nvidia.com/gpu`` requested and limited to that many, and
  ``$MEDMETA_TRAIN_NPROC`` set to the same number (the train flow starts one torchrun rank per
  GPU); absent for CPU jobs;
- a memory-backed ``/dev/shm`` (``shm_size``) for torchrun's and the data loaders' shared memory;
- a pod that runs as the image's non-root user (uid/gid 10001, ``runAsNonRoot``), no privilege
  escalation, no capabilities, the runtime's default seccomp profile;
- ``node_selector`` and ``tolerations`` to reach GPU nodes (often tainted ``nvidia.com/gpu``).

Unknown job variables are refused (``additionalProperties: false``): a misspelt variable would
otherwise be dropped silently and the job started without it.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

TEMPLATE_PATH = Path(__file__).resolve().parent / "k8s" / "base-job-template.json"
POOL_NAME = "medmeta-k8s"
RUN_AS = 10001  # the Dockerfile's medmeta user and group
HOME_VOLUME = "medmeta-home"
LANDING_VOLUME = "medmeta-landing"
SHM_VOLUME = "dshm"

MEDMETA_VARIABLES: dict[str, dict[str, Any]] = {
    "image": {
        "title": "Image",
        "description": "medmeta's worker image (the repository's Dockerfile), e.g. registry.example.org/medmeta:0.1.0; "
                       "the CUDA build for GPU jobs.",
        "type": "string",
        "default": "medmeta:0.1.0",
    },
    "home_pvc": {
        "title": "Home volume claim",
        "description": "The PersistentVolumeClaim that holds the medmeta home. Must be ReadWriteMany: the pipeline, "
                       "the Dask ingest workers and the training pods share it.",
        "type": "string",
        "minLength": 1,
        "default": "medmeta-home",
    },
    "home_path": {
        "title": "Home path",
        "description": "Where the home volume is mounted in the pod; also $MEDMETA_HOME.",
        "type": "string",
        "pattern": "^/",
        "default": "/srv/medmeta/home",
    },
    "landing_pvc": {
        "title": "Landing volume claim",
        "description": "The PersistentVolumeClaim that holds the landing folder (mounted read-only).",
        "type": "string",
        "minLength": 1,
        "default": "medmeta-landing",
    },
    "landing_path": {
        "title": "Landing path",
        "description": "Where the landing volume is mounted in the pod; also $MEDMETA_LANDINGS.",
        "type": "string",
        "pattern": "^/",
        "default": "/srv/medmeta/landing",
    },
    "pseudonym_key_secret": {
        "title": "Pseudonym key secret",
        "description": "The Kubernetes Secret that holds the home's pseudonym key (given as $MEDMETA_PSEUDONYM_KEY).",
        "type": "string",
        "minLength": 1,
        "default": "medmeta-pseudonym-key",
    },
    "pseudonym_key_secret_key": {
        "title": "Pseudonym key secret entry",
        "description": "The entry of that Secret that holds the key.",
        "type": "string",
        "minLength": 1,
        "default": "key",
    },
    "prefect_api_url": {
        "title": "Prefect API URL for the pods",
        "description": "The Prefect server's API as the pods reach it, e.g. the in-cluster service of the "
                       "prefect-server Helm chart.",
        "type": "string",
        "pattern": "^https?://",
        "default": "http://prefect-server.prefect.svc.cluster.local:4200/api",
    },
    "gpu_count": {
        "title": "GPUs",
        "description": "NVIDIA GPUs requested (nvidia.com/gpu) and torchrun ranks started ($MEDMETA_TRAIN_NPROC). "
                       "Leave unset for CPU jobs.",
        "type": "integer",
        "minimum": 1,
    },
    "shm_size": {
        "title": "Shared memory",
        "description": "Size of the memory-backed /dev/shm (Kubernetes quantity); counts against the memory limit.",
        "type": "string",
        "default": "1Gi",
    },
    "node_selector": {
        "title": "Node selector",
        "description": "Node labels the pod must match, e.g. {\"nvidia.com/gpu.present\": \"true\"}.",
        "type": "object",
        "additionalProperties": {"type": "string"},
    },
    "tolerations": {
        "title": "Tolerations",
        "description": "Pod tolerations, e.g. [{\"key\": \"nvidia.com/gpu\", \"operator\": \"Exists\", "
                       "\"effect\": \"NoSchedule\"}].",
        "type": "array",
        "items": {"type": "object"},
    },
}


def medmeta_base_job_template(default: dict[str, Any] | None = None) -> dict[str, Any]:
    """prefect-kubernetes' default base job template with medmeta's variables and pod settings."""
    if default is None:
        from prefect_kubernetes.worker import KubernetesWorker

        default = KubernetesWorker.get_default_base_job_template()
    template = copy.deepcopy(default)
    variables = template["variables"]
    variables["description"] = "Job variables of medmeta's Kubernetes work pool (docs/kubernetes.md)."
    variables["properties"].update(copy.deepcopy(MEDMETA_VARIABLES))
    variables["additionalProperties"] = False

    configuration = template["job_configuration"]
    # a dict here is merged with a deployment's `env` (which wins) before the flow run's settings
    configuration["env"] = {
        "PREFECT_API_URL": "{{ prefect_api_url }}",
        "MEDMETA_HOME": "{{ home_path }}",
        "MEDMETA_LANDINGS": "{{ landing_path }}",
        "MEDMETA_TRAIN_NPROC": "{{ gpu_count }}",
    }
    pod = configuration["job_manifest"]["spec"]["template"]["spec"]
    pod["securityContext"] = {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    pod["nodeSelector"] = "{{ node_selector }}"
    pod["tolerations"] = "{{ tolerations }}"
    pod["volumes"] = [
        {"name": HOME_VOLUME, "persistentVolumeClaim": {"claimName": "{{ home_pvc }}"}},
        {"name": LANDING_VOLUME, "persistentVolumeClaim": {"claimName": "{{ landing_pvc }}", "readOnly": True}},
        {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "{{ shm_size }}"}},
    ]
    [container] = pod["containers"]
    # the worker puts `env` (above) first and keeps these entries, which a dict can not express
    container["env"] = [{
        "name": "MEDMETA_PSEUDONYM_KEY",
        "valueFrom": {"secretKeyRef": {"name": "{{ pseudonym_key_secret }}", "key": "{{ pseudonym_key_secret_key }}"}},
    }]
    container["volumeMounts"] = [
        {"name": HOME_VOLUME, "mountPath": "{{ home_path }}"},
        {"name": LANDING_VOLUME, "mountPath": "{{ landing_path }}", "readOnly": True},
        {"name": SHM_VOLUME, "mountPath": "/dev/shm"},
    ]
    container["securityContext"] = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    container["resources"]["limits"]["nvidia.com/gpu"] = "{{ gpu_count }}"
    container["resources"]["requests"]["nvidia.com/gpu"] = "{{ gpu_count }}"
    return template


def template_text(template: dict[str, Any]) -> str:
    """The template as the repository stores it."""
    return json.dumps(template, indent=2, sort_keys=False) + "\n"


def main() -> None:
    sys.stdout.write(template_text(medmeta_base_job_template()))


if __name__ == "__main__":
    main()
