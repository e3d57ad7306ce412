"""A sample folder's accepted sentences as a two-column file (`token TAG`, BIO tags), the
format `evaluate --column-format text,ner`, `calibrate` and `adapt` read.

The tokens are the model's own spaCy tokens of the sentence, and every labelled span starts
and ends on one of them, so each span is the same characters in the file as on the page.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from annotator.errors import AnnotatorError
from annotator.files import write_atomically
from annotator.review.store import Decision, read_decisions

DOCSTART = "-DOCSTART- O"
#: what a column reader would take for a column break, or cannot write as UTF-8
_UNWRITABLE = re.compile(r"[\s\ud800-\udfff]")


@dataclass
class Exported:
    documents: int
    sentences: int
    entities: int
    skipped: int  # sentences skipped in the page, left out

    def line(self) -> str:
        return (
            f"{self.sentences} sentences of {self.documents} documents, {self.entities} "
            f"entities ({self.skipped} skipped sentences left out)"
        )


def bio_tags(decision: Decision) -> list[str]:
    """One BIO tag per token of the decided sentence."""
    tags = ["O"] * len(decision.item.tokens)
    for start, end, label in decision.spans:
        inside = [i for i, (s, e) in enumerate(decision.item.tokens) if s >= start and e <= end]
        for position, index in enumerate(inside):
            tags[index] = f"{'B' if position == 0 else 'I'}-{label}"
    return tags


def column_text(decisions: list[Decision]) -> str:
    """Accepted sentences grouped by document (in the order documents were first reviewed),
    in document order within each, a -DOCSTART- line before each document."""
    by_doc: dict[tuple[str, str], list[Decision]] = {}
    for decision in decisions:
        if decision.action == "accept":
            by_doc.setdefault((decision.item.source, decision.item.doc), []).append(decision)
    lines: list[str] = []
    for sentences in by_doc.values():
        lines += [DOCSTART, ""]
        for decision in sorted(sentences, key=lambda d: d.item.start):
            text = decision.item.text
            for (start, end), tag in zip(decision.item.tokens, bio_tags(decision)):
                # spaCy's tokens hold no whitespace; a lone surrogate cannot be written
                lines.append(f"{_UNWRITABLE.sub(chr(0xFFFD), text[start:end])} {tag}")
            lines.append("")
    return "\n".join(lines) + "\n" if lines else ""


def export_sample(folder: str | Path, output: str | Path) -> Exported:
    """Write the accepted sentences of sample `folder` to `output` (whole or not at all)."""
    decisions = list(read_decisions(folder).values())
    accepted = [d for d in decisions if d.action == "accept"]
    if not accepted:
        raise AnnotatorError(
            f"{folder}: no accepted sentence to export yet ({len(decisions)} skipped)"
        )
    write_atomically(output, column_text(decisions))
    return Exported(
        documents=len({(d.item.source, d.item.doc) for d in accepted}),
        sentences=len(accepted),
        entities=sum(len(d.spans) for d in accepted),
        skipped=len(decisions) - len(accepted),
    )
