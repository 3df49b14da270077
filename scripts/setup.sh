#!/usr/bin/env bash
# Create ./.venv (or $VENV) and install ancis_fast into it, with the native operators when
# they can be built (CUDA kernels too where nvcc exists). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
"${PIP[@]}" torch==2.14.1 torchvision==0.29.1
"${PIP[@]}" setuptools wheel ninja
if [ -z "${ANCIS_CPU_ONLY:-}" ] && [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]; then
    export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
    export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"8.0;9.0"}
fi
MAX_JOBS=${MAX_JOBS:-2} "${PIP[@]}" --no-build-isolation -e ".[test,io,dask]"
echo "ancis_fast installed in $VENV"
