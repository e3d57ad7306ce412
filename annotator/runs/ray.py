"""`annotator annotate --backend ray`: the same pipeline on a Ray cluster (optional extra).

    files ──► Ray Dataset of file names ──► read tasks ──► tagger actors ──► driver ──► writers
              (one row per input file)     (annotator.    (map_batches, one  (in input
                                            readers)       Annotator each,    order)
                                                           one GPU each)

Reading runs in Ray tasks with `annotator.readers`, so ids, rows, bad records and compressed
or Parquet inputs are exactly what the local backend sees (Ray's own `read_json` and
`read_parquet` cannot say which line a row came from, so `source_row` and SOURCE:ROW ids
would differ). Each actor loads the tagger once, from the run's request. The driver receives
the results in input order (`preserve_order`) and writes them with the local backend's sinks —
the same files, the same schema (`annotator.io.writers.SPANS_SCHEMA`), and for a directory
output the same part files and manifest, so `--resume` and `--shard` work here too.

Inputs are local (or shared-filesystem) paths, or s3:// URIs that the read tasks stream
(`annotator.io.storage`); the workers need the same AWS settings as the driver.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from annotator import logs
from annotator.errors import AnnotatorError
from annotator.io.readers import ReaderOptions
from annotator.pipeline import Annotated, Annotator, file_sink, run_pipeline
from annotator.records import Document, Entity, RecordError, Summary
from annotator.runs.directory import annotate_directory
from annotator.runs.request import AnnotateRequest
from annotator.runs.shards import FileSource, Positioned, Shard

log = logging.getLogger("annotator")


READ_BLOCK = 1024  # records per block out of a read task


TAG_BATCH = 256  # documents per call of a tagger actor


#: A lost node (preempted, crashed) kills its actors and the blocks it held: Ray restarts the
#: actors elsewhere, without limit, and runs each lost task again, up to this many times more,
#: so a run survives many node losses; a task that keeps killing its worker (one document
#: that exhausts memory) stops the run after that many tries instead of looping all night.
TASK_RETRIES = 4
RETRIES = {"max_retries": TASK_RETRIES}  # read tasks
ACTOR_RETRIES = {"max_restarts": -1, "max_task_retries": TASK_RETRIES}  # tagger actors


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


def _records_of(
    path: str, skip: int, shard: Shard, options: ReaderOptions
) -> Iterator[tuple[int, Any]]:
    for _, number, record in FileSource([path], shard).positioned(options, (0, skip)):
        yield number, record


def _schema(tagged: bool):
    import pyarrow as pa

    columns = [
        ("file", pa.int64()),
        ("number", pa.int64()),
        ("kind", pa.string()),
        ("id", pa.string()),
        ("text", pa.string()),
        ("source", pa.string()),
        ("row", pa.int64()),
        ("fields", pa.binary()),
        ("reason", pa.string()),
    ]
    if tagged:
        columns += [("entities", pa.string()), ("sentences", pa.int64()), ("tokens", pa.int64())]
    return pa.schema(columns)


def _read_files(
    batch,
    *,
    reader_options: ReaderOptions,
    shard: Shard,
    cursor: tuple[int, int],
    keep_fields: bool,
):
    """Ray task: the records of the files in `batch`, as blocks of rows, in order."""
    import pyarrow as pa

    schema = _schema(tagged=False)
    for index, path in zip(batch.column("file").to_pylist(), batch.column("path").to_pylist()):
        skip = cursor[1] if index == cursor[0] else 0
        rows: list[dict[str, Any]] = []
        for number, record in _records_of(path, skip, shard, reader_options):
            if isinstance(record, RecordError):
                rows.append(
                    {
                        "file": index,
                        "number": number,
                        "kind": "error",
                        "id": None,
                        "text": None,
                        "source": record.source,
                        "row": record.row,
                        "fields": None,
                        "reason": record.reason,
                    }
                )
            else:
                rows.append(
                    {
                        "file": index,
                        "number": number,
                        "kind": "doc",
                        "id": record.id,
                        "text": record.text,
                        "source": record.source,
                        "row": record.row,
                        "fields": pickle.dumps(record.fields) if keep_fields else None,
                        "reason": None,
                    }
                )
            if len(rows) >= READ_BLOCK:
                yield pa.Table.from_pylist(rows, schema=schema)
                rows = []
        if rows:
            yield pa.Table.from_pylist(rows, schema=schema)


class _Tagger:
    """Ray actor: loads the tagger once, then tags batches of documents."""

    def __init__(
        self, request: AnnotateRequest, model_bytes: Any, device: str, threads: int
    ) -> None:
        import torch

        logs.quiet_flair()
        torch.set_num_threads(max(1, threads))
        options = replace(request.options, device=device)
        if model_bytes is not None:  # a local model file, shipped through the object store
            import ray

            model_bytes = ray.get(model_bytes)
            folder = tempfile.mkdtemp(prefix="annotator-model-")
            options = replace(options, model=os.path.join(folder, "model.pt"))
            with open(options.model, "wb") as handle:
                handle.write(model_bytes)
        # one CPU per actor: no splitter process beside it
        self.annotator = Annotator.from_options(options, split_process=False)
        self.keep_text = options.layout == "documents"

    def __call__(self, batch):
        import pyarrow as pa

        rows = batch.to_pylist()
        documents = [
            Document(r["id"], r["text"], r["source"], r["row"]) for r in rows if r["kind"] == "doc"
        ]
        results = iter(self.annotator.annotate_documents(documents))
        for row in rows:
            if row["kind"] == "doc":
                result = next(results)
                row["entities"] = json.dumps([e.to_dict() for e in result.entities])
                row["sentences"], row["tokens"] = result.sentences, result.tokens
                if result.error:  # could not be split or tagged: a bad record on the driver
                    row["kind"], row["reason"], row["entities"] = "error", result.error, None
            else:
                row["entities"], row["sentences"], row["tokens"] = None, 0, 0
            if not self.keep_text:
                row["text"] = None
        return pa.Table.from_pylist(rows, schema=_schema(tagged=True))


@dataclass
class _TaggedDocument(Document):
    """A document that comes back from the cluster with its results."""

    entities: list = field(default_factory=list)
    sentences: int = 0
    tokens: int = 0


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
    """One line for a worker or node the cluster lost for good (its retries spent): the
    committed parts stay, so the same command with --resume goes on from them."""
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
    """A source whose records are read and tagged on the cluster and come back in input
    order, each with its entities."""

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
        ray, request, options, files, shard = (
            self.ray,
            self.request,
            self.request.options,
            self.files,
            self.shard,
        )
        items = [{"file": i, "path": p} for i, p in enumerate(files) if i >= cursor[0]]
        if not items:
            return
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # input order, so resume has a cursor
        context.enable_progress_bars = self.show_progress
        layout_documents = options.layout == "documents"
        from annotator.models import resolve_model

        resolved = resolve_model(options.model)  # a local file travels to the actors with the job
        model_bytes = ray.put(resolved.read_bytes()) if isinstance(resolved, Path) else None
        device = "cuda" if self.gpus else "cpu"  # an actor sees only the GPU Ray gave it
        try:
            dataset = ray.data.from_items(items, override_num_blocks=len(items))
        except TypeError:  # Ray before 2.10
            dataset = ray.data.from_items(items, parallelism=len(items))
        dataset = dataset.map_batches(
            _read_files,
            batch_size=1,
            batch_format="pyarrow",
            num_cpus=0.5,
            **RETRIES,
            fn_kwargs={
                "reader_options": reader_options,
                "shard": shard,
                "cursor": cursor,
                "keep_fields": layout_documents and not options.drop_fields,
            },
        )
        dataset = dataset.map_batches(
            _Tagger,
            batch_size=TAG_BATCH,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=self.actors),
            num_gpus=self.gpus or None,
            num_cpus=self.cpus,
            **ACTOR_RETRIES,
            fn_constructor_kwargs={
                "request": request,
                "model_bytes": model_bytes,
                "device": device,
                "threads": int(self.cpus),
            },
        )
        try:
            for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
                for row in batch.to_pylist():
                    yield row["file"], row["number"], self._record(row)
        except Exception as exc:
            error = _annotator_error(exc) or _lost_worker_error(ray, exc)
            if error is None:
                raise
            raise error from None

    @staticmethod
    def _record(row: dict[str, Any]) -> Any:
        if row["kind"] == "error":
            return RecordError(row["source"], row["row"], row["reason"])
        return _TaggedDocument(
            id=row["id"],
            text=row["text"] or "",
            source=row["source"],
            row=row["row"],
            fields=pickle.loads(row["fields"]) if row["fields"] is not None else {},
            entities=[Entity(**e) for e in json.loads(row["entities"])],
            sentences=row["sentences"],
            tokens=row["tokens"],
        )


def _connect(ray, address: str | None) -> bool:
    """Join the cluster at `address` (or RAY_ADDRESS), else start a local Ray; True if we did."""
    if log.getEffectiveLevel() > logging.DEBUG:  # Ray Data's own execution notes
        logging.getLogger("ray.data").setLevel(logging.WARNING)
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
            return annotate_directory(request, source, annotator=driver)
        return run_pipeline(request, source, file_sink(request), driver)
    finally:
        if started_here:
            ray.shutdown()
