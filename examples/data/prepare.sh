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
python "$HERE/sentencepiece_prep.py" "$W/raw" "$W/spm" --src en --tgt "$TGT" --vocab-size "$VOCAB"
if [ ! -f "$W/bin/dict.$TGT.txt" ]; then
  fairseq-preprocess --source-lang en --target-lang "$TGT" --trainpref "$W/spm/train" \
    --validpref "$W/spm/valid" --testpref "$W/spm/test" --destdir "$W/bin" \
    --joined-dictionary --workers 2 2>&1 | grep -v tensorboardX | tail -2
fi
if [ ! -f "$W/pool/dict.en.txt" ]; then
  fairseq-preprocess --only-source --source-lang en --srcdict "$W/bin/dict.en.txt" \
    --trainpref "$W/spm/pool" --destdir "$W/pool" --workers 2 2>&1 | grep -v tensorboardX | tail -1
fi
