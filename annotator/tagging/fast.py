"""Vectorised inference for flair ``SequenceTagger`` models.

flair's ``SequenceTagger.predict`` spends most of its time outside the main BiLSTM: one small
character-LSTM call per sentence, per-token embedding bookkeeping on ``Token`` objects, and a
Viterbi decode over a ``(batch, seq, tags, tags)`` tensor.  :class:`FastSequenceTagger` reuses the
tagger's own modules (so weights are shared, never copied) but

* looks every word *type* up once (word-embedding index, one-hot index, character ids) and caches
it,
* runs the character encoder once per unique character sequence (cached across calls until the
  char-encoder weights change),
* works on a flat / packed token layout (no padding, no per-token tensors or ``Token`` objects),
* decodes CRF and softmax outputs on packed tensors, one vectorised step per time step,
* on the CPU, projects each distinct input row of a batch once (reprojection and the BiLSTM's
  input weights: most of its arithmetic), since without contextual embeddings a token's input
  depends only on its word type, then runs the recurrence step by step (:func:`lstm_direction`).

Predictions are identical to ``tagger.predict`` (scores up to float rounding) including flair's
quirks, which are replicated on purpose; see `annotator.tagging.components.CharComponent` and
`annotator.tagging.crf.viterbi_decode_packed`.

The work is split so that a trainer can reuse it with gradients:
:meth:`FastSequenceTagger.prepare` (Python side: strings -> index tensors, :class:`PreparedBatch`)
and :meth:`FastSequenceTagger.forward_packed` (torch only: index tensors -> emissions).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from annotator.tagging.components import (
    BatchContext,
    CharComponent,
    Component,
    FlairComponent,
    IndexComponent,
    SharedVectorComponent,
    leaf_embeddings,
    word_index,
)
from annotator.tagging.crf import START_TAG, STOP_TAG
from annotator.tagging.decoding import PackedEngine
from annotator.tagging.lstm import lstm_packed
from annotator.tagging.packed import Packing, PreparedBatch, eval_mode

if TYPE_CHECKING:  # pragma: no cover - typing only
    from flair.models import SequenceTagger


class FastSequenceTagger(PackedEngine):
    """Drop-in fast ``predict`` for a supported flair ``SequenceTagger`` (weights are shared).

    ``device``: where the computation runs (default: the tagger's device).  If it differs, the
    tagger is moved there with ``tagger.to(device)`` (flair keeps ``force_cpu`` word-embedding
    tables
    on the CPU; their lookups are transferred, as flair does).  ``max_tokens_per_batch`` bounds
    the tokens per forward pass.  ``autocast_dtype`` (``--precision bf16``) runs the forward's
    matrix work under ``torch.autocast`` (faster where the hardware has bfloat16 units, but
    then predictions may differ slightly from flair's; an LSTM's recurrence on the CPU stays in
    float32, see `lstm_packed`).
    """

    name = "fast"  # the engine's name in logs and output metadata

    def __init__(
        self,
        tagger: SequenceTagger,
        device: torch.device | str | None = None,
        max_tokens_per_batch: int = 16384,
        autocast_dtype: torch.dtype | None = None,
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

        if getattr(tagger, "flat", False):  # a FlatTagger (annotator.tagging.export)
            self.components: list[Component] = list(tagger.components)
        else:
            names = tagger.embeddings.get_names()
            leaves = {leaf.name: leaf for leaf in leaf_embeddings(tagger.embeddings)}
            # flair concatenates token embeddings in *sorted name* order (Token.get_each_embedding)
            self.components = [self._make_component(leaves[name]) for name in sorted(names)]
        self._set_components()
        rnn = getattr(tagger, "rnn", None) if tagger.use_rnn else None
        # on the CPU, inference runs the LSTM step by step on packed rows (`_forward_cpu`), and
        # without contextual embeddings projects each distinct input row once; cuDNN's LSTM on
        # a GPU is left to do its own projection
        self._own_lstm: bool = (
            self.device.type == "cpu" and type(rnn) is nn.LSTM and not getattr(rnn, "proj_size", 0)
        )
        self._distinct_rows: bool = self._own_lstm and not any(
            c.contextual for c in self.components
        )

        self._set_tags(
            tagger.label_dictionary.get_items(), bool(tagger.predict_spans), bool(tagger.use_crf)
        )

    # ------------------------------------------------------------------ support
    @staticmethod
    def unsupported_reason(tagger: SequenceTagger) -> str | None:
        """Why this tagger cannot be run by the fast engine, or ``None`` if it can."""
        if getattr(tagger, "flat", False):
            return None  # built from an export only where every part is covered
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
        if (
            type(tagger).forward is not SequenceTagger.forward
            or type(tagger).predict is not SequenceTagger.predict
        ):
            return f"{type(tagger).__name__} overrides forward/predict"
        if tagger.use_rnn and not isinstance(
            getattr(tagger, "rnn", None), (nn.LSTM, nn.GRU, nn.RNN)
        ):
            return f"unsupported rnn module: {type(getattr(tagger, 'rnn', None)).__name__}"
        if tagger.use_crf:
            dictionary = tagger.label_dictionary
            if not (dictionary.has_item(START_TAG) and dictionary.has_item(STOP_TAG)):
                return "CRF tagger without <START>/<STOP> tags"
            if not hasattr(tagger, "crf"):
                return "use_crf is set but the tagger has no CRF module"

        embeddings = tagger.embeddings
        if type(embeddings) is not StackedEmbeddings and isinstance(embeddings, StackedEmbeddings):
            return f"unsupported StackedEmbeddings subclass {type(embeddings).__name__}"
        leaves = leaf_embeddings(embeddings)
        for leaf in leaves:
            kind = type(leaf)
            if kind is WordEmbeddings:
                if leaf.field is not None:
                    return (
                        f"WordEmbeddings '{leaf.name}' embeds field '{leaf.field}' "
                        "(only token text is supported)"
                    )
            elif kind is OneHotEmbeddings:
                if leaf.field != "text":
                    return (
                        f"OneHotEmbeddings '{leaf.name}' embeds field '{leaf.field}' "
                        "(only 'text' is supported)"
                    )
            elif kind is CharacterEmbeddings:
                if not isinstance(leaf.char_rnn, nn.LSTM):
                    return f"CharacterEmbeddings '{leaf.name}' has a non-LSTM char_rnn"
            elif kind is FlairEmbeddings:
                if not leaf.tokenized_lm:
                    return f"FlairEmbeddings '{leaf.name}' with tokenized_lm=False is not supported"
            elif kind is not SharedVectorEmbeddings:
                return (
                    f"unsupported embedding type {kind.__name__} ('{getattr(leaf, 'name', '?')}')"
                )
        leaf_names = [leaf.name for leaf in leaves]
        if len(set(leaf_names)) != len(leaf_names):
            return f"embeddings with duplicate names {leaf_names}"
        if sorted(leaf_names) != sorted(embeddings.get_names()):
            return (
                f"embedding names {embeddings.get_names()} do not match the leaf embeddings "
                f"{leaf_names}"
            )
        if sum(leaf.embedding_length for leaf in leaves) != embeddings.embedding_length:
            return "embedding lengths do not add up"
        return None

    @staticmethod
    def _make_component(embedding: nn.Module) -> Component:
        from flair.embeddings import (
            CharacterEmbeddings,
            FlairEmbeddings,
            OneHotEmbeddings,
            WordEmbeddings,
        )

        kind = type(embedding)
        name, length = embedding.name, embedding.embedding_length
        if kind is WordEmbeddings:
            return IndexComponent(
                name,
                length,
                embedding.embedding,
                getattr(embedding, "layer_norm", None),
                functools.partial(word_index, embedding.vocab),
            )
        if kind is OneHotEmbeddings:
            return IndexComponent(
                name,
                length,
                embedding.embedding_layer,
                getattr(embedding, "layer_norm", None),
                embedding.vocab_dictionary.get_idx_for_item,
            )
        if kind is CharacterEmbeddings:
            return CharComponent(
                name,
                length,
                embedding.char_dictionary,
                embedding.char_embedding,
                embedding.char_rnn,
            )
        if kind is FlairEmbeddings:
            return FlairComponent.of_flair(embedding)
        if kind.__name__ == "SharedVectorEmbeddings":
            return SharedVectorComponent(name, length, embedding)
        raise ValueError(f"unsupported embedding type {kind.__name__}")  # pragma: no cover

    # ------------------------------------------------------------------ preparation (Python side)
    def prepare(
        self, sentences: Sequence[Sequence[str]], skip: Collection[int] = ()
    ) -> PreparedBatch:
        """Builds index tensors for non-empty sentences that are already sorted by length,
        descending.

        ``skip``: indices into ``self.components`` whose inputs are not prepared (``None``); their
        embeddings must then be passed to :meth:`embed_flat` / :meth:`forward_packed` as ``given``.
        """
        lengths = np.fromiter((len(s) for s in sentences), dtype=np.int64, count=len(sentences))
        if lengths.size == 0 or lengths.min() == 0:
            raise ValueError("prepare() needs a non-empty list of non-empty sentences")
        if np.any(lengths[1:] > lengths[:-1]):
            raise ValueError("prepare() needs sentences sorted by length, descending")
        words = [w for s in sentences for w in s]
        type_ids = self._lookup_types(words)

        n_sentences, n_tokens = lengths.size, int(lengths.sum())
        starts = np.zeros(n_sentences, dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        sentence_id = np.repeat(np.arange(n_sentences), lengths)
        position = np.arange(n_tokens) - starts[sentence_id]
        packing = Packing.of(lengths)

        ctx = BatchContext(
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
            batch_sizes=torch.from_numpy(packing.sizes),
            packed_to_flat=torch.from_numpy(packing.packed_to_flat).to(self.device),
            flat_to_packed=torch.from_numpy(packing.flat_to_packed).to(self.device),
            packed_sentence_index=torch.from_numpy(packing.sentence).to(self.device),
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
    def embed_flat(
        self, batch: PreparedBatch, given: dict[int, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Token embeddings ``[N, E]`` in flat order, concatenated in flair's (sorted-name) order.

        ``given`` maps component indices to their ``[N, length]`` flat embeddings computed elsewhere
        (e.g. a trainer's cache of frozen embeddings); those components are not run.
        """
        parts = [
            given[index].to(self.device)
            if given and index in given
            else component.forward(inputs, self.device)
            for index, (component, inputs) in enumerate(
                zip(self.components, batch.component_inputs)
            )
        ]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def forward_packed(
        self,
        batch: PreparedBatch,
        given: dict[int, torch.Tensor] | None = None,
        rnn: Callable[[torch.Tensor, PreparedBatch], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Emissions ``[N, num_tags]`` in packed order; mirrors ``SequenceTagger.forward``.

        Differentiable; dropouts apply only if the tagger is in train mode (flair's dropout /
        word dropout / locked dropout, with masks per token / per sentence as in flair).
        ``given``: precomputed flat embeddings of some components (see :meth:`embed_flat`);
        ``rnn``: computes ``tagger.rnn`` on packed data another way (a trainer's, same math).
        """
        tagger = self.tagger
        if self._own_lstm and not given and rnn is None and not tagger.training:
            return self._forward_cpu(batch)
        x = self.embed_flat(batch, given)[batch.packed_to_flat]
        x = x.to(tagger.linear.weight.dtype)
        if tagger.training:
            x = self._train_dropouts(x, batch, word_level=True)
        if tagger.reproject_embeddings:
            x = tagger.embedding2nn(x)
        if tagger.use_rnn:
            x = (
                rnn(x, batch)
                if rnn is not None
                else tagger.rnn(PackedSequence(x, batch.batch_sizes))[0].data
            )
        if tagger.training:
            x = self._train_dropouts(x, batch, word_level=False)
        return tagger.linear(x)

    def _forward_cpu(self, batch: PreparedBatch) -> torch.Tensor:
        """``forward_packed`` at inference on the CPU: the LSTM step by step on packed rows
        (`lstm_packed`, whose recurrence stays in float32 under bf16), and with `row_keys`, the
        first layer's input side per distinct row.

        Reprojection and the input weights of the BiLSTM's first layer (most of the model's
        arithmetic without contextual embeddings) then see each distinct embedding row once,
        not once per token: a batch of news text has fewer than half as many distinct rows as
        tokens.
        """
        tagger = self.tagger
        if batch.row_keys is not None:
            _, first, group = np.unique(batch.row_keys, return_index=True, return_inverse=True)
            rows = torch.from_numpy(group.reshape(-1))[batch.packed_to_flat]
            x = self.embed_flat(batch)[torch.from_numpy(first)]
        else:
            rows = None
            x = self.embed_flat(batch)[batch.packed_to_flat]
        x = x.to(tagger.linear.weight.dtype)
        if tagger.reproject_embeddings:
            x = tagger.embedding2nn(x)
        x = lstm_packed(tagger.rnn, x, batch.batch_sizes.tolist(), rows=rows, exact_state=True)
        return tagger.linear(x)

    def _train_dropouts(
        self, x: torch.Tensor, batch: PreparedBatch, word_level: bool
    ) -> torch.Tensor:
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

    # ------------------------------------------------------------------ PackedEngine's hooks
    def _predicting(self) -> contextlib.AbstractContextManager:
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(eval_mode(self.tagger))
        return stack

    def _emissions(self, sentences: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        batch = self.prepare(sentences)
        with self._autocast():
            emissions = self.forward_packed(batch)
        return emissions.float().cpu().numpy(), batch.flat_to_packed.cpu().numpy()

    def _transitions(self) -> np.ndarray:
        return self.tagger.crf.transitions.detach().float().cpu().numpy()

    # ------------------------------------------------------------------ public API
    def emissions(self, sentences: Sequence[Sequence[str]]) -> torch.Tensor:
        """The forward pass alone: emissions ``[total_tokens, num_tags]``, tokens in input order.

        (Empty tokens are dropped like flair does; meant for benchmarking the decode-free ceiling.)
        """
        outputs: list[tuple[int, torch.Tensor]] = []
        with torch.inference_mode(), eval_mode(self.tagger), self._autocast():
            for indices, batch_sentences, _ in self.batches(sentences):
                batch = self.prepare(batch_sentences)
                flat = self.forward_packed(batch).float()[batch.flat_to_packed]
                for index, piece in zip(indices, torch.split(flat, batch.lengths)):
                    outputs.append((index, piece))
        outputs.sort(key=lambda item: item[0])
        if not outputs:
            return torch.zeros(0, len(self.tags), device=self.device)
        return torch.cat([piece for _, piece in outputs])

    def decode(
        self, emissions: torch.Tensor, batch: PreparedBatch
    ) -> tuple[np.ndarray, list[float]]:
        """Packed emissions -> (tag ids, confidences) in flat order, on the CPU."""
        return self.decode_packed(
            emissions.detach().float().cpu().numpy(),
            batch.lengths,
            batch.flat_to_packed.cpu().numpy(),
        )
