"""Which sentences to label first: those whose entities the model is least sure of, spread over
the documents.

A sentence's sureness is the lowest calibrated score among its spans (a span scored 0.3 is
right about three times in ten); a sentence without spans counts as sure (1.0). Ordering by
sureness alone would let one odd document fill the first pages, so each sentence of a document
after its least sure one yields `spread` more: with the default 0.5, a document's third
sentence comes after every other document's least sure one.

The model pass over the documents is done once per sample folder and documents (`ModelPass`,
kept in the folder); the order itself is a few numpy sorts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from annotator.files import write_json_atomically
from annotator.records import Document, Entity

SPREAD = 0.5
PASS_FILE = "model-pass.json"


@dataclass
class Candidates:
    """One row per sentence of the documents: document number, sentence number, sureness."""

    doc: np.ndarray
    sentence: np.ndarray
    sureness: np.ndarray

    def __len__(self) -> int:
        return len(self.doc)


def review_order(candidates: Candidates, spread: float = SPREAD) -> np.ndarray:
    """Candidate rows, least sure first; a document's sentences after its least sure one each
    yield `spread` (ties: document, then sentence order)."""
    n = len(candidates)
    if not n:
        return np.zeros(0, dtype=np.int64)
    by_doc = np.lexsort((candidates.sureness, candidates.doc))
    docs = candidates.doc[by_doc]
    first = np.r_[0, np.flatnonzero(np.diff(docs)) + 1]  # where each document's rows begin
    rank_sorted = np.arange(n) - np.repeat(first, np.diff(np.r_[first, n]))
    rank = np.empty(n, dtype=np.float64)
    rank[by_doc] = rank_sorted
    key = candidates.sureness.astype(np.float64) + spread * rank
    return np.lexsort((candidates.sentence, candidates.doc, key))


@dataclass
class ModelPass:
    """What the model found in each document: its sentence count and entities (None: the
    document could not be split or tagged, and is left out)."""

    fingerprint: str
    sentences: list[int | None]
    entities: list[list[Entity]]
    labels: list[str] = field(default_factory=list)  # the model's entity types
    rules: dict[str, bool] = field(default_factory=dict)  # its Segmenter's sentence rules

    def candidates(self) -> Candidates:
        docs, numbers, sureness = [], [], []
        for index, (count, entities) in enumerate(zip(self.sentences, self.entities)):
            if not count:
                continue
            lowest = np.ones(count, dtype=np.float32)
            for entity in entities:
                lowest[entity.sentence] = min(lowest[entity.sentence], entity.score)
            docs.append(np.full(count, index, dtype=np.int32))
            numbers.append(np.arange(count, dtype=np.int32))
            sureness.append(lowest)
        if not docs:
            empty = np.zeros(0, dtype=np.int32)
            return Candidates(empty, empty, np.zeros(0, dtype=np.float32))
        return Candidates(np.concatenate(docs), np.concatenate(numbers), np.concatenate(sureness))

    def save(self, folder: Path) -> None:
        write_json_atomically(
            folder / PASS_FILE,
            {
                "fingerprint": self.fingerprint,
                "labels": self.labels,
                "rules": self.rules,
                "sentences": self.sentences,
                "entities": [
                    [[e.start, e.end, e.label, e.score, e.sentence] for e in entities]
                    for entities in self.entities
                ],
            },
        )

    @classmethod
    def load(cls, folder: Path, fingerprint: str, documents: list[Document]) -> ModelPass | None:
        """The pass kept in `folder`, if it was made by the same model on the same documents
        (then the model need not even be loaded: the pass holds what the page needs of it)."""
        try:
            data = json.loads((folder / PASS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if data.get("fingerprint") != fingerprint:
            return None
        entities = [
            [Entity(s, e, doc.text[s:e], label, score, n) for s, e, label, score, n in found]
            for doc, found in zip(documents, data["entities"])
        ]
        return cls(fingerprint, data["sentences"], entities, data["labels"], data["rules"])


def pass_fingerprint(model_sha256: str | None, model_name: str, documents: list[Document]) -> str:
    """Same model, same documents (ids and texts, in order): the kept pass still holds."""
    digest = hashlib.sha256(f"{model_sha256 or model_name}\0".encode())
    for doc in documents:
        for part in (doc.id, doc.text):
            digest.update(part.encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()


def run_model_pass(
    annotator, documents: list[Document], fingerprint: str, progress: bool = True
) -> tuple[ModelPass, list[str]]:
    """`annotator` (an `annotator.pipeline.Annotator`) over `documents`, progress on stderr;
    also returns one line per document that could not be split or tagged."""
    from annotator.segmentation import segmenter_settings

    sentences: list[int | None] = []
    entities: list[list[Entity]] = []
    problems: list[str] = []
    bar = tqdm(
        annotator.annotate_documents(documents),
        total=len(documents),
        unit="doc",
        desc="model pass",
        disable=not progress,
    )
    for result in bar:
        if result.error:
            problems.append(f"{result.document.source}:{result.document.row}: {result.error}")
            sentences.append(None)
            entities.append([])
        else:
            sentences.append(result.sentences)
            entities.append(result.entities)
    rules = segmenter_settings(annotator.tagger)
    return ModelPass(fingerprint, sentences, entities, annotator.labels, rules), problems
