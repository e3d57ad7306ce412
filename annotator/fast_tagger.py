"""Vectorised inference for flair ``SequenceTagger`` models.

flair's ``SequenceTagger.predict`` spends most of its time outside the main BiLSTM: one small
character-LSTM call per sentence, per-token embedding bookkeeping on ``Token`` objects, and a
Viterbi decode over a ``(batch, seq, tags, tags)`` tensor.  :class:`FastSequenceTagger` reuses the
tagger's own modules (so weights are shared, never copied) but

* looks every word *type* up once (word-embedding index, one-hot index, character ids) and caches it,
* runs the character encoder once per unique character sequence (cached across calls until the
  char-encoder weights change),
* works on a flat / packed token layout (no padding, no per-token tensors or ``Token`` objects),
* decodes CRF and softmax outputs on packed tensors, one vectorised step per time step,
* on the CPU, projects each distinct input row of a batch once (reprojection and the BiLSTM's
  input weights: most of its arithmetic), since without contextual embeddings a token's input
  depends only on its word type, then runs the recurrence step by step (:func:`lstm_direction`).

Predictions are identical to ``tagger.predict`` (scores up to float rounding) including flair's
quirks, which are replicated on purpose; see :class:`_CharComponent` and :func:`viterbi_decode_packed`.

The work is split so that a trainer can reuse it with gradients:
:meth:`FastSequenceTagger.prepare` (Python side: strings -> index tensors, :class:`PreparedBatch`)
and :meth:`FastSequenceTagger.forward_packed` (torch only: index tensors -> emissions).
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections import defaultdict
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

if TYPE_CHECKING:  # pragma: no cover - typing only
    from flair.models import SequenceTagger

__all__ = ["FastSequenceTagger", "PreparedBatch", "viterbi_decode_packed"]

SpanTuple = tuple[int, int, str, float]  # (first token, end token exclusive, label, score)

# tags that flair's get_spans_from_bio treats as "outside"
_OUTSIDE_SPAN_TAGS = frozenset({"", "O", "_"})
# tags that flair skips when it adds token-level (non-span) predictions
_OUTSIDE_TOKEN_TAGS = frozenset({"O", "_"})
_START_TAG = "<START>"
_DIGITS = re.compile(r"\d")
_STOP_TAG = "<STOP>"


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------
class _GrowableColumns:
    """An int64 matrix ``[n_rows, n_cols]`` that grows by amortised doubling (per-type lookup data)."""

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


def _leaf_embeddings(embeddings: nn.Module) -> list[nn.Module]:
    """Flattens (possibly nested) StackedEmbeddings into their leaf embeddings."""
    from flair.embeddings import StackedEmbeddings

    if type(embeddings) is StackedEmbeddings:
        return [leaf for sub in embeddings.embeddings for leaf in _leaf_embeddings(sub)]
    return [embeddings]


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Runs a block with every submodule in eval mode and restores the exact previous flags.

    flair's predict does not call ``eval()``; a tagger left in train mode would apply dropout there.
    We always predict deterministically (the meaningful behaviour) and leave the flags untouched.
    """
    if not any(m.training for m in module.modules()):
        yield
        return
    flags = [(m, m.training) for m in module.modules()]
    for m, _ in flags:
        m.training = False
    try:
        yield
    finally:
        for m, was_training in flags:
            m.training = was_training


def direction_weights(rnn: nn.LSTM, layer: int, suffix: str):
    """(W_ih, W_hh, b_ih + b_hh) of one LSTM layer and direction ('' or '_reverse')."""
    w_ih = getattr(rnn, f"weight_ih_l{layer}{suffix}")
    w_hh = getattr(rnn, f"weight_hh_l{layer}{suffix}")
    bias = getattr(rnn, f"bias_ih_l{layer}{suffix}") + getattr(rnn, f"bias_hh_l{layer}{suffix}") \
        if rnn.bias else None
    return w_ih, w_hh, bias


def lstm_direction(gx: torch.Tensor, w_hh: torch.Tensor, sizes: Sequence[int], reverse: bool) -> torch.Tensor:
    """One LSTM direction, without autograd, over packed input projections ``gx`` ``[N, 4H]``.

    The cell equations of ``torch.nn.LSTM`` (gate order i, f, g, o; zero initial state); the
    backward direction walks the steps last to first, sentences joining at their last token.
    Returns ``h`` ``[N, H]`` in the same packed order.
    """
    hidden = w_hh.size(1)
    out = gx.new_empty(gx.size(0), hidden)
    w = w_hh.t()
    gx_t, out_t = gx.split(list(sizes)), out.split(list(sizes))
    h: Optional[torch.Tensor] = None
    c: Optional[torch.Tensor] = None
    for t in (range(len(sizes) - 1, -1, -1) if reverse else range(len(sizes))):
        n = sizes[t]
        if h is None or c is None:
            gates = gx_t[t]
        elif h.size(0) >= n:
            gates, c = torch.addmm(gx_t[t], h[:n], w), c[:n]
        else:  # rows h.size(0).. start here from zero state
            gates = gx_t[t].clone()
            gates[: h.size(0)].addmm_(h, w)
            c = torch.cat([c, c.new_zeros(n - c.size(0), hidden)])
        i, f, _, o = torch.sigmoid(gates).chunk(4, 1)
        ig = i * torch.tanh(gates[:, 2 * hidden : 3 * hidden])
        c = ig if c is None else torch.addcmul(ig, f, c)
        h = torch.mul(o, torch.tanh(c), out=out_t[t])
    return out


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


# ----------------------------------------------------------------------------------------------
# prepared batch
# ----------------------------------------------------------------------------------------------
@dataclass
class PreparedBatch:
    """Index tensors for one batch of non-empty sentences, sorted by length (descending).

    Tokens exist in two orders: *flat* (sentence after sentence) and *packed* (time-major, the
    layout of ``PackedSequence.data``).  ``packed_to_flat[p]`` is the flat index of packed row ``p``
    and ``flat_to_packed`` its inverse.
    """

    lengths: list[int]
    batch_sizes: torch.Tensor  # int64, CPU (PackedSequence requirement)
    packed_to_flat: torch.Tensor  # int64, on device
    flat_to_packed: torch.Tensor  # int64, on device
    packed_sentence_index: torch.Tensor  # int64, on device: sentence of each packed row
    component_inputs: list[dict[str, Any]] = field(default_factory=list)
    # per token (flat order), a key equal for tokens whose embeddings are equal (same word type
    # and inputs); None where they are contextual or not all prepared here
    row_keys: Optional[np.ndarray] = None

    @property
    def num_tokens(self) -> int:
        return int(self.packed_to_flat.numel())


@dataclass
class _BatchContext:
    """Python/numpy-side view of a batch shared by the components' ``prepare``."""

    sentences: list[list[str]]
    lengths: np.ndarray  # [B]
    starts: np.ndarray  # [B] flat start of each sentence
    sentence_id: np.ndarray  # [N] flat -> sentence
    position: np.ndarray  # [N] flat -> position in sentence
    type_ids: np.ndarray  # [N] flat -> word type id
    type_columns: np.ndarray  # [n_types, n_cols]


# ----------------------------------------------------------------------------------------------
# embedding components (one per leaf embedding of the tagger)
# ----------------------------------------------------------------------------------------------
class _Component:
    """A leaf embedding: per-type lookups (Python), then a torch forward over flat tokens."""

    name: str
    length: int
    n_columns: int = 0  # how many integers type_values returns
    contextual = False  # True: a token's embedding depends on more than its own inputs

    def type_values(self, word: str) -> list[int]:
        """Integers cached per word type (stored in the shared type table)."""
        return []

    def prepare(self, ctx: _BatchContext, cols: slice, device: torch.device) -> dict[str, Any]:
        raise NotImplementedError

    def forward(self, inputs: dict[str, Any], device: torch.device) -> torch.Tensor:
        """Returns ``[num_tokens, length]`` embeddings in *flat* token order."""
        raise NotImplementedError


class _IndexComponent(_Component):
    """WordEmbeddings / OneHotEmbeddings: one vocabulary index per word type, then a lookup.

    The index function is flair's own (``get_cached_token_index`` with its word -> lower ->
    digits->'#' -> digits->'0' -> unk fallback, or ``Dictionary.get_idx_for_item`` for one-hot,
    which raises for unknown words when the dictionary has no ``<unk>``, exactly as flair does).
    """

    n_columns = 1

    def __init__(self, embedding: nn.Module, table: nn.Embedding, layer_norm: Optional[nn.Module], index_fn) -> None:
        self.name = embedding.name
        self.length = embedding.embedding_length
        self.table = table
        self.layer_norm = layer_norm
        self.index_fn = index_fn

    def type_values(self, word: str) -> list[int]:
        return [int(self.index_fn(word))]

    def prepare(self, ctx: _BatchContext, cols: slice, device: torch.device) -> dict[str, Any]:
        idx = ctx.type_columns[ctx.type_ids, cols.start]
        return {"index": torch.from_numpy(idx).to(self.table.weight.device)}

    def forward(self, inputs: dict[str, Any], device: torch.device) -> torch.Tensor:
        out = self.table(inputs["index"])
        if self.layer_norm is not None:
            out = self.layer_norm(out)
        return out.to(device)


class _SharedVectorComponent(_Component):
    """annotator's SharedVectorEmbeddings: a row per word type, dequantised by the embedding."""

    n_columns = 1

    def __init__(self, embedding: nn.Module) -> None:
        self.name = embedding.name
        self.length = embedding.embedding_length
        self.embedding = embedding

    def type_values(self, word: str) -> list[int]:
        return [self.embedding.row_of(word)]

    def prepare(self, ctx: _BatchContext, cols: slice, device: torch.device) -> dict[str, Any]:
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


class _CharComponent(_Component):
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
        self._np_cache: Optional[tuple[np.ndarray, np.ndarray, np.ndarray]] = None
        self._clear_encodings()

    def _clear_encodings(self) -> None:
        self._encodings: Optional[torch.Tensor] = None  # [capacity, length], rows valid where _encoded
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
    def source_sequences(cid: np.ndarray, lengths: np.ndarray, sentence_id: np.ndarray) -> np.ndarray:
        """Which character sequence flair actually uses for each token (the ``d`` re-sort quirk)."""
        n = cid.shape[0]
        flat = np.arange(n)
        # stable sort within each sentence by length, descending -> flat index of sorted rank
        by_length = np.lexsort((-lengths, sentence_id))
        # last occurrence of each (sentence, sequence)
        grouped = np.lexsort((flat, cid, sentence_id))
        is_last = np.ones(n, dtype=bool)
        same_as_next = (sentence_id[grouped[1:]] == sentence_id[grouped[:-1]]) & (cid[grouped[1:]] == cid[grouped[:-1]])
        is_last[grouped[:-1][same_as_next]] = False
        # flat index f = start(sentence) + position, and by_length[f] is that sentence's rank-`position` token
        return np.where(is_last, cid, cid[by_length])

    def prepare(self, ctx: _BatchContext, cols: slice, device: torch.device) -> dict[str, Any]:
        store, offsets, seq_lengths = self._arrays()
        cid = ctx.type_columns[ctx.type_ids, cols.start]
        src = self.source_sequences(cid, seq_lengths[cid], ctx.sentence_id)
        unique, inverse = np.unique(src, return_inverse=True)
        lens = seq_lengths[unique]
        steps = np.arange(int(lens.max()))
        mask = steps[None, :] < lens[:, None]
        chars = np.where(mask, store[np.where(mask, offsets[unique][:, None] + steps[None, :], 0)], 0)
        weight_device = self.char_embedding.weight.device
        return {
            "unique": unique,  # character-sequence ids (numpy), for the encoding cache
            "chars": torch.from_numpy(chars).to(weight_device),  # [U, width]
            "lengths": torch.from_numpy(lens),  # [U], CPU (for packing)
            "token_to_unique": torch.from_numpy(inverse.reshape(-1)).to(weight_device),  # [N]
            "source": src,  # [N] the character sequence each token is embedded from (numpy)
        }

    def encode(self, chars: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Char encoder: ``[U, width]`` ids + lengths -> ``[U, 2 * hidden]`` (output at ``length-1``)."""
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
            self._encoded = np.concatenate([self._encoded, np.zeros(n_known - self._encoded.size, dtype=bool)])
        missing = np.flatnonzero(~self._encoded[unique])
        if missing.size:
            rows = torch.from_numpy(missing)
            fresh = self.encode(inputs["chars"][rows.to(inputs["chars"].device)], inputs["lengths"][rows])
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


class _FlairComponent(_Component):
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
        self.start_marker = self.lm.document_delimiter if "document_delimiter" in self.lm.__dict__ else "\n"
        self.end_marker = " "
        dictionary = self.lm.dictionary
        self.char_ids: defaultdict[str, int] = defaultdict(
            int, {key.decode("UTF-8"): value for key, value in dictionary.item2idx.items()}
        )
        self.padding_id = dictionary.get_idx_for_item(" ")
        out_size = self.lm.nout if getattr(self.lm, "proj", None) is not None else self.lm.hidden_size
        self.max_lm_floats = max_lm_floats
        self.hidden_out = int(out_size)

    def type_values(self, word: str) -> list[int]:
        return [len(word)]

    def prepare(self, ctx: _BatchContext, cols: slice, device: torch.device) -> dict[str, Any]:
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
            out, hidden = self.lm.forward(ids[begin : begin + self.chars_per_chunk], hidden, decode=False)
            parts.append(out)
        return torch.cat(parts)

    def forward(self, inputs: dict[str, Any], device: torch.device) -> torch.Tensor:
        grad = torch.enable_grad() if (self.fine_tune and torch.is_grad_enabled()) else torch.no_grad()
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


# ----------------------------------------------------------------------------------------------
# decoding
# ----------------------------------------------------------------------------------------------
def viterbi_decode_packed(
    emissions: torch.Tensor,
    batch_sizes: torch.Tensor,
    transitions: torch.Tensor,
    start_index: int,
    stop_index: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Viterbi on packed emissions ``[N, K]``; returns packed ``(tags, confidences)``.

    Same arithmetic as flair's ``CRF.forward`` + ``ViterbiDecoder.decode``: the step score is
    ``(emission[to] + transitions[to, from]) + score[from]`` maxed over ``from``, the first step
    uses ``transitions[:, <START>]``, the end adds ``transitions[<STOP>, :]``, and the confidence
    of a token is ``max(softmax(viterbi_scores[t]))`` -- the softmax of the *accumulated* max
    scores at that step, not a marginal, and not necessarily of the decoded tag.
    """
    sizes = batch_sizes.tolist()
    n_steps = len(sizes)
    if n_steps == 0:
        return emissions.new_zeros(0, dtype=torch.long), emissions.new_zeros(0)
    offsets = [0]
    for s in sizes[:-1]:
        offsets.append(offsets[-1] + s)

    scores = torch.empty_like(emissions)
    backpointers: list[torch.Tensor] = [emissions.new_empty(0, dtype=torch.long)]
    n0 = sizes[0]
    scores[:n0] = emissions[:n0] + transitions[:, start_index].unsqueeze(0)
    for t in range(1, n_steps):
        o, n = offsets[t], sizes[t]
        step = emissions[o : o + n].unsqueeze(-1) + transitions.unsqueeze(0)  # [n, to, from]
        best, pointer = torch.max(step + scores[offsets[t - 1] : offsets[t - 1] + n].unsqueeze(1), dim=2)
        scores[o : o + n] = best
        backpointers.append(pointer)

    # best final tag per sentence (sentence b ends at step lengths[b] - 1)
    batch = n0
    sizes_t = torch.as_tensor(sizes)
    lengths = (sizes_t.unsqueeze(0) > torch.arange(batch).unsqueeze(1)).sum(1)
    offsets_t = torch.as_tensor(offsets)
    last_rows = (offsets_t[lengths - 1] + torch.arange(batch)).to(emissions.device)
    final = torch.max((scores[last_rows] + transitions[stop_index].unsqueeze(0)).unsqueeze(1), dim=2)[1].squeeze(1)

    tags = torch.empty(emissions.size(0), dtype=torch.long, device=emissions.device)
    current = final
    for t in reversed(range(n_steps)):
        o, n = offsets[t], sizes[t]
        n_next = sizes[t + 1] if t + 1 < n_steps else 0
        step_tags = final[:n].clone()
        if n_next:
            step_tags[:n_next] = backpointers[t + 1].gather(1, current[:n_next].unsqueeze(1)).squeeze(1)
        tags[o : o + n] = step_tags
        current = step_tags

    confidences = F.softmax(scores, dim=1).max(dim=1).values
    return tags, confidences


# ----------------------------------------------------------------------------------------------
# the engine
# ----------------------------------------------------------------------------------------------
class FastSequenceTagger:
    """Drop-in fast ``predict`` for a supported flair ``SequenceTagger`` (weights are shared).

    ``device``: where the computation runs (default: the tagger's device).  If it differs, the
    tagger is moved there with ``tagger.to(device)`` (flair keeps ``force_cpu`` word-embedding tables
    on the CPU; their lookups are transferred, as flair does).  ``max_tokens_per_batch`` bounds
    the tokens per forward pass.  ``autocast_dtype`` opts into ``torch.autocast`` for the forward
    (faster on GPU, but then predictions may differ slightly from flair's).
    """

    name = "fast"  # the engine's name in logs and output metadata

    def __init__(
        self,
        tagger: "SequenceTagger",
        device: Union[torch.device, str, None] = None,
        max_tokens_per_batch: int = 16384,
        autocast_dtype: Optional[torch.dtype] = None,
        max_cached_types: int = 2_000_000,
    ) -> None:
        reason = self.unsupported_reason(tagger)
        if reason is not None:
            raise ValueError(reason)
        self.tagger = tagger
        self.label_type: str = tagger.label_type
        if device is None:
            self.device = tagger.linear.weight.device
        else:
            self.device = torch.device(device)
            if tagger.linear.weight.device != self.device:
                tagger.to(self.device)
        self.max_tokens_per_batch = max(1, int(max_tokens_per_batch))
        self.autocast_dtype = autocast_dtype
        self.max_cached_types = max_cached_types

        names = tagger.embeddings.get_names()
        leaves = {leaf.name: leaf for leaf in _leaf_embeddings(tagger.embeddings)}
        # flair concatenates token embeddings in *sorted name* order (Token.get_each_embedding)
        self.components: list[_Component] = [self._make_component(leaves[name]) for name in sorted(names)]
        self._column_slices: list[slice] = []
        n_cols = 0
        for component in self.components:
            width = component.n_columns
            self._column_slices.append(slice(n_cols, n_cols + width))
            n_cols += width
        self._n_cols = n_cols
        self._reset_type_cache()
        rnn = getattr(tagger, "rnn", None) if tagger.use_rnn else None
        # on the CPU, inputs are projected once per distinct row (see _forward_distinct); cuDNN's
        # LSTM on a GPU is left to do its own projection
        self._distinct_rows: bool = (
            self.device.type == "cpu" and autocast_dtype is None and type(rnn) is nn.LSTM
            and not getattr(rnn, "proj_size", 0) and not any(c.contextual for c in self.components)
        )

        dictionary = tagger.label_dictionary
        self.tags: list[str] = dictionary.get_items()
        self.predict_spans: bool = bool(tagger.predict_spans)
        outside = _OUTSIDE_SPAN_TAGS if self.predict_spans else _OUTSIDE_TOKEN_TAGS
        self._is_outside = np.array([tag in outside for tag in self.tags], dtype=bool)
        self.use_crf: bool = bool(tagger.use_crf)
        if self.use_crf:
            self._start_index = dictionary.get_idx_for_item(_START_TAG)
            self._stop_index = dictionary.get_idx_for_item(_STOP_TAG)

    # ------------------------------------------------------------------ support
    @staticmethod
    def unsupported_reason(tagger: "SequenceTagger") -> Optional[str]:
        """Why this tagger cannot be run by the fast engine, or ``None`` if it can."""
        from flair.embeddings import (
            CharacterEmbeddings,
            FlairEmbeddings,
            OneHotEmbeddings,
            StackedEmbeddings,
            WordEmbeddings,
        )
        from flair.models import SequenceTagger

        from annotator.embeddings import SharedVectorEmbeddings

        if not isinstance(tagger, SequenceTagger):
            return f"not a flair SequenceTagger: {type(tagger).__name__}"
        if type(tagger).forward is not SequenceTagger.forward or type(tagger).predict is not SequenceTagger.predict:
            return f"{type(tagger).__name__} overrides forward/predict"
        if tagger.use_rnn and not isinstance(getattr(tagger, "rnn", None), (nn.LSTM, nn.GRU, nn.RNN)):
            return f"unsupported rnn module: {type(getattr(tagger, 'rnn', None)).__name__}"
        if tagger.use_crf:
            dictionary = tagger.label_dictionary
            if not (dictionary.has_item(_START_TAG) and dictionary.has_item(_STOP_TAG)):
                return "CRF tagger without <START>/<STOP> tags"
            if not hasattr(tagger, "crf"):
                return "use_crf is set but the tagger has no CRF module"

        embeddings = tagger.embeddings
        if type(embeddings) is not StackedEmbeddings and isinstance(embeddings, StackedEmbeddings):
            return f"unsupported StackedEmbeddings subclass {type(embeddings).__name__}"
        leaves = _leaf_embeddings(embeddings)
        for leaf in leaves:
            kind = type(leaf)
            if kind is WordEmbeddings:
                if leaf.field is not None:
                    return f"WordEmbeddings '{leaf.name}' embeds field '{leaf.field}' (only token text is supported)"
            elif kind is OneHotEmbeddings:
                if leaf.field != "text":
                    return f"OneHotEmbeddings '{leaf.name}' embeds field '{leaf.field}' (only 'text' is supported)"
            elif kind is CharacterEmbeddings:
                if not isinstance(leaf.char_rnn, nn.LSTM):
                    return f"CharacterEmbeddings '{leaf.name}' has a non-LSTM char_rnn"
            elif kind is FlairEmbeddings:
                if not leaf.tokenized_lm:
                    return f"FlairEmbeddings '{leaf.name}' with tokenized_lm=False is not supported"
            elif kind is not SharedVectorEmbeddings:
                return f"unsupported embedding type {kind.__name__} ('{getattr(leaf, 'name', '?')}')"
        leaf_names = [leaf.name for leaf in leaves]
        if len(set(leaf_names)) != len(leaf_names):
            return f"embeddings with duplicate names {leaf_names}"
        if sorted(leaf_names) != sorted(embeddings.get_names()):
            return f"embedding names {embeddings.get_names()} do not match the leaf embeddings {leaf_names}"
        if sum(leaf.embedding_length for leaf in leaves) != embeddings.embedding_length:
            return "embedding lengths do not add up"
        return None

    @staticmethod
    def _make_component(embedding: nn.Module) -> _Component:
        from flair.embeddings import CharacterEmbeddings, FlairEmbeddings, OneHotEmbeddings, WordEmbeddings

        kind = type(embedding)
        if kind is WordEmbeddings:
            return _IndexComponent(
                embedding, embedding.embedding, getattr(embedding, "layer_norm", None),
                functools.partial(word_index, embedding.vocab),
            )
        if kind is OneHotEmbeddings:
            return _IndexComponent(
                embedding,
                embedding.embedding_layer,
                getattr(embedding, "layer_norm", None),
                embedding.vocab_dictionary.get_idx_for_item,
            )
        if kind is CharacterEmbeddings:
            return _CharComponent(embedding)
        if kind is FlairEmbeddings:
            return _FlairComponent(embedding)
        if kind.__name__ == "SharedVectorEmbeddings":
            return _SharedVectorComponent(embedding)
        raise ValueError(f"unsupported embedding type {kind.__name__}")  # pragma: no cover

    # ------------------------------------------------------------------ type cache
    def _reset_type_cache(self) -> None:
        self._type_ids: dict[str, int] = {}
        self._type_columns = _GrowableColumns(self._n_cols)
        for component in self.components:
            if isinstance(component, _CharComponent):
                component.reset()

    def _lookup_types(self, words: list[str]) -> np.ndarray:
        """Word strings -> type ids; new types get their per-component indices computed once."""
        type_ids = self._type_ids
        ids = list(map(type_ids.get, words))
        if None in ids:
            for i, (word, tid) in enumerate(zip(words, ids)):
                if tid is None:
                    tid = type_ids.get(word)
                    if tid is None:
                        row: list[int] = []
                        for component in self.components:
                            row.extend(component.type_values(word))
                        tid = len(type_ids)
                        self._type_columns.append(row)
                        type_ids[word] = tid
                    ids[i] = tid
        return np.fromiter(ids, dtype=np.int64, count=len(ids))

    # ------------------------------------------------------------------ preparation (Python side)
    def prepare(self, sentences: Sequence[Sequence[str]], skip: Collection[int] = ()) -> PreparedBatch:
        """Builds index tensors for non-empty sentences that are already sorted by length, descending.

        ``skip``: indices into ``self.components`` whose inputs are not prepared (``None``); their
        embeddings must then be passed to :meth:`embed_flat` / :meth:`forward_packed` as ``given``.
        """
        lengths = np.fromiter((len(s) for s in sentences), dtype=np.int64, count=len(sentences))
        if lengths.size == 0 or lengths.min() == 0:
            raise ValueError("prepare() needs a non-empty list of non-empty sentences")
        if np.any(lengths[1:] > lengths[:-1]):
            raise ValueError("prepare() needs sentences sorted by length, descending")
        if len(self._type_ids) > self.max_cached_types:
            self._reset_type_cache()
        words = [w for s in sentences for w in s]
        type_ids = self._lookup_types(words)

        n_sentences, n_tokens, n_steps = lengths.size, int(lengths.sum()), int(lengths[0])
        starts = np.zeros(n_sentences, dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        sentence_id = np.repeat(np.arange(n_sentences), lengths)
        position = np.arange(n_tokens) - starts[sentence_id]
        # packed (time-major) layout: step t holds the first batch_sizes[t] sentences
        batch_sizes = (lengths[None, :] > np.arange(n_steps)[:, None]).sum(1)
        step_offsets = np.concatenate([[0], np.cumsum(batch_sizes)[:-1]])
        flat_to_packed = step_offsets[position] + sentence_id
        packed_to_flat = np.empty_like(flat_to_packed)
        packed_to_flat[flat_to_packed] = np.arange(n_tokens)

        ctx = _BatchContext(
            sentences=[list(s) for s in sentences],  # FlairEmbeddings joins them into texts
            lengths=lengths,
            starts=starts,
            sentence_id=sentence_id,
            position=position,
            type_ids=type_ids,
            type_columns=self._type_columns.array,
        )
        inputs = [
            None if index in skip else component.prepare(ctx, cols, self.device)
            for index, (component, cols) in enumerate(zip(self.components, self._column_slices))
        ]
        batch = PreparedBatch(
            lengths=lengths.tolist(),
            batch_sizes=torch.from_numpy(batch_sizes),
            packed_to_flat=torch.from_numpy(packed_to_flat).to(self.device),
            flat_to_packed=torch.from_numpy(flat_to_packed).to(self.device),
            packed_sentence_index=torch.from_numpy(sentence_id[packed_to_flat]).to(self.device),
            component_inputs=inputs,
        )
        if self._distinct_rows and not skip:
            # equal embeddings <=> equal word type and equal character source (flair's re-sort
            # quirk can give a token another word's characters)
            key = type_ids
            for component_inputs in inputs:
                if component_inputs is not None and "source" in component_inputs:
                    source = component_inputs["source"]
                    key = key * (int(source.max()) + 1) + source
            batch.row_keys = key
        return batch

    # ------------------------------------------------------------------ forward (torch side)
    def embed_flat(self, batch: PreparedBatch, given: Optional[dict[int, torch.Tensor]] = None) -> torch.Tensor:
        """Token embeddings ``[N, E]`` in flat order, concatenated in flair's (sorted-name) order.

        ``given`` maps component indices to their ``[N, length]`` flat embeddings computed elsewhere
        (e.g. a trainer's cache of frozen embeddings); those components are not run.
        """
        parts = [
            given[index].to(self.device) if given and index in given else component.forward(inputs, self.device)
            for index, (component, inputs) in enumerate(zip(self.components, batch.component_inputs))
        ]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def forward_packed(
        self,
        batch: PreparedBatch,
        given: Optional[dict[int, torch.Tensor]] = None,
        rnn: Optional[Callable[[torch.Tensor, PreparedBatch], torch.Tensor]] = None,
    ) -> torch.Tensor:
        """Emissions ``[N, num_tags]`` in packed order; mirrors ``SequenceTagger.forward``.

        Differentiable; dropouts apply only if the tagger is in train mode (flair's dropout /
        word dropout / locked dropout, with masks per token / per sentence as in flair).
        ``given``: precomputed flat embeddings of some components (see :meth:`embed_flat`);
        ``rnn``: computes ``tagger.rnn`` on packed data another way (a trainer's, same math).
        """
        tagger = self.tagger
        if batch.row_keys is not None and not given and rnn is None and not tagger.training:
            return self._forward_distinct(batch)
        x = self.embed_flat(batch, given)[batch.packed_to_flat]
        x = x.to(tagger.linear.weight.dtype)
        if tagger.training:
            x = self._train_dropouts(x, batch, word_level=True)
        if tagger.reproject_embeddings:
            x = tagger.embedding2nn(x)
        if tagger.use_rnn:
            x = rnn(x, batch) if rnn is not None else tagger.rnn(PackedSequence(x, batch.batch_sizes))[0].data
        if tagger.training:
            x = self._train_dropouts(x, batch, word_level=False)
        return tagger.linear(x)

    def _forward_distinct(self, batch: PreparedBatch) -> torch.Tensor:
        """``forward_packed`` at inference on the CPU, the first layer's input side per distinct row.

        Reprojection and the input weights of the BiLSTM's first layer (most of the model's
        arithmetic) see each distinct embedding row once, not once per token: a batch of news
        text has fewer than half as many distinct rows as tokens.  The recurrence then runs
        on the packed rows with the same equations as ``tagger.rnn``.
        """
        tagger = self.tagger
        _, first, group = np.unique(batch.row_keys, return_index=True, return_inverse=True)
        packed_to_distinct = torch.from_numpy(group.reshape(-1))[batch.packed_to_flat]
        x = self.embed_flat(batch)[torch.from_numpy(first)].to(tagger.linear.weight.dtype)
        if tagger.reproject_embeddings:
            x = tagger.embedding2nn(x)
        rnn = tagger.rnn
        sizes = batch.batch_sizes.tolist()
        for layer in range(rnn.num_layers):
            outputs = []
            for suffix in ("", "_reverse") if rnn.bidirectional else ("",):
                w_ih, w_hh, bias = direction_weights(rnn, layer, suffix)
                gx = F.linear(x, w_ih, bias)
                if layer == 0:
                    gx = torch.index_select(gx, 0, packed_to_distinct)
                outputs.append(lstm_direction(gx, w_hh, sizes, reverse=bool(suffix)))
            x = torch.cat(outputs, 1) if len(outputs) > 1 else outputs[0]
        return tagger.linear(x)

    def _train_dropouts(self, x: torch.Tensor, batch: PreparedBatch, word_level: bool) -> torch.Tensor:
        """flair's dropouts in packed layout (same distributions; only used when training)."""
        tagger = self.tagger
        if tagger.use_dropout:
            x = tagger.dropout(x)
        if word_level and tagger.use_word_dropout:
            keep = 1.0 - tagger.word_dropout.dropout_rate
            x = x * x.new_empty(x.size(0), 1).bernoulli_(keep)
        if tagger.use_locked_dropout:
            keep = 1.0 - tagger.locked_dropout.dropout_rate
            mask = x.new_empty(len(batch.lengths), x.size(1)).bernoulli_(keep) / keep
            x = x * mask[batch.packed_sentence_index]
        return x

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # ------------------------------------------------------------------ public API
    def _batches(
        self, sentences: Sequence[Sequence[str]]
    ) -> Iterator[tuple[list[int], list[list[str]], list[list[int]]]]:
        """Drops empty tokens (flair's Sentence does), sorts by length and cuts token-bounded batches.

        Yields (input indices, cleaned sentences, original token positions or [] if unchanged).
        """
        cleaned: list[tuple[int, list[str], list[int]]] = []
        for i, sentence in enumerate(sentences):
            words = list(sentence)
            if "" in words:
                positions = [p for p, w in enumerate(words) if w != ""]
                words = [words[p] for p in positions]
            else:
                positions = []
            if words:
                cleaned.append((i, words, positions))
        cleaned.sort(key=lambda item: len(item[1]), reverse=True)
        begin = 0
        while begin < len(cleaned):
            longest = len(cleaned[begin][1])
            count = max(1, self.max_tokens_per_batch // longest)
            chunk = cleaned[begin : begin + count]
            begin += count
            yield [c[0] for c in chunk], [c[1] for c in chunk], [c[2] for c in chunk]

    def emissions(self, sentences: Sequence[Sequence[str]]) -> torch.Tensor:
        """The forward pass alone: emissions ``[total_tokens, num_tags]``, tokens in input order.

        (Empty tokens are dropped like flair does; meant for benchmarking the decode-free ceiling.)
        """
        outputs: list[tuple[int, torch.Tensor]] = []
        with torch.inference_mode(), _eval_mode(self.tagger), self._autocast():
            for indices, batch_sentences, _ in self._batches(sentences):
                batch = self.prepare(batch_sentences)
                flat = self.forward_packed(batch)[batch.flat_to_packed]
                for index, piece in zip(indices, torch.split(flat, batch.lengths)):
                    outputs.append((index, piece))
        outputs.sort(key=lambda item: item[0])
        if not outputs:
            return torch.zeros(0, len(self.tags), device=self.device)
        return torch.cat([piece for _, piece in outputs])

    def predict(self, sentences: Sequence[Sequence[str]]) -> list[list[SpanTuple]]:
        """For each sentence (list of token strings), the spans ``(first, end_exclusive, label, score)``.

        Token-level taggers (no BIO/BIOES tag dictionary) return one ``(i, i + 1, tag, score)`` per
        token whose tag is not ``O``/``_``, as flair adds token labels for them.
        """
        results: list[list[SpanTuple]] = [[] for _ in sentences]
        with torch.inference_mode(), _eval_mode(self.tagger):
            for indices, batch_sentences, positions in self._batches(sentences):
                batch = self.prepare(batch_sentences)
                with self._autocast():
                    emissions = self.forward_packed(batch)
                tags, scores = self._decode(emissions.float(), batch)
                for index, spans, original in zip(indices, self._spans(tags, scores, batch.lengths), positions):
                    if original:
                        spans = [(original[a], original[b - 1] + 1, label, score) for a, b, label, score in spans]
                    results[index] = spans
        return results

    # ------------------------------------------------------------------ decoding
    def _decode(self, emissions: torch.Tensor, batch: PreparedBatch) -> tuple[np.ndarray, list[float]]:
        """Packed emissions -> (tag ids, confidences) in flat order, on the CPU."""
        if self.use_crf:
            tags, confidences = viterbi_decode_packed(
                emissions,
                batch.batch_sizes,
                self.tagger.crf.transitions.float(),
                self._start_index,
                self._stop_index,
            )
        else:
            confidences, tags = torch.max(F.softmax(emissions, dim=1), dim=1)
        order = batch.flat_to_packed
        return tags[order].cpu().numpy(), confidences[order].cpu().tolist()

    def _spans(self, tags: np.ndarray, scores: list[float], lengths: list[int]) -> list[list[SpanTuple]]:
        """Per-sentence spans; flair's ``get_spans_from_bio`` runs only on maximal non-O runs.

        Outside tags reset ``get_spans_from_bio``'s whole state, so decoding each run of inside tags
        separately is identical to decoding the full sentence, and the Python work scales with the
        number of entity tokens rather than all tokens.
        """
        from flair.data import get_spans_from_bio

        n_sentences = len(lengths)
        out: list[list[SpanTuple]] = [[] for _ in range(n_sentences)]
        inside = ~self._is_outside[tags]
        if not inside.any():
            return out
        starts = np.zeros(n_sentences, dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        is_start = np.zeros(inside.size, dtype=bool)
        is_start[starts] = True
        previous_inside = np.concatenate([[False], inside[:-1]]) & ~is_start
        run_starts = np.flatnonzero(inside & ~previous_inside)
        next_inside = np.concatenate([inside[1:], [False]])
        next_inside[starts[1:] - 1] = False
        run_ends = np.flatnonzero(inside & ~next_inside) + 1
        run_sentence = np.searchsorted(starts, run_starts, side="right") - 1
        tag_names = self.tags
        for begin, end, sentence in zip(run_starts.tolist(), run_ends.tolist(), run_sentence.tolist()):
            base = begin - int(starts[sentence])
            run_tags = [tag_names[t] for t in tags[begin:end].tolist()]
            run_scores = scores[begin:end]
            if self.predict_spans:
                for token_indices, score, label in get_spans_from_bio(run_tags, run_scores):
                    out[sentence].append((base + token_indices[0], base + token_indices[-1] + 1, label, score))
            else:
                for k, (tag, score) in enumerate(zip(run_tags, run_scores)):
                    out[sentence].append((base + k, base + k + 1, tag, score))
        return out
