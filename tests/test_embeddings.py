import numpy as np
import pytest
import torch

from annotator.embeddings import SharedVectorEmbeddings


@pytest.fixture(scope="module")
def spacy_vectors(tmp_path_factory):
    """A blank spaCy pipeline whose vectors map several words onto shared rows, saved to disk."""
    import spacy
    from spacy.vectors import Vectors

    nlp = spacy.blank("en")
    rng = np.random.default_rng(0)
    table = Vectors(shape=(3, 6))
    table.data[:] = rng.normal(size=(3, 6)).astype("float32")
    for word, row in [
        ("london", 0),
        ("London", 1),
        ("paris", 0),
        ("berlin", 1),
        ("the", 2),
        ("0000", 2),
    ]:
        table.add(nlp.vocab.strings.add(word), row=row)
    nlp.vocab.vectors = table
    path = tmp_path_factory.mktemp("vectors") / "pipeline"
    nlp.to_disk(path)
    return path, table.data.copy()


def test_lower_case_words_share_quantised_rows(spacy_vectors):
    path, data = spacy_vectors
    embeddings = SharedVectorEmbeddings.from_spacy(str(path))
    assert embeddings.embedding_length == 6
    assert embeddings.codes.dtype == torch.int8
    rows = {
        word: embeddings.row_of(word) for word in ("London", "paris", "BERLIN", "1999", "unseen")
    }
    assert rows["London"] == rows["paris"]  # "London" is looked up as "london"
    assert rows["unseen"] == embeddings.unknown_row
    assert rows["1999"] == embeddings.row_of("the")  # digits fall back to 0000
    vectors = embeddings.vectors_of(torch.tensor([rows["paris"], rows["unseen"]]))
    assert torch.allclose(vectors[0], torch.from_numpy(data[0]), atol=0.02)
    assert torch.count_nonzero(vectors[1]) == 0


def test_stacked_in_a_tagger_it_saves_and_reloads_identically(
    spacy_vectors, synthetic_corpus, tmp_path
):
    from flair.data import Sentence
    from flair.models import SequenceTagger

    from annotator.training.config import resolve_config
    from annotator.training.train import train

    config = resolve_config(
        "offline",
        overrides={
            "max_epochs": 1,
            "hidden_size": 16,
            "word_embedding_dim": 8,
            "device": "cpu",
            "spacy_vectors": str(spacy_vectors[0]),
        },
    )
    train(synthetic_corpus, tmp_path / "m", config)
    tagger = SequenceTagger.load(tmp_path / "m" / "best-model.pt")
    assert [type(e).__name__ for e in tagger.embeddings.embeddings] == [
        "WordEmbeddings",
        "CharacterEmbeddings",
        "SharedVectorEmbeddings",
    ]
    assert tagger.embeddings.get_names() == ["0-words", "1-Char", "2-vectors"]

    def scores(model):
        sentence = Sentence("Anna Berg flew from Paris to London in 1999 .".split())
        model.predict(sentence, return_probabilities_for_all_classes=True)
        return [[round(label.score, 6) for label in token.get_labels("ner")] for token in sentence]

    first = scores(tagger)
    tagger.save(tmp_path / "again.pt")
    assert scores(SequenceTagger.load(tmp_path / "again.pt")) == first

    from annotator.tagging.engines import FlairEngine
    from annotator.tagging.fast import FastSequenceTagger

    sentences = [
        s.split()
        for s in (
            "Anna Berg flew from Paris to London in 1999 .",
            "John Smith works for Siemens in Berlin .",
            "Prices rose .",
        )
    ]
    fast = FastSequenceTagger(tagger).predict(sentences)
    slow = FlairEngine(tagger).predict(sentences)
    assert [[s[:3] for s in sent] for sent in fast] == [[s[:3] for s in sent] for sent in slow]
    for a, b in zip(sum(fast, []), sum(slow, [])):
        assert abs(a[3] - b[3]) < 1e-4
