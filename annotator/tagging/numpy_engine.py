"""The numpy engine: an exported model's inference in numpy, without importing torch.

`import torch` takes longer than all the rest of a short `annotate` job, so for one short
document on the CPU it is most of the wait. This engine runs the exports that hold no
character language model -- word, one-hot and shared-vector embeddings, the character BiLSTM,
reprojection, an LSTM, the linear layer and the CRF -- from the safetensors file read as
numpy arrays (`safetensors.numpy`). Batching, word-type lookups, CRF decoding, spans and span
scores are the torch fast engine's own code (`annotator.tagging.decoding`); the arithmetic
here is the same in float32, so its spans are the fast engine's and its scores agree to
float rounding. Each distinct embedding row of a batch (word type and character source) is
embedded, reprojected and projected by the LSTM's input weights once, as the fast engine does
on the CPU.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from annotator.tagging.decoding import PackedEngine
from annotator.tagging.export_header import (
    FORMAT_VERSION,
    ExportError,
    leaf_descriptions,
    predicts_spans,
    read_description,
    tagger_model,
    vocabulary_of,
)
from annotator.tagging.lookup import (
    BatchContext,
    CharSequences,
    IndexLookup,
    VectorRowLookup,
    word_index,
)
from annotator.tagging.packed import Packing
from annotator.vectors import VectorLookup

#: tokens per batch, as the fast engine's on a CPU (`annotator.tagging.engines`)
TOKENS_PER_BATCH = 8192


class LSTMDirection:
    """One LSTM direction's weights, laid out for `run`: PyTorch's gates (i, f, g, o) reordered
    to (i, f, o, g), the rows of i, f and o halved, so that one tanh over all gates gives
    tanh(g) and, through sigmoid(x) = (1 + tanh(x / 2)) / 2, the three sigmoids."""

    def __init__(self, arrays: dict[str, np.ndarray], prefix: str, suffix: str) -> None:
        w_ih, w_hh = arrays[f"{prefix}weight_ih_l{suffix}"], arrays[f"{prefix}weight_hh_l{suffix}"]
        bias = arrays.get(f"{prefix}bias_ih_l{suffix}")
        if bias is not None:
            bias = bias + arrays[f"{prefix}bias_hh_l{suffix}"]
        else:
            bias = np.zeros(w_ih.shape[0], dtype=np.float32)
        hidden = w_hh.shape[1]
        i, f, g, o = (slice(k * hidden, (k + 1) * hidden) for k in range(4))
        scale = np.concatenate([np.full(3 * hidden, 0.5, np.float32), np.ones(hidden, np.float32)])

        def reordered(values: np.ndarray) -> np.ndarray:
            joined = np.concatenate([values[i], values[f], values[o], values[g]])
            return joined * (scale[:, None] if joined.ndim == 2 else scale)

        self.hidden = hidden
        self.w_ih = np.ascontiguousarray(reordered(w_ih).T)  # [in, 4H]
        self.bias = reordered(bias)
        self.w_hh = np.ascontiguousarray(reordered(w_hh).T)  # [H, 4H]

    def run(self, gx: np.ndarray, sizes: list[int], reverse: bool) -> np.ndarray:
        """``h`` ``[N, H]`` over packed input projections ``gx`` ``[N, 4H]`` (changed in
        place), zero initial state; the reverse direction takes the steps last to first, where
        rows joining at a step start from zero state."""
        hidden = self.hidden
        out = np.empty((gx.shape[0], hidden), dtype=np.float32)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).tolist()
        steps = range(len(sizes) - 1, -1, -1) if reverse else range(len(sizes))
        h = cell = None
        for t in steps:
            o, n = offsets[t], sizes[t]
            gates = gx[o : o + n]
            m = 0 if h is None else min(n, h.shape[0])
            if m:
                gates[:m] += h[:m] @ self.w_hh
            np.tanh(gates, out=gates)
            sigmoids = gates[:, : 3 * hidden]
            sigmoids *= 0.5
            sigmoids += 0.5
            fresh = gates[:, :hidden] * gates[:, 3 * hidden :]
            if m:
                fresh[:m] += gates[:m, hidden : 2 * hidden] * cell[:m]
            h = out[o : o + n]
            np.multiply(gates[:, 2 * hidden : 3 * hidden], np.tanh(fresh), out=h)
            cell = fresh
        return out


class _Table(IndexLookup):
    """WordEmbeddings / OneHotEmbeddings: a row of the table per word type."""

    def __init__(self, name: str, length: int, table: np.ndarray, index_fn) -> None:
        super().__init__(name, length, index_fn)
        self.table = table

    def embed(self, values: np.ndarray, sources: np.ndarray | None) -> np.ndarray:
        return self.table[values]


class _Vectors(VectorLookup):
    """The shared-vector buffers as numpy arrays (`annotator.vectors.VectorLookup` reads them)."""

    def __init__(self, arrays: dict[str, np.ndarray], prefix: str) -> None:
        self.codes, self.scales = arrays[f"{prefix}codes"], arrays[f"{prefix}scales"]
        self.word_bytes, self.word_rows = (
            arrays[f"{prefix}word_bytes"],
            arrays[f"{prefix}word_rows"],
        )
        self._index = None


class _VectorRows(VectorRowLookup):
    def embed(self, values: np.ndarray, sources: np.ndarray | None) -> np.ndarray:
        return self.embedding.vectors_of(values)


class _Chars(CharSequences):
    """CharacterEmbeddings: the character BiLSTM per distinct character sequence, cached
    across batches; read as Flair reads it, at the last character for both directions (the
    backward half has seen that character alone)."""

    def __init__(self, name: str, length: int, dictionary, arrays: dict, prefix: str) -> None:
        self.chars = arrays[f"{prefix}char_embedding.weight"]
        self.forward_lstm = LSTMDirection(arrays, f"{prefix}char_rnn.", "0")
        self.backward_lstm = LSTMDirection(arrays, f"{prefix}char_rnn.", "0_reverse")
        super().__init__(name, length, dictionary)

    def reset(self) -> None:
        super().reset()
        self._encodings = np.zeros((1024, self.length), dtype=np.float32)  # rows: capacity
        self._encoded = 0

    def embed(self, values: np.ndarray, sources: np.ndarray | None) -> np.ndarray:
        assert sources is not None
        known, wanted = self._encoded, self.n_sequences
        if wanted > known:
            if wanted > self._encodings.shape[0]:  # grown by doubling: copied O(log n) times
                grown = np.zeros((2 * wanted, self.length), dtype=np.float32)
                grown[:known] = self._encodings[:known]
                self._encodings = grown
            self._encodings[known:wanted] = self._encode(np.arange(known, wanted))
            self._encoded = wanted
        return self._encodings[sources]

    def _encode(self, sequences: np.ndarray) -> np.ndarray:
        ids, lengths = self.padded(sequences)
        order = np.argsort(-lengths, kind="stable")
        packing = Packing.of(lengths[order])
        embedded = self.chars[ids[order[packing.sentence], packing.step]]
        sizes = packing.sizes.tolist()
        lstm = self.forward_lstm
        states = lstm.run(embedded @ lstm.w_ih + lstm.bias, sizes, reverse=False)
        lstm = self.backward_lstm
        last = embedded[packing.last_rows]
        backward = lstm.run(last @ lstm.w_ih + lstm.bias, [len(sequences)], reverse=True)
        encoded = np.empty((len(sequences), self.length), dtype=np.float32)
        encoded[order] = np.concatenate([states[packing.last_rows], backward], 1)
        return encoded


def _leaf(params: dict[str, Any], prefix: str, arrays: dict[str, np.ndarray]):
    kind = params.get("__cls__")
    if params.get("stable") and f"{prefix}layer_norm.weight" in arrays:
        raise ExportError(f"the numpy engine does not run layer-normed {kind}")
    if kind == "WordEmbeddings" and params.get("field") is None:
        vocab = params["vocab"]
        return _Table(
            params["name"],
            params["embedding_length"],
            arrays[f"{prefix}embedding.weight"],
            lambda word: word_index(vocab, word),
        )
    if kind == "OneHotEmbeddings" and params.get("field", "text") == "text":
        vocabulary = vocabulary_of(params["vocab_dictionary"])
        return _Table(
            params.get("name") or "one-hot-text",
            params["embedding_length"],
            arrays[f"{prefix}embedding_layer.weight"],
            vocabulary.get_idx_for_item,
        )
    if kind == "CharacterEmbeddings":
        dictionary = vocabulary_of(params["path_to_char_dict"])
        return _Chars(params["name"], 2 * params["hidden_size_char"], dictionary, arrays, prefix)
    if kind == "SharedVectorEmbeddings":
        return _VectorRows(params["name"], params["size"][1], _Vectors(arrays, prefix))
    raise ExportError(f"the numpy engine does not run {kind} embeddings")


class NumpyTagger(PackedEngine):
    """An export's tagger and its engine in one (`annotator.tagging.engines.make_engine`
    gives it its span scorer). Floating-point weights become float32, as Flair loads them.
    ExportError where the export holds what this engine does not run."""

    name = "numpy"

    def __init__(
        self,
        description: dict[str, Any],
        arrays: dict[str, np.ndarray],
        max_tokens_per_batch: int = TOKENS_PER_BATCH,
        max_cached_types: int = 2_000_000,
    ) -> None:
        model = tagger_model(description)
        if model.get("use_rnn") and model.get("rnn_type", "LSTM") != "LSTM":
            raise ExportError(f"RNN type {model.get('rnn_type')}")
        arrays = {
            name: array.astype(np.float32) if array.dtype.kind == "f" else array
            for name, array in arrays.items()
        }
        self.max_tokens_per_batch = max_tokens_per_batch
        self.max_cached_types = max_cached_types
        self.label_dictionary = vocabulary_of(model["tag_dictionary"])
        self.tag_type = self.label_type = model["tag_type"]
        self.model_card = model.get("model_card")
        tags = self.label_dictionary.get_items()
        self._set_tags(tags, predicts_spans(tags), bool(model["use_crf"]))
        if self.use_crf:
            self.crf = SimpleNamespace(transitions=arrays["crf.transitions"])

        leaves = leaf_descriptions(model)
        # Flair concatenates token embeddings in sorted name order
        self.components = sorted(
            (_leaf(params, prefix, arrays) for params, prefix in leaves), key=lambda c: c.name
        )
        if len({c.name for c in self.components}) != len(self.components):
            raise ExportError("embeddings with duplicate names")
        self._set_components()
        self.reproject = None
        if "embedding2nn.weight" in arrays:
            self.reproject = (arrays["embedding2nn.weight"].T.copy(), arrays["embedding2nn.bias"])
        # per layer: its directions, and their input weights and biases side by side
        self.layers: list[tuple[list[LSTMDirection], np.ndarray, np.ndarray]] = []
        if model.get("use_rnn"):
            suffixes = ["", "_reverse"] if "rnn.weight_ih_l0_reverse" in arrays else [""]
            for layer in range(int(model["rnn_layers"])):
                directions = [
                    LSTMDirection(arrays, "rnn.", f"{layer}{suffix}") for suffix in suffixes
                ]
                self.layers.append(
                    (
                        directions,
                        np.concatenate([d.w_ih for d in directions], 1),
                        np.concatenate([d.bias for d in directions]),
                    )
                )
        self.linear = (arrays["linear.weight"].T.copy(), arrays["linear.bias"])

    def _transitions(self) -> np.ndarray:
        return self.crf.transitions

    def _emissions(self, sentences: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        lengths = np.fromiter(map(len, sentences), dtype=np.int64, count=len(sentences))
        type_ids = self._lookup_types([word for sentence in sentences for word in sentence])
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        sentence_id = np.repeat(np.arange(lengths.size), lengths)
        columns = self._type_columns.array
        ctx = BatchContext(sentences, lengths, starts, sentence_id, None, type_ids, columns)
        # a token's embedding depends on its word type and the characters it is embedded from
        # (Flair's re-sort quirk can give it another word's): each distinct pair is one row
        key, sources = type_ids, {}
        for index, (component, cols) in enumerate(zip(self.components, self._column_slices)):
            if isinstance(component, CharSequences):
                sources[index] = component.sources(ctx, cols)
                key = key * (int(sources[index].max()) + 1) + sources[index]
        _, first, group = np.unique(key, return_index=True, return_inverse=True)
        parts = []
        for index, (component, cols) in enumerate(zip(self.components, self._column_slices)):
            source = sources[index][first] if index in sources else None
            parts.append(component.embed(columns[type_ids[first], cols.start], source))
        x = np.concatenate(parts, 1) if len(parts) > 1 else parts[0]
        if self.reproject is not None:
            x = x @ self.reproject[0] + self.reproject[1]
        packing = Packing.of(lengths)
        rows = group.reshape(-1)[packing.packed_to_flat]
        sizes = packing.sizes.tolist()
        for number, (directions, weights, bias) in enumerate(self.layers):
            gx = x @ weights + bias
            if number == 0:
                gx = gx[rows]
            width = gx.shape[1] // len(directions)
            x = np.concatenate(
                [
                    d.run(gx[:, k * width : (k + 1) * width], sizes, reverse=k == 1)
                    for k, d in enumerate(directions)
                ],
                1,
            )
        if not self.layers:
            x = x[rows]
        return x @ self.linear[0] + self.linear[1], packing.flat_to_packed


def numpy_tagger(path: str | Path, **options: Any) -> NumpyTagger:
    """The export at `path` as a NumpyTagger (ExportError: not an export, or not covered)."""
    from safetensors.numpy import load_file

    description = read_description(path)
    if description is None or description.get("version") != FORMAT_VERSION:
        raise ExportError(f"{path}: not a model exported by annotator (format {FORMAT_VERSION})")
    return NumpyTagger(description, load_file(str(path)), **options)
