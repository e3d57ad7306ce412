#!/usr/bin/env bash
# Submit the annotation to a Ray cluster as a Ray job.
#
#   RAY_ADDRESS=http://head-node:8265 INPUT=s3://bucket/corpus/ OUTPUT=/shared/entities/ \
#       ./examples/ops/ray-job.sh
#
# The job's driver runs on the head node: it reads and writes no document itself (Ray tasks
# read the input, local/shared paths or s3:// URIs; the tagger actors write their own part
# files into OUTPUT) and only commits each part to the manifest. OUTPUT must be the same path
# on every node (a shared filesystem) or an s3:// prefix.
# Tagger actors take one GPU each when the cluster has GPUs (--workers sets how many).
# Resubmitting the same command resumes an interrupted run (--resume).
# Every node needs the package: pip install 'annotator[ray]' (or ship it with --runtime-env).
set -euo pipefail

: "${RAY_ADDRESS:?set RAY_ADDRESS to the cluster dashboard, e.g. http://head-node:8265}"
: "${INPUT:?set INPUT}"
: "${OUTPUT:?set OUTPUT to a shared directory or an s3:// prefix (ending in /)}"
MODEL=${MODEL:-/shared/models/ner.pt}
WORKERS_ARGS=${WORKERS:+--workers $WORKERS}
RAY=${RAY:-ray}

# Inside the job the driver joins the cluster it runs on (no --ray-address needed there).
# `ray job submit` waits, streams the job's log, and exits 1 if the job failed; exit 3
# (finished, some bad records skipped) counts as success here.
COMMAND="annotator annotate $INPUT -o '${OUTPUT%/}/' --backend ray --model '$MODEL' \
    --format parquet --resume --on-error skip --no-progress $WORKERS_ARGS"
exec "$RAY" job submit --address "$RAY_ADDRESS" --entrypoint-num-cpus 1 -- \
    sh -c "$COMMAND; status=\$?; [ \$status -eq 3 ] && exit 0; exit \$status"
