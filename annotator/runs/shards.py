"""Shards of the input by document id, and where the input stands.

A shard ``K/N`` (K in 0..N-1) holds the documents whose id hashes to K (blake2b, so the same
on every machine and Python version); a bad record, which has no id, goes by SOURCE:ROW.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from annotator.errors import AnnotatorError
from annotator.io.readers import ReaderOptions, count_documents, read_documents
from annotator.records import Document, Record


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
    def parse(cls, text: str | None) -> Shard:
        if not text:
            return cls()
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not match or int(match[2]) < 1 or int(match[1]) >= int(match[2]):
            raise AnnotatorError(
                f"--shard {text}: expected K/N with 0 <= K < N (K counts from 0, e.g. 0/4 ... 3/4)"
            )
        return cls(int(match[1]), int(match[2]))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def holds(self, record: Record) -> bool:
        return self.count == 1 or shard_of(record_key(record), self.count) == self.index

    def split(self, parts: int) -> list[Shard]:
        """`parts` disjoint shards that together hold exactly this shard's documents:
        h % (N*P) == K + N*i  <=>  h % N == K and (h // N) % P == i."""
        return [Shard(self.index + self.count * i, self.count * parts) for i in range(parts)]

    @property
    def prefix(self) -> str:
        return "" if self.count == 1 else f"shard-{self.index}-of-{self.count}-"


#: (file index, 1-based record number within that file, record): the position of a record.
Positioned = tuple[int, int, Record]


class Source(Protocol):
    """What the pipeline reads from: the input files' records of one shard, in input order,
    and how they are tagged (here, or already on a cluster)."""

    files: list[str]

    def positioned(self, options: ReaderOptions, cursor: tuple[int, int]) -> Iterator[Positioned]:
        """The records after `cursor`, each with its position (what a resume continues from)."""
        ...

    def records(self, options: ReaderOptions) -> Iterable[Record]:
        """Every record, in input order."""
        ...

    def total(self, options: ReaderOptions) -> int | None:
        """How many records the progress bar counts to (None: not known up front)."""
        ...

    def tag(self, annotator: Any, documents: Iterable[Document]) -> Iterable[Any]:
        """`annotator.pipeline.Annotated` results, in input order."""
        ...


class FileSource:
    """The records of input files read here with `annotator.io.readers` and tagged here: the
    local backend's source. `annotator.runs.ray.RaySource` reads and tags on a cluster."""

    def __init__(self, files: list[str], shard: Shard = Shard()) -> None:
        self.files, self.shard = files, shard

    def positioned(self, options: ReaderOptions, cursor: tuple[int, int]) -> Iterator[Positioned]:
        """The records of the shard after `cursor`, each with its position."""
        for index in range(cursor[0], len(self.files)):
            skip = cursor[1] if index == cursor[0] else 0
            for number, record in enumerate(read_documents([self.files[index]], options), start=1):
                if number > skip and self.shard.holds(record):
                    yield index, number, record

    def records(self, options: ReaderOptions) -> Iterable[Record]:
        """Every record of the shard, in input order."""
        if self.shard.count == 1:
            return read_documents(self.files, options)
        return (record for _, _, record in self.positioned(options, (0, 0)))

    def total(self, options: ReaderOptions) -> int | None:
        return count_documents(self.files, options) if self.shard.count == 1 else None

    def tag(self, annotator: Any, documents: Iterable[Document]) -> Iterable[Any]:
        return annotator.annotate_documents(documents)
