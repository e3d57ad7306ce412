#!/usr/bin/env bash
# Train and evaluate the offline tagger on CoNLL++ (no download needed beyond the corpus).
# Run from the repository root: bash examples/train_conllpp.sh
# Knobs: CONLLPP (a local copy of the corpus), EPOCHS, OUT, TRAIN_DIR (train on another
# column corpus, e.g. a small sample, and still evaluate on CoNLL++ test).
set -euo pipefail
CONLLPP=${CONLLPP:-../shared/data/conllpp}
EPOCHS=${EPOCHS:-50}
OUT=${OUT:-runs/offline}
TRAIN_DIR=${TRAIN_DIR:-data/conllpp}

annotator corpus fetch conllpp --dest data/conllpp --from "$CONLLPP"
annotator corpus stats data/conllpp
annotator train "$TRAIN_DIR" --preset offline --max-epochs "$EPOCHS" --output "$OUT"
annotator evaluate "$OUT" data/conllpp --split test --json "$OUT/test-scores.json"
