"""Overnight-scale runs: a directory of part files with a manifest, resumable after a crash;
shards of the input by document id; one worker process per device.

A directory run writes ``part-00000.jsonl`` (or ``.parquet``), ``part-00001...`` and
``manifest.json``. Each part is written under a temporary name, renamed, fsynced, and only
then recorded in the manifest (itself written to a temporary file, fsynced and renamed), so
after a crash at any moment the manifest names exactly the parts that are complete, and its
*cursor* says where the input stands: every input file before ``cursor.file`` is done, and
the first ``cursor.records`` records (documents and bad records alike) of that file. A resume
deletes part files the manifest does not name and continues from the cursor, so the union
of the parts equals an uninterrupted run's output: nothing missing, nothing twice.

A shard ``K/N`` (K in 0..N-1) holds the documents whose id hashes to K (blake2b, so the same
on every machine and Python version); a bad record, which has no id, goes by SOURCE:ROW.
Sharded runs into one directory prefix their files with ``shard-K-of-N-``, so N jobs (or N
worker processes) can share the directory, each with its own manifest.

This module wraps `annotator.pipeline.annotate` through its `Hooks`; it reads, tags and
writes nothing itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from annotator import __version__
from annotator.errors import AnnotatorError
from annotator.pipeline import AnnotateOptions, Annotator, Hooks, Summary, _ErrorReport, annotate
from annotator.readers import (
    STDIN,
    Document,
    ReaderOptions,
    Record,
    RecordError,
    count_documents,
    expand_inputs,
    read_documents,
)
from annotator.writers import STDOUT, default_layout, open_writer

log = logging.getLogger("annotator")

PART_SIZE = 10_000
MANIFEST_VERSION = 1
#: Options that change what a run writes: a resume must use the same ones.
#: (device, batch size, tagger engine, --on-error and --errors do not change the rows.)
SETTING_FIELDS = ("input_format", "text_field", "id_field", "output_format", "layout",
                  "drop_fields", "labels", "min_score", "spacy_model", "max_sentence_tokens")


@dataclass
class RunOptions:
    """The options of `annotator annotate` that shape a run rather than its output rows."""

    resume: bool = False
    shard: str | None = None  # "K/N", K in 0..N-1
    part_size: int = PART_SIZE
    devices: tuple[str, ...] = ()
    workers: int | None = None  # local: worker processes; ray: tagger actors
    engine: str = "local"  # local | ray
    ray_address: str | None = None


# --- shards -----------------------------------------------------------------------------


def shard_of(key: str, count: int) -> int:
    """Stable across runs, machines and Python versions (unlike `hash()`)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def record_key(record: Record) -> str:
    """What a record is sharded by: the document id, or SOURCE:ROW for a bad record."""
    return record.id if isinstance(record, Document) else f"{record.source}:{record.row}"


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str | None) -> "Shard":
        if not text:
            return cls()
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not match or int(match[2]) < 1 or int(match[1]) >= int(match[2]):
            raise AnnotatorError(f"--shard {text}: expected K/N with 0 <= K < N (K counts from 0, "
                                 "e.g. 0/4 ... 3/4)")
        return cls(int(match[1]), int(match[2]))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def holds(self, record: Record) -> bool:
        return self.count == 1 or shard_of(record_key(record), self.count) == self.index

    def split(self, parts: int) -> list["Shard"]:
        """`parts` disjoint shards that together hold exactly this shard's documents:
        h % (N*P) == K + N*i  <=>  h % N == K and (h // N) % P == i."""
        return [Shard(self.index + self.count * i, self.count * parts) for i in range(parts)]

    @property
    def prefix(self) -> str:
        return "" if self.count == 1 else f"shard-{self.index}-of-{self.count}-"


# --- where the input stands ---------------------------------------------------------------

#: (file index, 1-based record number within that file, record): the position of a record.
Positioned = tuple[int, int, Record]
#: (files, reader options, cursor (file, records done), shard) -> positioned records of the shard.
Source = Callable[[list[str], ReaderOptions, tuple[int, int], Shard], Iterable[Positioned]]


def local_source(files: list[str], options: ReaderOptions, cursor: tuple[int, int],
                 shard: Shard) -> Iterator[Positioned]:
    """The records of `shard` after `cursor`, read here with `annotator.readers`."""
    for index in range(cursor[0], len(files)):
        skip = cursor[1] if index == cursor[0] else 0
        for number, record in enumerate(read_documents([files[index]], options), start=1):
            if number > skip and shard.holds(record):
                yield index, number, record


class _Tracker:
    """Remembers the position of each document between reading and writing.

    The pipeline reads ahead (in another thread); the part writer, which sees documents in
    input order, pops their positions here to know how far a committed part reaches.
    """

    def __init__(self, source: Source, cursor: tuple[int, int], shard: Shard, errors: int) -> None:
        self.source, self.cursor, self.shard = source, cursor, shard
        self.errors = errors  # bad records seen so far (in shard), committed ones included
        self.pending: deque = deque()

    def records(self, files: list[str], options: ReaderOptions) -> Iterator[Record]:
        last = self.cursor
        for index, number, record in self.source(files, options, self.cursor, self.shard):
            if (index, number) <= last:
                raise RuntimeError(f"records out of order: {(index, number)} after {last}")
            last = (index, number)
            if isinstance(record, RecordError):
                self.errors += 1
            else:
                self.pending.append((record, index, number, self.errors))
            yield record

    def position_of(self, doc: Document) -> tuple[int, int, int]:
        """(file, record number, bad records before it) of the next document written."""
        record, index, number, errors = self.pending.popleft()
        if record is not doc:
            raise RuntimeError("documents written out of input order")
        return index, number, errors


# --- the manifest ---------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # not supported here (e.g. Windows); the rename itself is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, ensure_ascii=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _manifest_name(shard: Shard) -> str:
    return f"{shard.prefix}manifest.json"


def _shard_counts(directory: Path) -> dict[str, int]:
    """Manifest file name -> the number of shards its run was split into."""
    found = {}
    for path in directory.glob("*manifest.json"):
        match = re.fullmatch(r"(?:shard-(\d+)-of-(\d+)-)?manifest\.json", path.name)
        if match:
            found[path.name] = int(match[2]) if match[2] else 1
    return found


def _settings(files: list[str], options: AnnotateOptions, shard: Shard) -> dict[str, Any]:
    """What a run writes depends on exactly these; a resume must match them."""
    from annotator.models import model_info

    model = model_info(options.model)
    settings = {"inputs": files, "shard": str(shard), "model": model.name,
                "model_sha256": model.sha256, "annotator_version": __version__,
                **{name: getattr(options, name) for name in SETTING_FIELDS}}
    return json.loads(json.dumps(settings))  # tuples -> lists, as they come back from the file


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = [k for k in new if k != "annotator_version"]
    if old.get("model_sha256") and new.get("model_sha256"):
        keys.remove("model")  # the same model file may live at another path on this machine
    return [f"{key}: {old.get(key)!r} (now {new[key]!r})" for key in keys if old.get(key) != new[key]]


class Manifest:
    """`manifest.json` of one run (or of one shard of it) in `directory`."""

    def __init__(self, directory: Path, shard: Shard, data: dict[str, Any]) -> None:
        self.directory, self.shard, self.data = directory, shard, data
        self.path = directory / _manifest_name(shard)

    @property
    def parts(self) -> list[dict[str, Any]]:
        return self.data["parts"]

    @property
    def cursor(self) -> tuple[int, int]:
        return self.data["cursor"]["file"], self.data["cursor"]["records"]

    @property
    def complete(self) -> bool:
        return self.data["complete"]

    @property
    def documents(self) -> int:
        return sum(part["documents"] for part in self.parts)

    def part_name(self, number: int, fmt: str) -> str:
        return f"{self.shard.prefix}part-{number:05d}.{fmt}"

    def save(self) -> None:
        self.data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        _write_json_atomically(self.path, self.data)

    @classmethod
    def open(cls, directory: Path, shard: Shard, settings: dict[str, Any],
             resume: bool) -> "Manifest":
        """Check the directory, then start a new manifest or continue (and tidy) an old one."""
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AnnotatorError(f"{directory}: cannot create the output directory "
                                 f"({exc.strerror or exc})") from None
        name = _manifest_name(shard)
        others = {n: c for n, c in _shard_counts(directory).items() if c != shard.count}
        if others:
            example = sorted(others)[0]
            raise AnnotatorError(
                f"{directory} holds a run split into {others[example]} shard(s) ({example}), this "
                f"one into {shard.count}: continue it with the same --shard/--workers/--devices, "
                "or use another output directory")
        path = directory / name
        if path.exists():
            if not resume:
                raise AnnotatorError(f"{directory} already holds a run ({name}); use --resume to "
                                     "continue it, or another output directory")
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise AnnotatorError(f"{path}: unreadable manifest ({exc})") from None
            if data.get("version") != MANIFEST_VERSION:
                raise AnnotatorError(f"{path}: manifest version {data.get('version')!r}, "
                                     f"this annotator writes {MANIFEST_VERSION}")
            changed = _differences(data["settings"], settings)
            if changed:
                raise AnnotatorError(
                    f"cannot resume {directory}: it was started with other settings — "
                    + "; ".join(changed) + ". Resume with the same options and model, "
                    "or use another output directory")
            manifest = cls(directory, shard, data)
            manifest._remove_uncommitted()
            return manifest
        own = [p.name for p in directory.iterdir() if p.name.startswith(f"{shard.prefix}part-")]
        if own:
            raise AnnotatorError(f"{directory} holds part files ({own[0]}, ...) but no {name}; "
                                 "remove them or use another output directory")
        manifest = cls(directory, shard, {
            "version": MANIFEST_VERSION, "settings": settings,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "cursor": {"file": 0, "records": 0}, "skipped": 0, "parts": [], "complete": False})
        manifest.save()
        return manifest

    def _remove_uncommitted(self) -> None:
        """Part files (and temporary files) of this shard that the manifest does not name."""
        keep = {part["file"] for part in self.parts}
        prefixes = (f"{self.shard.prefix}part-", f".{self.shard.prefix}part-",
                    f".{_manifest_name(self.shard)}.")
        for path in self.directory.iterdir():
            if path.name.startswith(prefixes) and path.name not in keep and path.is_file():
                log.info("removing %s: not recorded in the manifest (an interrupted part)", path)
                path.unlink()


# --- the part writer -------------------------------------------------------------------------


def _write_error(path: Path, exc: OSError, manifest: Manifest) -> AnnotatorError:
    return AnnotatorError(
        f"cannot write {path}: {exc.strerror or exc}. The {len(manifest.parts)} part(s) "
        f"recorded in {manifest.path} are intact; fix the cause (disk space, permissions) and "
        "rerun with --resume")


class PartWriter:
    """The pipeline's writer for a directory: numbered parts, committed one by one."""

    def __init__(self, manifest: Manifest, tracker: _Tracker, fmt: str, layout: str,
                 metadata: dict[str, Any], drop_fields: bool, part_size: int) -> None:
        self.manifest, self.tracker = manifest, tracker
        self.fmt, self.layout, self.metadata, self.drop_fields = fmt, layout, metadata, drop_fields
        self.part_size = max(1, part_size)
        self.current: Any = None
        self.path: Path | None = None
        self.documents = self.rows = 0
        self.last: tuple[int, int, int] | None = None

    def _open(self) -> None:
        self.path = self.manifest.directory / self.manifest.part_name(len(self.manifest.parts),
                                                                       self.fmt)
        try:
            self.current = open_writer(str(self.path), self.fmt, self.layout, self.metadata,
                                       self.drop_fields)
        except OSError as exc:
            raise _write_error(self.path, exc, self.manifest) from None
        self.documents = self.rows = 0

    def write(self, doc: Document, entities: list) -> None:
        if self.current is None:
            self._open()
        try:
            self.current.write(doc, entities)
        except OSError as exc:
            raise _write_error(self.path, exc, self.manifest) from None
        self.last = self.tracker.position_of(doc)
        self.documents += 1
        self.rows += len(entities) if self.layout == "spans" else 1
        if self.documents >= self.part_size:
            self._commit()

    def flush(self) -> None:
        """Parts are committed whole; nothing is promised before that."""

    def _commit(self, complete: bool = False) -> None:
        data = self.manifest.data
        if self.current is not None:
            try:
                self.current.close()  # temporary file -> part name
                with open(self.path, "rb") as handle:
                    os.fsync(handle.fileno())
                _fsync_dir(self.manifest.directory)
            except OSError as exc:
                self.abort()
                raise _write_error(self.path, exc, self.manifest) from None
            self.current = None
            index, number, errors = self.last
            data["parts"].append({"file": self.path.name, "documents": self.documents,
                                  "rows": self.rows, "through": {"file": index, "records": number}})
            data["cursor"] = {"file": index, "records": number}
            data["skipped"] = errors
        if complete:
            data["cursor"] = {"file": len(data["settings"]["inputs"]), "records": 0}
            data["skipped"] = self.tracker.errors
            data["complete"] = True
        try:
            self.manifest.save()
        except OSError as exc:
            raise _write_error(self.manifest.path, exc, self.manifest) from None

    def close(self) -> None:
        """The input is exhausted: commit the last part and mark the run complete."""
        self._commit(complete=True)

    def abort(self) -> None:
        if self.current is not None:
            try:
                self.current.abort()
            except OSError:
                pass
            self.current = None


class _ResumedErrors(_ErrorReport):
    """--errors FILE of a resumed run: keeps the lines of committed bad records, appends the rest."""

    def __init__(self, path: str | None, keep: int) -> None:
        if path and keep and os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                kept = [line for _, line in zip(range(keep), handle)]
            with open(path, "w", encoding="utf-8") as handle:
                handle.writelines(line if line.endswith("\n") else line + "\n" for line in kept)
            self.handle = open(path, "a", encoding="utf-8")
        else:
            super().__init__(path)


# --- one directory run ---------------------------------------------------------------------


def is_directory_output(output: str | None) -> bool:
    """`-o DIR/` (a trailing slash) or an existing directory."""
    return bool(output) and output != STDOUT and (output.endswith(("/", os.sep)) or os.path.isdir(output))


def _directory_options(options: AnnotateOptions) -> AnnotateOptions:
    fmt = options.output_format or "parquet"
    return replace(options, output_format=fmt, layout=options.layout or default_layout(fmt))


def annotate_directory(inputs: Iterable[str], directory: str | Path, options: AnnotateOptions,
                       shard: Shard = Shard(), resume: bool = False, part_size: int = PART_SIZE,
                       annotator: Annotator | None = None,
                       on_document: Callable[[Document, list], None] | None = None,
                       source: Source = local_source,
                       tag: Callable | None = None,
                       expand: Callable[[list[str]], list[str]] = expand_inputs) -> Summary:
    """Annotate `inputs` into numbered part files in `directory`, resuming where it stopped."""
    directory = Path(directory)
    options = _directory_options(options)
    if part_size < 1:
        raise AnnotatorError("--part-size must be at least 1")
    files = expand(list(inputs))
    if STDIN in files and resume:
        raise AnnotatorError("--resume cannot re-read stdin; give the input as files")
    manifest = Manifest.open(directory, shard, _settings(files, options, shard), resume)
    if manifest.complete:
        log.info("%s: already complete (%d documents in %d parts); nothing to do",
                 manifest.path, manifest.documents, len(manifest.parts))
        return Summary()
    if manifest.parts:
        log.info("%s: resuming after %d documents in %d parts", manifest.path,
                 manifest.documents, len(manifest.parts))
    tracker = _Tracker(source, manifest.cursor, shard, manifest.data["skipped"])

    def total(files: list[str], reader_options: ReaderOptions) -> int | None:
        try:
            count = count_documents(files, reader_options) if shard.count == 1 else None
        except (OSError, AnnotatorError):  # e.g. URIs of the Ray engine: the bar has no total
            return None
        return None if count is None else count - manifest.documents - manifest.data["skipped"]

    hooks = Hooks(
        expand=lambda _: files,
        records=tracker.records,
        open_writer=lambda metadata: PartWriter(manifest, tracker, options.output_format,
                                                options.layout, metadata, options.drop_fields,
                                                part_size),
        errors=lambda path: _ResumedErrors(path, manifest.data["skipped"]),
        total=total)
    if tag is not None:
        hooks.tag = tag
    return annotate(files, str(directory), options, annotator, on_document, hooks)


# --- several worker processes ------------------------------------------------------------


def _errors_path(path: str | None, shard: Shard) -> str | None:
    """Each worker its own --errors file: errors.jsonl -> errors.shard-0-of-2.jsonl."""
    if not path or shard.count == 1:
        return path
    base, ext = os.path.splitext(path)
    return f"{base}.{shard.prefix.rstrip('-')}{ext}"


def _worker(number: int, files: list[str], directory: str, options: AnnotateOptions,
            shard: Shard, part_size: int, threads: int, messages: Any) -> None:
    """One worker process: its own shard, its own part files and manifest in the directory."""
    import torch

    import flair  # noqa: F401  (it sets up its own logger on import; quieten it after)

    torch.set_num_threads(threads)
    logging.getLogger("flair").setLevel(logging.WARNING)
    handler = logging.StreamHandler(sys.stderr)  # as the command line logs, tagged by worker
    handler.setFormatter(logging.Formatter(f"%(asctime)s annotator[{number}]: %(message)s",
                                           "%H:%M:%S"))
    logger = logging.getLogger("annotator")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    done, sent = 0, time.monotonic()

    def progress(doc: Document, entities: list) -> None:
        nonlocal done, sent
        done += 1
        if time.monotonic() - sent > 0.2:
            messages.put(("progress", number, done))
            done, sent = 0, time.monotonic()

    try:
        summary = annotate_directory(files, directory, options, shard, resume=True,
                                     part_size=part_size, on_document=progress)
        messages.put(("progress", number, done))
        messages.put(("done", number, summary))
    except AnnotatorError as exc:
        messages.put(("error", number, str(exc)))
    except BaseException as exc:  # a bug: report it with its traceback rather than hang the parent
        import traceback

        messages.put(("error", number, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


def _merge(summaries: list[Summary], seconds: float) -> Summary:
    total = Summary(seconds=seconds)
    for item in summaries:
        total.documents += item.documents
        total.sentences += item.sentences
        total.words += item.words
        total.entities.update(item.entities)
        total.skipped += item.skipped
    return total


def annotate_with_workers(inputs: Iterable[str], directory: str | Path, options: AnnotateOptions,
                          devices: list[str], shard: Shard = Shard(), resume: bool = False,
                          part_size: int = PART_SIZE) -> Summary:
    """One process per device (spawned), each over a disjoint sub-shard, one progress bar."""
    import multiprocessing
    import queue

    from tqdm import tqdm

    directory = Path(directory)
    options = _directory_options(options)
    files = expand_inputs(list(inputs))
    if STDIN in files:
        raise AnnotatorError("worker processes cannot share stdin; give the input as files")
    shards = shard.split(len(devices))
    # every check and every refusal up front, before any process starts
    manifests = [Manifest.open(directory, s, _settings(files, options, s), resume) for s in shards]
    already = sum(m.documents for m in manifests)
    threads = max(1, (os.cpu_count() or 1) // len(devices))
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    processes = []
    for number, (device, part) in enumerate(zip(devices, shards)):
        worker_options = replace(options, device=device, progress=False,
                                 errors=_errors_path(options.errors, part))
        process = context.Process(target=_worker, name=f"annotator-worker-{number}", daemon=True,
                                  args=(number, files, str(directory), worker_options, part,
                                        part_size, threads, messages))
        process.start()
        processes.append(process)
    show = options.progress if options.progress is not None else sys.stderr.isatty()
    bar = tqdm(total=count_documents(files, ReaderOptions(options.input_format, options.text_field,
                                                          options.id_field))
               if show and shard.count == 1 else None,
               initial=already, unit="doc", file=sys.stderr, disable=not show, dynamic_ncols=True)
    started = time.perf_counter()
    summaries: dict[int, Summary] = {}
    try:
        while len(summaries) < len(processes):
            try:
                kind, number, value = messages.get(timeout=0.5)
            except queue.Empty:
                for number, process in enumerate(processes):
                    if number not in summaries and process.exitcode is not None:
                        time.sleep(0.5)  # its last message may still be on the way
                        if messages.empty():
                            raise AnnotatorError(
                                f"worker {number} ({devices[number]}) died with exit code "
                                f"{process.exitcode}; committed parts are kept: rerun with --resume")
                continue
            if kind == "progress":
                bar.update(value)
            elif kind == "done":
                summaries[number] = value
            else:
                raise AnnotatorError(f"worker {number} ({devices[number]}): {value}")
    finally:
        bar.close()
        for process in processes:
            if process.is_alive() and len(summaries) < len(processes):
                process.terminate()
        for process in processes:
            process.join(timeout=30)
    return _merge([summaries[i] for i in sorted(summaries)], time.perf_counter() - started)


# --- the entry point of `annotator annotate` ---------------------------------------------


def _worker_devices(options: AnnotateOptions, run: RunOptions) -> list[str]:
    if run.devices:
        if run.workers not in (None, len(run.devices)):
            raise AnnotatorError(f"--workers {run.workers} and --devices with {len(run.devices)} "
                                 "devices disagree; give one of them")
        return list(run.devices)
    if run.workers is not None and run.workers < 1:
        raise AnnotatorError("--workers must be at least 1")
    return [options.device] * (run.workers or 1)


def annotate_run(inputs: Iterable[str], output: str | None, options: AnnotateOptions,
                 run: RunOptions = RunOptions()) -> Summary:
    """Dispatch `annotator annotate`: one file or stdout, a directory, workers, or Ray."""
    shard = Shard.parse(run.shard)
    directory = is_directory_output(output)
    if run.engine not in ("local", "ray"):
        raise AnnotatorError(f"--engine {run.engine}: use local or ray")
    if run.resume and not directory:
        raise AnnotatorError("--resume needs a directory output (-o DIR/): a single output file "
                             "is written whole or not at all")
    if run.engine == "ray":
        if run.devices:
            raise AnnotatorError("--devices is for the local engine; with --engine ray, Ray places "
                                 "one tagger per GPU (--workers sets how many)")
        from annotator.ray_engine import annotate_with_ray

        return annotate_with_ray(inputs, output, options, run, shard)
    devices = _worker_devices(options, run)
    if len(devices) > 1:
        if not directory:
            raise AnnotatorError("--workers/--devices write one part series per worker: give a "
                                 "directory output (-o DIR/)")
        return annotate_with_workers(inputs, output, options, devices, shard, run.resume,
                                     run.part_size)
    options = replace(options, device=devices[0])
    if directory:
        return annotate_directory(inputs, output, options, shard, run.resume, run.part_size)
    if shard.count == 1:
        return annotate(list(inputs), output, options)
    return annotate(list(inputs), output, options, hooks=Hooks(
        records=lambda files, reader_options: (record for _, _, record in local_source(
            files, reader_options, (0, 0), shard)),
        total=lambda files, reader_options: None))


def read_manifests(directory: str | Path) -> list[dict[str, Any]]:
    """Every manifest in `directory` (one, or one per shard)."""
    return [json.loads((Path(directory) / name).read_text(encoding="utf-8"))
            for name in sorted(_shard_counts(Path(directory)))]


def part_files(directory: str | Path) -> list[Path]:
    """The committed part files of a directory run, shard by shard, in order."""
    return [Path(directory) / part["file"] for manifest in read_manifests(directory)
            for part in manifest["parts"]]
