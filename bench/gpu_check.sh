#!/usr/bin/env bash
# The full-scale GPU check, as one command (stages and outputs: bench/gpu_check.py).
#
#   OUT=/results bench/gpu_check.sh           # one CUDA GPU; under 8 minutes on one H200
#   OUT=/tmp/check bench/gpu_check.sh --small # the same stages at toy size on the CPU (the test suite runs this)
#
# Writes $OUT/gpu_check.json. Python: $PYTHON, else the project's .venv, else python3 with the repository on
# PYTHONPATH (a machine with torch, numpy, scipy, scikit-learn, xarray, pandas, h5py, pillow, tqdm, jinja2).
# Wheels of anything else it lacks (pydantic, for instance) can travel in .whl/: they are installed first.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:?set OUT to the folder that receives gpu_check.json}"
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi
if compgen -G "$ROOT/.whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/gpu_check_site "$ROOT"/.whl/*.whl
    export PYTHONPATH="/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
exec "$PY" "$ROOT/bench/gpu_check.py" --out "$OUT" "$@"
