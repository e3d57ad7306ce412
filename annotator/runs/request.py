"""One `annotator annotate` run, as asked for: built and checked once, before anything loads,
then handed as it is to the pipeline, the worker processes and the Ray actors.

Every refusal of an input, an output or a combination of options lives in `AnnotateRequest.build`
and nowhere else; what the run does with a request is `annotator.runs.dispatch`'s business.
"""

from __future__ import annotations

import glob
import os
import uuid
from dataclasses import dataclass, field, replace

from annotator.errors import AnnotatorError, UsageError
from annotator.files import check_parent
from annotator.io.readers import (
    MAX_RECORD_BYTES,
    STDIN,
    ReaderOptions,
    check_outputs_apart,
    expand_inputs,
)
from annotator.io.storage import STDOUT, is_directory_output, is_remote, remote_info
from annotator.io.writers import default_layout, output_format
from annotator.runs.shards import Shard
from annotator.tagging.precision import DEFAULT_PRECISION, check_precision

PART_SIZE = 10_000


BACKENDS = ("local", "ray")


@dataclass
class AnnotateOptions:
    """What the rows of an annotate run depend on (and how it tags and reports); the Parquet
    metadata records it."""

    model: str | None = None
    device: str = "auto"
    engine: str = "auto"
    batch_size: int = 32
    spacy_model: str | None = None
    max_sentence_tokens: int = 250
    input_format: str | None = None
    text_field: str = "text"
    id_field: str = "id"
    max_record_bytes: int = MAX_RECORD_BYTES
    output_format: str | None = None
    layout: str | None = None
    drop_fields: bool = False
    labels: tuple[str, ...] = ()
    min_score: float = 0.0
    on_error: str = "fail"
    errors: str | None = None
    progress: bool | None = None
    precision: str = DEFAULT_PRECISION  # the fast engine's (annotator.tagging.precision)

    def reader_options(self) -> ReaderOptions:
        return ReaderOptions(
            self.input_format, self.text_field, self.id_field, self.max_record_bytes
        )

    def for_output(self, output: str | None, directory: bool = False) -> AnnotateOptions:
        """These options with the output format and layout settled: `--format`, else the
        output's extension (a directory: Parquet); the layout follows the format."""
        fmt = self.output_format or ("parquet" if directory else output_format(output, None))
        return replace(self, output_format=fmt, layout=self.layout or default_layout(fmt))


def _new_run_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class AnnotateRequest:
    """An annotate run: its inputs and output, the options of its rows (format and layout
    settled), and how it is carried out. `run_id` is on every row, of every worker."""

    inputs: tuple[str, ...]
    output: str | None
    options: AnnotateOptions
    resume: bool = False
    shard: Shard = Shard()
    part_size: int = PART_SIZE
    devices: tuple[str, ...] = ("auto",)  # local backend: one worker process per device
    workers: int | None = None  # ray backend: tagger actors (None: one per GPU, else CPUs - 1)
    backend: str = "local"
    ray_address: str | None = None
    page: str | None = None  # --html: a viewer page of the first documents
    page_limit: int = 100
    include_suffixes: tuple[str, ...] = ()
    run_id: str = field(default_factory=_new_run_id)

    @property
    def directory(self) -> bool:
        """Part files and a manifest (`-o DIR/`), rather than one file or stdout."""
        return is_directory_output(self.output)

    def input_files(self) -> list[str]:
        """The input files, folders and globs expanded (what a folder skips is logged)."""
        return expand_inputs(self.inputs, self.include_suffixes)

    @classmethod
    def build(
        cls,
        inputs: list[str] | tuple[str, ...],
        output: str | None,
        options: AnnotateOptions = AnnotateOptions(),
        *,
        resume: bool = False,
        shard: str | None = None,
        part_size: int = PART_SIZE,
        devices: tuple[str, ...] = (),
        workers: int | None = None,
        backend: str = "local",
        ray_address: str | None = None,
        page: str | None = None,
        page_limit: int = 100,
        include_suffixes: tuple[str, ...] = (),
    ) -> AnnotateRequest:
        """The request, or a `UsageError` (exit 2) that names what cannot work, before any
        model loads or any process starts."""
        from annotator.models import resolve_model

        inputs = tuple(inputs)
        _check_inputs(inputs)
        try:
            check_outputs_apart(
                inputs, {"-o": output, "--errors": options.errors, "--html": page}, include_suffixes
            )
            parsed = Shard.parse(shard)
        except AnnotatorError as exc:
            raise UsageError(str(exc)) from None
        if options.on_error not in ("fail", "skip"):
            raise UsageError("--on-error is fail or skip")
        directory = is_directory_output(output)
        _check_remote_output(inputs, output, directory)
        if options.output_format is None and not directory and output not in (None, STDOUT):
            try:
                output_format(output, None)
            except AnnotatorError as exc:
                raise UsageError(str(exc)) from None
        devices = _worker_devices(options.device, devices, workers, backend)
        for device in devices:  # bf16 where it is not fast: refused before any model loads
            check_precision(options.precision, device)
        if len(devices) == 1:  # one process: the one device given with --devices too
            options = replace(options, device=devices[0])
        request = cls(
            inputs=inputs,
            output=output,
            options=options.for_output(output, directory),
            resume=resume,
            shard=parsed,
            part_size=part_size,
            devices=devices,
            workers=workers,
            backend=backend,
            ray_address=ray_address,
            page=page,
            page_limit=page_limit,
            include_suffixes=tuple(include_suffixes),
        )
        request._check_combination()
        if output not in (None, STDOUT) and not directory:  # a directory output is created
            check_parent(output, "-o")
        check_parent(options.errors, "--errors")
        check_parent(page, "--html")
        resolve_model(options.model)
        return request

    def _check_combination(self) -> None:
        """Every refusal of a combination of options."""
        directory = self.directory
        stdin = not self.inputs or STDIN in self.inputs
        workers = len(self.devices) > 1
        if self.backend not in BACKENDS:
            raise UsageError(f"--backend {self.backend}: use {' or '.join(BACKENDS)}")
        if self.part_size < 1:
            raise UsageError("--part-size must be at least 1")
        if self.workers is not None and self.workers < 1:
            raise UsageError("--workers must be at least 1")
        if self.resume and not directory:
            raise UsageError(
                "--resume needs a directory output (-o DIR/): a single output file "
                "is written whole or not at all"
            )
        if self.resume and stdin:
            raise UsageError("--resume cannot re-read stdin; give the input as files")
        if stdin and (self.backend == "ray" or workers):
            raise UsageError(
                "--workers, --devices and --backend ray read files, not stdin; give the input "
                "as files"
            )
        if self.backend == "ray":
            if self.output in (None, STDIN):
                raise UsageError("--backend ray writes files: give -o FILE or -o DIR/")
        elif workers and not directory:
            raise UsageError(
                "--workers/--devices write one part series per worker: give a "
                "directory output (-o DIR/)"
            )
        if self.page is not None:
            if self.page_limit < 1:
                raise UsageError("--html-limit must be at least 1")
            if self.backend != "local" or workers:
                raise UsageError(
                    "--html needs a run in this process (no --workers, --devices or "
                    "--backend ray); view such a run's output with `annotator view`"
                )
            if self.shard.count > 1 and not directory:
                raise UsageError("--html with --shard needs a directory output (-o DIR/)")
        if self.options.output_format == "parquet" and self.output in (None, STDOUT):
            raise UsageError("Parquet cannot be streamed to stdout; give -o FILE.parquet")


def _check_inputs(inputs: tuple[str, ...]) -> None:
    for item in inputs:
        if is_remote(item):
            if remote_info(item) is None:  # no such bucket, no access: AnnotatorError (exit 1)
                raise UsageError(f"{item}: no such object or prefix")
            continue
        if item != STDIN and not glob.has_magic(item) and not os.path.exists(item):
            raise UsageError(f"{item}: no such file or directory")
        if (
            glob.has_magic(item)
            and not os.path.exists(item)
            and not glob.glob(item, recursive=True)
        ):
            raise UsageError(f"{item}: no file matches this pattern")
    if inputs.count(STDIN) > 1:
        raise UsageError("- (stdin) is given more than once: it can be read only once")


def _check_remote_output(inputs: tuple[str, ...], output: str | None, directory: bool) -> None:
    """An s3:// output is a directory of parts (an object store cannot replace a file whole
    in place of a temporary one), and not under an input prefix that would read it back."""
    if not is_remote(output):
        return
    if not directory:
        raise UsageError(f"-o {output}: an s3:// output is a directory of parts; end it with /")
    for item in inputs:
        if is_remote(item) and output.startswith(item.rstrip("/") + "/"):
            raise UsageError(
                f"-o {output} lies under the input {item}, whose next read would take it for "
                "input: write it elsewhere"
            )


def _worker_devices(
    device: str, devices: tuple[str, ...], workers: int | None, backend: str
) -> tuple[str, ...]:
    """The device of each local worker process: --devices, else --workers times --device."""
    if devices:
        if backend == "ray":
            raise UsageError(
                "--devices is for the local backend; with --backend ray, Ray "
                "places one tagger per GPU (--workers sets how many)"
            )
        if workers not in (None, len(devices)):
            raise UsageError(
                f"--workers {workers} and --devices with {len(devices)} "
                "devices disagree; give one of them"
            )
        return tuple(devices)
    if backend == "ray":
        return (device,)  # --workers counts Ray's actors, not processes here
    return (device,) * (workers or 1)
