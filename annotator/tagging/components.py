"""The fast engine's embedding components: one per leaf embedding of a Flair tagger.

Each looks a word *type* up once (vocabulary row, one-hot index, character ids) and caches it,
then computes its embeddings for a whole batch of flat tokens in one torch call. Flair's
quirks are replicated on purpose (see `CharComponent`), so that the engine's predictions equal
`SequenceTagger.predict`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from annotator.tagging.lookup import (
    BatchContext,
    CharSequences,
    IndexLookup,
    TypeLookup,
    VectorRowLookup,
    word_index,
)

__all__ = ["BatchContext", "word_index"]  # the fast engine imports them from here
#: a character-LM group of texts is padded to its longest by at most this share of its chars
PAD_SHARE = 0.25


def leaf_embeddings(embeddings: nn.Module) -> list[nn.Module]:
    """Flattens (possibly nested) StackedEmbeddings into their leaf embeddings."""
    from flair.embeddings import StackedEmbeddings

    if type(embeddings) is StackedEmbeddings:
        return [leaf for sub in embeddings.embeddings for leaf in leaf_embeddings(sub)]
    return [embeddings]


def _module_device(module: nn.Module, default: torch.device) -> torch.device:
    for p in module.parameters():
        return p.device
    return default


class Component(TypeLookup):
    """A leaf embedding: per-type lookups (Python), then a torch forward over flat tokens."""

    def prepare(self, ctx: BatchContext, cols: slice, device: torch.device) -> dict[str, Any]:
        raise NotImplementedError

    def forward(self, inputs: dict[str, Any], device: torch.device) -> torch.Tensor:
        """Returns ``[num_tokens, length]`` embeddings in *flat* token order."""
        raise NotImplementedError


class IndexComponent(IndexLookup, Component):
    """WordEmbeddings / OneHotEmbeddings: one vocabulary index per word type
    (`annotator.tagging.lookup.IndexLookup`), then a table lookup."""

    def __init__(
        self,
        name: str,
        length: int,
        table: nn.Embedding,
        layer_norm: nn.Module | None,
        index_fn: Callable[[str], int],
    ) -> None:
        super().__init__(name, length, index_fn)
        self.table = table
        self.layer_norm = layer_norm

    def prepare(self, ctx: BatchContext, cols: slice, device: torch.device) -> dict[str, Any]:
        idx = ctx.type_columns[ctx.type_ids, cols.start]
        return {"index": torch.from_numpy(idx).to(self.table.weight.device)}

    def forward(self, inputs: dict[str, Any], device: torch.device) -> torch.Tensor:
        out = self.table(inputs["index"])
        if self.layer_norm is not None:
            out = self.layer_norm(out)
        return out.to(device)


class SharedVectorComponent(VectorRowLookup, Component):
    """annotator's shared word vectors (`annotator.vectors.VectorLookup`): a row per word type,
    dequantised by the table."""

    def prepare(self, ctx: BatchContext, cols: slice, device: torch.device) -> dict[str, Any]:
        rows = ctx.type_columns[ctx.type_ids, cols.start]
        return {"rows": torch.from_numpy(rows).to(self.embedding.codes.device)}

    def forward(self, inputs: dict[str, Any], device: torch.device) -> torch.Tensor:
        return self.embedding.vectors_of(inputs["rows"]).to(device)


class CharComponent(CharSequences, Component):
    """CharacterEmbeddings, computed once per unique character-id sequence.

    flair quirks replicated (``CharacterEmbeddings._add_embeddings_internal``):

    * The BiLSTM output is read at position ``length - 1`` for *both* directions, so the backward
      half is the backward LSTM state after reading only the last character.  We run the same
      bidirectional ``char_rnn`` on a packed batch and read the same position.
    * The re-sort map (`annotator.tagging.lookup.CharSequences`): a token may be embedded from
      another word's characters.

    Without autograd, encodings are cached per character sequence across calls; the cache is
    dropped whenever a char-encoder parameter is replaced or modified in place (version counter).
    """

    def __init__(
        self,
        name: str,
        length: int,
        char_dictionary,
        char_embedding: nn.Embedding,
        char_rnn: nn.Module,
        cache_encodings: bool = True,
    ) -> None:
        """`char_dictionary`: anything with Flair's `Dictionary.get_idx_for_item`."""
        self.char_embedding = char_embedding
        self.char_rnn = char_rnn
        self.cache_encodings = cache_encodings
        super().__init__(name, length, char_dictionary)

    def reset(self) -> None:
        super().reset()
        self._clear_encodings()

    def _clear_encodings(self) -> None:
        self._encodings: torch.Tensor | None = None  # [capacity, length], rows valid where _encoded
        self._encoded = np.zeros(0, dtype=bool)
        self._weights_key: tuple = ()

    def prepare(self, ctx: BatchContext, cols: slice, device: torch.device) -> dict[str, Any]:
        src = self.sources(ctx, cols)
        unique, inverse = np.unique(src, return_inverse=True)
        chars, lens = self.padded(unique)
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
            # under autocast, torch's LSTM answers in bfloat16 or float32 by its input's layout
            self._encodings[torch.from_numpy(unique[missing]).to(fresh.device)] = fresh.to(
                self._encodings.dtype
            )
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
    """FlairEmbeddings (tokenized LM): a character language model over whole sentences.

    Replicates ``FlairEmbeddings._add_embeddings_internal`` + ``LanguageModel.get_representation``:
    text = tokens joined by one space (lower-cased if ``is_lower``; offsets still use the original
    lengths, as in flair), reversed for backward LMs, framed by the document delimiter and one
    space; characters unknown to the LM dictionary map to 0. A token is read at the whitespace
    after it (forward LM) or before it (backward LM), minus one without ``with_whitespace``.

    An LSTM LM's state depends only on the prefix, so padding after a text changes nothing: each
    distinct framed text runs once (archives repeat boilerplate), the texts sorted by character
    length and cut into groups of similar lengths (not padded to the batch's longest) that
    bound the ``[chars, texts, hidden]`` output; each group's states at the tokens' boundaries
    are read in one indexed read.
    """

    n_columns = 1
    contextual = True

    def __init__(
        self,
        name: str,
        length: int,
        lm: nn.Module,
        char_ids: dict[str, int],
        is_forward: bool,
        with_whitespace: bool = True,
        is_lower: bool = False,
        fine_tune: bool = False,
        document_delimiter: str = "\n",
        max_lm_floats: int = 32_000_000,
    ) -> None:
        """`lm`: a module with Flair's LanguageModel parts `encoder`, `rnn` and `proj` (or None);
        `char_ids`: character → id in its dictionary."""
        self.name = name
        self.length = length
        self.lm = lm
        self.char_ids: defaultdict[str, int] = defaultdict(int, char_ids)
        self.is_forward = is_forward
        self.with_whitespace = with_whitespace
        self.is_lower = is_lower
        self.fine_tune = fine_tune
        self.start_marker = document_delimiter
        self.end_marker = " "
        self.max_lm_floats = max_lm_floats
        proj = getattr(lm, "proj", None)
        self.hidden_out = int(proj.out_features if proj is not None else lm.rnn.hidden_size)

    @classmethod
    def of_flair(cls, embedding: nn.Module) -> FlairComponent:
        """The component of a Flair FlairEmbeddings (its LM's modules, shared)."""
        lm = embedding.lm
        return cls(
            embedding.name,
            embedding.embedding_length,
            lm,
            {key.decode("UTF-8"): value for key, value in lm.dictionary.item2idx.items()},
            bool(embedding.is_forward_lm),
            bool(embedding.with_whitespace),
            bool(embedding.is_lower),
            bool(embedding.fine_tune),
            lm.document_delimiter if "document_delimiter" in lm.__dict__ else "\n",
        )

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

        # each distinct framed text once, longest first
        distinct: dict[str, int] = {}
        text_of_sentence = np.empty(len(ctx.sentences), dtype=np.int64)
        for number, words in enumerate(ctx.sentences):
            text = " ".join(words)
            if self.is_lower:
                text = text.lower()
            if not self.is_forward:
                text = text[::-1]
            text_of_sentence[number] = distinct.setdefault(
                f"{self.start_marker}{text}{self.end_marker}", len(distinct)
            )
        texts = list(distinct)
        text_lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
        order = np.argsort(-text_lengths, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)

        # groups of consecutive texts (by length): their outputs fit the float budget, and
        # padding to a group's longest stays under PAD_SHARE of its characters
        groups: list[tuple[int, int]] = []
        begin, budget = 0, max(1, self.max_lm_floats // self.hidden_out)
        while begin < order.size:
            width = int(text_lengths[order[begin]])
            end, chars = begin + 1, width
            while end < order.size:
                longer = chars + int(text_lengths[order[end]])
                if width * (end + 1 - begin) > min(budget, (1 + PAD_SHARE) * longer):
                    break
                chars, end = longer, end + 1
            groups.append((begin, end))
            begin = end

        char_ids = self.char_ids
        padding = char_ids[" "]  # as Flair pads: with spaces, after the text
        lm_device = _module_device(self.lm, device)
        token_rank = rank[text_of_sentence[ctx.sentence_id]]
        runs = []
        for begin, end in groups:
            members = order[begin:end].tolist()
            ids = np.full((int(text_lengths[members[0]]), len(members)), padding, dtype=np.int64)
            for column, member in enumerate(members):
                ids[: len(texts[member]), column] = [char_ids[c] for c in texts[member]]
            tokens = np.flatnonzero((token_rank >= begin) & (token_rank < end))
            runs.append(
                {
                    "ids": torch.from_numpy(ids).to(lm_device),
                    "rows": torch.from_numpy(offset[tokens]).to(lm_device),
                    "columns": torch.from_numpy(token_rank[tokens] - begin).to(lm_device),
                    "tokens": torch.from_numpy(tokens).to(lm_device),
                }
            )
        return {"runs": runs, "n_tokens": int(token_len.size)}

    def states(self, ids: torch.Tensor) -> torch.Tensor:
        """The LM's outputs ``[chars, texts, hidden]`` for character ids ``[chars, texts]``
        (zero initial state, as Flair's `init_hidden`; dropout is off at inference). Padded,
        not packed: on the CPU, torch runs a padded LSTM in its fast (oneDNN) kernel, three
        times the speed of the packed one even with a quarter of padding."""
        lm = self.lm
        output = lm.rnn(lm.encoder(ids))[0]
        proj = getattr(lm, "proj", None)
        return proj(output) if proj is not None else output

    def forward(self, inputs: dict[str, Any], device: torch.device) -> torch.Tensor:
        grad = (
            torch.enable_grad() if (self.fine_tune and torch.is_grad_enabled()) else torch.no_grad()
        )
        out = None
        with grad:
            for run in inputs["runs"]:
                found = self.states(run["ids"])[run["rows"], run["columns"]]
                if out is None:
                    out = found.new_empty(inputs["n_tokens"], found.size(1))
                out = out.index_copy(0, run["tokens"], found.to(out.dtype))
        assert out is not None
        return out.to(device)
