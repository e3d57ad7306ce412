#!/usr/bin/env bash
# Nightly annotation job: continue (or start) the run in $OUTPUT, log to $LOG, fail loudly.
#
#   INPUT=/data/incoming OUTPUT=/data/entities/ MODEL=/models/ner.pt ./annotate-nightly.sh
#
# --resume makes every night the same command: the first night starts the run, a night after
# a crash (or a reboot, or a kill) continues it from the last committed part, and a night
# after a finished run finds nothing to do (a finished run is never redone or overwritten).
# New input files change the run's settings, so a resume is refused: point OUTPUT at a new
# directory per batch of input (e.g. /data/entities/$(date +%F)/) when the input grows.
#
# Exit status: 0 done (skipped bad records are listed in $ERRORS); non-zero on failure, so
# cron mails it and systemd marks the unit failed. Set STRICT=1 to fail on skipped records.
set -euo pipefail

: "${INPUT:?set INPUT to the input files or folder}"
: "${OUTPUT:?set OUTPUT to the output directory (ending in /)}"
ANNOTATOR=${ANNOTATOR:-annotator}
LOG=${LOG:-${OUTPUT%/}.log}
ERRORS=${ERRORS:-${OUTPUT%/}.errors.jsonl}
FORMAT=${FORMAT:-parquet}
DEVICE_ARGS=${DEVICE_ARGS:-}          # e.g. "--devices cuda:0,cuda:1" or "--workers 4"
MODEL_ARGS=${MODEL:+--model $MODEL}
STRICT=${STRICT:-0}

mkdir -p "$(dirname "$LOG")"
exec >>"$LOG" 2>&1                  # everything below goes to the log file
echo "=== $(date -Is) start: $INPUT -> $OUTPUT"

# one run at a time: a night that overruns is not joined by the next one
exec 9>"${OUTPUT%/}.lock"
if ! flock -n 9; then
    echo "=== $(date -Is) another run holds ${OUTPUT%/}.lock; exiting"
    exit 75
fi

status=0
# shellcheck disable=SC2086  # MODEL_ARGS and DEVICE_ARGS are word lists on purpose
"$ANNOTATOR" annotate $INPUT -o "${OUTPUT%/}/" --format "$FORMAT" --resume \
    --on-error skip --errors "$ERRORS" --no-progress $MODEL_ARGS $DEVICE_ARGS || status=$?

if [ "$status" -eq 3 ] && [ "$STRICT" != 1 ]; then
    echo "=== $(date -Is) done; some records were skipped, see $ERRORS"
    status=0
elif [ "$status" -eq 0 ]; then
    echo "=== $(date -Is) done"
else
    echo "=== $(date -Is) FAILED with exit status $status; rerun (it resumes) once the cause is fixed"
fi
exit "$status"
