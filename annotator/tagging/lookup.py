"""Per word-type lookups shared by the torch and numpy engines: vocabulary rows, one-hot
indices, shared-vector rows and character sequences, computed once per word type and cached
in one integer table. Nothing here imports torch.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

_DIGITS = re.compile(r"\d")


def word_index(vocab: dict[str, int], word: str) -> int:
    """flair's ``WordEmbeddings.get_cached_token_index``: the word, else its lower case, else with
    digits as '#', else as '0', else the unknown row -- without the attribute hooks and per-instance
    cache wrapper that make flair's version cost microseconds a word (the type cache caches)."""
    if word in vocab:
        return vocab[word]
    lower = word.lower()
    for key in (lower, _DIGITS.sub("#", lower), _DIGITS.sub("0", lower)):
        if key in vocab:
            return vocab[key]
    return len(vocab)


class GrowableColumns:
    """An int64 matrix ``[n_rows, n_cols]`` that grows by amortised doubling (per-type lookup
    data)."""

    def __init__(self, n_cols: int) -> None:
        self._data = np.zeros((1024, max(n_cols, 1)), dtype=np.int64)
        self.n_rows = 0

    def append(self, row: Sequence[int]) -> None:
        if self.n_rows == self._data.shape[0]:
            self._data = np.concatenate([self._data, np.zeros_like(self._data)])
        self._data[self.n_rows, : len(row)] = row
        self.n_rows += 1

    @property
    def array(self) -> np.ndarray:
        return self._data[: self.n_rows]


@dataclass
class BatchContext:
    """Python/numpy-side view of a batch shared by the components' ``prepare``."""

    sentences: list[list[str]]
    lengths: np.ndarray  # [B]
    starts: np.ndarray  # [B] flat start of each sentence
    sentence_id: np.ndarray  # [N] flat -> sentence
    position: np.ndarray  # [N] flat -> position in sentence
    type_ids: np.ndarray  # [N] flat -> word type id
    type_columns: np.ndarray  # [n_types, n_cols]


class TypeLookup:
    """A leaf embedding's per-type side: the integers cached for each word type."""

    name: str
    length: int
    n_columns: int = 0  # how many integers type_values returns
    contextual = False  # True: a token's embedding depends on more than its own inputs

    def type_values(self, word: str) -> list[int]:
        """Integers cached per word type (stored in the shared type table)."""
        return []


class IndexLookup(TypeLookup):
    """WordEmbeddings / OneHotEmbeddings: one vocabulary index per word type.

    The index function is flair's own (``get_cached_token_index`` with its word -> lower ->
    digits->'#' -> digits->'0' -> unk fallback, or ``Dictionary.get_idx_for_item`` for one-hot,
    which raises for unknown words when the dictionary has no ``<unk>``, exactly as flair does).
    """

    n_columns = 1

    def __init__(self, name: str, length: int, index_fn: Callable[[str], int]) -> None:
        self.name = name
        self.length = length
        self.index_fn = index_fn

    def type_values(self, word: str) -> list[int]:
        return [int(self.index_fn(word))]


class VectorRowLookup(TypeLookup):
    """annotator's shared word vectors (`annotator.vectors.VectorLookup`): a row per word type."""

    n_columns = 1

    def __init__(self, name: str, length: int, embedding) -> None:
        self.name = name
        self.length = length
        self.embedding = embedding

    def type_values(self, word: str) -> list[int]:
        return [self.embedding.row_of(word)]


class _CharIds(dict):
    """character -> flair ``Dictionary`` index, looked up once per character."""

    def __init__(self, dictionary) -> None:
        super().__init__()
        self.dictionary = dictionary

    def __missing__(self, char: str) -> int:
        index = self[char] = self.dictionary.get_idx_for_item(char)
        return index


class CharSequences(TypeLookup):
    """CharacterEmbeddings' per-type side: each word's character-id sequence, numbered once.

    flair's re-sort quirk (``CharacterEmbeddings._add_embeddings_internal``), replicated by
    `source_sequences`: the re-sort map ``d`` is ``d[j] = last i with chars[i] == sorted[j]``
    (later matches overwrite earlier ones), where ``sorted`` is the *stable* sort of the
    sentence's tokens by length, descending.  Only the last occurrence of a repeated character
    sequence is written back; every earlier occurrence at position ``p`` keeps the embedding
    computed for ``sorted[p]``.  "Repeated" means equal character-id lists, so words that only
    differ in unknown characters count as duplicates as well.
    """

    n_columns = 1

    def __init__(self, name: str, length: int, char_dictionary) -> None:
        """`char_dictionary`: anything with Flair's `Dictionary.get_idx_for_item`."""
        self.name = name
        self.length = length
        self.char_dictionary = char_dictionary
        self._char_ids = _CharIds(char_dictionary)
        self.reset()

    def reset(self) -> None:
        self._tuple_ids: dict[tuple[int, ...], int] = {}
        self._store: list[int] = []  # concatenated char ids of all known character sequences
        self._offsets: list[int] = []
        self._lengths: list[int] = []
        self._np_cache: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    @property
    def n_sequences(self) -> int:
        return len(self._offsets)

    def type_values(self, word: str) -> list[int]:
        known = self._char_ids
        chars = tuple([known[c] for c in word])
        cid = self._tuple_ids.get(chars)
        if cid is None:
            cid = len(self._offsets)
            self._tuple_ids[chars] = cid
            self._offsets.append(len(self._store))
            self._lengths.append(len(chars))
            self._store.extend(chars)
            self._np_cache = None
        return [cid]

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._np_cache is None:
            self._np_cache = (
                np.asarray(self._store, dtype=np.int64),
                np.asarray(self._offsets, dtype=np.int64),
                np.asarray(self._lengths, dtype=np.int64),
            )
        return self._np_cache

    @staticmethod
    def source_sequences(
        cid: np.ndarray, lengths: np.ndarray, sentence_id: np.ndarray
    ) -> np.ndarray:
        """Which character sequence flair actually uses for each token (the ``d`` re-sort quirk)."""
        n = cid.shape[0]
        flat = np.arange(n)
        # stable sort within each sentence by length, descending -> flat index of sorted rank
        by_length = np.lexsort((-lengths, sentence_id))
        # last occurrence of each (sentence, sequence)
        grouped = np.lexsort((flat, cid, sentence_id))
        is_last = np.ones(n, dtype=bool)
        same_as_next = (sentence_id[grouped[1:]] == sentence_id[grouped[:-1]]) & (
            cid[grouped[1:]] == cid[grouped[:-1]]
        )
        is_last[grouped[:-1][same_as_next]] = False
        # flat index f = start(sentence) + position, and by_length[f] is that sentence's
        # rank-`position` token
        return np.where(is_last, cid, cid[by_length])

    def sources(self, ctx: BatchContext, cols: slice) -> np.ndarray:
        """The character sequence each token of the batch is embedded from (flat order)."""
        _, _, seq_lengths = self._arrays()
        cid = ctx.type_columns[ctx.type_ids, cols.start]
        return self.source_sequences(cid, seq_lengths[cid], ctx.sentence_id)

    def padded(self, sequences: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The character ids ``[U, longest]`` (0-padded) and lengths ``[U]`` of `sequences`."""
        store, offsets, seq_lengths = self._arrays()
        lens = seq_lengths[sequences]
        steps = np.arange(int(lens.max()))
        mask = steps[None, :] < lens[:, None]
        chars = np.where(
            mask, store[np.where(mask, offsets[sequences][:, None] + steps[None, :], 0)], 0
        )
        return chars, lens
