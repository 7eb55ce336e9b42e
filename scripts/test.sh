#!/usr/bin/env bash
# Set up the venv if needed, then run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
# One worker per core (at most 4), a test module per worker: most tests wait on single-threaded
# fairseq CLI processes, so two workers on two cores take about two thirds of the serial time.
exec .venv/bin/python -m pytest -q -n "${TIEKD_TEST_WORKERS:-auto}" --maxprocesses 4 --dist loadfile tests "$@"
