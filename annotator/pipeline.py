"""read → split → batch → predict → map spans to offsets → write, as one streaming loop.

Documents are pooled into chunks so that sentences from many documents share length-sorted
mini-batches; a chunk is cut when it is large enough *or* when no more input is waiting, so
a slow pipe still sees its results promptly. Output keeps input order; memory is bounded by
one chunk plus a bounded read-ahead queue.

A run is handed in whole: its request (`annotator.runs.request`), a source of records and
the sinks that receive the documents (`annotator.io.sinks`); this loop never asks which.
"""

from __future__ import annotations

import gc
import logging
import queue
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tqdm import tqdm

from annotator.errors import AnnotatorError, RecordFailed, UsageError
from annotator.io.sinks import ErrorReport, FileSink, Sink
from annotator.logs import printable
from annotator.records import Document, Entity, Record, RecordError, Sentence, Summary
from annotator.runs.request import AnnotateOptions, AnnotateRequest
from annotator.runs.shards import FileSource, Source
from annotator.segmentation import (
    BLANK_NAME,
    Segmenter,
    SplitterProcess,
    card_settings,
    rule_labels,
    segmenter_settings,
)
from annotator.tagging.engines import entities_of, make_engine
from annotator.tagging.precision import DEFAULT_PRECISION
from annotator.version import __version__

log = logging.getLogger("annotator")

CHUNK_CHARS = 200_000  # text per chunk: enough sentences for well-filled batches
READ_AHEAD = 4096  # records queued ahead of the tagger


@dataclass
class Annotated:
    """A document with its entities; `error` says why it could not be split or tagged."""

    document: Document
    entities: list[Entity]
    sentences: int
    tokens: int
    error: str | None = None

    def write(
        self, write: Callable[[Document, list[Entity]], None], labels: set[str], min_score: float
    ) -> list[Entity]:
        """Write the document with its entities that `--labels` and `--min-score` keep, and
        return those; a document the writer refuses (`RecordFailed`) gets that as its error."""
        if self.error is None:
            try:
                entities = _filtered(self.entities, labels, min_score)
                write(self.document, entities)
                return entities
            except RecordFailed as exc:
                self.error = str(exc)
        return []


class Annotator:
    """A loaded tagger plus sentence splitter: the Python API the CLI is built on.

    >>> annotator = Annotator()                       # the packaged default model
    >>> [e.text for e in annotator.annotate_text("Angela Merkel visited Paris.")]
    """

    def __init__(
        self,
        model: str | None = None,
        device: str = "auto",
        batch_size: int = 32,
        spacy_model: str | None = None,
        max_sentence_tokens: int = 250,
        engine: str = "auto",
        split_process: bool | None = None,
        span_scores: str = "auto",
        precision: str = DEFAULT_PRECISION,
    ) -> None:
        """`split_process`: split sentences in a child process, beside tagging (default: when
        this process has more than one CPU). `span_scores`, `precision` (fp32, bf16, auto):
        see `annotator.tagging.engines.make_engine`."""
        from annotator.models import (
            choose_device,
            load_model,
            model_card,
            model_info,
            numpy_engine_wanted,
        )

        if split_process is None:
            split_process = SplitterProcess.worthwhile()
        # the model's sentence rules, from an export's header where it has one: the child then
        # loads spaCy with them while this process loads the model
        early = card_settings(model_card(model)) if engine != "flair" else {}
        self.splitter = (
            SplitterProcess(spacy_model, max_sentence_tokens, **early) if split_process else None
        )
        # the numpy engine's CPU is known without torch, whose import a short job spares
        on_cpu = numpy_engine_wanted(engine, device, precision)
        self._device = None if on_cpu else choose_device(device)
        self.model = model_info(model)
        self.tagger = load_model(model, "cpu" if on_cpu else str(self._device), engine, precision)
        rules = segmenter_settings(self.tagger)
        if rules != early and self.splitter is not None:
            self.splitter.close()
            self.splitter = SplitterProcess(spacy_model, max_sentence_tokens, **rules)
        self.engine = make_engine(
            self.tagger,
            batch_size=batch_size,
            device=self._device,
            engine=engine,
            span_scores=span_scores,
            precision=precision,
        )
        self._segmenter_options = (spacy_model, max_sentence_tokens, rules)
        self._segmenter: Segmenter | None = None
        # the model, its vocabularies and spaCy live as long as this object: moving them out of
        # the cyclic garbage collector's view keeps its collections (which the many small
        # objects of tagging trigger) from rescanning them
        gc.collect()
        gc.freeze()

    @classmethod
    def from_options(cls, options: AnnotateOptions, split_process: bool | None = None) -> Annotator:
        """The annotator `annotator annotate` builds from its options."""
        return cls(
            options.model,
            options.device,
            options.batch_size,
            options.spacy_model,
            options.max_sentence_tokens,
            options.engine,
            split_process,
            precision=options.precision,
        )

    @property
    def device(self):
        """torch's device the model runs on; for the numpy engine the CPU, which imports torch
        only when asked."""
        if self._device is None:
            from annotator.models import choose_device

            self._device = choose_device("cpu")
        return self._device

    @property
    def segmenter(self) -> Segmenter:
        """This process's splitter, made on first use (with a splitter process, a run that
        never splits in line never loads spaCy here)."""
        if self._segmenter is None:
            spacy_model, max_sentence_tokens, rules = self._segmenter_options
            self._segmenter = Segmenter(spacy_model, max_sentence_tokens, **rules)
        return self._segmenter

    @property
    def splitter_name(self) -> str:
        """The segmenter's name for the output's metadata, without loading spaCy here where
        the name is known (the blank pipeline)."""
        from importlib.metadata import version

        spacy_model, _, rules = self._segmenter_options
        if spacy_model is None and self._segmenter is None:
            return BLANK_NAME.format(version=version("spacy")) + rule_labels(**rules)
        return self.segmenter.name

    def close(self) -> None:
        """End the sentence-splitter process (if any; later calls split in this process).
        `with Annotator() as annotator:` calls it on leaving the block."""
        if self.splitter is not None:
            self.splitter.close()
            self.splitter = None

    def __enter__(self) -> Annotator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def labels(self) -> list[str]:
        tags = self.tagger.label_dictionary.get_items()
        return sorted({tag.split("-", 1)[1] for tag in tags if "-" in tag})

    def annotate_text(self, text: str) -> list[Entity]:
        return next(self.annotate_texts([text]))

    def annotate_texts(self, texts: Iterable[str]) -> Iterator[list[Entity]]:
        """Entities of each text, in order."""
        documents = (Document(id=str(i), text=t, source="", row=i) for i, t in enumerate(texts))
        for result in self.annotate_documents(documents):
            if result.error:
                raise AnnotatorError(f"text {result.document.row}: {result.error}")
            yield result.entities

    def annotate_documents(self, documents: Iterable[Document]) -> Iterator[Annotated]:
        """Each document with its entities, in input order.

        With a splitter process, the next chunk is split there while this one is tagged; a
        chunk cut because no more input was waiting is tagged at once (streams stay prompt).
        """
        splitter = self.splitter
        if splitter is None:
            for chunk, _ in _chunks(documents, CHUNK_CHARS):
                yield from self._tag_chunk(
                    chunk, self.segmenter.split_safely([doc.text for doc in chunk])
                )
            return
        splitter.discard_unread()
        ahead: deque = deque()
        for chunk, more_waiting in _chunks(documents, CHUNK_CHARS):
            splitter.submit([doc.text for doc in chunk])
            ahead.append(chunk)
            while len(ahead) > 1 or ahead and not more_waiting:
                yield from self._tag_chunk(ahead.popleft(), splitter.result())

    def _tag_chunk(
        self, chunk: list[Document], per_doc: list[list[Sentence] | str]
    ) -> Iterator[Annotated]:
        """Tags a chunk in one go; should that fail, each document alone, so that a document
        the tagger fails on becomes a bad record (`Annotated.error`), not a failed run."""
        split = [sentences for sentences in per_doc if not isinstance(sentences, str)]
        try:
            spans = self.engine.predict([s.tokens for sentences in split for s in sentences])
        except Exception:
            spans = None
        position = 0
        for doc, sentences in zip(chunk, per_doc):
            if isinstance(sentences, str):  # the splitter's reason
                yield Annotated(doc, [], 0, 0, error=sentences)
                continue
            try:
                if spans is None:
                    found = self.engine.predict([s.tokens for s in sentences])
                else:
                    found = spans[position : position + len(sentences)]
                    position += len(sentences)
                entities = entities_of(doc.text, sentences, found)
            except Exception as exc:
                yield Annotated(doc, [], 0, 0, error=f"cannot tag ({type(exc).__name__}: {exc})")
                continue
            yield Annotated(doc, entities, len(sentences), sum(len(s) for s in sentences))


def _chunks(records: Iterable[Any], chunk_chars: int) -> Iterator[tuple[list[Any], bool]]:
    """Group records into chunks of about `chunk_chars` of text, without waiting on slow input.

    A reader thread fills a bounded queue; a chunk ends when it is full or the queue is empty.
    The first chunks are smaller (an eighth, a quarter, ... of `chunk_chars`).  Yields (chunk,
    whether more records were already waiting when it was cut).  Exceptions in the reader are
    re-raised here, in the caller's thread.
    """
    done, empty = object(), object()
    pending: queue.Queue = queue.Queue(maxsize=READ_AHEAD)

    def read() -> None:
        try:
            for record in records:
                pending.put(record)
        except BaseException as exc:  # handed over to the consumer, which re-raises it
            pending.put(exc)
        pending.put(done)

    def take(block: bool) -> Any:
        try:
            item = pending.get(block)
        except queue.Empty:
            return empty
        if isinstance(item, BaseException):
            raise item
        return item

    threading.Thread(target=read, daemon=True, name="annotator-reader").start()
    limit = max(1, chunk_chars // 8)  # small first chunks: early results, and early overlap
    item = take(True)
    while item is not done:
        chunk: list[Any] = []
        size = 0
        while item is not done and item is not empty and size < limit:
            chunk.append(item)
            size += len(getattr(item, "text", "")) + 1
            item = take(False)
        yield chunk, item is not done and item is not empty
        limit = min(chunk_chars, 2 * limit)
        if item is empty:
            item = take(True)


def bad_record(record: RecordError, on_error: str, report: ErrorReport, summary: Summary) -> None:
    """--on-error fail: one clear message; skip: counted and reported."""
    if on_error == "fail":
        raise AnnotatorError(f"{printable(str(record))} (use --on-error skip to skip bad records)")
    summary.skipped += 1
    report.add(record)


def _split_records(
    records: Iterable[Record], on_error: str, report: ErrorReport, summary: Summary
) -> Iterator[Document]:
    for record in records:
        if isinstance(record, RecordError):
            bad_record(record, on_error, report, summary)
        else:
            yield record


class _DuplicateIds:
    """Ids seen more than once in a run: one warning at the end, with the count and a few."""

    SHOW = 5

    def __init__(self) -> None:
        self.seen: set[int] = set()  # hashes, not ids: memory stays small for long runs
        self.repeated: Counter = Counter()

    def add(self, doc_id: str) -> None:
        key = hash(doc_id)
        if key in self.seen:
            self.repeated[doc_id] += 1
        else:
            self.seen.add(key)

    def warn(self) -> None:
        if self.repeated:
            sample = ", ".join(printable(repr(i)) for i in list(self.repeated)[: self.SHOW])
            log.warning(
                "%d document id(s) occur more than once in this run (%d repeats): %s%s",
                len(self.repeated),
                sum(self.repeated.values()),
                sample,
                ", ..." if len(self.repeated) > self.SHOW else "",
            )


def _filtered(entities: list[Entity], labels: set[str], min_score: float) -> list[Entity]:
    if not labels and min_score <= 0:
        return entities
    return [e for e in entities if (not labels or e.label in labels) and e.score >= min_score]


def run_metadata(annotator: Annotator, options: AnnotateOptions, run_id: str) -> dict[str, Any]:
    import datetime
    from importlib.metadata import version

    return {
        "run_id": run_id,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": annotator.model.name,
        "model_sha256": annotator.model.sha256,
        "annotator_version": __version__,
        "flair_version": version("flair"),
        "engine": annotator.engine.name,
        "splitter": annotator.splitter_name,
        "options": asdict(options),
    }


def check_labels(annotator: Annotator, options: AnnotateOptions) -> None:
    """--labels names only labels the model predicts (a usage error otherwise)."""
    unknown = set(options.labels) - set(annotator.labels)
    if unknown:
        raise UsageError(
            f"--labels {', '.join(sorted(unknown))}: the model predicts only "
            f"{', '.join(annotator.labels)}"
        )


def run_pipeline(
    request: AnnotateRequest,
    source: Source,
    sink: Sink,
    annotator: Annotator | None = None,
    watchers: Sequence[Sink] = (),
) -> Summary:
    """Read `source`, tag, write into `sink`; the
    `watchers` see the same documents. A bad record is `--on-error`'s to decide."""
    options = request.options
    reader_options = options.reader_options()
    annotator = annotator or Annotator.from_options(options)
    check_labels(annotator, options)
    labels = set(options.labels)
    show = options.progress if options.progress is not None else sys.stderr.isatty()
    summary = Summary()
    report = sink.error_report(options.errors if options.on_error == "skip" else None)
    metadata = run_metadata(annotator, options, request.run_id)
    bar = tqdm(total=None, unit="doc", file=sys.stderr, disable=not show, dynamic_ncols=True)
    if show:

        def count() -> None:  # an unreadable input is the reader's to report, not this thread's
            try:
                bar.total = source.total(reader_options)
            except Exception:
                pass

        threading.Thread(target=count, daemon=True).start()
    started = time.perf_counter()
    duplicates = _DuplicateIds()
    failing = (options.on_error, report, summary)
    sinks = [sink, *watchers]
    try:
        try:
            for each in sinks:  # opened here, so that any way out below removes temporary files
                each.open(metadata)
            documents = _split_records(source.records(reader_options), *failing)
            for result in source.tag(annotator, documents):
                entities = result.write(sink.write, labels, options.min_score)
                if result.error is not None:  # split, tag or write failed: a bad record
                    doc = result.document
                    for each in sinks:
                        each.skip(doc)
                    bad_record(RecordError(doc.source, doc.row, result.error), *failing)
                    continue
                duplicates.add(result.document.id)
                sink.flush()
                for each in watchers:
                    each.write(result.document, entities)
                summary.add(result.sentences, result.tokens, entities)
                bar.update(1)
                if show:
                    elapsed = max(time.perf_counter() - started, 1e-9)
                    bar.set_postfix(
                        entities=sum(summary.entities.values()),
                        words_s=f"{summary.words / elapsed:,.0f}",
                        refresh=False,
                    )
            summary.seconds = time.perf_counter() - started
            while sinks:  # the output first, then the watchers (the --html page)
                sinks[0].close(summary)
                sinks.pop(0)
        except BaseException:
            for each in sinks:  # those not closed yet
                each.abort()
            raise
        else:
            duplicates.warn()
    finally:
        bar.close()
        report.close()
        summary.seconds = time.perf_counter() - started
    return summary


def file_sink(request: AnnotateRequest) -> FileSink:
    """The sink of a run into one file or stdout."""
    options = request.options
    return FileSink(request.output, options.output_format, options.layout, options.drop_fields)


def annotate(
    inputs: list[str] | tuple[str, ...],
    output: str | None,
    options: AnnotateOptions = AnnotateOptions(),
    annotator: Annotator | None = None,
) -> Summary:
    """Annotate every document of `inputs` into one file `output` (None or '-' for stdout).
    Directories, shards, worker processes and Ray: `annotator.runs.dispatch.annotate_run`."""
    request = AnnotateRequest.build(inputs, output, options)
    files = request.input_files()
    return run_pipeline(request, FileSource(files), file_sink(request), annotator)
