"""A review session: the documents, the model's pass over them, the review order and the
decisions so far; what the page's server asks for the next sentences and hands decisions to.

`open_session` reads the documents, runs the model over them (or reuses its pass, kept in the
sample folder, without loading the model), splits sentences with the model's own spaCy
settings (the page snaps spans to those tokens) and opens the sample folder's store, locked
against a second server on the same folder.
"""

from __future__ import annotations

import functools
import logging
import threading
from pathlib import Path
from typing import Any

from annotator.errors import AnnotatorError
from annotator.files import DirectoryLock
from annotator.io.readers import ReaderOptions, expand_inputs, read_documents
from annotator.logs import printable
from annotator.records import Document, RecordError, Sentence
from annotator.review.sampling import ModelPass, pass_fingerprint, review_order, run_model_pass
from annotator.review.store import Decision, DecisionStore, Item, check_spans, sentence_key
from annotator.segmentation import Segmenter

log = logging.getLogger("annotator")

#: sentences sent ahead with each answer, so the page can show the next one at once
AHEAD = 3
LOCK = ".lock"


class ReviewSession:
    """The documents, the model's pass over them, the review order and the decisions so far.
    Safe to call from the server's threads."""

    def __init__(
        self,
        documents: list[Document],
        model_pass: ModelPass,
        segmenter,
        store: DecisionStore,
        model_name: str = "",
    ) -> None:
        self.documents = documents
        self.model_pass = model_pass
        self.segmenter = segmenter
        self.labels = model_pass.labels
        self.store = store
        self.model_name = model_name
        self.candidates = model_pass.candidates()
        self.order = review_order(self.candidates)
        self.position = 0  # order before it: decided, repeated or nothing to label
        self.served: dict[str, Item] = {}
        self.lock = threading.Lock()
        self.lock_file: DirectoryLock | None = None
        self._sentences = functools.lru_cache(maxsize=256)(self._split)

    def _split(self, doc: int) -> list[Sentence]:
        return next(self.segmenter.split([self.documents[doc].text]))

    def _item(self, row: int) -> Item:
        doc_number = int(self.candidates.doc[row])
        number = int(self.candidates.sentence[row])
        doc = self.documents[doc_number]
        sentence = self._sentences(doc_number)[number]
        start, end = sentence.starts[0], sentence.ends[-1]
        text = doc.text[start:end]
        model = [
            (e.start - start, e.end - start, e.label, round(float(e.score), 4))
            for e in self.model_pass.entities[doc_number]
            if e.sentence == number
        ]
        return Item(
            key=sentence_key(doc.id, start, text),
            doc=doc.id,
            source=str(doc.source),
            row=doc.row,
            start=start,
            text=text,
            tokens=[(s - start, e - start) for s, e in zip(sentence.starts, sentence.ends)],
            model=model,
        )

    def next_items(self, count: int = AHEAD) -> list[Item]:
        """The next `count` undecided sentences in review order, each text once; sentences
        with no letter (numbers, punctuation) are passed over."""
        with self.lock:
            decided_texts = {d.item.text for d in self.store.latest.values()}
            items: list[Item] = []
            texts: set[str] = set()
            leading = True
            index = self.position
            while index < len(self.order) and len(items) < count:
                item = self._item(int(self.order[index]))
                done = (
                    item.key in self.store.latest
                    or item.text in decided_texts
                    or not any(c.isalpha() for c in item.text)
                )
                if done and leading:
                    self.position = index + 1
                elif not done and item.text not in texts:
                    leading = False
                    items.append(item)
                    texts.add(item.text)
                    self.served[item.key] = item
                index += 1
            return items

    def item(self, key: str) -> tuple[Item, Decision | None] | None:
        """A sentence served or decided, with its last decision."""
        with self.lock:
            decision = self.store.latest.get(key)
            item = self.served.get(key) or (decision.item if decision else None)
            return (item, decision) if item else None

    def decide(self, key: str, action: str, spans: list[Any]) -> None:
        """Check and store one decision; ValueError says what is wrong with it."""
        found = self.item(key)
        if found is None:
            raise ValueError("no such sentence")
        item = found[0]
        if action not in ("accept", "skip"):
            raise ValueError("action must be accept or skip")
        checked = check_spans(item, spans, set(self.labels)) if action == "accept" else []
        with self.lock:
            self.store.append(Decision(item, action, checked))

    def state(self) -> dict[str, Any]:
        with self.lock:
            counts = self.store.counts()
        return {"counts": dict(counts), "done": sum(counts.values()), "total": len(self.order)}

    def close(self) -> None:
        self.store.close()
        if self.lock_file is not None:
            self.lock_file.release()


def read_all(inputs: list[str], options: ReaderOptions) -> list[Document]:
    """The documents to review, in memory (a sample is a few thousand documents, not an
    archive); a record that cannot be read is named in one warning line and left out."""
    documents: list[Document] = []
    for record in read_documents(expand_inputs(inputs), options):
        if isinstance(record, RecordError):
            log.warning("skipped %s", printable(str(record)))
        else:
            documents.append(record)
    if not documents:
        raise AnnotatorError("no documents to review in " + ", ".join(inputs))
    return documents


def _run_pass(
    model: str | None, device: str, documents: list[Document], fingerprint: str, progress: bool
) -> ModelPass:
    from annotator.pipeline import Annotator

    with Annotator(model, device=device) as annotator:
        model_pass, problems = run_model_pass(annotator, documents, fingerprint, progress)
    for line in problems:
        log.warning("left out %s", printable(line))
    return model_pass


def open_session(
    inputs: list[str],
    folder: str | Path,
    model: str | None = None,
    device: str = "auto",
    options: ReaderOptions = ReaderOptions(),
    progress: bool = True,
) -> ReviewSession:
    """The session for reviewing `inputs` into sample `folder` (created if need be)."""
    from annotator.models import model_info

    folder = Path(folder)
    documents = read_all(inputs, options)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        lock = DirectoryLock(folder / LOCK, str(folder)).acquire()
    except AnnotatorError:
        raise AnnotatorError(
            f"{folder}: another review page is open on this sample folder; use it, or stop it"
        ) from None
    try:
        info = model_info(model)
        fingerprint = pass_fingerprint(info.sha256, info.name, documents)
        model_pass = ModelPass.load(folder, fingerprint, documents)
        if model_pass is None:
            model_pass = _run_pass(model, device, documents, fingerprint, progress)
            model_pass.save(folder)
        else:
            log.info("the model's pass over these documents is kept in %s: reused", folder)
        segmenter = Segmenter(**model_pass.rules)
        store = DecisionStore(folder)
        session = ReviewSession(documents, model_pass, segmenter, store, info.name)
    except BaseException:
        lock.release()
        raise
    session.lock_file = lock
    return session
