#!/usr/bin/env bash
# Real en-X data for the examples, from Debian's LibreOffice help packages: plain text,
# a joint SentencePiece model, and fairseq binaries of the parallel data and of the
# unlabeled English pool (binarized with the parallel data's dictionary).
#
# usage: bash examples/data/prepare.sh WORK_DIR [VOCAB] [TGT]
#   -> WORK_DIR/raw (text), WORK_DIR/spm, WORK_DIR/bin (train/valid/test), WORK_DIR/pool
# Expects the project's venv on PATH (fairseq-preprocess). Skips work already done.
set -euo pipefail
W=$1 VOCAB=${2:-4000} TGT=${3:-de}
HERE=$(dirname "$0")
python "$HERE/prepare_lohelp.py" "$W/raw" --tgt "$TGT"
bash "$HERE/binarize.sh" "$W" "$VOCAB" en "$TGT"
