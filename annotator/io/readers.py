"""Documents from JSONL, plain text and Parquet files (gzip/zstd too), folders, globs or stdin.

A bad record becomes a `RecordError` in the stream, never an exception that ends it.
"""

from __future__ import annotations

import glob
import gzip
import io
import itertools
import json
import logging
import os
import re
import sys
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from annotator.errors import AnnotatorError
from annotator.io.storage import is_remote, open_remote, open_remote_file, remote_files, remote_info
from annotator.records import Document, Record, RecordError

FORMATS = ("jsonl", "text", "parquet")


STDIN = "-"


_COMPRESSIONS = {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd"}


_EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "text",
    ".text": "text",
    ".md": "text",
}


#: The largest record read (a JSON line, a text file, a Parquet text): splitting and tagging
#: one document costs memory in proportion to its size (docs/reference/data-integrity.md has
#: the figures), so a bigger one is a bad record, never a crash.
MAX_RECORD_BYTES = 10_000_000


@dataclass(frozen=True)
class ReaderOptions:
    input_format: str | None = None
    text_field: str = "text"
    id_field: str = "id"
    max_record_bytes: int = MAX_RECORD_BYTES


def _too_large(limit: int) -> str:
    return f"larger than the record size limit ({limit:,} bytes; --max-record-bytes raises it)"


#: What a folder gives: files with these suffixes (before .gz/.zst), others are skipped and
#: counted. `--include-suffix` widens it.
FOLDER_SUFFIXES = (".txt", ".text", ".jsonl", ".ndjson", ".json", ".parquet")


class InputPath(str):
    """A path as given or found, plus the id a text file gets: its path relative to the input
    root given (a folder: the path inside it; a single file or a glob match: the path
    relative to the folder the argument names), so ids do not depend on how the path was
    typed."""

    name_in_root: str

    def __new__(cls, path: str, name_in_root: str | None = None) -> InputPath:
        value = super().__new__(cls, path)
        value.name_in_root = name_in_root if name_in_root is not None else Path(path).name
        return value

    def __reduce__(self):  # keeps the id across processes (workers)
        return (InputPath, (str(self), self.name_in_root))


def _suffix_of(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSIONS:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _wanted_suffixes(include: tuple[str, ...]) -> set[str]:
    extra = {s.strip().lower() for s in include if s.strip()}
    return set(FOLDER_SUFFIXES) | {s if s.startswith(".") else f".{s}" for s in extra}


def expand_inputs(inputs: list[str] | tuple[str, ...], include: tuple[str, ...] = ()) -> list[str]:
    """Files, folders (recursively, sorted; known suffixes only, what is skipped is logged)
    and globs → a list of files; no input means stdin."""
    if not inputs:
        return [STDIN]
    wanted = _wanted_suffixes(include)
    files: list[str] = []
    for item in inputs:
        if item == STDIN:
            files.append(STDIN)
        elif is_remote(item):
            files.extend(_remote_inputs(item, wanted))
        elif os.path.isdir(item):
            root = Path(item)
            found = sorted(  # a link to nothing too: its reader reports it, never a silent skip
                p
                for p in root.rglob("*")
                if (p.is_file() or p.is_symlink() and not p.exists())
                and not any(part.startswith(".") for part in p.relative_to(root).parts)
            )
            _log_skipped(item, [_suffix_of(p) for p in found], wanted)
            chosen = [
                InputPath(str(p), p.relative_to(root).as_posix())
                for p in found
                if _suffix_of(p) in wanted
            ]
            # a folder that cannot be listed is reported in its place (the reader says why)
            files.extend(sorted(chosen + [InputPath(f) for f in _unreadable_folders(item)]))
        elif os.path.exists(item):
            files.append(InputPath(item))
        elif glob.has_magic(item):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise AnnotatorError(f"{item}: no file matches this pattern")
            parts = Path(item).parts
            fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
            base = Path(*parts[:fixed]) if fixed else Path(".")
            files.extend(_in_root(m, base) for m in matches if os.path.isfile(m))
        else:
            raise AnnotatorError(f"{item}: no such file or directory")
    return files


def _log_skipped(item: str, suffixes: list[str], wanted: set[str]) -> None:
    skipped = Counter(suffix or "(none)" for suffix in suffixes if suffix not in wanted)
    if skipped:
        counts = ", ".join(f"{s} {n}" for s, n in sorted(skipped.items()))
        logging.getLogger("annotator").info(
            "%s: skipped %d file%s by suffix (%s); --include-suffix takes them",
            item,
            sum(skipped.values()),
            "" if sum(skipped.values()) == 1 else "s",
            counts,
        )


def _remote_inputs(item: str, wanted: set[str]) -> list[str]:
    """An object (s3://bucket/key) or every object under a prefix, chosen as a folder's files
    are; ids of text objects are their names under the prefix, as in a folder."""
    kind = remote_info(item)
    if kind == "file":
        return [InputPath(item, item.rsplit("/", 1)[-1])]
    if kind is None:
        raise AnnotatorError(f"{item}: no such object or prefix")
    found = remote_files(item)
    _log_skipped(item, [_suffix_of(Path(name)) for _, name in found], wanted)
    return [InputPath(uri, name) for uri, name in found if _suffix_of(Path(name)) in wanted]


def _unreadable_folders(root: str) -> list[str]:
    """Folders under `root` that cannot be listed: the reader reports each as a bad record."""
    failed: list[str] = []
    for _ in os.walk(root, onerror=lambda exc: failed.append(exc.filename)):
        pass
    return [f for f in failed if f and os.path.abspath(f) != os.path.abspath(root)] + (
        [root] if root in failed else []
    )


def _in_root(path: str, root: Path) -> InputPath:
    try:
        return InputPath(path, Path(path).relative_to(root).as_posix())
    except ValueError:
        return InputPath(path)


def detect_format(path: str, explicit: str | None) -> tuple[str, str | None]:
    """(format, compression) from `--input-format` or the file's extensions."""
    suffixes = [s.lower() for s in Path(path).suffixes] if path != STDIN else []
    compression = _COMPRESSIONS.get(suffixes[-1]) if suffixes else None
    if compression:
        suffixes = suffixes[:-1]
    if explicit:
        return explicit, compression
    if path == STDIN:
        return "jsonl", None
    return (_EXTENSIONS.get(suffixes[-1], "text") if suffixes else "text"), compression


#: the first bytes of a compressed stream: stdin has no extension to tell
_MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd"}


class _Prefixed(io.RawIOBase):
    """A stream whose first bytes were read already: those bytes, then the rest of it."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self.head, self.rest = head, rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.head:
            size = min(len(buffer), len(self.head))
            buffer[:size], self.head = self.head[:size], self.head[size:]
            return size
        read = getattr(self.rest, "read1", self.rest.read)
        data = read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def open_binary(path: str, compression: str | None) -> IO[bytes]:
    if path == STDIN:
        raw: IO[bytes] = sys.stdin.buffer
    else:
        raw = open_remote(path) if is_remote(path) else open(path, "rb")
    if path == STDIN and compression is None:  # no extension: the first bytes tell
        head = raw.read(4)  # waits for them, however slowly a pipe brings them
        compression = next((kind for magic, kind in _MAGIC.items() if head.startswith(magic)), None)
        raw = io.BufferedReader(_Prefixed(head, raw))  # type: ignore[assignment]
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw)  # type: ignore[return-value]
    if compression == "zstd":
        return io.BufferedReader(_Zstd(raw))  # type: ignore[return-value]
    return raw


class _Zstd(io.RawIOBase):
    """zstd frames, one after another, decoded as a stream; a frame cut short is an EOFError
    (as gzip's is), never a quiet end of file, and undecodable data an OSError.

    (zstandard's own stream reader ends quietly at a cut frame: a truncated file would read as
    a shorter one.) Compressed data is fed in small pieces so that what one piece expands to
    stays small whatever the ratio.
    """

    PIECE = 1024  # expands to at most 32 MiB (a zstd block of 128 KiB can be 4 bytes)

    def __init__(self, source: IO[bytes]) -> None:
        import zstandard

        self.source = source
        # what a pipe holds now, not a full piece: a slow stream's records come promptly
        self.read = getattr(source, "read1", source.read)
        self.zstd = zstandard
        self.frame = zstandard.ZstdDecompressor().decompressobj()
        self.started = False  # bytes of the current frame have been fed
        self.pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if self.source is not sys.stdin.buffer:
            self.source.close()
        super().close()

    def readinto(self, buffer) -> int:
        while not self.pending:
            data = self.read(self.PIECE)
            if not data:
                if self.started:
                    raise EOFError("the compressed file ended before its end-of-frame marker")
                return 0
            self.pending = memoryview(self._decode(data))
        size = min(len(buffer), len(self.pending))
        buffer[:size], self.pending = self.pending[:size], self.pending[size:]
        return size

    def _decode(self, data: bytes) -> bytes:
        out = []
        while data:
            try:
                out.append(self.frame.decompress(data))
            except self.zstd.ZstdError as exc:
                raise OSError(f"damaged zstd data ({exc})") from None
            self.started = not self.frame.eof
            if not self.frame.eof:
                break
            data = self.frame.unused_data  # the next frame begins here
            self.frame = self.zstd.ZstdDecompressor().decompressobj()
        return b"".join(out)


def read_documents(inputs: list[str], options: ReaderOptions = ReaderOptions()) -> Iterator[Record]:
    """Every record of every input, in order."""
    for path in inputs:
        fmt, compression = detect_format(path, options.input_format)
        if fmt not in FORMATS:
            raise AnnotatorError(f"unknown input format {fmt!r}; use one of {', '.join(FORMATS)}")
        reader = {"jsonl": _read_jsonl, "text": _read_text, "parquet": _read_parquet}[fmt]
        if path != STDIN and os.path.isdir(path):  # a folder that could not be listed
            yield RecordError(path, 0, "cannot read this folder (permission denied?)")
            continue
        if not _is_utf8(path):  # its id and source could not be written as text
            yield RecordError(path, 0, "the file's name is not valid UTF-8")
            continue
        last = None
        try:
            for record in reader(path, compression, options):
                last = record.row
                yield record
        except (OSError, EOFError, zlib.error) as exc:  # truncated/corrupt streams, no permission
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            if last is None:
                yield RecordError(path, 0, f"cannot read this file: {reason}")
            else:  # where it broke: the record after the last one read
                yield RecordError(path, last + 1, f"cannot read the rest of this file: {reason}")


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes of a file name, escaped as lone surrogates
        return False
    return True


def _stable_id(source: str, row: int) -> str:
    return f"{source}:{row}"


def _document(record: dict[str, Any], source: str, row: int, options: ReaderOptions) -> Record:
    text = record.get(options.text_field)
    if options.text_field not in record:
        return RecordError(source, row, f"no {options.text_field!r} field")
    if not isinstance(text, str):
        return RecordError(
            source, row, f"field {options.text_field!r} is {type(text).__name__}, not a string"
        )
    limit = options.max_record_bytes  # a character is 1 to 4 bytes: most texts need no count
    if len(text) > limit // 4 and len(text.encode("utf-8", "surrogatepass")) > limit:
        return RecordError(source, row, _too_large(limit))
    doc_id = record.get(options.id_field)
    if doc_id is None:
        doc_id = _stable_id(source, row)
    elif not isinstance(doc_id, (str, int)) or isinstance(doc_id, bool):
        return RecordError(
            source,
            row,
            f"field {options.id_field!r} is {type(doc_id).__name__}, not a string or integer",
        )
    fields = {k: v for k, v in record.items() if k != options.id_field}
    return Document(id=str(doc_id), text=text, source=source, row=row, fields=fields)


class _Endless(Exception):
    """A line with NUL bytes that runs past the record size limit: binary data, not text."""


def _lines(handle: IO[bytes], limit: int) -> Iterator[bytes | None]:
    """The lines of `handle`, None for one longer than `limit` (skipped to its end, never held
    whole); a long line of NUL bytes (a device, a binary file) raises `_Endless`, as it may
    never end."""
    while line := handle.readline(limit + 1):
        if len(line) <= limit or line.endswith(b"\n"):
            yield line
            continue
        if b"\0" in line:
            raise _Endless
        while (rest := handle.readline(limit)) and not rest.endswith(b"\n"):
            pass
        yield None


def _read_jsonl(path: str, compression: str | None, options: ReaderOptions) -> Iterator[Record]:
    limit = options.max_record_bytes
    with open_binary(path, compression) as handle:
        lines = _lines(handle, limit)
        for number in itertools.count(1):
            try:
                raw = next(lines)
            except StopIteration:
                return
            except _Endless:
                yield RecordError(
                    path,
                    number,
                    f"{_too_large(limit)}, and NUL bytes: not JSON lines, "
                    "the rest of this input is not read",
                )
                return
            if raw is None:
                yield RecordError(path, number, _too_large(limit))
                continue
            if number == 1:
                raw = raw.removeprefix(_BOM)  # written by some Windows tools; not JSON
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield RecordError(
                    path, number, f"not valid UTF-8 ({exc.reason} at byte {exc.start})"
                )
                continue
            try:
                record = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                message = exc.msg.removesuffix(" at")  # "Unterminated string starting at"
                yield RecordError(path, number, f"invalid JSON ({message} at column {exc.colno})")
                continue
            except RecursionError:
                yield RecordError(path, number, "JSON nested too deeply")
                continue
            except ValueError as exc:  # e.g. an integer of more than 4,300 digits
                yield RecordError(path, number, f"invalid JSON value ({exc})")
                continue
            if _SURROGATE_ESCAPE.search(raw):
                problem = _not_unicode(record)
                if problem:
                    yield RecordError(path, number, problem)
                    continue
            if not isinstance(record, dict):
                yield RecordError(path, number, f"a JSON {type(record).__name__}, not an object")
                continue
            yield _document(record, path, number, options)


#: The UTF-8 byte-order mark that may open a file: a marker, not text.
_BOM = b"\xef\xbb\xbf"

#: A JSON escape of a UTF-16 surrogate: only then can a decoded string hold a lone one.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _not_unicode(record: Any) -> str | None:
    """Why `record` cannot be written as text (a lone surrogate such as \\ud800), or None."""
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start : exc.end].encode("unicode_escape").decode("ascii")
        return f"a lone surrogate ({bad}) in the JSON: not valid Unicode text"
    except (RecursionError, ValueError) as exc:
        return f"cannot be written back as JSON ({type(exc).__name__})"
    return None


def _read_text(path: str, compression: str | None, options: ReaderOptions) -> Iterator[Record]:
    with open_binary(path, compression) as handle:
        data = handle.read(options.max_record_bytes + 1)
    if len(data) > options.max_record_bytes:
        yield RecordError(path, 0, _too_large(options.max_record_bytes))
        return
    try:
        text = data.removeprefix(_BOM).decode("utf-8")
    except UnicodeDecodeError as exc:
        yield RecordError(path, 0, f"not valid UTF-8 ({exc.reason} at byte {exc.start})")
        return
    doc_id = path.name_in_root if isinstance(path, InputPath) else Path(path).name
    yield Document(id=doc_id, text=text, source=path, row=0, fields={options.text_field: text})


def _read_parquet(path: str, compression: str | None, options: ReaderOptions) -> Iterator[Record]:
    """Record batches, never the whole file: memory stays bounded by one batch."""
    import pyarrow.parquet as pq

    if path == STDIN or compression:
        raise AnnotatorError(
            f"{path}: Parquet is read from a plain file (not stdin, not compressed)"
        )
    try:
        parquet = pq.ParquetFile(open_remote_file(path) if is_remote(path) else path)
    except Exception as exc:  # pyarrow raises ArrowInvalid and OSError for the same bad file
        yield RecordError(path, 0, f"not a readable Parquet file ({exc})")
        return
    names = parquet.schema_arrow.names
    if options.text_field not in names:
        raise AnnotatorError(
            f"{path}: no column {options.text_field!r} (columns: {', '.join(names)})"
        )
    row = 0
    for batch in parquet.iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            yield _document(record, path, row, options)
            row += 1


def count_documents(inputs: list[str], options: ReaderOptions = ReaderOptions()) -> int | None:
    """How many records the inputs hold (for a progress bar's ETA); None when it can't be known."""
    total = 0
    for path in inputs:
        if path == STDIN or is_remote(path):  # counting would read an object twice
            return None
        fmt, compression = detect_format(path, options.input_format)
        if fmt == "parquet":
            import pyarrow.parquet as pq

            try:
                total += pq.ParquetFile(path).metadata.num_rows
            except Exception:  # the reader reports the bad file; the bar just has no total
                return None
        elif fmt == "text":
            total += 1
        else:
            with open_binary(path, compression) as handle:
                lines = _lines(handle, options.max_record_bytes)
                total += sum(1 for line in lines if line is None or line.strip())
    return total


def _identity(path: str) -> tuple[int, int] | str:
    """What a path names: the file itself (device, inode: through links and other spellings),
    or, for a file not there yet, its resolved path."""
    try:
        info = os.stat(path)
    except OSError:
        return os.path.realpath(path)
    return (info.st_dev, info.st_ino)


def check_outputs_apart(
    inputs: list[str] | tuple[str, ...],
    outputs: dict[str, str | None],
    include: tuple[str, ...] = (),
) -> None:
    """Refuse outputs (flag → path; a directory output included) that would overwrite an input
    file, share a path with another output, or lie inside an input folder where that folder's
    next read would take them for input. Streams (`-`) and devices are never refused."""
    for flag, path in outputs.items():
        if path == "":
            raise AnnotatorError(f"{flag} is an empty path")
    named = {
        flag: path
        for flag, path in outputs.items()
        if path and path != STDIN and not (os.path.exists(path) and _is_device(path))
    }
    identities = {flag: _identity(path) for flag, path in named.items()}
    seen: dict[tuple[int, int] | str, str] = {}
    for flag, path in named.items():
        other = seen.setdefault(identities[flag], flag)
        if other != flag:
            raise AnnotatorError(f"{flag} {path} is also {other}'s path: give each its own file")
    wanted = _wanted_suffixes(include)
    for item in inputs:
        if item == STDIN:
            continue
        files = glob.glob(item, recursive=True) if glob.has_magic(item) else [item]
        taken = set() if os.path.isdir(item) else {_identity(f) for f in files}
        for flag, path in named.items():
            if os.path.isdir(item):
                relative = os.path.relpath(os.path.realpath(path), os.path.realpath(item))
                parts = Path(relative).parts
                # the folder itself or a place in it that no hidden part keeps from its read
                inside = parts[:1] != ("..",) and not any(part.startswith(".") for part in parts)
                folder = path.endswith(("/", os.sep)) or os.path.isdir(path)
                if inside and (folder or _suffix_of(Path(path)) in wanted):
                    raise AnnotatorError(
                        f"{flag} {path} lies inside the input folder {item}, whose next read "
                        "would take it for input: write it elsewhere"
                    )
            elif identities[flag] in taken:
                raise AnnotatorError(f"{flag} {path} is an input: it would be overwritten")


def _is_device(path: str) -> bool:
    import stat

    return not stat.S_ISREG(os.stat(path).st_mode) and not os.path.isdir(path)
