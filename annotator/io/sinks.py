"""Where an annotate run's documents go.

The pipeline is handed one output sink (a file or stdout here; a directory's part writer in
`annotator.runs.directory`) and any number of sinks that only watch (the --html page, a worker
process's progress). Each sees the run's metadata, then every document in input order, then
the end of the run; the pipeline never asks what kind of sink it holds.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from annotator.files import write_failed
from annotator.io.writers import open_writer
from annotator.logs import printable
from annotator.records import Document, Entity, RecordError, Summary

log = logging.getLogger("annotator")


class ErrorReport:
    """Where skipped records go: a JSONL file with --errors, else one line each on stderr.

    The file grows a whole line at a time, flushed as it comes (a resumed run keeps the
    lines of its committed parts): a write that fails (a full disk) is one error, and the
    file is cut back to its last whole line, never left ending mid-line.
    """

    def __init__(self, path: str | None, append: bool = False) -> None:
        self.path, self.handle = path, None
        if path:
            try:
                self.handle = open(path, "a" if append else "w", encoding="utf-8")
                self.whole = self.handle.tell()  # where the last whole line ends
            except OSError as exc:
                raise write_failed(path, exc) from None

    def add(self, error: RecordError) -> None:
        if self.handle:
            line = json.dumps(error.to_dict(), ensure_ascii=False)
            if not line.isascii():  # a lone surrogate in a reason must not stop the report
                line = json.dumps(error.to_dict())
            try:
                self.handle.write(line + "\n")
                self.handle.flush()
            except OSError as exc:
                self._cut_back()
                raise write_failed(self.path, exc) from None
            self.whole = self.handle.tell()
        else:
            log.warning("skipped %s", printable(str(error)))

    def _cut_back(self) -> None:
        handle, self.handle = self.handle, None
        try:
            os.truncate(handle.fileno(), self.whole)
        except OSError:  # a FIFO or a device: nothing to cut
            pass
        try:
            handle.close()
        except OSError:  # what is still buffered fails again: it is not wanted
            pass

    def close(self) -> None:
        if self.handle:  # every line was flushed as it came: nothing is left to fail
            self.handle.close()


class Sink:
    """A sink that keeps nothing: each kind overrides the steps that concern it."""

    def open(self, metadata: dict[str, Any]) -> None:
        """The run's provenance (model, run id, options), before the first document."""

    def write(self, doc: Document, entities: list[Entity]) -> None:
        """A document and its entities (after --labels and --min-score)."""

    def skip(self, doc: Document) -> None:
        """`doc` was read but failed later (split, tag or write): a bad record, not written."""

    def flush(self) -> None:
        """A document is done: a streamed output passes it on now."""

    def close(self, summary: Summary) -> None:
        """The input is exhausted and every document written."""

    def abort(self) -> None:
        """The run failed or was stopped: leave nothing half-written."""

    def error_report(self, path: str | None) -> ErrorReport:
        """Where the output's bad records go (--errors PATH, else stderr)."""
        return ErrorReport(path)


class FileSink(Sink):
    """One output file, written whole or not at all, or stdout (streamed document by
    document)."""

    def __init__(self, output: str | None, fmt: str, layout: str, drop_fields: bool) -> None:
        self.output, self.fmt, self.layout, self.drop_fields = output, fmt, layout, drop_fields
        self.writer: Any = None

    def open(self, metadata: dict[str, Any]) -> None:
        self.writer = open_writer(self.output, self.fmt, self.layout, metadata, self.drop_fields)

    def write(self, doc: Document, entities: list[Entity]) -> None:
        self.writer.write(doc, entities)

    def flush(self) -> None:
        self.writer.flush()

    def close(self, summary: Summary) -> None:
        self.writer.close()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
