#!/usr/bin/env bash
# Plain text -> a joint SentencePiece model -> fairseq binaries, for any language pair.
#
# usage: bash examples/data/binarize.sh WORK_DIR [VOCAB] [SRC] [TGT]
#   reads  WORK_DIR/raw/{train,valid,test}.{SRC,TGT} (one sentence per line, line i of .SRC
#          translates line i of .TGT) and optionally WORK_DIR/raw/pool.SRC (unlabeled source text)
#   writes WORK_DIR/spm (model + encoded text), WORK_DIR/bin (train/valid/test, one joint
#          dictionary) and WORK_DIR/pool (the pool, binarized with the data's source dictionary)
# Expects the project's venv on PATH (fairseq-preprocess). Skips work already done.
set -euo pipefail
W=$1 VOCAB=${2:-8000} SRC=${3:-en} TGT=${4:-de}
HERE=$(dirname "$0")
for split in train valid test; do
  for lang in "$SRC" "$TGT"; do
    [ -s "$W/raw/$split.$lang" ] || { echo "binarize.sh: missing $W/raw/$split.$lang" >&2; exit 1; }
  done
  # lines as fairseq reads them ("\n"-ended; a last line without one counts)
  a=$(awk 'END {print NR}' "$W/raw/$split.$SRC") b=$(awk 'END {print NR}' "$W/raw/$split.$TGT")
  [ "$a" = "$b" ] || { echo "binarize.sh: $W/raw/$split.$SRC has $a lines, $split.$TGT has $b" >&2; exit 1; }
done
python "$HERE/sentencepiece_prep.py" "$W/raw" "$W/spm" --src "$SRC" --tgt "$TGT" --vocab-size "$VOCAB"
if [ ! -f "$W/bin/dict.$TGT.txt" ]; then
  fairseq-preprocess --source-lang "$SRC" --target-lang "$TGT" --trainpref "$W/spm/train" \
    --validpref "$W/spm/valid" --testpref "$W/spm/test" --destdir "$W/bin" \
    --joined-dictionary --workers 2 2>&1 | grep -v tensorboardX | tail -2
fi
if [ -f "$W/spm/pool.$SRC" ] && [ ! -f "$W/pool/dict.$SRC.txt" ]; then
  fairseq-preprocess --only-source --source-lang "$SRC" --srcdict "$W/bin/dict.$SRC.txt" \
    --trainpref "$W/spm/pool" --destdir "$W/pool" --workers 2 2>&1 | grep -v tensorboardX | tail -1
fi
