"""Gold labels projected onto spaCy's pieces of the corpus tokens."""

from __future__ import annotations

import pytest

from annotator.corpus import read_tagged_documents, token_spans
from annotator.raw_evaluation import rebuild
from annotator.training.retokenize import project, retokenize_sentences, spacy_tokenize
from tests.conftest import SHARED_CONLLPP


@pytest.fixture(scope="module")
def tokenize():
    return spacy_tokenize()


def test_hyphenated_entity_splits_into_three_pieces(tokenize):
    pieces, tags = project(["Boutros-Ghali", "said"], ["B-PER", "O"], tokenize)
    assert pieces == ["Boutros", "-", "Ghali", "said"]
    assert tags == ["B-PER", "I-PER", "I-PER", "O"]


def test_entity_continuing_into_a_split_token(tokenize):
    pieces, tags = project(
        ["the", "Bre-X", "Minerals", "deal"], ["O", "B-ORG", "I-ORG", "O"], tokenize
    )
    assert pieces == ["the", "Bre", "-", "X", "Minerals", "deal"]
    assert tags == ["O", "B-ORG", "I-ORG", "I-ORG", "I-ORG", "O"]


def test_adjacent_entities_stay_apart(tokenize):
    # IOB1: a second I-LOC after B-LOC at a type change; here two LOCs side by side
    pieces, tags = project(["Rome-Paris", "Berlin"], ["B-LOC", "B-LOC"], tokenize)
    assert tags[0] == "B-LOC" and tags[-1] == "B-LOC"
    assert token_spans(tags) == [(0, len(pieces) - 1, "LOC"), (len(pieces) - 1, len(pieces), "LOC")]


def test_dates_list_markers_and_contractions_outside_entities(tokenize):
    pieces, tags = project(
        ["1.", "Jesper", "Ronnback", "1996-12-06", "cannot"],
        ["O", "B-PER", "I-PER", "O", "O"],
        tokenize,
    )
    assert pieces == ["1", ".", "Jesper", "Ronnback", "1996", "-", "12", "-", "06", "can", "not"]
    assert tags == ["O", "O", "B-PER", "I-PER"] + ["O"] * 7


def test_flair_sentences_keep_their_spans():
    from flair.data import Sentence

    sentence = Sentence(["Bre-X", "sued", "Boutros-Ghali", "."])
    sentence[0:1].add_label("ner", "ORG")
    sentence[2:3].add_label("ner", "PER")
    (rebuilt,) = retokenize_sentences([sentence], "ner", spacy_tokenize())
    assert [t.text for t in rebuilt] == ["Bre", "-", "X", "sued", "Boutros", "-", "Ghali", "."]
    assert [(s.text, s.get_label("ner").value) for s in rebuilt.get_spans("ner")] == [
        ("Bre-X", "ORG"),
        ("Boutros-Ghali", "PER"),
    ]


def test_conllpp_round_trip_keeps_every_entity_character_span(tokenize):
    """Each dev sentence, re-tokenized: the projected entities cover the same characters."""
    if not SHARED_CONLLPP.is_dir():
        pytest.skip("../shared/data/conllpp is not beside this checkout")
    documents = read_tagged_documents(SHARED_CONLLPP / "conllpp_dev.txt")
    checked = 0
    for gold in rebuild(documents, "sentence"):
        text = gold.text
        tokens = text.split(" ")
        tags = ["O"] * len(tokens)
        starts = [0]
        for token in tokens[:-1]:
            starts.append(starts[-1] + len(token) + 1)
        for start, end, label in gold.spans:
            first, last = starts.index(start), max(i for i, s in enumerate(starts) if s < end)
            tags[first : last + 1] = [f"B-{label}"] + [f"I-{label}"] * (last - first)
        pieces, piece_tags = project(tokens, tags, tokenize)
        assert "".join(pieces) == text.replace(" ", "")
        piece_starts, position = [], 0
        for piece in pieces:  # pieces lie in order inside the text, spaces between tokens only
            position = text.index(piece, position)
            piece_starts.append(position)
            position += len(piece)
        projected = [
            (piece_starts[f], piece_starts[e - 1] + len(pieces[e - 1]), label)
            for f, e, label in token_spans(piece_tags)
        ]
        assert projected == gold.spans
        checked += len(gold.spans)
    assert checked == 5942


def test_corpus_keeps_train_tokens_where_the_tokenizers_differ(tokenize):
    from flair.data import Corpus, Sentence
    from flair.datasets import SentenceDataset

    from annotator.training.retokenize import retokenized_corpus

    same, differs = Sentence(["Rome", "won", "."]), Sentence(["Bre-X", "won", "."])
    differs[0:1].add_label("ner", "ORG")
    corpus = Corpus(
        train=SentenceDataset([same, differs]),
        dev=SentenceDataset([Sentence(["Bre-X", "lost"])]),
        test=SentenceDataset([Sentence(["Bre-X", "lost"])]),
        sample_missing_splits=False,
    )

    def texts(dataset):
        return [[t.text for t in dataset[i]] for i in range(len(dataset))]

    both = retokenized_corpus(corpus, "ner", tokenize, keep_train_tokens=True)
    assert texts(both.train) == [
        ["Rome", "won", "."],
        ["Bre", "-", "X", "won", "."],
        ["Bre-X", "won", "."],  # the corpus's form, once, and only where it differs
    ]
    assert [s.text for s in both.train[2].get_spans("ner")] == ["Bre-X"]
    assert texts(both.dev) == [["Bre", "-", "X", "lost"]]  # dev: annotate's tokens only
    assert texts(both.test) == [["Bre-X", "lost"]]  # test: the corpus's tokens, comparable
    assert len(retokenized_corpus(corpus, "ner", tokenize).train) == 2
