"""Output sinks: JSONL and Parquet, in `documents` or `spans` layout.

Files are written under a temporary name beside the target and renamed only on success, so a
failed run never leaves a half-written file under the final name. Stdout is flushed chunk by
chunk, so results flow through a pipeline while the input is still arriving.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import IO, Any

from annotator.errors import AnnotatorError, RecordFailed
from annotator.files import AtomicFile, write_failed
from annotator.records import Document, Entity

LAYOUTS = ("documents", "spans")


OUTPUT_FORMATS = ("jsonl", "parquet")


STDOUT = "-"


ROW_GROUP_ROWS = 65_536


ROW_GROUP_CHARS = 64 << 20  # documents layout: bound a row group by the text it holds, too


#: The output schema's version, in every Parquet file's metadata (`annotator.schema_version`).
#: 2: start/end -> start_char/end_char (spaCy's names; `end` is reserved in SQL), the spans
#: layout's `text` -> `entity_text`, run_id and model_sha columns, required columns not null.
SCHEMA_VERSION = 2


@functools.cache
def _schemas() -> dict[str, Any]:
    """The Parquet types, made on first use: pyarrow's import would otherwise be most of a
    usage error's answer."""
    import pyarrow as pa

    #: An entity, nested in the documents layout (Parquet struct, JSONL object).
    ENTITY_TYPE = pa.struct(
        [
            pa.field("start_char", pa.int64(), nullable=False),
            pa.field("end_char", pa.int64(), nullable=False),
            pa.field("entity_text", pa.string(), nullable=False),
            pa.field("label", pa.string(), nullable=False),
            pa.field("score", pa.float32(), nullable=False),
            pa.field("sentence", pa.int32(), nullable=False),
        ]
    )

    #: One row per entity. Documented in docs/reference/schemas.md: add columns, never change
    #: these. Names need no quoting in SQL and mean one thing in both layouts; run_id and
    #: model_sha keep each row's provenance after an INSERT into a warehouse.
    SPANS_SCHEMA = pa.schema(
        [
            pa.field("doc_id", pa.string(), nullable=False),
            pa.field("sentence", pa.int32(), nullable=False),
            pa.field("start_char", pa.int64(), nullable=False),
            pa.field("end_char", pa.int64(), nullable=False),
            pa.field("entity_text", pa.string(), nullable=False),
            pa.field("label", pa.dictionary(pa.int32(), pa.string()), nullable=False),
            pa.field("score", pa.float32(), nullable=False),
            pa.field("source", pa.string(), nullable=False),
            pa.field("source_row", pa.int64(), nullable=False),
            pa.field("run_id", pa.string(), nullable=False),
            pa.field("model_sha", pa.string()),
        ]
    )

    #: One row per document, its entities nested; documents without entities have an empty list.
    DOCUMENTS_SCHEMA = pa.schema(
        [
            pa.field("doc_id", pa.string(), nullable=False),
            pa.field("text", pa.string(), nullable=False),
            pa.field("entities", pa.list_(ENTITY_TYPE), nullable=False),
            pa.field("source", pa.string(), nullable=False),
            pa.field("source_row", pa.int64(), nullable=False),
            pa.field("run_id", pa.string(), nullable=False),
            pa.field("model_sha", pa.string()),
        ]
    )
    return {
        "ENTITY_TYPE": ENTITY_TYPE,
        "SPANS_SCHEMA": SPANS_SCHEMA,
        "DOCUMENTS_SCHEMA": DOCUMENTS_SCHEMA,
    }


def __getattr__(name: str) -> Any:
    if name in ("ENTITY_TYPE", "SPANS_SCHEMA", "DOCUMENTS_SCHEMA"):
        return _schemas()[name]
    raise AttributeError(name)


def provenance(metadata: dict[str, Any] | None) -> dict[str, Any]:
    """The columns every row carries: the run's id and the model's short hash."""
    metadata = metadata or {}
    sha = metadata.get("model_sha256")
    return {"run_id": metadata.get("run_id") or "", "model_sha": sha[:12] if sha else None}


def entity_record(entity: Entity) -> dict[str, Any]:
    """An entity as the documents layout writes it (the same names as the spans layout)."""
    return {
        "start_char": entity.start,
        "end_char": entity.end,
        "entity_text": entity.text,
        "label": entity.label,
        "score": round(entity.score, 6),
        "sentence": entity.sentence,
    }


def output_format(output: str | None, explicit: str | None) -> str:
    """`--format`, else the output's extension, else JSONL (stdout, and a stream such as
    /dev/stdout, /dev/null or a FIFO, which has no extension to tell)."""
    if explicit:
        return explicit
    if output and output != STDOUT:
        suffix = Path(output).suffix.lower()
        if suffix in (".parquet", ".pq"):
            return "parquet"
        if suffix in (".jsonl", ".json", ".ndjson"):
            return "jsonl"
        if not suffix and _is_stream(output):
            return "jsonl"
        raise AnnotatorError(
            f"{output}: cannot tell the output format from the extension; "
            "use .jsonl or .parquet, or --format"
        )
    return "jsonl"


#: the keys the documents layout writes itself: never taken from the input
_OWN_KEYS = frozenset({"doc_id", "entities", "source", "source_row", "run_id", "model_sha"})


def _is_stream(output: str) -> bool:
    """A device or FIFO (through links), or a descriptor's file (/dev/stdout, /proc/self/fd/N,
    even when the shell made it a regular file): written in place, as stdout is."""
    import stat

    if os.path.abspath(output).startswith(("/dev/", "/proc/self/fd/")):
        return True
    try:
        mode = os.stat(output).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


def default_layout(fmt: str) -> str:
    return "spans" if fmt == "parquet" else "documents"


def span_row(doc: Document, entity: Entity, provenance: dict[str, Any]) -> dict[str, Any]:
    return {
        "doc_id": doc.id,
        "sentence": entity.sentence,
        "start_char": entity.start,
        "end_char": entity.end,
        "entity_text": entity.text,
        "label": entity.label,
        "score": round(entity.score, 6),
        "source": doc.source,
        "source_row": doc.row,
        **provenance,
    }


def _dumps(record: dict[str, Any]) -> str:
    """One JSON line; a record that cannot be one (lone surrogates, nesting too deep for this
    stack) is a bad record, not a failed run."""
    try:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        line.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start : exc.end].encode("unicode_escape").decode("ascii")
        raise RecordFailed(f"cannot write: a lone surrogate ({bad}), not valid Unicode") from None
    except (RecursionError, ValueError, TypeError) as exc:
        raise RecordFailed(f"cannot write as JSON ({type(exc).__name__}: {exc})") from None
    return line


class JsonlWriter:
    """One JSON object a line; `documents` keeps the input's fields, `spans` is a row an entity."""

    def __init__(
        self,
        output: str | None,
        layout: str,
        drop_fields: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.layout = layout
        self.provenance = provenance(metadata)
        self.drop_fields = drop_fields
        self.output = output
        self.atomic = None if output in (None, STDOUT) else AtomicFile(output)
        # written in place (a device, FIFO, /dev/stdout): appended to, never truncated
        self._mode = "a" if self.atomic is not None and self.atomic.streamed else "w"
        try:
            if self.atomic is None:
                self.handle: IO[str] = sys.stdout
            elif self.atomic.descriptor is not None:  # /dev/stdout and the like: that very fd
                self.handle = os.fdopen(os.dup(self.atomic.descriptor), "w", encoding="utf-8")
            else:
                self.handle = open(self.atomic.tmp, self._mode, encoding="utf-8")
        except OSError as exc:
            raise write_failed(output, exc) from None
        # a device or FIFO is streamed: flushed document by document, like stdout
        self.streamed = self.atomic is None or self.atomic.streamed

    def write(self, doc: Document, entities: list[Entity]) -> None:
        if self.layout == "spans":
            text = "".join(_dumps(span_row(doc, e, self.provenance)) for e in entities)
        else:
            own = {"source": doc.source, "source_row": doc.row, **self.provenance}
            record: dict[str, Any] = {"doc_id": doc.id}
            if not self.drop_fields:  # an input field of one of the tool's names gives way
                record.update((k, v) for k, v in doc.fields.items() if k not in _OWN_KEYS)
            record["entities"] = [entity_record(e) for e in entities]
            record.update(own)
            text = _dumps(record)
        try:
            self.handle.write(text)
        except OSError as exc:
            if self.atomic is None:
                raise  # stdout: a closed pipe is the CLI's to handle
            raise write_failed(self.output, exc) from None

    def flush(self) -> None:
        """Stdout is flushed document by document so pipelines see results as they come."""
        if self.streamed:
            try:
                self.handle.flush()
            except OSError as exc:
                if self.atomic is None:
                    raise  # stdout: a closed pipe is the CLI's to handle
                raise write_failed(self.output, exc) from None

    def close(self) -> None:
        if self.atomic is None:
            self.handle.flush()
            return
        try:
            self.handle.close()
            self.atomic.commit()
        except OSError as exc:
            self.abort()
            raise write_failed(self.output, exc) from None

    def abort(self) -> None:
        if self.atomic is not None:
            try:
                self.handle.close()
            except OSError:  # the write that failed may fail again on close: the temp goes anyway
                pass
            self.atomic.abort()


class _Unseekable:
    """A pipe or device to write Parquet to: Parquet is written front to back (its footer
    last), but its writer asks where it stands, and on a pipe lseek fails; the position is
    counted here instead."""

    closed = False

    def __init__(self, target: AtomicFile) -> None:
        fd = target.descriptor
        self.handle = os.fdopen(os.dup(fd), "wb") if fd is not None else open(target.tmp, "wb")
        self.position = 0

    def write(self, data: bytes) -> int:
        self.handle.write(data)
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def flush(self) -> None:
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()
        self.closed = True


class ParquetWriter:
    """Typed Parquet (zstd, bounded row groups) with provenance in the file metadata."""

    def __init__(self, output: str, layout: str, metadata: dict[str, Any]) -> None:
        if output in (None, STDOUT):
            raise AnnotatorError("Parquet cannot be streamed to stdout; give -o FILE.parquet")
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.layout = layout
        schema = _schemas()["SPANS_SCHEMA" if layout == "spans" else "DOCUMENTS_SCHEMA"]
        self.provenance = provenance(metadata)
        metadata = {"schema_version": SCHEMA_VERSION, **metadata}
        self.schema = schema.with_metadata({"annotator": json.dumps(metadata)})
        self.output = output
        self.atomic = AtomicFile(output)
        try:
            # a FIFO, a device, /dev/stdout: written as it goes, closed by us
            self.sink = (
                pa.PythonFile(_Unseekable(self.atomic), mode="w") if self.atomic.streamed else None
            )
            target = self.sink if self.sink is not None else self.atomic.tmp
            self.writer = pq.ParquetWriter(target, self.schema, compression="zstd")
        except OSError as exc:
            self.atomic.abort()
            raise write_failed(output, exc) from None
        self.rows: list[dict[str, Any]] = []
        self.chars = 0

    def write(self, doc: Document, entities: list[Entity]) -> None:
        if self.layout == "spans":
            self.rows.extend(span_row(doc, entity, self.provenance) for entity in entities)
        else:
            self.rows.append(
                {
                    "doc_id": doc.id,
                    "text": doc.text,
                    "entities": [entity_record(e) for e in entities],
                    "source": doc.source,
                    "source_row": doc.row,
                    **self.provenance,
                }
            )
            self.chars += len(doc.text)
        if len(self.rows) >= ROW_GROUP_ROWS or self.chars >= ROW_GROUP_CHARS:
            self._write_row_group()

    def _write_row_group(self) -> None:
        if self.rows:
            import pyarrow as pa

            table = pa.Table.from_pylist(self.rows, schema=self.schema)
            try:
                self.writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
            except OSError as exc:
                raise write_failed(self.output, exc) from None
            self.rows, self.chars = [], 0

    def flush(self) -> None:
        """Row groups are cut by size, not by the pipeline's chunks: nothing to do here."""

    def close(self) -> None:
        self._write_row_group()
        try:
            self.writer.close()
            if self.sink is not None:
                self.sink.close()
            self.atomic.commit()
        except OSError as exc:
            self.atomic.abort()
            raise write_failed(self.output, exc) from None

    def abort(self) -> None:
        try:
            self.writer.close()
            if self.sink is not None:
                self.sink.close()
        except OSError:
            pass
        self.atomic.abort()


def open_writer(
    output: str | None, fmt: str, layout: str, metadata: dict[str, Any], drop_fields: bool = False
) -> JsonlWriter | ParquetWriter:
    if fmt not in OUTPUT_FORMATS:
        raise AnnotatorError(f"unknown output format {fmt!r}; use jsonl or parquet")
    if layout not in LAYOUTS:
        raise AnnotatorError(f"unknown layout {layout!r}; use documents or spans")
    if fmt == "parquet":
        return ParquetWriter(output, layout, metadata)
    return JsonlWriter(output, layout, drop_fields, metadata)
