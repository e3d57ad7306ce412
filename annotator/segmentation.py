"""Sentence splitting and tokenization with spaCy, keeping exact character offsets.

Tokens come from spaCy's tokenizer and are never re-tokenized downstream, so every entity
maps back to `text[start:end]` of the original string. Whitespace tokens (runs of spaces,
newlines, non-breaking spaces) are dropped: a tagger never sees them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

from annotator.errors import AnnotatorError

# spaCy refuses texts above nlp.max_length; longer documents are cut at whitespace into
# pieces this long, each split on its own, so one huge document cannot exhaust memory.
MAX_PIECE_CHARS = 100_000


@dataclass
class Sentence:
    """Token strings with their [start, end) character offsets into the document text."""

    tokens: list[str]
    starts: list[int]
    ends: list[int]

    def __len__(self) -> int:
        return len(self.tokens)


class Segmenter:
    """A blank English pipeline with the rule-based sentencizer, or an installed pipeline.

    With `spacy_model`, that pipeline's parser or senter sets the boundaries (its other
    components are disabled: only boundaries are needed).
    """

    def __init__(self, spacy_model: str | None = None, max_sentence_tokens: int = 250,
                 batch_size: int = 64) -> None:
        import spacy

        if max_sentence_tokens < 1:
            raise AnnotatorError("--max-sentence-tokens must be at least 1")
        self.max_sentence_tokens = max_sentence_tokens
        self.batch_size = batch_size
        if spacy_model is None:
            self.nlp = spacy.blank("en")
            self.nlp.add_pipe("sentencizer")
            self.name = f"spacy.blank('en')+sentencizer (spaCy {spacy.__version__})"
        else:
            try:
                nlp = spacy.load(spacy_model)
            except OSError as exc:
                raise AnnotatorError(f"cannot load spaCy pipeline {spacy_model!r}: {exc}") from None
            keep = {"senter", "parser", "sentencizer"} & set(nlp.pipe_names)
            if not keep:
                raise AnnotatorError(f"spaCy pipeline {spacy_model!r} has no parser, senter or "
                                     "sentencizer to find sentence boundaries")
            # a disabled senter is enabled when the pipeline has no parser
            if "senter" in nlp.disabled and "parser" not in nlp.pipe_names:
                nlp.enable_pipe("senter")
            self.nlp = nlp
            self.nlp.select_pipes(enable=[n for n in nlp.pipe_names
                                          if n in keep or n in ("tok2vec", "transformer")])
            self.name = f"{spacy_model} {nlp.meta.get('version', '')} (spaCy {spacy.__version__})"
        self.nlp.max_length = max(self.nlp.max_length, MAX_PIECE_CHARS + 1)

    def split(self, texts: Iterable[str]) -> Iterator[list[Sentence]]:
        """The sentences of each text, in order (an empty list for an empty text)."""
        pieces: list[tuple[int, str]] = []  # (document index, offset) per piece
        piece_texts: list[str] = []
        for index, text in enumerate(texts):
            for offset, piece in cut_text(text, MAX_PIECE_CHARS):
                pieces.append((index, offset))
                piece_texts.append(piece)
            if not text:
                pieces.append((index, -1))
                piece_texts.append("")
        results: dict[int, list[Sentence]] = {}
        for (index, offset), doc in zip(pieces, self.nlp.pipe(piece_texts, batch_size=self.batch_size)):
            sentences = results.setdefault(index, [])
            if offset >= 0:
                sentences.extend(self._sentences(doc, offset))
        for index in range(len(results)):
            yield results[index]

    def _sentences(self, doc, offset: int) -> Iterator[Sentence]:
        for span in doc.sents:
            words = [t for t in span if not t.is_space]
            for begin in range(0, len(words), self.max_sentence_tokens):
                chunk = words[begin:begin + self.max_sentence_tokens]
                yield Sentence(tokens=[t.text for t in chunk],
                               starts=[offset + t.idx for t in chunk],
                               ends=[offset + t.idx + len(t.text) for t in chunk])


def cut_text(text: str, limit: int) -> Iterator[tuple[int, str]]:
    """Pieces of at most `limit` characters, cut after a newline or space where possible."""
    start = 0
    while start < len(text):
        end = min(start + limit, len(text))
        if end < len(text):
            cut = max(text.rfind("\n", start, end), text.rfind(" ", start, end))
            if cut > start:
                end = cut + 1
        yield start, text[start:end]
        start = end
