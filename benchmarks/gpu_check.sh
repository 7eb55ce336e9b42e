#!/usr/bin/env bash
# One-command GPU check (see benchmarks/gpu_check.py): bash benchmarks/gpu_check.sh [--json OUT]
# Python: $PYTHON, else the project's .venv where there is one, else python3 (the GPU machine's).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
exec "$PY" benchmarks/gpu_check.py "$@"
