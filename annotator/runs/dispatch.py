"""`annotator annotate`'s dispatcher: checks a run's options once, then hands it to one of
the ways to carry it out.

    one file or stdout ........ pipeline.annotate
    a directory (-o DIR/) ..... runs.directory (parts, manifest, --resume)
    --workers / --devices ..... runs.workers (one process per worker, each a directory run)
    --backend ray ............. runs.ray
    --shard K/N ............... any of them, over the documents of one shard

`--html PAGE` rides along as an `on_document` hook of the runs that tag in this process.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from annotator.errors import AnnotatorError
from annotator.files import write_atomically
from annotator.io.readers import STDIN
from annotator.models import model_info
from annotator.pipeline import AnnotateOptions, Hooks, Summary, annotate
from annotator.records import Document, Entity
from annotator.runs.directory import PART_SIZE, annotate_directory, is_directory_output
from annotator.runs.shards import Shard, local_source
from annotator.runs.workers import annotate_with_workers
from annotator.views.pages import ViewDoc, render_view

log = logging.getLogger("annotator")

BACKENDS = ("local", "ray")


@dataclass
class RunOptions:
    """The options of `annotator annotate` that shape a run rather than its output rows."""

    resume: bool = False
    shard: str | None = None  # "K/N", K in 0..N-1
    part_size: int = PART_SIZE
    devices: tuple[str, ...] = ()
    workers: int | None = None  # local: worker processes; ray: tagger actors
    backend: str = "local"  # local | ray
    ray_address: str | None = None
    page: str | None = None  # --html: a viewer page of the first documents
    page_limit: int = 100


def _worker_devices(options: AnnotateOptions, run: RunOptions) -> list[str]:
    if run.devices:
        if run.workers not in (None, len(run.devices)):
            raise AnnotatorError(
                f"--workers {run.workers} and --devices with {len(run.devices)} "
                "devices disagree; give one of them"
            )
        return list(run.devices)
    if run.workers is not None and run.workers < 1:
        raise AnnotatorError("--workers must be at least 1")
    return [options.device] * (run.workers or 1)


def _check(inputs: list[str], output: str | None, run: RunOptions, devices: list[str]) -> None:
    """Every refusal of a combination of options, before anything is loaded or started."""
    directory = is_directory_output(output)
    stdin = not inputs or STDIN in inputs
    if run.backend not in BACKENDS:
        raise AnnotatorError(f"--backend {run.backend}: use {' or '.join(BACKENDS)}")
    if run.part_size < 1:
        raise AnnotatorError("--part-size must be at least 1")
    if run.resume and not directory:
        raise AnnotatorError(
            "--resume needs a directory output (-o DIR/): a single output file "
            "is written whole or not at all"
        )
    if run.resume and stdin:
        raise AnnotatorError("--resume cannot re-read stdin; give the input as files")
    if stdin and (run.backend == "ray" or len(devices) > 1):
        raise AnnotatorError(
            "--workers, --devices and --backend ray read files, not stdin; give the input as files"
        )
    if run.backend == "ray":
        if run.devices:
            raise AnnotatorError(
                "--devices is for the local backend; with --backend ray, Ray "
                "places one tagger per GPU (--workers sets how many)"
            )
        if output in (None, STDIN):
            raise AnnotatorError("--backend ray writes files: give -o FILE or -o DIR/")
    elif len(devices) > 1 and not directory:
        raise AnnotatorError(
            "--workers/--devices write one part series per worker: give a "
            "directory output (-o DIR/)"
        )
    if run.page is not None:
        if run.page_limit < 1:
            raise AnnotatorError("--html-limit must be at least 1")
        if run.backend != "local" or len(devices) > 1:
            raise AnnotatorError(
                "--html needs a run in this process (no --workers, --devices or "
                "--backend ray); view such a run's output with `annotator view`"
            )
        if run.shard and not directory:
            raise AnnotatorError("--html with --shard needs a directory output (-o DIR/)")
        if not Path(run.page).resolve().parent.is_dir():
            raise AnnotatorError(f"{Path(run.page).parent}: no such directory for the --html page")


class _Page:
    """--html: keeps the first documents as the run tags them, then draws them."""

    def __init__(self, path: str, limit: int) -> None:
        self.path, self.limit = path, limit
        self.sample: list[ViewDoc] = []

    def keep(self, doc: Document, entities: list[Entity]) -> None:
        if len(self.sample) < self.limit:
            self.sample.append(
                ViewDoc(doc.id, doc.text, [e.to_dict() for e in entities], doc.source, doc.row)
            )

    def write(self, summary: Summary, model: str | None, output: str | None) -> None:
        info = model_info(model)
        view = render_view(
            self.sample,
            eligible=summary.documents,
            model={"model": info.name, "model_sha256": info.sha256},
            source=str(output or "stdout"),
            totals=Counter(summary.entities),
        )
        write_atomically(self.path, view.html)
        for line in view.warnings():
            log.warning("%s", line)


def annotate_run(
    inputs: Iterable[str],
    output: str | None,
    options: AnnotateOptions,
    run: RunOptions = RunOptions(),
) -> Summary:
    """Dispatch `annotator annotate`: one file or stdout, a directory, workers, or Ray."""
    inputs = list(inputs)
    shard = Shard.parse(run.shard)
    devices = _worker_devices(options, run)
    _check(inputs, output, run, devices)
    directory = is_directory_output(output)
    if run.backend == "ray":
        from annotator.runs.ray import annotate_with_ray

        return annotate_with_ray(
            inputs, output, options, shard, run.resume, run.part_size, run.workers, run.ray_address
        )
    if len(devices) > 1:
        return annotate_with_workers(
            inputs, output, options, devices, shard, run.resume, run.part_size
        )
    options = replace(options, device=devices[0])
    page = _Page(run.page, run.page_limit) if run.page is not None else None
    on_document = page.keep if page else None
    if directory:
        summary = annotate_directory(
            inputs, output, options, shard, run.resume, run.part_size, on_document=on_document
        )
    elif shard.count == 1:
        summary = annotate(inputs, output, options, on_document=on_document)
    else:
        summary = annotate(
            inputs,
            output,
            options,
            on_document=on_document,
            hooks=Hooks(
                records=lambda files, reader_options: (
                    record for _, _, record in local_source(files, reader_options, (0, 0), shard)
                ),
                total=lambda files, reader_options: None,
            ),
        )
    if page:
        page.write(summary, options.model, output)
    return summary
