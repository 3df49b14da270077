#!/usr/bin/env bash
# Create ./.venv (or $VENV) and install ancis_fast into it, with the native operators when
# they can be built (CUDA kernels too where nvcc exists), and the test, io, bench and dask extras;
# WITH_NAPARI=1 adds the napari extra's packages (napari with a Qt binding, pytest-qt; Qt needs the
# system libraries that .ci/run installs).
# Quick to run again: when nothing the install depends on has changed (this script, setup.py,
# pyproject.toml, csrc/, the torch and Python versions, the build settings) and this checkout's
# package still loads as it did, it stops after a few seconds. FORCE=1 reinstalls anyway.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
STAMP="$VENV/.ancis_fast_setup_stamp"
[ -x "$PY" ] || python3 -m venv "$VENV"
if [ -z "${ANCIS_CPU_ONLY:-}" ] && [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]; then
    export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
    export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"8.0;9.0"}
fi

state() {  # a hash of what the install depends on, and how this checkout's package loads now
    local loads
    loads=$("$PY" -c '
import os, sys, torch, ancis_fast
from ancis_fast import ops
here = os.path.realpath("ancis_fast") == os.path.realpath(os.path.dirname(ancis_fast.__file__))
print(sys.version.split()[0], torch.__version__, ("native" if ops.native_available() else "fallback") if here else "elsewhere")
' 2>/dev/null) || loads="not installed"
    {
        cat scripts/setup.sh setup.py pyproject.toml
        find csrc -type f | LC_ALL=C sort | xargs cat
        echo "${ANCIS_CPU_ONLY:-} ${CUDA_HOME:-} ${TORCH_CUDA_ARCH_LIST:-} $(realpath "$VENV")"
    } | sha256sum | cut -d' ' -f1 | tr -d '\n'
    echo " $loads"
}

PIP=("$PY" -m pip install -q --disable-pip-version-check)
install_napari() {  # the [napari] extra's packages, without reinstalling ancis_fast itself
    [ "${WITH_NAPARI:-0}" = 1 ] || return 0
    "$PY" -c "import napari, pytestqt" 2>/dev/null && return 0
    local packages
    mapfile -t packages < <("$PY" - <<'PYTHON'
try:
    import tomllib
except ImportError:  # Python 3.10: pip's copy of the same parser
    from pip._vendor import tomli as tomllib
with open("pyproject.toml", "rb") as handle:
    print(*tomllib.load(handle)["project"]["optional-dependencies"]["napari"], sep="\n")
PYTHON
)
    "${PIP[@]}" "${packages[@]}"
    echo "napari plugin dependencies installed in $VENV"
}

activate_hint() {  # every later command (ancis-fast, python benchmarks/...) runs inside the environment
    echo "next: source $VENV/bin/activate   (then ancis-fast and python use it; or call $VENV/bin/ancis-fast)"
}

# the stamp is the state the last finished install left; the same state now: nothing to redo
if [ -z "${FORCE:-}" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(state)" ]; then
    echo "ancis_fast already installed in $VENV (nothing changed; FORCE=1 reinstalls)"
    install_napari
    activate_hint
    exit 0
fi
rm -f "$STAMP"
"${PIP[@]}" torch==2.14.1 torchvision==0.29.1
"${PIP[@]}" setuptools wheel ninja
MAX_JOBS=${MAX_JOBS:-2} "${PIP[@]}" --no-build-isolation -e ".[test,io,bench,dask]"
state > "$STAMP"
echo "ancis_fast installed in $VENV"
install_napari
activate_hint
