"""Several worker processes on one machine (one per GPU with --devices, or --workers N on
the CPU): each a directory run over its own sub-shard, one progress bar in the parent.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from annotator import logs
from annotator.errors import AnnotatorError
from annotator.files import die_with_parent, remove_dead_temporaries
from annotator.io.readers import count_documents
from annotator.io.sinks import Sink
from annotator.records import Document, Entity, Summary
from annotator.runs.directory import Manifest, annotate_directory, lock_directory, run_settings
from annotator.runs.request import AnnotateRequest
from annotator.runs.shards import FileSource, Shard
from annotator.tagging.engines import limit_threads


def _errors_path(path: str | None, shard: Shard) -> str | None:
    """Each worker its own --errors file: errors.jsonl -> errors.shard-0-of-2.jsonl."""
    if not path or shard.count == 1:
        return path
    base, ext = os.path.splitext(path)
    return f"{base}.{shard.prefix.rstrip('-')}{ext}"


class _Progress(Sink):
    """A worker's documents, counted to the parent's progress bar a few times a second."""

    def __init__(self, number: int, messages: Any) -> None:
        self.number, self.messages = number, messages
        self.done, self.sent = 0, time.monotonic()

    def write(self, doc: Document, entities: list[Entity]) -> None:
        self.done += 1
        if time.monotonic() - self.sent > 0.2:
            self.close(None)

    def close(self, summary: Summary | None) -> None:
        self.messages.send(("progress", self.number, self.done))
        self.done, self.sent = 0, time.monotonic()


class _Stopped(BaseException):
    """SIGTERM in a worker (the parent stopping it): raised where it stands, so that its
    unfinished part file is removed on the way out."""


def _stop(signum: int, frame: Any) -> None:
    raise _Stopped()


def _worker(
    number: int,
    request: AnnotateRequest,
    source: FileSource,
    threads: int,
    messages: Any,
    parent: int | None = None,
) -> None:
    """One worker process: its own shard, its own part files and manifest in the directory."""
    import signal

    die_with_parent(parent)  # a killed parent leaves no worker behind to race its resume
    # Ctrl-C reaches the whole process group: the parent handles it and stops each worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop)
    limit_threads(threads)
    logs.configure(label=f"annotator[{number}]")  # as the command line logs, tagged by worker
    progress = _Progress(number, messages)
    try:
        summary = annotate_directory(request, source, watchers=[progress])
        messages.send(("done", number, summary))
    except AnnotatorError as exc:
        messages.send(("error", number, str(exc)))
    except _Stopped:
        pass
    except BaseException as exc:  # a bug: report it with its traceback rather than hang the parent
        import traceback

        messages.send(("error", number, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


def _merge(summaries: list[Summary], seconds: float, work_seconds: float | None = None) -> Summary:
    total = Summary(seconds=seconds, work_seconds=work_seconds)
    for item in summaries:
        total.documents += item.documents
        total.sentences += item.sentences
        total.words += item.words
        total.entities.update(item.entities)
        total.skipped += item.skipped
    return total


def annotate_with_workers(request: AnnotateRequest) -> Summary:
    """One process per device (spawned), each over a disjoint sub-shard, one progress bar."""
    directory = Path(request.output)
    files = request.input_files()
    # every check and every refusal up front, before any process starts; this run holds the
    # directory's lock for its life, and each worker that of its sub-shard
    lock = lock_directory(directory, request.shard)
    try:
        return _run_workers(request, files, directory)
    finally:
        lock.release()


def _run_workers(request: AnnotateRequest, files: list[str], directory: Path) -> Summary:
    import multiprocessing
    from multiprocessing.connection import wait

    from tqdm import tqdm

    options, devices = request.options, request.devices
    shards = request.shard.split(len(devices))
    manifests = []
    for part in shards:
        # a worker of a killed earlier run dies with it: wait a moment for its lock
        lock_directory(directory, part, wait=10).release()
        settings = run_settings(files, options, part)
        manifests.append(Manifest.open(directory, part, settings, request.resume))
    already = sum(m.documents for m in manifests)
    threads = max(1, (os.cpu_count() or 1) // len(devices))
    context = multiprocessing.get_context("spawn")
    # a pipe per worker, not a Queue: no semaphores for a stopped run to leak, and a worker's
    # end of file says it has gone
    channels: dict[Any, int] = {}
    processes = []
    for number, (device, part) in enumerate(zip(devices, shards)):
        worker_options = replace(
            options, device=device, progress=False, errors=_errors_path(options.errors, part)
        )
        receiver, sender = context.Pipe(duplex=False)
        # each worker continues the manifest just opened for it
        worker = replace(
            request, options=worker_options, shard=part, devices=(device,), resume=True
        )
        process = context.Process(
            target=_worker,
            name=f"annotator-worker-{number}",
            daemon=True,
            args=(number, worker, FileSource(files, part), threads, sender, os.getpid()),
        )
        process.start()
        sender.close()  # the worker's copy is the one that counts: its end is our EOF
        channels[receiver] = number
        processes.append(process)
    show = options.progress if options.progress is not None else sys.stderr.isatty()
    bar = tqdm(
        total=count_documents(files, options.reader_options())
        if show and request.shard.count == 1
        else None,
        initial=already,
        unit="doc",
        file=sys.stderr,
        disable=not show,
        dynamic_ncols=True,
    )
    started = time.perf_counter()
    summaries: dict[int, Summary] = {}
    ends: dict[int, float] = {}
    try:
        while len(summaries) < len(processes):
            for channel in wait(list(channels), timeout=0.5):
                number = channels[channel]
                try:
                    kind, _, value = channel.recv()
                except EOFError:  # the worker has gone
                    del channels[channel]
                    if number in summaries:
                        continue
                    processes[number].join(timeout=5)
                    raise AnnotatorError(
                        f"worker {number} ({devices[number]}) died with exit code "
                        f"{processes[number].exitcode}; committed parts are kept: rerun with "
                        "--resume"
                    ) from None
                if kind == "progress":
                    bar.update(value)
                elif kind == "done":
                    summaries[number] = value
                    ends[number] = time.perf_counter()
                else:
                    raise AnnotatorError(f"worker {number} ({devices[number]}): {value}")
    finally:
        bar.close()
        for process in processes:
            if process.is_alive() and len(summaries) < len(processes):
                process.terminate()
        for process in processes:
            process.join(timeout=30)
        for channel in channels:
            channel.close()
        remove_dead_temporaries(directory)  # a worker killed before it could remove its own
    # each worker's own seconds leave out its start and model loading: the span from the first
    # one starting on its documents to the last one done
    work = max(ends.values(), default=started) - min(
        (ends[i] - summaries[i].seconds for i in summaries), default=started
    )
    return _merge([summaries[i] for i in sorted(summaries)], time.perf_counter() - started, work)
