# medmeta's worker image: the flow-run jobs of the `medmeta-k8s` work pool and, run as it is, a
# Kubernetes worker for that pool (docs/kubernetes.md). Unbuilt here: no Docker engine runs where
# this repository is developed; tests/test_kubernetes_jobs.py checks its rules (pinned base, pinned
# installs, non-root user), not a build.
#
#   CPU (the pipeline):  docker build -t medmeta:0.1.0 .
#   CUDA (training):     docker build --build-arg TORCH_VARIANT=cu130 -t medmeta:0.1.0-cuda .
#
# TORCH_VARIANT names a wheel index of download.pytorch.org/whl: `cpu`, or a CUDA build of
# torch 2.13.0 (`cu130`: PyPI's own Linux torch 2.13.0 is the CUDA 13.0 build; other CUDA variants
# PyTorch publishes for 2.13.0 work the same way). The CUDA wheels bring their CUDA libraries as
# pip packages; the node brings the driver (NVIDIA device plugin / GPU operator).
#
# The base image is pinned by its full version tag. To pin it by digest as well:
#   docker buildx imagetools inspect python:3.11.15-slim-bookworm   # prints the digest
#   docker build --build-arg PYTHON_IMAGE=python:3.11.15-slim-bookworm@sha256:<digest> ...

ARG PYTHON_IMAGE=python:3.11.15-slim-bookworm
FROM ${PYTHON_IMAGE}

ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}
# the torch release pinned in constraints.txt (a test keeps them equal)
ARG TORCH_VERSION=2.13.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# the user every job runs as (the pool's template sets runAsUser/runAsGroup/fsGroup 10001)
RUN groupadd --gid 10001 medmeta \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/medmeta --shell /usr/sbin/nologin medmeta

WORKDIR /opt/medmeta

# torch first, from PyTorch's index for the chosen variant; its dependencies from PyPI, all
# held to constraints.txt (`==2.13.0` there admits the local version `2.13.0+cpu` / `+cu130`)
COPY constraints.txt ./
RUN pip install --constraint constraints.txt \
        --index-url "${TORCH_INDEX_URL}" --extra-index-url https://pypi.org/simple \
        "torch==${TORCH_VERSION}+${TORCH_VARIANT}"

# then medmeta with the scale-out extras, every version from constraints.txt; the repository
# stays here (read-only to the user): the deployments' entrypoints are flows/*.py under it
COPY . .
RUN pip install --constraint constraints.txt ".[dask,kubernetes]" \
 && python -c "import medmeta, flows, prefect_kubernetes, prefect_dask, torch"

USER 10001:10001
ENV HOME=/home/medmeta

# the jobs' command comes from the worker (`prefect flow-run execute`); run bare, a worker
CMD ["prefect", "worker", "start", "--pool", "medmeta-k8s", "--type", "kubernetes"]
