"""The compact frozen word-vector table's lookups, without Flair.

`annotator.embeddings.SharedVectorEmbeddings` (the Flair embedding that training and Flair's
predict use) and the fast engine's Flair-free model (`annotator.tagging.export`) both hold the
same four buffers; this mixin reads them, so the two cannot drift apart.
"""

from __future__ import annotations

import re
import zlib

import torch

_DIGIT = re.compile(r"\d")


def lookup_key(word: str) -> str:
    """The key vectors are stored under: lower case (case is the character encoder's job)."""
    return word.lower()


class VectorLookup:
    """Word → row → vector over the buffers `codes` (int8 rows plus one unknown row), `scales`
    (one per row), `word_bytes` (the zlib-compressed word list) and `word_rows`."""

    codes: torch.Tensor
    scales: torch.Tensor
    word_bytes: torch.Tensor
    word_rows: torch.Tensor
    _index: dict[str, int] | None = None

    @property
    def unknown_row(self) -> int:
        return self.codes.shape[0] - 1

    def index(self) -> dict[str, int]:
        """word → row, rebuilt from the compact buffers on first use."""
        if self._index is None:
            words = (
                zlib.decompress(bytes(self.word_bytes.cpu().numpy())).decode("utf-8").split("\n")
                if self.word_bytes.numel()
                else []
            )
            self._index = dict(zip(words, self.word_rows.tolist()))
        return self._index

    def row_of(self, word: str) -> int:
        index = self.index()
        key = lookup_key(word)
        row = index.get(key)
        if row is None and _DIGIT.search(key):
            row = index.get(_DIGIT.sub("#", key), index.get(_DIGIT.sub("0", key)))
        return self.unknown_row if row is None else row

    def vectors_of(self, rows: torch.Tensor) -> torch.Tensor:
        return self.codes[rows].float() * self.scales[rows, None]
