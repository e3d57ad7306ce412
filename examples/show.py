"""Print the first documents of an `annotate` JSONL output with their entities inline.

Run: python examples/show.py examples/output/entities.jsonl [N]
"""

import json
import sys

from annotator.records import Entity
from annotator.tagging.engines import tagged_string

path, count = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3
with open(path, encoding="utf-8") as handle:
    for line, _ in zip(handle, range(count)):
        record = json.loads(line)
        entities = [
            Entity(
                e["start_char"],
                e["end_char"],
                e["entity_text"],
                e["label"],
                e["score"],
                e["sentence"],
            )
            for e in record["entities"]
        ]
        text = tagged_string(record["text"], entities)
        print(f"[{record['doc_id']}] {' '.join(text.split())[:400]}\n")
