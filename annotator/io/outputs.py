"""Reading `annotate`'s output back (Parquet or JSONL, either layout): documents with their
entities."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from annotator.errors import AnnotatorError


@dataclass
class _Output:
    layout: str  # "spans" or "documents"
    metadata: dict[str, Any] | None
    records: Iterator[tuple[str, str | None, list[dict[str, Any]]]]  # (id, text, entities)


_ENTITY_KEYS = ("start", "end", "text", "label", "score", "sentence")

#: Output column/key names (schema 2, and schema 1's for older files) -> the names the views use.
_RENAMED = {"start_char": "start", "end_char": "end", "entity_text": "text"}


def _entity(record: dict[str, Any]) -> dict[str, Any]:
    """An entity dict of either schema version with the views' keys."""
    return {_RENAMED.get(k, k): v for k, v in record.items() if k in _RENAMED or k in _ENTITY_KEYS}


def _is_spans(names: set[str]) -> bool:
    return {"doc_id", "start_char", "end_char", "label"} <= names or {
        "doc_id",
        "start",
        "end",
        "label",
    } <= names


def open_output(path: str, text_field: str) -> _Output:
    """annotate's output, either layout, Parquet or JSONL, as (id, text or None, entities)."""
    from annotator.io.readers import detect_format

    if not os.path.isfile(path):
        raise AnnotatorError(f"{path}: no such file")
    fmt, compression = detect_format(path, None)
    if fmt == "parquet":
        return _open_parquet(path)
    return _open_jsonl(path, compression, text_field)


def _open_parquet(path: str) -> _Output:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several kinds for one bad file
        raise AnnotatorError(f"{path}: not a readable Parquet file ({exc})") from None
    names = set(parquet.schema_arrow.names)
    raw = (parquet.schema_arrow.metadata or {}).get(b"annotator")
    metadata = None
    if raw:
        try:
            metadata = json.loads(raw)
        except ValueError:
            metadata = None
    if {"doc_id", "entities"} <= names:
        columns = ["doc_id", "entities"] + (["text"] if "text" in names else [])

        def documents():
            for batch in parquet.iter_batches(batch_size=1024, columns=columns):
                for row in batch.to_pylist():
                    entities = [_entity(e) for e in row["entities"] or []]
                    yield str(row["doc_id"]), row.get("text"), entities

        return _Output("documents", metadata, documents())
    if _is_spans(names):
        order = parquet.schema_arrow.names
        columns = ["doc_id"] + [n for n in order if n in _RENAMED or n in _ENTITY_KEYS]

        def spans():
            for batch in parquet.iter_batches(batch_size=8192, columns=columns):
                for row in batch.to_pylist():
                    yield str(row.pop("doc_id")), None, [_entity(row)]

        return _Output("spans", metadata, spans())
    raise AnnotatorError(
        f"{path}: not an `annotator annotate` output (columns: {', '.join(sorted(names))})"
    )


def _open_jsonl(path: str, compression: str | None, text_field: str) -> _Output:
    from annotator.io.readers import open_binary

    def lines() -> Iterator[tuple[int, dict[str, Any]]]:
        with open_binary(path, compression) as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw)
                except (ValueError, UnicodeDecodeError) as exc:
                    raise AnnotatorError(f"{path}:{number}: not valid JSON ({exc})") from None
                if not isinstance(record, dict):
                    raise AnnotatorError(f"{path}:{number}: not a JSON object")
                yield number, record

    stream = lines()
    first = next(stream, None)
    if first is None:
        return _Output("spans", None, iter(()))
    layout = (
        "documents" if "entities" in first[1] else "spans" if _is_spans(set(first[1])) else None
    )
    if layout is None:
        raise AnnotatorError(
            f"{path}:{first[0]}: not an `annotator annotate` output record "
            "(no 'entities', and no doc_id/start_char/end_char/label)"
        )

    def records():
        for number, record in _chain(first, stream):
            if layout == "documents":
                entities = record.get("entities")
                key = "doc_id" if "doc_id" in record else "id"  # schema 1 wrote `id`
                if key not in record or not isinstance(entities, list):
                    raise AnnotatorError(
                        f"{path}:{number}: a documents-layout record needs "
                        "'doc_id' and an 'entities' list"
                    )
                text = record.get(text_field)
                yield (
                    str(record[key]),
                    text if isinstance(text, str) else None,
                    # an entity that is no object is kept, for the page to say it cannot draw it
                    [_entity(e) if isinstance(e, dict) else {"start": None} for e in entities],
                )
            else:
                if "doc_id" not in record:
                    raise AnnotatorError(f"{path}:{number}: a spans-layout record needs 'doc_id'")
                yield str(record["doc_id"]), None, [_entity(record)]

    return _Output(layout, None, records())


def _chain(first, rest):
    yield first
    yield from rest
