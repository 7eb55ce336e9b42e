#!/usr/bin/env bash
# Build, here (with network), the wheelhouse from which benchmarks/gpu_check.py installs fairseq
# offline on the lent GPU machine: CPython 3.12, x86_64 Linux, its own torch, no network.
#   bash scripts/build_wheelhouse.sh [DEST]        # default: wheelhouse/ (git-ignored)
# then carry DEST with the working tree (the device tool's `carry`, at most 64 MiB in all).
# Contents: the cp312 ve-fairseq wheel (installed with --no-deps: its metadata asks for
# torchaudio and scikit-learn, which the check does not need), the binary wheels of
# benchmarks/gpu_requirements.txt and their dependencies, and a wheel built here from
# antlr4-python3-runtime's sdist (pure Python; hydra-core needs it and PyPI has no wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-wheelhouse}
PY=${PYTHON:-.venv/bin/python}
PYVER=${WHEELHOUSE_PYTHON_VERSION:-3.12}
PLATFORM=${WHEELHOUSE_PLATFORM:-manylinux_2_28_x86_64}
mkdir -p "$DEST"
download() {
  "$PY" -m pip download --dest "$DEST" --find-links "$DEST" --only-binary=:all: --python-version "$PYVER" \
    --implementation cp --platform "$PLATFORM" --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform linux_x86_64 "$@"
}
download --no-deps ve-fairseq==0.12.3
# antlr4 first, so that the binary-only resolve below finds it in DEST
if ! ls "$DEST"/antlr4_python3_runtime-4.9*.whl >/dev/null 2>&1; then
  "$PY" -m pip wheel --no-deps --wheel-dir "$DEST" "antlr4-python3-runtime==4.9.3"
fi
download -r benchmarks/gpu_requirements.txt
du -sh "$DEST"
ls "$DEST"
