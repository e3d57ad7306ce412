"""Train on the tokens annotate will see: corpus sentences re-tokenized by the Segmenter's spaCy
tokenizer, their gold labels projected onto the pieces.

CoNLL keeps `1996-12-06`, `Bre-X` or `cannot` whole; spaCy's English tokenizer splits them. A
tagger trained on CoNLL's tokens meets spaCy's only at prediction time. Re-tokenizing each
corpus token on its own keeps every entity boundary (spaCy never joins across a space), and a
piece of an entity token continues that entity: the first piece of an entity's first token
is B-, every other piece I-.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from annotator.corpus import token_spans
from annotator.segmentation import Segmenter

Tokenize = Callable[[str], list[str]]


def spacy_tokenize(settings: dict[str, Any] | None = None) -> Tokenize:
    """The tokenizer of the Segmenter annotate builds with `settings`: text → token strings
    (whitespace tokens dropped, as the Segmenter drops them)."""
    tokenizer = Segmenter(**(settings or {})).nlp.tokenizer
    return lambda text: [token.text for token in tokenizer(text) if not token.is_space]


def project(tokens: list[str], tags: list[str], tokenize: Tokenize) -> tuple[list[str], list[str]]:
    """The pieces of `tokens` and their BIO tags (input tags: IOB1, BIO or BIOES)."""
    pieces_of = [tokenize(token) or [token] for token in tokens]
    entity_at: dict[int, tuple[str, bool]] = {}  # token → (label, starts the entity)
    for first, end, label in token_spans(tags):
        for index in range(first, end):
            entity_at[index] = (label, index == first)
    pieces, piece_tags = [], []
    for index, parts in enumerate(pieces_of):
        label, starts = entity_at.get(index, ("", False))
        for number, part in enumerate(parts):
            pieces.append(part)
            prefix = "B" if starts and number == 0 else "I"
            piece_tags.append(f"{prefix}-{label}" if label else "O")
    return pieces, piece_tags


def retokenize_sentences(sentences, label_type: str, tokenize: Tokenize) -> list:
    """Flair sentences re-tokenized, with their `label_type` spans projected onto the pieces."""
    from flair.data import Sentence

    result = []
    for sentence in sentences:
        tokens = [token.text for token in sentence]
        tags = ["O"] * len(tokens)
        for span in sentence.get_spans(label_type):
            label = span.get_label(label_type).value
            first = span.tokens[0].idx - 1
            for offset in range(len(span.tokens)):
                tags[first + offset] = f"{'B' if offset == 0 else 'I'}-{label}"
        pieces, piece_tags = project(tokens, tags, tokenize)
        rebuilt = Sentence(pieces)
        # pieces of one corpus token are written together, as the text shows them
        text, position = " ".join(tokens), 0
        for token in rebuilt:
            position = text.index(token.text, position) + len(token.text)
            token.whitespace_after = int(text[position : position + 1] == " ")
        for first, end, label in token_spans(piece_tags):
            rebuilt[first:end].add_label(label_type, label)
        result.append(rebuilt)
    return result


def retokenized_corpus(
    corpus, label_type: str, tokenize: Tokenize, keep_train_tokens: bool = False
):
    """The corpus with train and dev re-tokenized; test keeps the corpus's tokens, so that
    Flair's token-level test scores stay comparable between models. With `keep_train_tokens`
    train holds both forms of every sentence the tokenizers split differently."""
    from flair.data import Corpus
    from flair.datasets import SentenceDataset

    def split(dataset, keep: bool = False):
        if dataset is None:
            return None
        sentences = [dataset[index] for index in range(len(dataset))]
        rebuilt = retokenize_sentences(sentences, label_type, tokenize)
        if keep:
            rebuilt += [
                original
                for original, new in zip(sentences, rebuilt, strict=True)
                if len(original) != len(new)
            ]
        return SentenceDataset(rebuilt)

    return Corpus(
        train=split(corpus.train, keep_train_tokens),
        dev=split(corpus.dev),
        test=corpus.test,
        name=corpus.name,
        sample_missing_splits=False,
    )
