#!/usr/bin/env bash
# Build (or bring up to date) the benchmark-only environment holding the reference
# meta-learning libraries learn2learn 0.2.0 and higher 0.2.1 next to torch 2.13.0 CPU.
# They are never dependencies of medmeta; only bench/metalearn.py uses them.
#
#   bench/reference_env.sh            # builds /work/benchenv (or $BENCHENV)
#   $BENCHENV/bin/python bench/metalearn.py --quick
#
# Idempotent: re-running skips what is already installed. Network use: the package indexes
# pip is configured with (pip config list), nothing else. medmeta itself is not installed:
# the bench scripts put the repository root on sys.path.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENV="${BENCHENV:-/work/benchenv}"
PYTHON="${PYTHON:-python3.11}"
SRC="$ENV/src"                       # downloaded sdists and the rebuilt learn2learn tree
CONSTRAINTS="$ENV/constraints.txt"   # the repo's pins plus the benchmark-only ones

if [ ! -x "$ENV/bin/python" ]; then
    "$PYTHON" -m venv "$ENV"
fi
PIP=("$ENV/bin/python" -m pip)
mkdir -p "$SRC"

# The repo's pins (torch==2.13.0: without it pip pulls a CUDA build of several GB) plus ours.
{
    cat "$ROOT/constraints.txt"
    echo "cython==3.3.0"
    echo "gym==0.26.2"
    echo "gym-notices==0.1.0"
    echo "higher==0.2.1"
    echo "learn2learn==0.2.0"
} >"$CONSTRAINTS"

"${PIP[@]}" install -q -c "$CONSTRAINTS" torch numpy scipy requests tqdm pillow cloudpickle safetensors \
    cython setuptools wheel gym-notices
# gym 0.26.2 is an sdist whose only run-time needs are numpy, cloudpickle and gym-notices.
"${PIP[@]}" install -q -c "$CONSTRAINTS" --no-deps --no-build-isolation gym==0.26.2

# torchvision has no build for torch 2.13 CPU here; learn2learn only imports it (for its vision
# datasets, which the benchmark does not use). An import-only stub: any use raises.
SITE="$("$ENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if ! "$ENV/bin/python" -c 'import torchvision' 2>/dev/null; then
    STUB="$SITE/torchvision"
    mkdir -p "$STUB/datasets"
    cat >"$STUB/_stub.py" <<'EOF'
"""Import-only stand-in for torchvision in the benchmark environment: every name resolves, any use raises."""


class Missing:
    def __init__(self, name):
        self._name = name

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"torchvision stub: {self._name} is not available in the benchmark environment")

    def __getattr__(self, attr):
        return Missing(f"{self._name}.{attr}")

    def __mro_entries__(self, bases):
        return (object,)


def module_getattr(module):
    return lambda attr: Missing(f"{module}.{attr}")
EOF
    for mod in __init__ transforms datasets/__init__ datasets/folder datasets/omniglot models; do
        dotted="torchvision.${mod//\//.}"
        dotted="${dotted%.__init__}"
        {
            echo "\"\"\"Import-only stub (bench/reference_env.sh).\"\"\""
            echo "from torchvision._stub import module_getattr"
            echo "__getattr__ = module_getattr('$dotted')"
        } >"$STUB/$mod.py"
    done
    echo "from torchvision import transforms, datasets, models  # noqa: E402,F401" >>"$STUB/__init__.py"
    echo "__version__ = '0.0.0+stub'" >>"$STUB/__init__.py"
    echo "from torchvision.datasets import folder, omniglot  # noqa: E402,F401" >>"$STUB/datasets/__init__.py"
fi

# learn2learn 0.2.0: its sdist ships C files from Cython 0.29, which do not compile on Python 3.11
# (longintrepr.h); regenerate them from the .pyx sources with a current Cython.
if ! "$ENV/bin/python" -c 'import learn2learn, sys; sys.exit(learn2learn.__version__ != "0.2.0")' 2>/dev/null; then
    if [ ! -f "$SRC/learn2learn-0.2.0.tar.gz" ]; then
        "${PIP[@]}" download -q --no-deps --no-binary :all: learn2learn==0.2.0 -d "$SRC"
    fi
    rm -rf "$SRC/learn2learn-0.2.0"
    tar -xzf "$SRC/learn2learn-0.2.0.tar.gz" -C "$SRC"
    rm -rf "$SRC/learn2learn-0.2.0/.eggs"
    for m in meta_dataset task_dataset transforms; do
        "$ENV/bin/cython" -3 "$SRC/learn2learn-0.2.0/learn2learn/data/$m.pyx" \
            -o "$SRC/learn2learn-0.2.0/learn2learn/data/$m.c"
    done
    "${PIP[@]}" install -q --no-deps --no-build-isolation "$SRC/learn2learn-0.2.0"
fi

"${PIP[@]}" install -q -c "$CONSTRAINTS" --no-deps higher==0.2.1

"$ENV/bin/python" - <<'EOF'
import higher, learn2learn, torch
from learn2learn.algorithms import MAML  # noqa: F401
print(f"benchmark environment ready: torch {torch.__version__}, learn2learn {learn2learn.__version__}, "
      f"higher {higher.__version__ if hasattr(higher, '__version__') else '0.2.1'}")
EOF
