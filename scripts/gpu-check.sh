#!/usr/bin/env bash
# The GPU check, in one go (see docs/how-to/gpus.md):
#
#   bash scripts/gpu-check.sh               on the lent GPU machine, from the repository root,
#                                           with .whl and .gpu-data carried (`make gpu-carry`)
#   bash scripts/gpu-check.sh --cpu-dry-run the same steps on this machine's CPU with tiny sizes
#                                           and the local environment (no wheels installed); bench,
#                                           epochs and scaling run in one process there (torch,
#                                           flair and spaCy imported once), under one time limit
#
# Steps, each under its own time limit inside the whole check's 8 minutes: (a) pytest -m gpu;
# (b) `annotator bench` on the device with ~1M generated words, and the Flair tutorial's model
# family (its same-shape stand-in), the fast engine in fp32 and bf16; (c) one epoch of each trainer on
# CoNLL++ and the projected 50 epochs; (d) CPU scaling of annotate --workers. Then the summary:
# figures against the goals (scripts/gpu_check.py holds them). Everything lands in $OUT (a
# temporary folder when OUT is unset), in four files: gpu-check.log (all output), results.json,
# bench.json and pytest.txt.
set -uo pipefail
cd "$(dirname "$0")/.."

MODE=gpu
case "${1:-}" in
  --cpu-dry-run) MODE=cpu-dry-run ;;
  "") ;;
  *) echo "usage: bash scripts/gpu-check.sh [--cpu-dry-run]" >&2; exit 2 ;;
esac
OUT=${OUT:-$(mktemp -d -t gpu-check-XXXXXX)}
mkdir -p "$OUT"
WORK=$(mktemp -d -t gpu-check-work-XXXXXX)
exec > >(tee "$OUT/gpu-check.log") 2>&1
TEE=$!
# the log is complete before the script ends (tee runs beside it)
trap 'rm -rf "$WORK"; exec >&- 2>&-; wait "$TEE"' EXIT
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg
START=$SECONDS
RESERVE=15  # seconds kept for the summary

if [[ $MODE == gpu ]]; then
  TOTAL=480
  PYTHON=python3
  DEVICE=cuda
  # the wheels are installed beside the image's packages, never over them
  $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { echo "gpu-check: installing .whl/*.whl failed (run make gpu-carry, carry .whl)"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
  $PYTHON -m tarfile --filter data -e .gpu-data/conllpp.tar.xz "$WORK" \
    || { echo "gpu-check: no .gpu-data/conllpp.tar.xz (run make gpu-carry, carry .gpu-data)"; exit 1; }
  CORPUS=$WORK/conllpp
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  # ~1M words (row 3w: 4M, 0.5M a worker); Flair's rows on ~57k (its predict: ~4k words/s there)
  BENCH_ARGS=(--docs 2620 --flair-docs 150 --annotate-workers 8 --workers-copies 4
    --stand-in tutorial --stand-in-docs 50 --precision fp32,bf16)
  EPOCH_ARGS=(--flair-sentences 2000 --flair-dev-sentences 1000)  # Flair: ~160 s a whole epoch
  SCALING_ARGS=(--workers 1,4,16 --words-per-worker 150000)
  LIMITS=(90 200 100 80)  # pytest, bench, epochs, scaling
else
  TOTAL=360  # on 2 shared cores: spawned workers each import torch, flair and spaCy
  PYTHON=${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}
  DEVICE=cpu
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  CORPUS=$WORK/corpus
  $PYTHON -c "import sys; from pathlib import Path; from tests.synthetic import write_corpus; write_corpus(Path(sys.argv[1]))" "$CORPUS"
  BENCH_ARGS=(--docs 6 --flair-docs 3 --annotate-workers 2 --workers-copies 2 --no-isolate --threads 1
    --stand-in tutorial --stand-in-docs 1 --stand-in-vocab 2000 --precision fp32,bf16)
  EPOCH_ARGS=(--max-sentences 60 --flair-sentences 30 --flair-dev-sentences 20)
  SCALING_ARGS=(--workers 1,2 --words-per-worker 1000)
  LIMITS=(60 280)  # pytest; bench, epochs and scaling together
fi
echo "gpu-check ($MODE): python $($PYTHON -c 'import sys; print(sys.version.split()[0])'), OUT=$OUT"

# step NAME LIMIT COMMAND...: COMMAND for at most LIMIT seconds, less where the check's time is
# nearly spent; its exit status and seconds go to steps.tsv for the summary.
step() {
  local name=$1 limit=$2 began=$SECONDS rc
  shift 2
  local left=$(( TOTAL - (SECONDS - START) - RESERVE ))
  (( limit > left )) && limit=$left
  if (( limit < 5 )); then
    echo "== $name: skipped, the check's $TOTAL s are spent"
    printf '%s\tskipped\t0\t0\n' "$name" >> "$WORK/steps.tsv"
    return
  fi
  echo "== $name (at most $limit s)"
  timeout -k 10 "$limit" "$@"
  rc=$?
  (( rc == 124 || rc == 137 )) && echo "== $name: stopped at its limit of $limit s"
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( SECONDS - began ))" "$limit" >> "$WORK/steps.tsv"
  echo "== $name: exit $rc after $(( SECONDS - began )) s"
}

step pytest "${LIMITS[0]}" $PYTHON -m pytest -m gpu tests/test_gpu.py -q -rs -p no:cacheprovider \
  --junitxml "$WORK/pytest.xml" > "$OUT/pytest.txt"
tail -n 25 "$OUT/pytest.txt"
BENCH=(-m annotator bench --device $DEVICE --corpus "$CORPUS" --batch-sizes 32,512 --spacy-ner off
  --json "$OUT/bench.json" --workdir "$WORK/bench" "${BENCH_ARGS[@]}")
EPOCHS=(scripts/gpu_check.py epochs --corpus "$CORPUS" --device $DEVICE --out "$WORK/epochs.json"
  "${EPOCH_ARGS[@]}")
SCALING=(scripts/gpu_check.py scaling --docs "$WORK/bench/docs.jsonl" --device cpu
  --out "$WORK/scaling.json" "${SCALING_ARGS[@]}")
if [[ $MODE == gpu ]]; then  # each step in its own process, under its own limit
  step bench "${LIMITS[1]}" $PYTHON "${BENCH[@]}"
  step epochs "${LIMITS[2]}" $PYTHON "${EPOCHS[@]}"
  step scaling "${LIMITS[3]}" $PYTHON "${SCALING[@]}"
else  # one process: each step's line in steps.tsv is written there; a step cut short is added here
  step steps "${LIMITS[1]}" $PYTHON scripts/gpu_check.py steps --tsv "$WORK/steps.tsv" \
    bench "${BENCH[@]}" --- epochs "${EPOCHS[@]}" --- scaling "${SCALING[@]}"
  for name in bench epochs scaling; do
    grep -q "^$name"$'\t' "$WORK/steps.tsv" || printf '%s\tnot run\t0\t0\n' "$name" >> "$WORK/steps.tsv"
  done
  sed -i '/^steps\t/d' "$WORK/steps.tsv"  # the steps' own lines stand for it
fi
timeout "$RESERVE" $PYTHON scripts/gpu_check.py summary --work "$WORK" --bench "$OUT/bench.json" \
  --mode $MODE --device $DEVICE --seconds $(( SECONDS - START )) --out "$OUT/results.json"
# a step that failed or ran out of time fails the check (its figures are missing above)
! awk -F'\t' '$2 != "0"' "$WORK/steps.tsv" | grep -q .
