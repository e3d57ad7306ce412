"""The fast engine's embedding components: one per leaf embedding of a Flair tagger.

Each looks a word *type* up once (vocabulary row, one-hot index, character ids) and caches it,
then computes its embeddings for a whole batch of flat tokens in one torch call. Flair's
quirks are replicated on purpose (see `CharComponent`), so that the engine's predictions equal
`SequenceTagger.predict`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

# tags that flair's get_spans_from_bio treats as "outside"


_DIGITS = re.compile(r"\d")


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


def leaf_embeddings(embeddings: nn.Module) -> list[nn.Module]:
    """Flattens (possibly nested) StackedEmbeddings into their leaf embeddings."""
    from flair.embeddings import StackedEmbeddings

    if type(embeddings) is StackedEmbeddings:
        return [leaf for sub in embeddings.embeddings for leaf in leaf_embeddings(sub)]
    return [embeddings]


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


def _module_device(module: nn.Module, default: torch.device) -> torch.device:
    for p in module.parameters():
        return p.device
    return default


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


class Component:
    """A leaf embedding: per-type lookups (Python), then a torch forward over flat tokens."""

    name: str
    length: int
    n_columns: int = 0  # how many integers type_values returns
    contextual = False  # True: a token's embedding depends on more than its own inputs

    def type_values(self, word: str) -> list[int]:
        """Integers cached per word type (stored in the shared type table)."""
        return []

    def prepare(self, ctx: BatchContext, cols: slice, device: torch.device) -> dict[str, Any]:
        raise NotImplementedError

    def forward(self, inputs: dict[str, Any], device: torch.device) -> torch.Tensor:
        """Returns ``[num_tokens, length]`` embeddings in *flat* token order."""
        raise NotImplementedError


class IndexComponent(Component):
    """WordEmbeddings / OneHotEmbeddings: one vocabulary index per word type, then a lookup.

    The index function is flair's own (``get_cached_token_index`` with its word -> lower ->
    digits->'#' -> digits->'0' -> unk fallback, or ``Dictionary.get_idx_for_item`` for one-hot,
    which raises for unknown words when the dictionary has no ``<unk>``, exactly as flair does).
    """

    n_columns = 1

    def __init__(
        self, embedding: nn.Module, table: nn.Embedding, layer_norm: nn.Module | None, index_fn
    ) -> None:
        self.name = embedding.name
        self.length = embedding.embedding_length
        self.table = table
        self.layer_norm = layer_norm
        self.index_fn = index_fn

    def type_values(self, word: str) -> list[int]:
        return [int(self.index_fn(word))]

    def prepare(self, ctx: BatchContext, cols: slice, device: torch.device) -> dict[str, Any]:
        idx = ctx.type_columns[ctx.type_ids, cols.start]
        return {"index": torch.from_numpy(idx).to(self.table.weight.device)}

    def forward(self, inputs: dict[str, Any], device: torch.device) -> torch.Tensor:
        out = self.table(inputs["index"])
        if self.layer_norm is not None:
            out = self.layer_norm(out)
        return out.to(device)


class SharedVectorComponent(Component):
    """annotator's SharedVectorEmbeddings: a row per word type, dequantised by the embedding."""

    n_columns = 1

    def __init__(self, embedding: nn.Module) -> None:
        self.name = embedding.name
        self.length = embedding.embedding_length
        self.embedding = embedding

    def type_values(self, word: str) -> list[int]:
        return [self.embedding.row_of(word)]

    def prepare(self, ctx: BatchContext, cols: slice, device: torch.device) -> dict[str, Any]:
        rows = ctx.type_columns[ctx.type_ids, cols.start]
        return {"rows": torch.from_numpy(rows).to(self.embedding.codes.device)}

    def forward(self, inputs: dict[str, Any], device: torch.device) -> torch.Tensor:
        return self.embedding.vectors_of(inputs["rows"]).to(device)


class _CharIds(dict):
    """character -> flair ``Dictionary`` index, looked up once per character."""

    def __init__(self, dictionary) -> None:
        super().__init__()
        self.dictionary = dictionary

    def __missing__(self, char: str) -> int:
        index = self[char] = self.dictionary.get_idx_for_item(char)
        return index


class CharComponent(Component):
    """CharacterEmbeddings, computed once per unique character-id sequence.

    flair quirks replicated (``CharacterEmbeddings._add_embeddings_internal``):

    * The BiLSTM output is read at position ``length - 1`` for *both* directions, so the backward
      half is the backward LSTM state after reading only the last character.  We run the same
      bidirectional ``char_rnn`` on a packed batch and read the same position.
    * The re-sort map ``d`` is ``d[j] = last i with chars[i] == sorted[j]`` (later matches overwrite
      earlier ones), where ``sorted`` is the *stable* sort of the sentence's tokens by length,
      descending.  Only the last occurrence of a repeated character sequence is written back;
      every earlier occurrence at position ``p`` keeps the embedding computed for ``sorted[p]``.
      "Repeated" means equal character-id lists, so words that only differ in unknown characters
      count as duplicates as well.

    Without autograd, encodings are cached per character sequence across calls; the cache is
    dropped whenever a char-encoder parameter is replaced or modified in place (version counter).
    """

    n_columns = 1

    def __init__(self, embedding: nn.Module, cache_encodings: bool = True) -> None:
        self.name = embedding.name
        self.length = embedding.embedding_length
        self.char_dictionary = embedding.char_dictionary
        self.char_embedding: nn.Embedding = embedding.char_embedding
        self.char_rnn: nn.Module = embedding.char_rnn
        self.cache_encodings = cache_encodings
        self._char_ids = _CharIds(embedding.char_dictionary)
        self.reset()

    def reset(self) -> None:
        self._tuple_ids: dict[tuple[int, ...], int] = {}
        self._store: list[int] = []  # concatenated char ids of all known character sequences
        self._offsets: list[int] = []
        self._lengths: list[int] = []
        self._np_cache: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._clear_encodings()

    def _clear_encodings(self) -> None:
        self._encodings: torch.Tensor | None = None  # [capacity, length], rows valid where _encoded
        self._encoded = np.zeros(0, dtype=bool)
        self._weights_key: tuple = ()

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

    def prepare(self, ctx: BatchContext, cols: slice, device: torch.device) -> dict[str, Any]:
        store, offsets, seq_lengths = self._arrays()
        cid = ctx.type_columns[ctx.type_ids, cols.start]
        src = self.source_sequences(cid, seq_lengths[cid], ctx.sentence_id)
        unique, inverse = np.unique(src, return_inverse=True)
        lens = seq_lengths[unique]
        steps = np.arange(int(lens.max()))
        mask = steps[None, :] < lens[:, None]
        chars = np.where(
            mask, store[np.where(mask, offsets[unique][:, None] + steps[None, :], 0)], 0
        )
        weight_device = self.char_embedding.weight.device
        return {
            "unique": unique,  # character-sequence ids (numpy), for the encoding cache
            "chars": torch.from_numpy(chars).to(weight_device),  # [U, width]
            "lengths": torch.from_numpy(lens),  # [U], CPU (for packing)
            "token_to_unique": torch.from_numpy(inverse.reshape(-1)).to(weight_device),  # [N]
            "source": src,  # [N] the character sequence each token is embedded from (numpy)
        }

    def encode(self, chars: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Char encoder: ``[U, width]`` ids + lengths -> ``[U, 2 * hidden]`` (output at
        ``length-1``)."""
        embedded = self.char_embedding(chars)
        packed = pack_padded_sequence(embedded, lengths, batch_first=True, enforce_sorted=False)
        output, _ = self.char_rnn(packed)
        padded, _ = pad_packed_sequence(output, batch_first=True)
        last = (lengths - 1).to(padded.device)
        return padded[torch.arange(padded.size(0), device=padded.device), last]

    def _cached_encode(self, inputs: dict[str, Any]) -> torch.Tensor:
        """``encode`` for the batch's unique sequences, computing only those not cached yet."""
        params = list(self.char_embedding.parameters()) + list(self.char_rnn.parameters())
        # inference tensors cannot be updated outside inference mode, and autocast changes the
        # precision of the encodings: both belong in the key next to the parameter versions
        device_type = params[0].device.type if params else "cpu"
        key = (
            torch.is_inference_mode_enabled(),
            torch.is_autocast_enabled(device_type),
            *((id(p), p._version) for p in params),
        )
        if key != self._weights_key:
            self._clear_encodings()
            self._weights_key = key
        unique: np.ndarray = inputs["unique"]
        n_known = len(self._offsets)
        if self._encoded.size < n_known:
            self._encoded = np.concatenate(
                [self._encoded, np.zeros(n_known - self._encoded.size, dtype=bool)]
            )
        missing = np.flatnonzero(~self._encoded[unique])
        if missing.size:
            rows = torch.from_numpy(missing)
            fresh = self.encode(
                inputs["chars"][rows.to(inputs["chars"].device)], inputs["lengths"][rows]
            )
            if self._encodings is None or self._encodings.size(0) < n_known:
                grown = fresh.new_zeros(max(2 * n_known, 1024), fresh.size(1))
                if self._encodings is not None:
                    grown[: self._encodings.size(0)] = self._encodings
                self._encodings = grown
            self._encodings[torch.from_numpy(unique[missing]).to(fresh.device)] = fresh
            self._encoded[unique[missing]] = True
        assert self._encodings is not None
        return self._encodings[torch.from_numpy(unique).to(self._encodings.device)]

    def forward(self, inputs: dict[str, Any], device: torch.device) -> torch.Tensor:
        if self.cache_encodings and not torch.is_grad_enabled():
            unique = self._cached_encode(inputs)
        else:
            unique = self.encode(inputs["chars"], inputs["lengths"])
        return unique[inputs["token_to_unique"]].to(device)


class FlairComponent(Component):
    """FlairEmbeddings (tokenized LM): the character LM over whole sentences of a batch.

    Replicates ``FlairEmbeddings._add_embeddings_internal`` + ``LanguageModel.get_representation``:
    text = tokens joined by one space (lower-cased if ``is_lower``; offsets still use the original
    lengths, as in flair), reversed for backward LMs, framed by the document delimiter and one
    space, right-padded with spaces; characters unknown to the LM dictionary map to 0.  A token is
    read at the whitespace after it (forward LM) or before it (backward LM), minus one without
    ``with_whitespace``.  An LSTM LM state depends only on the prefix, so padding and batch
    composition do not change it; sentences are grouped to bound the ``[chars, batch, hidden]``
    output memory.
    """

    n_columns = 1
    contextual = True

    def __init__(self, embedding: nn.Module, max_lm_floats: int = 32_000_000) -> None:
        self.name = embedding.name
        self.length = embedding.embedding_length
        self.embedding = embedding
        self.lm = embedding.lm
        self.is_forward = bool(embedding.is_forward_lm)
        self.with_whitespace = bool(embedding.with_whitespace)
        self.is_lower = bool(embedding.is_lower)
        self.fine_tune = bool(embedding.fine_tune)
        self.chars_per_chunk = int(embedding.chars_per_chunk)
        self.start_marker = (
            self.lm.document_delimiter if "document_delimiter" in self.lm.__dict__ else "\n"
        )
        self.end_marker = " "
        dictionary = self.lm.dictionary
        self.char_ids: defaultdict[str, int] = defaultdict(
            int, {key.decode("UTF-8"): value for key, value in dictionary.item2idx.items()}
        )
        self.padding_id = dictionary.get_idx_for_item(" ")
        out_size = (
            self.lm.nout if getattr(self.lm, "proj", None) is not None else self.lm.hidden_size
        )
        self.max_lm_floats = max_lm_floats
        self.hidden_out = int(out_size)

    def type_values(self, word: str) -> list[int]:
        return [len(word)]

    def prepare(self, ctx: BatchContext, cols: slice, device: torch.device) -> dict[str, Any]:
        token_len = ctx.type_columns[ctx.type_ids, cols.start]
        cum = np.cumsum(token_len)
        sentence_chars = np.add.reduceat(token_len, ctx.starts) if token_len.size else token_len
        cum_excl = cum - token_len - (cum - token_len)[ctx.starts][ctx.sentence_id]
        start_len = len(self.start_marker)
        if self.is_forward:
            offset = start_len + cum_excl + token_len + ctx.position
        else:
            text_len = sentence_chars + ctx.lengths - 1
            offset = text_len[ctx.sentence_id] + start_len - cum_excl - ctx.position
        if not self.with_whitespace:
            offset = offset - 1

        texts = [" ".join(words) for words in ctx.sentences]
        if self.is_lower:
            texts = [t.lower() for t in texts]
        if not self.is_forward:
            texts = [t[::-1] for t in texts]
        framed = [f"{self.start_marker}{t}{self.end_marker}" for t in texts]

        # group sentences (sorted by token count, so roughly by chars) to bound LM output memory
        groups: list[tuple[int, int]] = []
        begin = 0
        while begin < len(framed):
            end = begin + 1
            width = len(framed[begin])
            while end < len(framed):
                width = max(width, len(framed[end]))
                if width * (end + 1 - begin) * self.hidden_out > self.max_lm_floats:
                    break
                end += 1
            groups.append((begin, end))
            begin = end

        char_ids = self.char_ids
        lm_device = _module_device(self.lm, device)
        lm_inputs = []
        for begin, end in groups:
            width = max(len(s) for s in framed[begin:end])
            ids = np.full((width, end - begin), self.padding_id, dtype=np.int64)
            for column, text in enumerate(framed[begin:end]):
                ids[: len(text), column] = [char_ids[c] for c in text]
            lm_inputs.append(torch.from_numpy(ids).to(lm_device))
        return {
            "groups": groups,
            "lm_inputs": lm_inputs,
            "offset": torch.from_numpy(offset),
            "sentence_id": torch.from_numpy(ctx.sentence_id),
            "starts": ctx.starts,
        }

    def _run_lm(self, ids: torch.Tensor) -> torch.Tensor:
        hidden = self.lm.init_hidden(ids.size(1))
        parts = []
        for begin in range(0, ids.size(0), self.chars_per_chunk):
            out, hidden = self.lm.forward(
                ids[begin : begin + self.chars_per_chunk], hidden, decode=False
            )
            parts.append(out)
        return torch.cat(parts)

    def forward(self, inputs: dict[str, Any], device: torch.device) -> torch.Tensor:
        grad = (
            torch.enable_grad() if (self.fine_tune and torch.is_grad_enabled()) else torch.no_grad()
        )
        offset, sentence_id, starts = inputs["offset"], inputs["sentence_id"], inputs["starts"]
        pieces = []
        with grad:
            for (begin, end), ids in zip(inputs["groups"], inputs["lm_inputs"]):
                states = self._run_lm(ids)  # [width, group, hidden]
                lo = int(starts[begin])
                hi = int(starts[end]) if end < len(starts) else offset.numel()
                rows = offset[lo:hi].to(states.device)
                cols = (sentence_id[lo:hi] - begin).to(states.device)
                pieces.append(states[rows, cols])
        return torch.cat(pieces).to(device)
