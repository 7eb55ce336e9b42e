#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install the plugin.
# Idempotent: a second run only checks that everything imports.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${TIEKD_VENV:-.venv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  # ve-fairseq (what is tested) needs Python >= 3.11; stock fairseq on older ones needs torch < 2.
  if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    if [ -z "${PYTHON:-}" ] && command -v python3.11 >/dev/null; then
      PY=python3.11
    else
      echo "setup_venv: needs Python >= 3.11, $PY is $("$PY" -V 2>&1 | head -1); set PYTHON=/path/to/python3.11" >&2
      exit 1
    fi
  fi
  "$PY" -m venv "$VENV"
fi
if ! { [ -x "$VENV/bin/tiekd-eval" ] && [ -x "$VENV/bin/tiekd-export" ] &&
       "$VENV/bin/python" -c "import tiekd_fairseq, sacrebleu, sentencepiece, pytest, xdist, matplotlib, ctranslate2" >/dev/null 2>&1; }; then
  # fairseq pins omegaconf 2.0.x in its metadata, which pip >= 24.1 rejects.
  pip() {  # quiet, minus the notes of this machine's pip config about absent local indexes
    "$VENV/bin/python" -m pip install -q "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  }
  pip "pip<24.1"
  # torch first, pinned: 2.13.0 is the CPU build this project is tested with.
  pip "torch==2.13.0"
  # deploy: CTranslate2 (tiekd-export, tiekd-eval --engine ctranslate2; the tests and the demo use it)
  pip -e ".[test,examples,deploy]"
fi
"$VENV/bin/python" -c "import tiekd_fairseq, torch, fairseq, ctranslate2; print(f'venv ready: torch {torch.__version__}, fairseq {fairseq.__version__}, ctranslate2 {ctranslate2.__version__}, tiekd_fairseq {tiekd_fairseq.__version__}')"
