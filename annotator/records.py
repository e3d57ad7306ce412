"""The data that flows through the pipeline: documents in, sentences, entities out.

Every stage imports these from here, so no stage has to import another to share a type.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Document:
    """One input document; `row` is the 1-based line (JSONL), 0-based row (Parquet) or 0 (text)."""

    id: str
    text: str
    source: str
    row: int
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class RecordError:
    """A record that could not become a Document, with where it was and why."""

    source: str
    row: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "row": self.row, "reason": self.reason}

    def __str__(self) -> str:
        return f"{self.source}:{self.row}: {self.reason}"


Record = Document | RecordError


@dataclass
class Sentence:
    """Token strings with their [start, end) character offsets into the document text."""

    tokens: list[str]
    starts: list[int]
    ends: list[int]

    def __len__(self) -> int:
        return len(self.tokens)


LabelledSpan = tuple[int, int, str]  # first token, end token (exclusive), label
TokenSpan = tuple[int, int, str, float]  # first token, end token (exclusive), label, score


@dataclass
class Entity:
    """An entity with offsets into the original document text: text == doc.text[start:end]."""

    start: int
    end: int
    text: str
    label: str
    score: float
    sentence: int

    def to_dict(self) -> dict:
        return asdict(self)


# --- evaluation: how a sentence's predicted spans meet its gold spans ---

MISSED = "missed"  # gold span with no prediction at exactly its tokens
SPURIOUS = "spurious"  # predicted span with no gold span at exactly its tokens
ERROR_KINDS = ("wrong type", "wrong boundary", "missed", "spurious")


@dataclass
class SentenceMatch:
    index: int
    tokens: list[str]
    gold: list[LabelledSpan]
    predicted: list[LabelledSpan]
    errors: list[
        tuple[str, LabelledSpan | None, LabelledSpan | None]
    ]  # kind, gold span, predicted span


def sentence_text(tokens: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """Tokens joined by single spaces, with each token's character offsets in that text."""
    offsets, position = [], 0
    for token in tokens:
        offsets.append((position, position + len(token)))
        position += len(token) + 1
    return " ".join(tokens), offsets


def percent(fraction: float, digits: int = 2) -> str:
    """One convention for scores: fractions (0-1) in data files (metrics.json, report.json,
    --json), `64.00%` in text, figures and logs."""
    return f"{100 * fraction:.{digits}f}%"


@dataclass
class Summary:
    """What a run did: counts for its last line on stderr (and the bench)."""

    documents: int = 0
    sentences: int = 0
    words: int = 0
    entities: Counter = field(default_factory=Counter)
    skipped: int = 0
    seconds: float = 0.0
    # worker processes: from the first one starting on its documents to the last one done
    # (their starts and model loading left out, as `seconds` of a one-process run leaves them)
    work_seconds: float | None = None

    def add(self, sentences: int, words: int, entities: list[Entity]) -> None:
        """Count one written document (with the entities written for it)."""
        self.documents += 1
        self.sentences += sentences
        self.words += words
        self.entities.update(e.label for e in entities)

    @property
    def words_per_second(self) -> float:
        return self.words / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        types = ", ".join(f"{label} {count}" for label, count in sorted(self.entities.items()))
        return (
            f"{self.documents} documents, {self.sentences} sentences, "
            f"{sum(self.entities.values())} entities ({types or 'none'}), "
            f"{self.skipped} skipped, {self.words_per_second:,.0f} words/s"
        )
