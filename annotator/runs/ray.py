"""`annotator annotate --backend ray`: the same pipeline on a Ray cluster (optional extra).

    files ──► read tasks ──────────► tagger actors ──────────────► driver
              (annotator.readers;    (map_batches, one Annotator    (in input order: commits
               numbered blocks of    each, one GPU each: tags a     each part to the manifest,
               records)              block, writes it as a part)    reports bad records)

Reading runs in Ray tasks with `annotator.readers`, so ids, rows, bad records and compressed
or Parquet inputs are exactly what the local backend sees (Ray's own `read_json` and
`read_parquet` cannot say which line a row came from, so `source_row` and SOURCE:ROW ids
would differ). A read task cuts each file into numbered blocks of records; each actor loads
the tagger once, from the run's request, and tags a block whole.

A directory output (local, a shared filesystem, or s3://) is written by the actors, as Spark
and Delta commit a job's files: an actor writes its block as one part with the local writers
(the same schema, layout and metadata) under a hidden pending name, and hands the driver only
the part's metadata (documents, rows, size, sha256, how far in the input it reaches, its bad
records). The driver takes those in input order (`preserve_order`), records each part in the
manifest (that write is the commit) and only then gives it its `part-NNNNN` name, numbered
after the parts before it: the folder is the local backend's, so `--resume` and `--shard`
work here too, and a run either backend started can be finished by the other. The driver
never holds an entity row. A part an actor died writing is written again, whole, under the
same pending name; one no manifest names is removed by the next `--resume`.

One output file (`-o FILE`) cannot be written by many actors: there the actors send the
tagged documents back and the driver writes them with the local backend's sink.

Inputs are local (or shared-filesystem) paths, or s3:// URIs that the read tasks stream
(`annotator.io.storage`); the workers need the same AWS settings as the driver, and for a
local output directory the same path on a shared filesystem.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import tempfile
import time
from collections.abc import Generator, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from annotator import logs
from annotator.errors import AnnotatorError
from annotator.io.readers import ReaderOptions
from annotator.io.storage import Folder, folder_of, pending_name
from annotator.io.writers import open_writer
from annotator.pipeline import (
    Annotated,
    Annotator,
    bad_record,
    check_labels,
    file_sink,
    run_metadata,
    run_pipeline,
)
from annotator.records import Document, RecordError, Summary
from annotator.runs.directory import (
    Manifest,
    ResumedErrors,
    annotate_directory,
    open_run,
    part_entry,
    stage_part,
    write_error,
)
from annotator.runs.request import AnnotateRequest
from annotator.runs.shards import FileSource, Positioned, Shard
from annotator.tagging.engines import limit_threads

log = logging.getLogger("annotator")


READ_BLOCK = 1024  # records per block sent back to the driver, for one output file


def _import_ray():
    try:
        import pyarrow  # noqa: F401
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise AnnotatorError(
            f"--backend ray needs Ray: pip install 'annotator[ray]' ({exc})"
        ) from None
    return ray


def _block_schema():
    import pyarrow as pa

    return pa.schema([("file", pa.int64()), ("block", pa.int64()), ("records", pa.large_binary())])


def _part_schema():
    """What an actor hands the driver for a block it wrote (`staged` null: no part, as when
    every record of the block was bad); `errors`: the bad records, in input order;
    `seconds`: the actor's time on the block (tagging and writing)."""
    import pyarrow as pa

    return pa.schema(
        [
            ("file", pa.int64()),
            ("through", pa.int64()),
            ("staged", pa.string()),
            ("documents", pa.int64()),
            ("rows", pa.int64()),
            ("bytes", pa.int64()),
            ("sha256", pa.string()),
            ("errors", pa.string()),
            ("sentences", pa.int64()),
            ("tokens", pa.int64()),
            ("entities", pa.string()),
            ("seconds", pa.float64()),
        ]
    )


def _read_blocks(
    batch,
    *,
    reader_options: ReaderOptions,
    shard: Shard,
    cursor: tuple[int, int],
    block_records: int,
    keep_fields: bool,
):
    """Ray task: the records of the files in `batch` (of the shard, after `cursor`), cut into
    numbered blocks of at most `block_records` records, a row each: a block is never split
    on its way to an actor."""
    import pyarrow as pa

    def row(index: int, block: int, records: list) -> Any:
        data = {"file": [index], "block": [block], "records": [pickle.dumps(records)]}
        return pa.table(data, schema=_block_schema())

    for index, path in zip(batch.column("file").to_pylist(), batch.column("path").to_pylist()):
        skip = cursor[1] if index == cursor[0] else 0
        records: list[tuple[int, Any]] = []
        block = 0
        for _, number, record in FileSource([path], shard).positioned(reader_options, (0, skip)):
            if isinstance(record, Document) and not keep_fields:
                record.fields = {}  # not written: not shipped
            records.append((number, record))
            if len(records) >= block_records:
                yield row(index, block, records)
                records, block = [], block + 1
        if records:
            yield row(index, block, records)


@dataclass
class _TaggedDocument(Document):
    """A document that comes back from the cluster with its results (one output file)."""

    entities: list = field(default_factory=list)
    sentences: int = 0
    tokens: int = 0


class _Tagger:
    """Ray actor: loads the tagger once, then tags blocks of records, each whole; with part
    `metadata`, writes each block as a part of the run's output directory."""

    def __init__(
        self,
        request: AnnotateRequest,
        model_bytes: Any,
        device: str,
        threads: int,
        metadata: dict[str, Any] | None,
    ) -> None:
        logs.quiet_flair()
        limit_threads(max(1, threads))
        options = replace(request.options, device=device)
        if model_bytes is not None:  # a local model file, shipped through the object store
            import ray

            name, model_bytes = ray.get(model_bytes)
            folder = tempfile.mkdtemp(prefix="annotator-model-")
            options = replace(options, model=os.path.join(folder, name))  # its suffix says how
            with open(options.model, "wb") as handle:
                handle.write(model_bytes)
        # one CPU per actor: no splitter process beside it
        self.annotator = Annotator.from_options(options, split_process=False)
        self.request, self.options, self.metadata = request, options, metadata
        self.folder: Folder | None = folder_of(request.output) if metadata is not None else None

    def __call__(self, batch):
        import pyarrow as pa

        if self.folder is None:
            rows = [self._tagged(row) for row in batch.to_pylist()]
            return pa.Table.from_pylist(rows, schema=_block_schema())
        rows = [self._part(row, self.folder) for row in batch.to_pylist()]
        return pa.Table.from_pylist(rows, schema=_part_schema())

    def _annotated(self, records: list[tuple[int, Any]]) -> Iterator[tuple[int, Any]]:
        """Each record of a block in order: its `RecordError`, or its `Annotated` result."""
        documents = [record for _, record in records if isinstance(record, Document)]
        results = iter(self.annotator.annotate_documents(documents))
        for number, record in records:
            yield number, record if isinstance(record, RecordError) else next(results)

    def _tagged(self, row: dict[str, Any]) -> dict[str, Any]:
        """A block's records with their entities, for the driver to write (one output file);
        a document that could not be split or tagged comes back a bad record."""
        tagged: list[tuple[int, Any]] = []
        for number, result in self._annotated(pickle.loads(row["records"])):
            if isinstance(result, Annotated):
                doc = result.document
                if result.error:
                    result = RecordError(doc.source, doc.row, result.error)
                else:
                    result = _TaggedDocument(
                        **vars(doc),
                        entities=result.entities,
                        sentences=result.sentences,
                        tokens=result.tokens,
                    )
            tagged.append((number, result))
        return {**row, "records": pickle.dumps(tagged)}

    def _part(self, row: dict[str, Any], folder: Folder) -> dict[str, Any]:
        """Tag a block and write it as one part under a pending name (the same name and
        content if the block is done again); the part's metadata for the driver to commit."""
        options, shard = self.options, self.request.shard
        name = f"{shard.prefix}part-{self.request.run_id[:12]}-{row['file']:05d}-{row['block']:05d}"
        staged = pending_name(f"{name}.{options.output_format}")
        started = time.perf_counter()
        labels = set(options.labels)
        fail = options.on_error == "fail"
        summary, rows = Summary(), 0
        errors: list[tuple[str, int, str]] = []
        records = pickle.loads(row["records"])
        writer: Any = None
        written: tuple[int, str] | None = None  # the staged part's size and sha256

        def write(doc: Document, entities: list) -> None:
            nonlocal writer
            if writer is None:  # a block of bad records only writes no part
                writer = open_writer(
                    folder.writable_path(staged),
                    options.output_format,
                    options.layout,
                    self.metadata or {},
                    options.drop_fields,
                )
            writer.write(doc, entities)

        try:
            for _, result in self._annotated(records):
                if isinstance(result, Annotated):
                    entities = result.write(write, labels, options.min_score)
                    if result.error is None:
                        summary.add(result.sentences, result.tokens, entities)
                        rows += len(entities) if options.layout == "spans" else 1
                        continue
                    # split, tag or write failed: a bad record
                    result = RecordError(result.document.source, result.document.row, result.error)
                errors.append((result.source, result.row, result.reason))
                if fail:
                    break
            if writer is not None and not (fail and errors):
                written = stage_part(writer, folder, staged)
            elif writer is not None:  # the run stops at this block's bad record
                writer.abort()
        except (OSError, AnnotatorError) as exc:
            if writer is not None:
                writer.abort()
            raise write_error(f"{folder}{staged}", exc) from None
        return {
            "file": row["file"],
            "through": records[-1][0],
            "staged": staged if written else None,
            "bytes": written[0] if written else 0,
            "sha256": written[1] if written else None,
            "errors": json.dumps(errors),
            "documents": summary.documents,
            "rows": rows,
            "sentences": summary.sentences,
            "tokens": summary.words,
            "entities": json.dumps(summary.entities),
            "seconds": time.perf_counter() - started,
        }


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    """`exc` and the exceptions inside it: a Ray task error's `cause`, else Python's."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        cause = getattr(exc, "cause", None)
        exc = cause if isinstance(cause, BaseException) else (exc.__cause__ or exc.__context__)


def _annotator_error(exc: BaseException) -> AnnotatorError | None:
    """The user error inside a Ray task's exception, if that is what it is."""
    for inner in _chain(exc):
        if isinstance(inner, AnnotatorError):
            return AnnotatorError(
                str(getattr(inner, "cause", None) or inner).strip().splitlines()[-1]
            )
    return None


def _lost_worker_error(ray, exc: BaseException) -> AnnotatorError | None:
    """One line for a worker or node the cluster lost for good. Ray Data restarts lost actors
    and reruns lost tasks without limit (its defaults), so this is what is left when Ray
    gives up (an object it cannot rebuild, an actor it cannot reach): the committed parts
    stay, and the same command with --resume goes on from them."""
    lost = (
        ray.exceptions.RayActorError,
        ray.exceptions.WorkerCrashedError,
        ray.exceptions.NodeDiedError,
        ray.exceptions.ObjectLostError,
        ray.exceptions.OutOfMemoryError,
    )
    for inner in _chain(exc):
        if isinstance(inner, lost):
            first = (str(inner).strip().splitlines() or [""])[0]
            return AnnotatorError(
                f"the Ray cluster lost a worker ({type(inner).__name__}: {first}); the parts "
                "committed so far are kept: run the same command with --resume to go on"
            )
    return None


class RaySource:
    """Records read and tagged on the cluster, block by block in input order: back to the
    driver with their entities (`positioned`), or written as parts by the actors, only the
    parts' metadata coming back (`parts`)."""

    def __init__(
        self,
        ray,
        request: AnnotateRequest,
        files: list[str],
        actors: int,
        gpus_per_actor: float,
        cpus_per_actor: float,
        show_progress: bool,
    ) -> None:
        self.ray, self.request, self.files, self.shard = ray, request, files, request.shard
        self.actors, self.gpus, self.cpus = actors, gpus_per_actor, cpus_per_actor
        self.show_progress = show_progress

    def records(self, reader_options: ReaderOptions) -> Iterator[Any]:
        return (record for _, _, record in self.positioned(reader_options, (0, 0)))

    def total(self, reader_options: ReaderOptions) -> int | None:
        return None

    def tag(self, annotator: Annotator, documents: Iterable[Document]) -> Iterator[Annotated]:
        """The work was done on the cluster."""
        for doc in documents:
            yield Annotated(doc, doc.entities, doc.sentences, doc.tokens)

    def positioned(
        self, reader_options: ReaderOptions, cursor: tuple[int, int]
    ) -> Iterator[Positioned]:
        """Each record after `cursor`, tagged, in input order (for the driver to write)."""
        for block in self._blocks(reader_options, cursor, READ_BLOCK, None):
            for number, record in pickle.loads(block["records"]):
                yield block["file"], number, record

    def parts(
        self, cursor: tuple[int, int], part_size: int, metadata: dict[str, Any]
    ) -> Iterator[dict[str, Any]]:
        """The metadata of each part the actors wrote (blocks of `part_size` records after
        `cursor`), in input order."""
        reader_options = self.request.options.reader_options()
        return self._blocks(reader_options, cursor, part_size, metadata)

    def _blocks(
        self,
        reader_options: ReaderOptions,
        cursor: tuple[int, int],
        block_records: int,
        metadata: dict[str, Any] | None,
    ) -> Iterator[dict[str, Any]]:
        ray, request, options, files = self.ray, self.request, self.request.options, self.files
        items = [{"file": i, "path": p} for i, p in enumerate(files) if i >= cursor[0]]
        if not items:
            return
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # input order, so resume has a cursor
        context.enable_progress_bars = self.show_progress
        from annotator.models import resolve_model

        resolved = resolve_model(options.model)  # a local file travels to the actors with the job
        model_bytes = (
            ray.put((resolved.name, resolved.read_bytes())) if isinstance(resolved, Path) else None
        )
        device = "cuda" if self.gpus else "cpu"  # an actor sees only the GPU Ray gave it
        try:
            dataset = ray.data.from_items(items, override_num_blocks=len(items))
        except TypeError:  # Ray before 2.10
            dataset = ray.data.from_items(items, parallelism=len(items))
        dataset = dataset.map_batches(
            _read_blocks,
            batch_size=1,
            batch_format="pyarrow",
            num_cpus=0.5,
            fn_kwargs={
                "reader_options": reader_options,
                "shard": self.shard,
                "cursor": cursor,
                "block_records": block_records,
                "keep_fields": options.layout == "documents" and not options.drop_fields,
            },
        )
        dataset = dataset.map_batches(
            _Tagger,
            batch_size=1,  # one block: tagged, and written as one part, whole
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=self.actors),
            num_gpus=self.gpus or None,
            num_cpus=self.cpus,
            fn_constructor_kwargs={
                "request": request,
                "model_bytes": model_bytes,
                "device": device,
                "threads": int(self.cpus),
                "metadata": metadata,
            },
        )
        try:
            for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
                yield from batch.to_pylist()
        except Exception as exc:
            error = _annotator_error(exc) or _lost_worker_error(ray, exc)
            if error is None:
                raise
            raise error from None


def _commit_parts(
    request: AnnotateRequest, manifest: Manifest, parts: Generator[dict[str, Any], None, None]
) -> Summary:
    """The driver's share of a directory run: each part the actors wrote, in input order,
    recorded in the manifest (the commit) and published; bad records reported as the local
    backend reports them."""
    options = request.options
    summary, skipped, actor_seconds = Summary(), manifest.data["skipped"], 0.0
    report = ResumedErrors(options.errors if options.on_error == "skip" else None, skipped)
    started = time.perf_counter()
    try:
        with closing(parts):  # a failed run stops the cluster's work before Ray stops
            for part in parts:
                for source, row, reason in json.loads(part["errors"]):
                    bad_record(RecordError(source, row, reason), options.on_error, report, summary)
                    skipped += 1
                summary.documents += part["documents"]
                summary.sentences += part["sentences"]
                summary.words += part["tokens"]
                summary.entities.update(json.loads(part["entities"]))
                actor_seconds += part["seconds"]
                if part["staged"] is None:  # no document to write: the next part's cursor covers it
                    continue
                through = (part["file"], part["through"])
                name = manifest.part_name(len(manifest.parts), options.output_format)
                entry = part_entry(
                    name,
                    part["documents"],
                    part["rows"],
                    through,
                    skipped,
                    part["bytes"],
                    part["sha256"],
                    staged=part["staged"],
                )
                manifest.commit(entry, through, skipped)
        manifest.commit(None, (len(manifest.data["settings"]["inputs"]), 0), skipped, True)
        if actor_seconds:
            log.info(
                "Ray: each actor tagged and wrote %s words/s (%.0f actor-seconds in all)",
                f"{summary.words / actor_seconds:,.0f}",
                actor_seconds,
            )
    finally:
        report.close()
        summary.seconds = time.perf_counter() - started
    return summary


def _write_parts(
    request: AnnotateRequest,
    directory: Folder,
    source: RaySource,
    annotator: Annotator,
    watchers: Any,
) -> Summary:
    """A directory run whose parts the actors write (see the module's docstring)."""
    manifest = open_run(request, directory, source.files)
    if manifest.complete:
        return Summary()
    check_labels(annotator, request.options)
    metadata = run_metadata(annotator, request.options, request.run_id)
    parts = source.parts(manifest.cursor, request.part_size, metadata)
    return _commit_parts(request, manifest, parts)


def _connect(ray, address: str | None) -> bool:
    """Join the cluster at `address` (or RAY_ADDRESS), else start a local Ray; True if we did."""
    if log.getEffectiveLevel() > logging.DEBUG:  # Ray Data's own execution notes
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        # and its stack dumps of an execution that failed: the run's own one line says it
        for name in (
            "ray.data.exceptions",
            "ray.data._internal.execution.streaming_executor_state",
        ):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    if ray.is_initialized():
        return False
    import signal
    import threading

    # Ray's init puts its own SIGTERM handler in place (a stack dump, exit 15): ours stay, so
    # that SIGTERM and Ctrl-C stop a Ray run as any other, 143 and 130 with one line
    main = threading.current_thread() is threading.main_thread()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)} if main else {}
    try:
        ray.init(
            address=address,
            include_dashboard=False,
            logging_level=logging.WARNING,
            configure_logging=True,
        )
    except Exception as exc:  # connection refused, bad address, version mismatch
        raise AnnotatorError(
            f"cannot start or join Ray{f' at {address}' if address else ''}: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    finally:
        for number, handler in handlers.items():
            if handler is not None:
                signal.signal(number, handler)
    return True


def annotate_with_ray(request: AnnotateRequest) -> Summary:
    """Annotate `request` on a Ray cluster into its output (a file or a directory of parts):
    `--workers` tagger actors (default: one per GPU, else one per CPU but one), at
    `--ray-address`."""
    ray = _import_ray()
    options = request.options
    files = request.input_files()
    started_here = _connect(ray, request.ray_address)
    try:
        resources = ray.cluster_resources()
        gpus = resources.get("GPU", 0) if options.device != "cpu" else 0
        cpus = resources.get("CPU", 1)
        actors = request.workers or (int(gpus) if gpus >= 1 else max(1, int(cpus) - 1))
        show = options.progress if options.progress is not None else False
        source = RaySource(ray, request, files, actors, 1 if gpus >= 1 else 0, 1.0, show)
        log.info(
            "Ray: %d tagger actor(s) on %s",
            actors,
            f"{int(gpus)} GPU(s)" if gpus >= 1 else f"{int(cpus)} CPU(s)",
        )
        # the driver loads the model too: for the label check and the files' provenance
        driver = Annotator.from_options(replace(options, device="cpu"), split_process=False)
        if request.directory:
            return annotate_directory(request, source, driver, run=_write_parts)
        return run_pipeline(request, source, file_sink(request), driver)
    finally:
        if started_here:
            ray.shutdown()
