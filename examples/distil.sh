#!/usr/bin/env bash
# Your own corpus, end to end: plain text -> SentencePiece -> fairseq binaries -> a teacher ->
# CE, word-KD and TIE-KD students (and TIE-KD with an unlabeled pool when there is mono.SRC
# text) -> every model averaged over its last checkpoints and scored by tiekd-eval -> a table.
#
# usage: bash examples/distil.sh RAW_DIR SRC TGT [WORK_DIR] [-- RUN_GRID_OPTIONS...]
#   RAW_DIR   {train,valid,test}.{SRC,TGT}: plain text, one sentence per line, line i of .SRC
#             translates line i of .TGT; optionally mono.SRC: source-language sentences without
#             translations (the teacher translates them for the tie_kd_pool student)
#   WORK_DIR  default work/distil-SRC-TGT. Re-running resumes: finished steps are skipped, a
#             killed training continues from its checkpoint_last.pt.
#   after --   more options for examples/run_grid.py, which does the work (see its --help)
#
# Sizes and budgets (environment variables; defaults suit a few hundred thousand pairs on CPUs):
#   VOCAB=8000                 joint SentencePiece vocabulary
#   TEACHER_ARCH=tie_kd_transformer_small   the teacher's fairseq --arch (3+3 layers, 256 dim)
#   TEACHER_UPDATES=20000      the teacher's update cap
#   STUDENT_SIZE=micro         nano | micro | mini | tiny | small | base (examples/run_grid.py SIZES)
#   STUDENT_UPDATES=8000       every student's update cap
#   METHODS=ce+word_kd+tie_kd  (+tie_kd_pool is added when RAW_DIR/mono.SRC exists)
#   POOL_PER_EPOCH=50000       pool sentences the teacher translates per epoch
#   SAVE_EVERY=500 AVERAGE_LAST=5   a checkpoint every SAVE_EVERY updates, the last AVERAGE_LAST
#                              kept and averaged (the teacher the students learn from, too)
#   MAX_TOKENS=4096 LR=0.002 JOBS=2 THREADS=1   batch, peak learning rate, runs at once, threads each
#   TIEKD_PYTHON               a Python with the plugin installed (default: the repo's .venv,
#                              created by scripts/setup_venv.sh)
set -euo pipefail
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 3 ] || usage
RAW=$1 SRC=$2 TGT=$3
shift 3
W=work/distil-$SRC-$TGT
if [ $# -gt 0 ] && [ "$1" != "--" ]; then W=$1; shift; fi
[ $# -gt 0 ] && [ "$1" = "--" ] && shift
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")

fail() { echo "distil.sh: $*" >&2; exit 1; }
for split in train valid test; do
  for lang in "$SRC" "$TGT"; do
    [ -s "$RAW/$split.$lang" ] || fail "missing $RAW/$split.$lang (need {train,valid,test}.{$SRC,$TGT})"
  done
  a=$(wc -l < "$RAW/$split.$SRC") b=$(wc -l < "$RAW/$split.$TGT")
  [ "$a" = "$b" ] || fail "$RAW/$split.$SRC has $a lines, $split.$TGT has $b"
done

if [ -n "${TIEKD_PYTHON:-}" ]; then
  PY=$TIEKD_PYTHON
else
  bash "$REPO/scripts/setup_venv.sh" >&2
  PY=$REPO/.venv/bin/python
fi
export PATH=$(dirname "$PY"):$PATH PYTHONUNBUFFERED=1

METHODS=${METHODS:-ce+word_kd+tie_kd}
POOL=()
if [ -s "$RAW/mono.$SRC" ]; then
  POOL=(--pool-text "$RAW/mono.$SRC" --pool-per-epoch "${POOL_PER_EPOCH:-50000}")
  case "+$METHODS+" in *+tie_kd_pool+*) ;; *) METHODS=$METHODS+tie_kd_pool ;; esac
fi
SIZE=${STUDENT_SIZE:-micro}

"$PY" "$REPO/examples/run_grid.py" --work "$W" --raw "$RAW" --src "$SRC" --tgt "$TGT" "${POOL[@]}" \
  --vocab "${VOCAB:-8000}" --teacher-arch "${TEACHER_ARCH:-tie_kd_transformer_small}" \
  --teacher-updates "${TEACHER_UPDATES:-20000}" --updates "${STUDENT_UPDATES:-8000}" \
  --sizes "$SIZE:1:$METHODS" --save-every "${SAVE_EVERY:-500}" --average-last "${AVERAGE_LAST:-5}" \
  --max-tokens "${MAX_TOKENS:-4096}" --lr "${LR:-0.002}" --jobs "${JOBS:-2}" --threads "${THREADS:-1}" "$@"

RUNS=(teacher="$W/teacher")
IFS=+ read -r -a M <<< "$METHODS"
for m in "${M[@]}"; do RUNS+=("$m=$W/runs/$SIZE-$m-s1"); done
"$PY" "$REPO/examples/report.py" "${RUNS[@]}" | tee "$W/results.md"
echo "table: $W/results.md; a student for deployment: tiekd-export $W/runs/$SIZE-tie_kd-s1 --data $W/bin --out DIR --quantization int8"
