"""Overnight-scale runs: a directory of part files with a manifest, resumable after a crash;
shards of the input by document id; one worker process per device.

A directory run writes ``part-00000.jsonl`` (or ``.parquet``), ``part-00001...`` and
``manifest.json``. Each part is written under a hidden pending name and fsynced, then recorded
in the manifest (itself written to a temporary file, fsynced and renamed), and only then
renamed to its own name (a listing never shows a part the manifest does not name), so after a
crash at any moment the manifest names exactly the parts that are complete, and its
*cursor* says where the input stands: every input file before ``cursor.file`` is done, and
the first ``cursor.records`` records (documents and bad records alike) of that file. A resume
deletes part files the manifest does not name and continues from the cursor, so the union
of the parts equals an uninterrupted run's output: nothing missing, nothing twice.

Sharded runs into one directory prefix their files with ``shard-K-of-N-``, so N jobs (or N
worker processes) can share the directory, each with its own manifest. This module hands
`annotator.pipeline.run_pipeline` a source that remembers positions and a sink that writes
parts; it reads and tags nothing itself.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from annotator.errors import AnnotatorError
from annotator.files import WriteFailed, fingerprint, json_text, sha256_file
from annotator.io.readers import ReaderOptions
from annotator.io.sinks import ErrorReport, Sink
from annotator.io.storage import (
    Folder,
    LocalFolder,
    RemoteFolder,
    folder_of,
    is_remote,
    pending_name,
    remote_fingerprint,
)
from annotator.io.writers import open_writer
from annotator.pipeline import Annotator, run_pipeline
from annotator.records import Document, Record, RecordError, Summary
from annotator.runs.request import AnnotateOptions, AnnotateRequest
from annotator.runs.shards import FileSource, Positioned, Shard, Source
from annotator.version import __version__

log = logging.getLogger("annotator")


MANIFEST_VERSION = 1


#: Options that change what a run writes: a resume must use the same ones.
#: (device, batch size, tagger engine, --on-error and --errors do not change the rows.)
SETTING_FIELDS = (
    "input_format",
    "text_field",
    "id_field",
    "output_format",
    "layout",
    "drop_fields",
    "labels",
    "min_score",
    "spacy_model",
    "max_sentence_tokens",
)


class _Tracker:
    """Remembers the position of each document between reading and writing.

    The pipeline reads ahead (in another thread); the part sink, which sees documents in
    input order, pops their positions here to know how far a committed part reaches.
    """

    def __init__(self, source: Source, cursor: tuple[int, int], errors: int) -> None:
        self.source, self.cursor = source, cursor
        self.errors = errors  # bad records seen so far (in shard), committed ones included
        self.late = 0  # documents read well that failed later (split, tag, write)
        self.pending: deque = deque()

    def records(self, options: ReaderOptions) -> Iterator[Record]:
        last = self.cursor
        for index, number, record in self.source.positioned(options, self.cursor):
            if (index, number) <= last:
                raise RuntimeError(f"records out of order: {(index, number)} after {last}")
            last = (index, number)
            if isinstance(record, RecordError):
                self.errors += 1
            else:
                self.pending.append((record, index, number, self.errors))
            yield record

    def position_of(self, doc: Document, failed: bool = False) -> tuple[int, int, int]:
        """(file, record number, bad records through it) of the next document written, or
        (`failed`) reported as a bad record after all."""
        record, index, number, errors = self.pending.popleft()
        if record is not doc:
            raise RuntimeError("documents written out of input order")
        if failed:
            self.late += 1
            self.errors += 1
        return index, number, errors + self.late


class _ResumedSource:
    """A source read from a manifest's cursor on, each record's position remembered."""

    def __init__(self, source: Source, manifest: Manifest) -> None:
        self.source, self.manifest, self.files = source, manifest, source.files
        self.tracker = _Tracker(source, manifest.cursor, manifest.data["skipped"])

    def positioned(self, options: ReaderOptions, cursor: tuple[int, int]) -> Iterator[Positioned]:
        return self.source.positioned(options, cursor)

    def records(self, options: ReaderOptions) -> Iterator[Record]:
        return self.tracker.records(options)

    def total(self, options: ReaderOptions) -> int | None:
        try:
            count = self.source.total(options)
        except (OSError, AnnotatorError):  # e.g. URIs of the Ray backend: the bar has no total
            return None
        manifest = self.manifest
        return None if count is None else count - manifest.documents - manifest.data["skipped"]

    def tag(self, annotator: Annotator, documents: Iterable[Document]) -> Iterable[Any]:
        return self.source.tag(annotator, documents)


def _manifest_name(shard: Shard) -> str:
    return f"{shard.prefix}manifest.json"


def _shard_counts(folder: Folder) -> dict[str, int]:
    """Manifest file name -> the number of shards its run was split into."""
    found = {}
    for name in folder.names():
        match = re.fullmatch(r"(?:shard-(\d+)-of-(\d+)-)?manifest\.json", name)
        if match:
            found[name] = int(match[2]) if match[2] else 1
    return found


def run_settings(files: list[str], options: AnnotateOptions, shard: Shard) -> dict[str, Any]:
    """What a run writes depends on exactly these; a resume must match them."""
    from annotator.models import model_info

    model = model_info(options.model)
    settings = {
        "inputs": files,
        "shard": str(shard),
        "model": model.name,
        "model_sha256": model.sha256,
        "annotator_version": __version__,
        **{name: getattr(options, name) for name in SETTING_FIELDS},
    }
    return json.loads(json.dumps(settings))  # tuples -> lists, as they come back from the file


def _folder(directory: str | Path | Folder) -> Folder:
    return (
        directory
        if isinstance(directory, (LocalFolder, RemoteFolder))
        else folder_of(str(directory))
    )


def lock_directory(directory: str | Path | Folder, shard: Shard, wait: float = 0.0) -> Any:
    """The lock that keeps a second run (of this shard) out of `directory` while this one
    lives; refused with the holder's pid, host and start time. Its `release` ends it."""
    folder = _folder(directory)
    folder.make()
    what = f"{folder}" + (f" (shard {shard})" if shard.count > 1 else "")
    return folder.lock(f".{shard.prefix}annotator.lock", what, wait)


def _fingerprint(path: str) -> dict[str, Any] | None:
    return remote_fingerprint(path) if is_remote(path) else fingerprint(path)


def _fingerprints(files: list[str]) -> list[dict[str, Any] | None]:
    return [_fingerprint(path) for path in files]


def _changed_inputs(old: list[Any], files: list[str]) -> list[str]:
    """Inputs that differ from what the run started on (size, time or content)."""
    changed = []
    for path, before in zip(files, old):
        now = _fingerprint(path)
        if before is not None and now != before:
            if now is None:
                changed.append(f"{path} (now unreadable)")
            elif now["size"] != before["size"]:
                changed.append(f"{path} ({before['size']:,} bytes, now {now['size']:,})")
            else:
                changed.append(f"{path} (modified since)")
    return changed


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = [k for k in new if k != "annotator_version"]
    if old.get("model_sha256") and new.get("model_sha256"):
        keys.remove("model")  # the same model file may live at another path on this machine
    return [
        f"{key}: {old.get(key)!r} (now {new[key]!r})" for key in keys if old.get(key) != new[key]
    ]


class Manifest:
    """`manifest.json` of one run (or of one shard of it) in `directory`."""

    def __init__(self, folder: Folder, shard: Shard, data: dict[str, Any]) -> None:
        self.folder, self.shard, self.data = folder, shard, data
        self.name = _manifest_name(shard)
        self.path = f"{folder}{'' if str(folder).endswith('/') else os.sep}{self.name}"

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

    def save(self, data: dict[str, Any] | None = None) -> None:
        """Write `data` (by default the current state) and make it the current state, only
        once it is stored: after a failed write the state is what the file still holds."""
        data = dict(self.data if data is None else data)
        data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.folder.write_text(self.name, json_text(data))
        self.data = data

    def verify_parts(self) -> None:
        """Each committed part as the manifest records it: there, of its size and sha256. The
        first that is not, and the parts after it, are redone: the manifest is rolled back to
        the part before it (a resume trusts no part it has not checked)."""
        for index, part in enumerate(self.parts):
            problem = _part_problem(self.folder, part)
            if problem is None:
                continue
            kept = self.parts[:index]
            if kept and "skipped" not in kept[-1]:  # written by an annotator that kept no count
                raise AnnotatorError(
                    f"cannot resume {self.folder}: {part['file']} is {problem}; start the "
                    "run again in another output directory"
                )
            log.warning(
                "%s%s is %s: it and the %d part(s) after it are redone",
                self.folder,
                part["file"],
                problem,
                len(self.parts) - index - 1,
            )
            through = kept[-1]["through"] if kept else {"file": 0, "records": 0}
            data = dict(self.data, parts=kept, cursor=dict(through), complete=False)
            data["skipped"] = kept[-1]["skipped"] if kept else 0
            self.save(data)
            return

    @classmethod
    def open(
        cls, directory: str | Path | Folder, shard: Shard, settings: dict[str, Any], resume: bool
    ) -> Manifest:
        """Check the directory, then start a new manifest or continue (and tidy) an old one."""
        directory = _folder(directory)
        directory.make()
        name = _manifest_name(shard)
        others = {n: c for n, c in _shard_counts(directory).items() if c != shard.count}
        if others:
            example = sorted(others)[0]
            raise AnnotatorError(
                f"{directory} holds a run split into {others[example]} shard(s) ({example}), this "
                f"one into {shard.count}: continue it with the same --shard/--workers/--devices, "
                "or use another output directory"
            )
        path = f"{directory}{'' if str(directory).endswith('/') else os.sep}{name}"
        if directory.exists(name):
            if not resume:
                raise AnnotatorError(
                    f"{directory} already holds a run ({name}); use --resume to "
                    "continue it, or another output directory"
                )
            try:
                data = json.loads(directory.read_text(name))
            except (OSError, ValueError, AnnotatorError) as exc:
                raise AnnotatorError(f"{path}: unreadable manifest ({exc})") from None
            if data.get("version") != MANIFEST_VERSION:
                raise AnnotatorError(
                    f"{path}: manifest version {data.get('version')!r}, "
                    f"this annotator writes {MANIFEST_VERSION}"
                )
            changed = _differences(data["settings"], settings)
            if changed:
                raise AnnotatorError(
                    f"cannot resume {directory}: it was started with other settings — "
                    + "; ".join(changed)
                    + ". Resume with the same options and model, "
                    "or use another output directory"
                )
            changed = _changed_inputs(data.get("fingerprints") or [], settings["inputs"])
            if changed:
                raise AnnotatorError(
                    f"cannot resume {directory}: input changed since the run started — "
                    + "; ".join(changed[:5])
                    + (f"; and {len(changed) - 5} more" if len(changed) > 5 else "")
                    + ". A resume over changed input would lose or repeat documents: restore "
                    "the input, or start a new run in another output directory"
                )
            manifest = cls(directory, shard, data)
            manifest._finish_publishing()
            manifest.verify_parts()
            manifest._remove_uncommitted()
            return manifest
        own = [n for n in directory.names() if n.startswith(f"{shard.prefix}part-")]
        if own:
            raise AnnotatorError(
                f"{directory} holds part files ({own[0]}, ...) but no {name}; "
                "remove them or use another output directory"
            )
        manifest = cls(
            directory,
            shard,
            {
                "version": MANIFEST_VERSION,
                "settings": settings,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "cursor": {"file": 0, "records": 0},
                "fingerprints": _fingerprints(settings["inputs"]),
                "skipped": 0,
                "parts": [],
                "complete": False,
            },
        )
        manifest.save()
        return manifest

    def commit(
        self,
        part: dict[str, Any] | None,
        cursor: tuple[int, int],
        skipped: int,
        complete: bool = False,
    ) -> None:
        """Record a staged `part` (if any) and where the input now stands: the manifest's
        write is the commit. Then the part is published under its own name."""
        data = dict(self.data, parts=self.parts + ([part] if part else []))
        data["cursor"] = {"file": cursor[0], "records": cursor[1]}
        data["skipped"] = skipped
        data["complete"] = complete
        try:
            self.save(data)
        except (OSError, AnnotatorError) as exc:
            raise write_error(self.path, exc, self) from None
        if part:
            self.folder.publish(_staged_name(part), part["file"])

    def _finish_publishing(self) -> None:
        """Parts the manifest names that a crash kept from their place (renamed or copied from
        their pending name after the manifest was written) are put there now."""
        for part in self.parts:
            staged = _staged_name(part)
            if not self.folder.exists(part["file"]) and self.folder.exists(staged):
                self.folder.publish(staged, part["file"])

    def _remove_uncommitted(self) -> None:
        """Part files (and temporary files) of this shard that the manifest does not name."""
        keep = {part["file"] for part in self.parts}
        prefixes = (
            f"{self.shard.prefix}part-",
            f".{self.shard.prefix}part-",
            f"..{self.shard.prefix}part-",  # a pending part's writer's temporary file
            f".{_manifest_name(self.shard)}.",
        )
        for name in self.folder.names():
            if name.startswith(prefixes) and name not in keep:
                log.info(
                    "removing %s%s: not recorded in the manifest (an interrupted part)",
                    self.folder,
                    name,
                )
                self.folder.delete(name)


def _staged_name(part: dict[str, Any]) -> str:
    """Where a committed part waited for its commit: recorded where it is not the part's own
    pending name (a Ray actor's part, staged before its number was known)."""
    return part.get("staged") or pending_name(part["file"])


def stage_part(writer: Any, folder: Folder, staged: str) -> tuple[int, str]:
    """Close a part's writer, then stage the file under its pending name `staged`: its size
    and sha256, for the manifest."""
    writer.close()  # temporary file -> the pending name
    path = folder.writable_path(staged)
    size, digest = os.path.getsize(path), sha256_file(path)
    folder.stage(staged)
    return size, digest


def part_entry(
    name: str,
    documents: int,
    rows: int,
    through: tuple[int, int],
    skipped: int,
    size: int,
    digest: str,
    staged: str | None = None,
) -> dict[str, Any]:
    """A committed part as the manifest records it (`through`: the input position its last
    record reaches; `skipped`: the run's bad records up to there; `staged`: its pending name,
    where that is not `pending_name(name)`)."""
    part = {
        "file": name,
        "documents": documents,
        "rows": rows,
        "through": {"file": through[0], "records": through[1]},
        "skipped": skipped,
        "bytes": size,
        "sha256": digest,
    }
    return part if staged is None else {**part, "staged": staged}


def _part_problem(folder: Folder, part: dict[str, Any]) -> str | None:
    """What is wrong with a committed part file, or None (a part recorded without a size or
    checksum is checked for what was recorded)."""
    found = folder.digest(part["file"], with_sha256="sha256" in part)
    if found is None:
        return "missing"
    size, digest = found
    if "bytes" in part and size != part["bytes"]:
        return f"damaged ({size:,} bytes, {part['bytes']:,} recorded)"
    if "sha256" in part and digest != part["sha256"]:
        return "damaged (its sha256 is not the one recorded)"
    return None


def write_error(
    path: str, exc: OSError | AnnotatorError, manifest: Manifest | None = None
) -> AnnotatorError:
    """A part or manifest that cannot be written: one line saying what stays intact (a Ray
    actor, which has no manifest at hand, says so of the manifest's parts)."""
    reason = getattr(exc, "strerror", None) or exc
    kept = (
        f"The {len(manifest.parts)} part(s) recorded in {manifest.path} are intact"
        if manifest is not None
        else "The parts recorded in the manifest are intact"
    )
    return AnnotatorError(
        f"cannot write {path}: {reason}. {kept}; fix the cause (disk space, permissions) and "
        "rerun with --resume"
    )


class PartSink(Sink):
    """The output of a directory run: numbered parts, committed one by one to the manifest."""

    def __init__(
        self,
        manifest: Manifest,
        tracker: _Tracker,
        options: AnnotateOptions,
        part_size: int,
    ) -> None:
        self.manifest, self.tracker = manifest, tracker
        self.fmt, self.layout = options.output_format, options.layout
        self.drop_fields = options.drop_fields
        self.part_size = part_size
        self.metadata: dict[str, Any] = {}
        self.current: Any = None
        self.name = self.staged = ""
        self.path = ""  # where the part's writer writes it (object storage: a local scratch)
        self.documents = self.rows = 0
        self.last: tuple[int, int, int] | None = None

    def open(self, metadata: dict[str, Any]) -> None:
        self.metadata = metadata

    def _open(self) -> None:
        self.name = self.manifest.part_name(len(self.manifest.parts), self.fmt)
        self.staged = pending_name(self.name)
        self.path = self.manifest.folder.writable_path(self.staged)
        try:
            self.current = open_writer(
                self.path, self.fmt, self.layout, self.metadata, self.drop_fields
            )
        except (OSError, WriteFailed) as exc:
            raise write_error(self.path, exc, self.manifest) from None
        self.documents = self.rows = 0

    def write(self, doc: Document, entities: list) -> None:
        if self.current is None:
            self._open()
        try:
            self.current.write(doc, entities)
        except (OSError, WriteFailed) as exc:
            raise write_error(self.path, exc, self.manifest) from None
        self.last = self.tracker.position_of(doc)
        self.documents += 1
        self.rows += len(entities) if self.layout == "spans" else 1
        if self.documents >= self.part_size:
            self._commit()

    def skip(self, doc: Document) -> None:
        """`doc` failed after it was read (split, tag, write): reported, not written."""
        self.last = self.tracker.position_of(doc, failed=True)

    def flush(self) -> None:
        """Parts are committed whole; nothing is promised before that."""

    def _commit(self, complete: bool = False) -> None:
        """Close the part, note its size and sha256, stage it under its pending name
        (durable; object storage: uploaded), record it in the manifest, then publish it."""
        manifest = self.manifest
        part, cursor, skipped = None, manifest.cursor, manifest.data["skipped"]
        if self.current is not None:
            try:
                size, digest = stage_part(self.current, manifest.folder, self.staged)
            except (OSError, AnnotatorError) as exc:
                self.abort()
                raise write_error(self.path, exc, manifest) from None
            self.current = None
            index, number, skipped = self.last
            cursor = (index, number)
            part = part_entry(self.name, self.documents, self.rows, cursor, skipped, size, digest)
        if complete:
            cursor, skipped = (len(manifest.data["settings"]["inputs"]), 0), self.tracker.errors
        manifest.commit(part, cursor, skipped, complete)

    def close(self, summary: Summary) -> None:
        """The input is exhausted: commit the last part and mark the run complete."""
        self._commit(complete=True)

    def abort(self) -> None:
        if self.current is not None:
            try:
                self.current.abort()
            except OSError:
                pass
            self.current = None

    def error_report(self, path: str | None) -> ErrorReport:
        return ResumedErrors(path, self.manifest.data["skipped"])


class ResumedErrors(ErrorReport):
    """--errors FILE of a resumed run: keeps the lines of committed bad records, appends the
    rest."""

    def __init__(self, path: str | None, keep: int) -> None:
        if path and keep and os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                kept = [line for _, line in zip(range(keep), handle)]
            with open(path, "w", encoding="utf-8") as handle:
                handle.writelines(line if line.endswith("\n") else line + "\n" for line in kept)
            super().__init__(path, append=True)
        else:
            super().__init__(path)


def part_files(directory: str | Path) -> list[Path]:
    """The committed part files of a directory run, shard by shard (manifest by manifest)."""
    return [
        Path(directory) / part["file"]
        for path in sorted(Path(directory).glob("*manifest.json"))
        for part in json.loads(path.read_text(encoding="utf-8"))["parts"]
    ]


def annotate_directory(
    request: AnnotateRequest,
    source: Source | None = None,
    annotator: Annotator | None = None,
    watchers: Sequence[Sink] = (),
    lock: bool = True,
    run: Callable[..., Summary] | None = None,
) -> Summary:
    """Annotate `request`'s inputs into numbered part files in its output directory, resuming
    where it stopped. `source`: a `FileSource` of the request's shard unless given (Ray's);
    `run`: what writes the parts, given the same arguments as `_annotate_directory` (the
    pipeline here; Ray's actors write their own).

    The run holds the directory's lock (of its shard) while it lives; `lock=False` when the
    caller holds it."""
    directory = folder_of(request.output)
    if source is None:
        source = FileSource(request.input_files(), request.shard)
    held = lock_directory(directory, request.shard) if lock else None
    try:
        return (run or _annotate_directory)(request, directory, source, annotator, watchers)
    finally:
        if held is not None:
            held.release()


def open_run(request: AnnotateRequest, directory: Folder, files: list[str]) -> Manifest:
    """The run's manifest: a new one, or the one it resumes (checked and tidied); says so."""
    shard = request.shard
    settings = run_settings(files, request.options, shard)
    manifest = Manifest.open(directory, shard, settings, request.resume)
    if manifest.complete:
        log.info(
            "%s: already complete (%d documents in %d parts); nothing to do",
            manifest.path,
            manifest.documents,
            len(manifest.parts),
        )
    elif manifest.parts:
        log.info(
            "%s: resuming after %d documents in %d parts",
            manifest.path,
            manifest.documents,
            len(manifest.parts),
        )
    return manifest


def _annotate_directory(
    request: AnnotateRequest,
    directory: Folder,
    source: Source,
    annotator: Annotator | None,
    watchers: Sequence[Sink],
) -> Summary:
    manifest = open_run(request, directory, source.files)
    if manifest.complete:
        for watcher in watchers:  # an --html page of no documents says so
            watcher.close(Summary())
        return Summary()
    resumed = _ResumedSource(source, manifest)
    sink = PartSink(manifest, resumed.tracker, request.options, request.part_size)
    return run_pipeline(request, resumed, sink, annotator, watchers)
