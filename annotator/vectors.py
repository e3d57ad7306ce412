"""The compact frozen word-vector table's lookups, without Flair.

`annotator.embeddings.SharedVectorEmbeddings` (the Flair embedding that training and Flair's
predict use), the fast engine's Flair-free model (`annotator.tagging.export`) and the numpy
engine (`annotator.tagging.numpy_engine`) all hold the same four buffers (torch tensors or
numpy arrays); this mixin reads them, so they cannot drift apart.
"""

from __future__ import annotations

import re
import zlib
from typing import Any

import numpy as np

_DIGIT = re.compile(r"\d")


def lookup_key(word: str) -> str:
    """The key vectors are stored under: lower case (case is the character encoder's job)."""
    return word.lower()


class VectorLookup:
    """Word → row → vector over the buffers `codes` (int8 rows plus one unknown row), `scales`
    (one per row), `word_bytes` (the zlib-compressed word list) and `word_rows`."""

    codes: Any  # a torch tensor or a numpy array, as the rest
    scales: Any
    word_bytes: Any
    word_rows: Any
    _index: dict[str, int] | None = None

    @property
    def unknown_row(self) -> int:
        return self.codes.shape[0] - 1

    def index(self) -> dict[str, int]:
        """word → row, rebuilt from the compact buffers on first use."""
        if self._index is None:
            stored = self.word_bytes
            stored = stored.cpu().numpy() if hasattr(stored, "cpu") else np.asarray(stored)
            words = (
                zlib.decompress(stored.tobytes()).decode("utf-8").split("\n") if stored.size else []
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

    def vectors_of(self, rows):
        """The float32 vectors of `rows` (a tensor or an array, as the buffers)."""
        codes, scales = self.codes[rows], self.scales[rows, None]
        if isinstance(codes, np.ndarray):
            return codes.astype(np.float32) * scales.astype(np.float32)
        return codes.float() * scales
