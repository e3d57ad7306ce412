"""`annotator annotate`'s dispatcher: hands a checked `AnnotateRequest` to one of the ways to
carry it out, with its source and sinks.

    one file or stdout ........ pipeline.run_pipeline (a FileSource, a FileSink)
    a directory (-o DIR/) ..... runs.directory (parts, manifest, --resume)
    --workers / --devices ..... runs.workers (one process per worker, each a directory run)
    --backend ray ............. runs.ray
    --shard K/N ............... any of them, over the documents of one shard

`--html PAGE` is a sink that watches the runs that tag in this process.
"""

from __future__ import annotations

import logging
from collections import Counter

from annotator.files import write_atomically
from annotator.io.sinks import Sink
from annotator.models import model_info
from annotator.pipeline import file_sink, run_pipeline
from annotator.records import Document, Entity, Summary
from annotator.runs.directory import annotate_directory
from annotator.runs.request import AnnotateRequest
from annotator.runs.shards import FileSource
from annotator.runs.workers import annotate_with_workers
from annotator.views.pages import ViewDoc, render_view

log = logging.getLogger("annotator")


class PageSink(Sink):
    """--html: keeps the first documents as the run tags them, then draws them."""

    def __init__(self, path: str, limit: int, model: str | None, output: str | None) -> None:
        self.path, self.limit, self.model, self.output = path, limit, model, output
        self.sample: list[ViewDoc] = []

    def write(self, doc: Document, entities: list[Entity]) -> None:
        if len(self.sample) < self.limit:
            self.sample.append(
                ViewDoc(doc.id, doc.text, [e.to_dict() for e in entities], doc.source, doc.row)
            )

    def close(self, summary: Summary) -> None:
        info = model_info(self.model)
        view = render_view(
            self.sample,
            eligible=summary.documents,
            model={"model": info.name, "model_sha256": info.sha256},
            source=str(self.output or "stdout"),
            totals=Counter(summary.entities),
        )
        write_atomically(self.path, view.html)
        for line in view.warnings():
            log.warning("%s", line)


def annotate_run(request: AnnotateRequest) -> Summary:
    """Carry out `request`: one file or stdout, a directory, worker processes, or Ray."""
    if request.backend == "ray":
        from annotator.runs.ray import annotate_with_ray

        return annotate_with_ray(request)
    if len(request.devices) > 1:
        return annotate_with_workers(request)
    watchers = []
    if request.page is not None:
        page = PageSink(request.page, request.page_limit, request.options.model, request.output)
        watchers.append(page)
    if request.directory:
        return annotate_directory(request, watchers=watchers)
    files = request.input_files()
    source = FileSource(files, request.shard)
    return run_pipeline(request, source, file_sink(request), watchers=watchers)
