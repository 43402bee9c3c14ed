#!/usr/bin/env bash
# Build (or bring up to date) the benchmark-only environment holding the FHIR libraries that
# bench/fhir_parsers.py measures against medmeta's hand-written reader: fhir.resources 8.3.0 (its
# pydantic R4B models; fhir-core 1.1.12 under them) and fhirpathpy 2.2.4 (FHIRPath on plain dicts;
# antlr4-python3-runtime 4.13.2 under it). They are never dependencies of medmeta.
#
#   bench/fhir_env.sh                       # builds /work/fhirlib-venv (or $FHIRLIBENV)
#   $FHIRLIBENV/bin/python bench/fhir_parsers.py --out BENCHMARKS.md
#
# medmeta's own venv (.venv of the repository, else /work/main/.venv) is layered under the new one
# by a .pth file, so the benchmark imports medmeta's pinned packages (orjson, pydantic,
# python-dateutil, ...): the libraries are measured on the same orjson and pydantic as medmeta.
# Not `--system-site-packages`: a venv made from a venv gets the *base* interpreter's site-packages
# that way (here pyenv's, with an older orjson), never the parent venv's. pip sees the layered
# packages as installed, and the repo's constraints.txt keeps it from replacing any of them.
#
# Idempotent: re-running skips what is already installed. Network use: the package indexes pip is
# configured with (pip config list), nothing else. medmeta itself is not installed: the bench scripts
# put the repository root on sys.path.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENV="${FHIRLIBENV:-/work/fhirlib-venv}"
BASE_PYTHON="${BASE_PYTHON:-$ROOT/.venv/bin/python}"   # medmeta's venv
if [ ! -x "$BASE_PYTHON" ]; then
    BASE_PYTHON=/work/main/.venv/bin/python
fi
CONSTRAINTS="$ENV/constraints.txt"   # the repo's pins plus the benchmark-only ones

if [ ! -x "$ENV/bin/python" ]; then
    "$BASE_PYTHON" -m venv "$ENV"
fi
BASE_SITE="$("$BASE_PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
SITE="$("$ENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$BASE_SITE" >"$SITE/medmeta-venv.pth"
{
    cat "$ROOT/constraints.txt"
    echo "fhir.resources==8.3.0"
    echo "fhir-core==1.1.12"
    echo "fhirpathpy==2.2.4"
    echo "antlr4-python3-runtime==4.13.2"
} >"$CONSTRAINTS"

"$ENV/bin/python" -m pip install -q -c "$CONSTRAINTS" fhir.resources fhirpathpy

"$ENV/bin/python" - <<'EOF'
from importlib.metadata import version

import fhirpathpy  # noqa: F401
from fhir.resources.R4B.bundle import Bundle  # noqa: F401

print("FHIR benchmark environment ready: " + ", ".join(
    f"{name} {version(name)}" for name in ("fhir.resources", "fhir-core", "fhirpathpy", "pydantic", "orjson")))
EOF
