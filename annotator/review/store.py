"""The review's decisions: one JSON line each, appended and fsynced before the page hears back.

A decision holds everything the export needs (the sentence's text, its tokens and the labelled
spans as character offsets), so the sample folder stands on its own: the documents and the
model are not needed to export it. Deciding a sentence again appends a new line; the last one
counts. A kill or a power cut can leave at most a torn last line, which was never acknowledged:
it is cut off when the store is opened again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from annotator.errors import AnnotatorError
from annotator.files import fsync_dir

DECISIONS = "decisions.jsonl"
ACTIONS = ("accept", "skip")

#: a labelled span of a sentence: start, end (exclusive) in the sentence text, label
CharSpan = tuple[int, int, str]


def sentence_key(doc: str, start: int, text: str) -> str:
    """A sentence's identity across restarts: its document, where it starts, and its text (so
    that a document changed since is not taken for the one labelled)."""
    digest = hashlib.blake2b(digest_size=8)
    for part in (doc, str(start), text):
        digest.update(part.encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()


@dataclass
class Item:
    """A sentence as the page shows it: offsets of its tokens and of the model's spans are into
    `text`, which is `document.text[start:start + len(text)]`."""

    key: str
    doc: str
    source: str
    row: int
    start: int
    text: str
    tokens: list[tuple[int, int]]
    model: list[tuple[int, int, str, float]]  # the model's spans with their scores


@dataclass
class Decision:
    """What the user made of an item: accepted (with the spans as they left them) or skipped."""

    item: Item
    action: str
    spans: list[CharSpan] = field(default_factory=list)
    time: float = 0.0

    @property
    def corrected(self) -> bool:
        """Accepted with spans other than the model's."""
        model = sorted((s, e, label) for s, e, label, _ in self.item.model)
        return self.action == "accept" and sorted(self.spans) != model

    def to_json(self) -> str:
        record = {**asdict(self.item), "action": self.action, "spans": self.spans}
        record["time"] = self.time
        return json.dumps(record)  # ASCII: a lone surrogate is written escaped, never refused

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Decision:
        item = Item(
            key=record["key"],
            doc=record["doc"],
            source=record["source"],
            row=record["row"],
            start=record["start"],
            text=record["text"],
            tokens=[tuple(t) for t in record["tokens"]],
            model=[tuple(m) for m in record["model"]],
        )
        spans = [tuple(s) for s in record["spans"]]
        return cls(item, record["action"], spans, record["time"])


def check_spans(item: Item, spans: list[Any], labels: set[str]) -> list[CharSpan]:
    """The spans a page sent, as (start, end, label) sorted, or the reason they cannot be kept:
    each must start and end on the item's token boundaries, carry a known label and overlap
    no other."""
    starts = {s for s, _ in item.tokens}
    ends = {e for _, e in item.tokens}
    checked: list[CharSpan] = []
    for span in spans:
        if not (isinstance(span, list | tuple) and len(span) == 3):
            raise ValueError(f"a span is [start, end, label], not {span!r}")
        start, end, label = span
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end)):
            raise ValueError(f"span offsets must be whole numbers: {span!r}")
        if start not in starts or end not in ends or end <= start:
            raise ValueError(f"span [{start}, {end}] is not on token boundaries")
        if label not in labels:
            raise ValueError(f"unknown label {label!r}")
        checked.append((start, end, label))
    checked.sort()
    for (_, end, _), (start, _, _) in zip(checked, checked[1:]):
        if start < end:
            raise ValueError("spans overlap")
    return checked


class DecisionStore:
    """The append-only decisions file of a sample folder, open for writing; `latest` holds the
    last decision per sentence, in the order sentences were first decided."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / DECISIONS
        self.folder.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        _cut_torn_tail(self.path)
        self.latest = read_decisions(self.folder)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if new:
            fsync_dir(self.folder)  # the file itself survives a power cut, not just its lines

    def append(self, decision: Decision) -> None:
        """Written and on disk when this returns."""
        if decision.action not in ACTIONS:
            raise ValueError(f"action must be one of {', '.join(ACTIONS)}")
        decision.time = decision.time or time.time()
        line = (decision.to_json() + "\n").encode("ascii")
        written = os.write(self._fd, line)
        if written != len(line):  # a full disk: the tail is cut when the store opens again
            raise OSError(f"{self.path}: only {written} of {len(line)} bytes written")
        os.fsync(self._fd)
        self.latest.pop(decision.item.key, None)  # re-decided: it moves to the end
        self.latest[decision.item.key] = decision

    def counts(self) -> Counter:
        """accepted (as the model had it), corrected, skipped."""
        counts: Counter = Counter(accepted=0, corrected=0, skipped=0)
        for decision in self.latest.values():
            if decision.action == "skip":
                counts["skipped"] += 1
            else:
                counts["corrected" if decision.corrected else "accepted"] += 1
        return counts

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def read_decisions(folder: str | Path) -> dict[str, Decision]:
    """The last decision per sentence of a sample folder (a torn last line is ignored)."""
    path = Path(folder) / DECISIONS
    if not Path(folder).is_dir():
        raise AnnotatorError(f"{folder}: no such sample folder")
    if not path.exists():
        return {}
    latest: dict[str, Decision] = {}
    data = path.read_bytes()
    lines = data.split(b"\n")
    complete = lines[:-1]  # after the last newline: empty, or a line torn by a kill
    for number, line in enumerate(complete, 1):
        if not line.strip():
            continue
        try:
            decision = Decision.from_dict(json.loads(line))
        except (ValueError, KeyError, TypeError) as exc:
            raise AnnotatorError(
                f"{path}:{number}: not a review decision ({type(exc).__name__}: {exc})"
            ) from None
        latest.pop(decision.item.key, None)
        latest[decision.item.key] = decision
    return latest


def _cut_torn_tail(path: Path) -> None:
    """A line without its newline was being written when the process died: drop it, so the
    next line starts on a line of its own."""
    if not path.exists():
        return
    with open(path, "rb+") as handle:
        data = handle.read()
        if data and not data.endswith(b"\n"):
            handle.truncate(data.rfind(b"\n") + 1)
            handle.flush()
            os.fsync(handle.fileno())
