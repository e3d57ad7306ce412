#!/usr/bin/env bash
# Unix pipelines over JSONL: annotate on stdout, filter and count with jq.
# Run from the repository root: bash examples/pipeline.sh
set -euo pipefail

echo "# people named in each document"
annotator annotate examples/documents.jsonl --drop-fields \
  | jq -c '{doc_id, people: [.entities[] | select(.label == "PER") | .entity_text]}'

echo "# entities by type"
annotator annotate examples/documents.jsonl --layout spans \
  | jq -r '.label' | sort | uniq -c | sort -rn

echo "# stdin works too: the first three organisations"
cat examples/documents.jsonl | annotator annotate - --labels ORG --layout spans \
  | jq -rn '[inputs | .entity_text][:3][]'
