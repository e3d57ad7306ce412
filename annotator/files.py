"""Files written whole or not at all, and their checksums.

Every file the tool writes goes through `AtomicFile`: a temporary file beside the target,
renamed onto it only once complete, so a reader (or a crash) never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from annotator.errors import AnnotatorError

CHUNK = 1 << 16


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


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


class AtomicFile:
    """A temporary file beside `path`, renamed onto it by `commit`, removed by `abort`.

    As a context manager it commits when the block ends normally and aborts otherwise.
    """

    def __init__(self, path: str | Path, durable: bool = False) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise AnnotatorError(f"{path}: is a directory")
        if not self.path.parent.exists():
            raise AnnotatorError(f"{self.path.parent}: no such directory for {self.path.name}")
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self.durable = durable

    def commit(self) -> None:
        if self.durable:
            with open(self.tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(self.tmp, self.path)
        if self.durable:
            fsync_dir(self.path.parent)

    def abort(self) -> None:
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


def write_atomically(path: str | Path, text: str, durable: bool = False) -> Path:
    with AtomicFile(path, durable) as target:
        target.tmp.write_text(text, encoding="utf-8")
    return target.path


def write_json_atomically(path: str | Path, data: Any, durable: bool = False) -> Path:
    return write_atomically(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n", durable)
