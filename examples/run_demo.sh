#!/usr/bin/env bash
# A real TIE-KD distillation, end to end on 2 CPU cores, on human-translated en-de text
# (LibreOffice help from Debian packages): SentencePiece, binarize, train a teacher, then
# three students of the same smaller size: CE, tie_kd, and tie_kd with an unlabeled English
# pool (documents whose translations were dropped) that the teacher translates each epoch;
# translate the test set with tiekd-eval, and print a table of sacreBLEU BLEU / chrF, parameters
# and time; then the deploy table: each model in fairseq and in CTranslate2 float32 / int8
# (BLEU, chrF, sentences/s, size on disk).
#
# usage: bash examples/run_demo.sh [WORK_DIR]     (default: work/demo; re-running resumes)
# Sizes can be changed with the environment variables below.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
W=${1:-work/demo}
TEACHER_UPDATES=${TEACHER_UPDATES:-2200}
STUDENT_UPDATES=${STUDENT_UPDATES:-1000}
VOCAB=${VOCAB:-4000}
POOL_PER_EPOCH=${POOL_PER_EPOCH:-2500}
bash scripts/setup_venv.sh
export PATH=$REPO/.venv/bin:$PATH PYTHONUNBUFFERED=1
mkdir -p "$W"
log() { echo "[demo $(date +%H:%M:%S)] $*"; }

log "data: LibreOffice help en-de (Debian packages)"
bash examples/data/prepare.sh "$W" "$VOCAB" de

COMMON=(--user-dir "$REPO/tiekd_fairseq" --optimizer adam --adam-betas '(0.9,0.98)' --clip-norm 1.0
  --lr 2e-3 --lr-scheduler inverse_sqrt --warmup-updates 300 --max-tokens 1024
  --share-all-embeddings --dropout 0.1 --seed 1 --num-workers 0 --cpu
  --no-epoch-checkpoints --log-format simple --log-interval 100 --validate-interval-updates 500
  --save-interval-updates 500 --keep-interval-updates 1)

train() {  # NAME UPDATES ARGS... ; a killed run resumes from checkpoint_last.pt, a finished one is skipped
  local name=$1 updates=$2; shift 2
  local dir=$W/$name start=$SECONDS
  mkdir -p "$dir"
  [ -f "$dir/train_seconds" ] && { log "$name already trained"; return; }
  log "train $name ($updates updates)"
  fairseq-train "$W/bin" --save-dir "$dir" --max-update "$updates" "${COMMON[@]}" "$@" \
    2>&1 | grep --line-buffered -v tensorboardX | tee "$dir/train.log" | grep --line-buffered -E "\| (train_inner|valid|train) \||done training"
  echo $((SECONDS - start)) > "$dir/train_seconds"
}

evaluate() {  # NAME ENGINE [QUANTIZATION]: tiekd-eval on the test set, once (its record is the marker)
  local name=$1 engine=$2 q=${3:-} record
  if [ "$engine" = fairseq ]; then record=eval-test-avg1-beam4-lenpen0.6.json
  else record=ct2-$q-test-avg1-beam4-lenpen0.6.json; fi
  [ -s "$W/$name/$record" ] && return
  log "translate test with $name: $engine${q:+ $q} (beam 4, lenpen 0.6)"
  tiekd-eval "$W/$name" --data "$W/bin" --ref "$W/raw/test.de" --average-last 1 --beam 4 --lenpen 0.6 \
    --post-process sentencepiece --engine "$engine" ${q:+--quantization "$q"} \
    > "$W/$name/eval-$engine${q:+-$q}.log" 2>&1 || { tail -3 "$W/$name/eval-$engine${q:+-$q}.log"; exit 1; }
}

train teacher "$TEACHER_UPDATES" --arch tie_kd_transformer_tiny \
  --criterion label_smoothed_cross_entropy --label-smoothing 0.1
STUDENT=(--arch tie_kd_transformer_micro)
train student_ce "$STUDENT_UPDATES" "${STUDENT[@]}" \
  --criterion label_smoothed_cross_entropy --label-smoothing 0.1
train student_tie_kd "$STUDENT_UPDATES" "${STUDENT[@]}" --task translation_tie_kd \
  --teacher-path "$W/teacher/checkpoint_last.pt" --criterion tie_kd \
  --kd-rate 0.5 --kd-iters 3 --kd-topk 5 --label-smoothing 0.1
train student_tie_kd_pool "$STUDENT_UPDATES" "${STUDENT[@]}" --task translation_tie_kd \
  --teacher-path "$W/teacher/checkpoint_last.pt" --criterion tie_kd \
  --kd-rate 0.5 --kd-iters 3 --kd-topk 5 --label-smoothing 0.1 \
  --unlabeled-data "$W/pool" --unlabeled-per-epoch "$POOL_PER_EPOCH" --pseudo-beam 4
SYSTEMS=(teacher student_ce student_tie_kd student_tie_kd_pool)
# checkpoint_last.pt of each (--average-last 1: the demo keeps one interval checkpoint), translated by
# fairseq-generate, then converted and translated by CTranslate2 in float32 and int8
for s in "${SYSTEMS[@]}"; do evaluate "$s" fairseq; done
for s in "${SYSTEMS[@]}"; do evaluate "$s" ctranslate2 float32; evaluate "$s" ctranslate2 int8; done

log "results (test set, detokenized, sacreBLEU)"
python examples/report.py $(for s in "${SYSTEMS[@]}"; do echo "$s=$W/$s"; done) | tee "$W/results.md"
