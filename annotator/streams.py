"""The standard streams, guarded: a closed or failing one is a clear error where it is used.

A process started with stdin, stdout or stderr closed (`<&-`, `>&-`) would hand that descriptor
number to the next file it opens (output written to stdout would land in it), and Python leaves
`sys.stdout` as None; a full stdout (`>/dev/full`) fails on a flush deep in a writer. Guarded,
a closed stream's descriptor holds /dev/null, and reading or writing stdin or stdout raises
`StreamFailed` (one line, exit 1); a broken pipe stays a BrokenPipeError (`| head` ends quietly).
stderr carries only messages: when it cannot take them they are dropped, and the exit status
still tells.
"""

from __future__ import annotations

import io
import os
import sys

from annotator.errors import AnnotatorError

_NAMES = {0: "standard input", 1: "standard output", 2: "standard error"}


class StreamFailed(AnnotatorError):
    """stdin or stdout is closed, or a write to stdout failed (a full disk, a closed pipe's
    reader is a BrokenPipeError instead)."""


class _Guarded(io.RawIOBase):
    """A standard stream's descriptor, its errors raised as `StreamFailed`; one closed at the
    start fails every read or write."""

    def __init__(self, fd: int, closed_at_start: bool, writable: bool) -> None:
        self.fd, self.closed_at_start, self._writable = fd, closed_at_start, writable
        self.failed = False

    def readable(self) -> bool:
        return not self._writable

    def writable(self) -> bool:
        return self._writable

    def fileno(self) -> int:
        return self.fd

    def isatty(self) -> bool:
        return not self.closed_at_start and os.isatty(self.fd)

    def readinto(self, buffer) -> int:
        self._check("read")
        try:
            data = os.read(self.fd, len(buffer))
        except OSError as exc:
            raise StreamFailed(f"cannot read {_NAMES[self.fd]}: {exc.strerror or exc}") from None
        buffer[: len(data)] = data
        return len(data)

    def write(self, data) -> int:
        if self.fd == 2:  # messages with nowhere to go are dropped
            try:
                return len(data) if self.closed_at_start else os.write(self.fd, data)
            except OSError:
                return len(data)
        if self.failed:  # reported once; what is still buffered must not fail the exit again
            return len(data)
        self._check("write to")
        try:
            return os.write(self.fd, data)
        except BrokenPipeError:
            raise
        except OSError as exc:
            self.failed = True
            raise StreamFailed(
                f"cannot write to {_NAMES[self.fd]}: {exc.strerror or exc}"
            ) from None

    def _check(self, action: str) -> None:
        if self.closed_at_start:
            self.failed = True
            raise StreamFailed(f"cannot {action} {_NAMES[self.fd]}: it is closed")


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def guard() -> None:
    """Put guarded streams in place of sys.stdin, sys.stdout and sys.stderr (the command line
    calls this first; a library user's streams stay theirs)."""
    closed = [fd for fd in (0, 1, 2) if not _is_open(fd)]
    for fd in closed:  # the lowest free number: each closed one in turn
        os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        if fd == 0 and fd not in closed:
            continue  # an open stdin keeps Python's own reader
        old = getattr(sys, name)
        raw = _Guarded(fd, fd in closed, writable=fd != 0)
        buffered = io.BufferedWriter(raw) if fd else io.BufferedReader(raw)
        stream = io.TextIOWrapper(
            buffered,
            encoding=getattr(old, "encoding", None) or "utf-8",
            errors=getattr(old, "errors", None) or "strict",
            line_buffering=fd == 2 or bool(old and old.line_buffering),
            write_through=fd == 2,
        )
        setattr(sys, name, stream)


def drop_stdout() -> None:
    """What stdout still buffers goes nowhere: its reader has gone (`| head`), and the
    interpreter's own flush at exit must not fail on it."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
