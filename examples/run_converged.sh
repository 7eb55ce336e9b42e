#!/usr/bin/env bash
# The converged comparison of docs/results.md (issue 13): en-de with three student sizes,
# equal-compute baselines and an unlabeled pool; en-fr with one size. Hours on 2 CPU cores;
# resumable: run it again after an interruption and it goes on where it stopped.
#
# usage: bash examples/run_converged.sh CORPUS_DIR [WORK_DIR]
#   CORPUS_DIR holds en-de/ and en-fr/ (and optionally en-es/, more pool text) with {train,valid,test}.{en,XX} text,
#   e.g. the output of ../shared/mtdata/build.sh OUT (OUT/corpus).
# Progress (any time): .venv/bin/python examples/run_grid.py --status --work WORK_DIR/en-de (or en-fr)
# Then: python examples/results_table.py --work WORK_DIR/en-de --work WORK_DIR/en-fr
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS=$(cd "$1" && pwd) W=${2:-work/converged}
bash scripts/setup_venv.sh
PY=.venv/bin/python
mkdir -p "$W"
# Unlabeled English for the pool: the English side of the en-fr and en-es corpora, minus every
# sentence of the en-de corpus (its test set included).
POOL_FROM=("$CORPUS"/en-fr/train.en)
[ -s "$CORPUS/en-es/train.en" ] && POOL_FROM+=("$CORPUS"/en-es/train.en)
[ -s "$W/pool.en" ] || $PY examples/data/make_pool.py "$W/pool.en" \
  --exclude "$CORPUS"/en-de/{train,valid,test}.en --from "${POOL_FROM[@]}"
# The settings of both grids. Sizes: a tie_kd_transformer_tiny teacher (2+2 x 128) and students
# mini (2+2 x 96), micro (1+1 x 96) and nano (1+1 x 64); SentencePiece 4k (the output layer
# dominates these models' cost, and 8k made a TIE-KD step 1.9x slower); one validation
# every 500 updates; a student stops after 3 validations without a lower validation loss or at
# 5,000 updates (about 2.4 epochs of en-de), the teacher after 5 (one every 1,000) or at 20,000.
COMMON=(--vocab 4000 --teacher-arch tie_kd_transformer_tiny --teacher-updates 20000 --teacher-patience 5
  --teacher-save-every 1000 --updates 5000 --patience 3 --save-every 500 --average-last 5 --jobs 2 --threads 1 --teacher-threads 1)
# The two pairs run side by side, each logging to its own file: one after the other, the en-fr
# teacher (a single-threaded run that its students wait for) would leave a core idle for an hour.
# CPU-seconds, not wall time, measure each run's compute, so sharing the cores does not bias them.
$PY examples/run_grid.py --work "$W/en-de" --raw "$CORPUS/en-de" --pool-text "$W/pool.en" --tgt de "${COMMON[@]}" \
  --data-note "en-de from ../shared/mtdata/build.sh (LibreOffice help and UI, man pages, Wesnoth, GNOME help; document-disjoint splits); pool: English of its en-fr and en-es corpora not in en-de" \
  --sizes micro:3,nano:3:ce+word_kd+tie_kd,mini:3:ce+word_kd+tie_kd \
  --methods ce,word_kd,seq_kd,tie_kd,tie_kd_pool --pool-per-epoch 9000 --eqtime micro:3 >> "$W/en-de.log" 2>&1 &
EN_DE=$!
# background jobs of a script ignore Ctrl-C: pass it (and TERM) on to the whole group
trap 'trap - INT TERM; kill 0' INT TERM
$PY examples/run_grid.py --work "$W/en-fr" --raw "$CORPUS/en-fr" --tgt fr "${COMMON[@]}" \
  --data-note "en-fr from ../shared/mtdata/build.sh (same sources and splits as en-de)" \
  --sizes micro:3 --methods ce,word_kd,tie_kd >> "$W/en-fr.log" 2>&1 &
EN_FR=$!
echo "running en-de (log: $W/en-de.log) and en-fr (log: $W/en-fr.log) side by side"
status=0
wait "$EN_DE" || { status=$?; echo "en-de failed (exit $status): see $W/en-de.log" >&2; }
wait "$EN_FR" || { status=$?; echo "en-fr failed (exit $status): see $W/en-fr.log" >&2; }
exit "$status"
