"""Files written whole or not at all, and their checksums.

Every file the tool writes goes through `AtomicFile`: a temporary file beside the target,
renamed onto it only once complete, so a reader (or a crash) never sees half a file.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from annotator.errors import AnnotatorError, UsageError

CHUNK = 1 << 16


def sha256_stream(handle: Any) -> tuple[int, str]:
    """(bytes read, sha256) of what a binary stream holds from where it stands, read in
    blocks (a local file and an object-storage stream alike)."""
    digest, size = hashlib.sha256(), 0
    for block in iter(lambda: handle.read(CHUNK), b""):
        size += len(block)
        digest.update(block)
    return size, digest.hexdigest()


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as handle:
        return sha256_stream(handle)[1]


def check_parent(path: str | Path | None, flag: str) -> None:
    """An output whose folder does not exist, or takes no new file, is a usage error found
    before anything loads (not after a model has loaded and a run has gone by)."""
    if path is None or str(path) == "-":
        return
    check_descriptor(Path(path))
    parent = Path(path).expanduser().resolve().parent
    if not parent.is_dir():
        raise UsageError(f"{flag} {path}: no such directory {parent}")
    if not Path(path).exists() or Path(path).is_file():  # a device or FIFO is written in place
        reason = probe_folder(parent)
        if reason:
            raise UsageError(f"{flag} {path}: cannot write in {parent} ({reason})")


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (where the platform supports it)."""
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


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process: alive
        return True
    return True


class AtomicFile:
    """A temporary file beside `path`, renamed onto it by `commit`, removed by `abort`.

    As a context manager it commits when the block ends normally and aborts otherwise.

    `path` itself is never replaced unless it is a regular file (or absent): a device, a FIFO
    or /dev/stdout is written in place, streamed (`tmp` is then `path`, and `streamed` is
    true); a symbolic link is followed, and its target replaced, the link kept. Temporary files
    that dead runs left beside the target are removed.
    """

    def __init__(self, path: str | Path, durable: bool = False) -> None:
        self.path = Path(path)
        self.durable = durable
        self.descriptor: int | None = None
        if self.path.is_dir():
            raise AnnotatorError(f"{path}: is a directory")
        self.streamed = self.path.exists() and (not self.path.is_file() or _is_special(self.path))
        if self.streamed:  # a device, a FIFO, a socket or a link to one: written in place
            self.tmp = self.path
            self.descriptor = check_descriptor(self.path)
            return
        if self.path.is_symlink():
            if not self.path.exists():
                raise AnnotatorError(f"{path}: a symbolic link to a missing file; not replaced")
            self.path = self.path.resolve()  # the link stays; its target is replaced
        if not self.path.parent.exists():
            raise AnnotatorError(f"{self.path.parent}: no such directory for {self.path.name}")
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        remove_stale_temporaries(self.path)

    def commit(self) -> None:
        if self.streamed:
            return
        if self.durable:
            with open(self.tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(self.tmp, self.path)
        if self.durable:
            fsync_dir(self.path.parent)

    def abort(self) -> None:
        if not self.streamed:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, kind: type | None, *_: Any) -> None:
        if kind is None:
            try:
                self.commit()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()


_SPECIAL = ("/dev/", "/proc/")


def _descriptor(path: Path) -> int | None:
    """N when `path` (or a link it leads through) is /dev/stdout, /dev/fd/N, /proc/self/fd/N:
    then the writer writes to this process's descriptor N itself, sharing its position."""
    import re

    for _ in range(16):
        name = os.path.normpath(str(path.absolute()))
        named = {"/dev/stdout": 1, "/dev/stderr": 2}.get(name)
        match = re.fullmatch(rf"/(?:proc/self|proc/{os.getpid()}|dev)/fd/(\d+)", name)
        if named is not None or match:
            return named if named is not None else int(match[1])
        if not path.is_symlink():
            return None
        path = Path(os.path.join(path.parent, os.readlink(path)))
    return None


def check_descriptor(path: Path) -> int | None:
    """`path`'s descriptor number, as `_descriptor`; one that was closed when the command
    started (`>&-`: it now holds /dev/null) is refused, as writing to it would lose the output."""
    from annotator import streams

    descriptor = _descriptor(path)
    if descriptor is not None and streams.closed_at_start(descriptor):
        raise streams.StreamFailed(f"cannot write to {path}: descriptor {descriptor} is closed")
    return descriptor


def _is_special(path: Path) -> bool:
    """/dev/stdout, /proc/self/fd/1 or a link to one: a file descriptor's file, written in
    place even when it is a regular file (a shell's `> log`), never replaced."""
    if str(path.absolute()).startswith(_SPECIAL):
        return True
    return path.is_symlink() and os.path.join(path.parent, os.readlink(path)).startswith(_SPECIAL)


def remove_stale_temporaries(path: Path) -> list[Path]:
    """`.NAME.PID.tmp` files beside `path` whose process is gone (a killed run's): removed."""
    return _remove_dead(path.parent, f".{glob.escape(path.name)}.*.tmp")


def remove_dead_temporaries(folder: Path) -> list[Path]:
    """Every `.NAME.PID.tmp` file in `folder` whose process is gone: removed (a worker stopped
    or killed before it could remove its own)."""
    return _remove_dead(folder, ".*.tmp")


def _remove_dead(folder: Path, pattern: str) -> list[Path]:
    removed = []
    try:
        candidates = list(folder.glob(pattern))
    except OSError:
        return removed
    for candidate in candidates:
        pid = candidate.name[: -len(".tmp")].rsplit(".", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
            try:
                candidate.unlink()
                removed.append(candidate)
            except OSError:
                pass
    return removed


def probe_folder(folder: Path) -> str | None:
    """Why `folder` takes no new file (read-only, no permission), or None: found by creating
    (and removing) a file there, the one test that holds for root and read-only mounts too."""
    probe = folder / f".annotator-probe.{os.getpid()}.tmp"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        return exc.strerror or str(exc)
    probe.unlink(missing_ok=True)
    return None


class WriteFailed(AnnotatorError):
    """A write failed (disk full, file too large, read-only folder); `strerror` says why."""

    def __init__(self, message: str, strerror: str) -> None:
        super().__init__(message)
        self.strerror = strerror


def write_failed(path: Any, exc: OSError) -> WriteFailed:
    """One line for a failed write; the temporary file is removed by the caller's abort."""
    reason = exc.strerror or str(exc)
    kept = "; the previous file of that name is kept" if Path(str(path)).is_file() else ""
    return WriteFailed(f"cannot write {path}: {reason}{kept}", reason)


def write_atomically(path: str | Path, text: str, durable: bool = False) -> Path:
    """`text` as the whole of `path`; a write that fails (a full disk, a read-only folder) is
    one `WriteFailed`, and the previous file, if any, stays as it was."""
    try:
        with AtomicFile(path, durable) as target:
            target.tmp.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise write_failed(path, exc) from None
    return target.path


def json_text(data: Any) -> str:
    """`data` as the JSON files the tool writes (manifests, cards): indented, UTF-8."""
    text = json.dumps(data, indent=1, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (an undecodable file name): written escaped
        text = json.dumps(data, indent=1)
    return text + "\n"


def write_json_atomically(path: str | Path, data: Any, durable: bool = False) -> Path:
    return write_atomically(path, json_text(data), durable)


# --- processes and locks ------------------------------------------------------------------


def die_with_parent(parent: int | None = None, death_signal: bool = True) -> None:
    """End this (child) process when its parent dies, even by kill -9.

    On Linux the kernel sends SIGKILL (prctl PR_SET_PDEATHSIG; only for a child started by
    its parent's main thread: the signal comes when the starting *thread* ends); elsewhere,
    and as a fallback, a thread checks once a second whether the parent is still there.
    """
    import signal
    import threading
    import time

    parent = parent or os.getppid()
    if death_signal and sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(1)

    if os.getppid() != parent:  # it died before the death signal was set
        os._exit(1)
    threading.Thread(target=watch, daemon=True, name="annotator-parent-watch").start()


def _holder(path: Path, tries: int = 10) -> str:
    """Who holds the lock, from the file; a holder that has just taken it may not have written
    it yet, so an empty file is read again for a moment."""
    import time

    for _ in range(tries):
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
            return f"pid {info['pid']} on {info['host']}, started {info['started']}"
        except (OSError, ValueError, KeyError, TypeError):
            time.sleep(0.1)
    return "holder unknown"


class DirectoryLock:
    """An exclusive OS lock (flock) on `path`, held until `release` or the process ends; the
    kernel releases it on any death, kill -9 included. The file names the holder."""

    def __init__(self, path: str | Path, what: str) -> None:
        self.path, self.what = Path(path), what
        self.fd: int | None = None

    def acquire(self, wait: float = 0.0) -> DirectoryLock:
        import fcntl
        import socket
        import time

        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise AnnotatorError(f"cannot lock {self.what}: {exc.strerror or exc}") from None
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise AnnotatorError(
                        f"{self.what} is in use by another annotate run "
                        f"({_holder(self.path)}; lock file {self.path}): wait for it to end, "
                        "or use another output directory"
                    ) from None
                time.sleep(0.1)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the only descriptor releases the flock
            self.fd = None


def fingerprint(path: str | Path) -> dict[str, Any] | None:
    """Size, modification time and a sha256 of the first and last 64 KiB: enough to notice an
    input that changed between a run and its resume. None for what is not a local file."""
    try:
        stat = os.stat(path)
        with open(path, "rb") as handle:
            digest = hashlib.sha256(handle.read(CHUNK))
            if stat.st_size > 2 * CHUNK:
                handle.seek(-CHUNK, os.SEEK_END)
            digest.update(handle.read())
    except (OSError, ValueError):
        return None
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256_ends": digest.hexdigest()}
