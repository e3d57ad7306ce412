"""Fast training: the same Flair ``SequenceTagger``, trained through vectorised batches.

Flair's ``ModelTrainer`` spends most of an epoch in per-sentence and per-token Python: the
character encoder runs once per sentence, every token gets its embeddings attached and cleared,
and the CRF loss is built from Python lists.  :class:`FastTrainer` trains the *same modules*
with the *same mathematics* and keeps only the Python that is needed once per batch:

* each split is turned into strings and tag ids once; a batch becomes index tensors with
  :meth:`FastSequenceTagger.prepare` (word-type cache, the character encoder over the unique
  words of the batch at once, packed layout, Flair's char-duplicate quirk included);
* the forward pass is :meth:`FastSequenceTagger.forward_packed` in train mode, which applies
  the tagger's dropout / word dropout / locked dropout with Flair's distributions; on the CPU the
  BiLSTM and the character encoder run through :class:`_LSTMDirection`, the same LSTM equations
  without the per-step slicing that makes torch's CPU LSTM backward quadratic in the batch length
  (on a GPU, cuDNN's packed LSTM is used as is);
* the CRF loss (:func:`crf_loss_packed`) is Flair's ``ViterbiLoss`` -- the forward algorithm
  minus the gold path score, summed over the batch -- vectorised over packed emissions;
* frozen language-model embeddings (``FlairEmbeddings`` that are not fine-tuned) are computed
  once per sentence and cached, as Flair's ``embeddings_storage_mode="cpu"`` does;
* dev evaluation decodes with :func:`viterbi_decode_packed` (the predictions of
  ``tagger.predict``) and scores spans exactly as Flair's ``evaluate`` does (micro P/R/F1 over
  exact span + type matches, and the dev loss that breaks annealing ties).

Training semantics follow ``ModelTrainer.train`` (flair/trainers/trainer.py, ``train_custom``):
plain SGD over ``tagger.parameters()``, mini-batches of ``batch_size`` sentences, the summed
(not averaged) loss back-propagated, ``clip_grad_norm_(…, 5.0)``, a train loss reported per token,
``AnnealOnPlateau`` on dev micro-F1 (``annotator.training.RunBook`` owns it for both trainers),
and Ctrl-C stops after saving ``final-model.pt``.  The model is an ordinary ``SequenceTagger``
saved with ``tagger.save``.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch

from annotator.fast_tagger import (
    FastSequenceTagger,
    PreparedBatch,
    _CharComponent,
    _eval_mode,
    _FlairComponent,
    direction_weights,
)
from annotator.training import DevScores

if TYPE_CHECKING:  # pragma: no cover
    from flair.models import SequenceTagger

    from annotator.training import RunBook, TrainConfig  # noqa: F401

log = logging.getLogger("annotator")

MAX_GRAD_NORM = 5.0  # ModelTrainer.train_custom's default max_grad_norm
BATCHINGS = ("shuffle", "bucket")


# ----------------------------------------------------------------------------------------------
# support
# ----------------------------------------------------------------------------------------------
def unsupported_reason(tagger: "SequenceTagger", config: Optional["TrainConfig"] = None) -> Optional[str]:
    """Why the fast trainer cannot train this tagger (then Flair's trainer does), or None."""
    if config is not None and config.preset == "transformer":
        return "the transformer preset fine-tunes a transformer encoder"
    return FastSequenceTagger.unsupported_reason(tagger)


# ----------------------------------------------------------------------------------------------
# packed layout and the CRF loss
# ----------------------------------------------------------------------------------------------
@dataclass
class _Layout:
    """Where each sentence's tokens sit in the packed (time-major) order, for the loss."""

    sizes: list[int]  # batch size at each time step
    offsets: list[int]  # first packed row of each step
    gold: torch.Tensor  # [N] gold tag ids, packed order
    gold_prev: torch.Tensor  # [N] gold tag of the previous token (<START> at step 0)
    last_rows: torch.Tensor  # [B] packed row of each sentence's last token
    num_tokens: int


def _packing(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(batch sizes, step offsets, packed->flat, step of each packed row, sentence of each packed row)."""
    n_steps = int(lengths[0])
    sizes = (lengths[None, :] > np.arange(n_steps)[:, None]).sum(1)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    step = np.repeat(np.arange(n_steps), sizes)
    sentence = np.arange(step.size) - offsets[step]
    packed_to_flat = starts[sentence] + step
    return sizes, offsets, packed_to_flat, step, sentence


def make_layout(lengths: np.ndarray, gold_flat: np.ndarray, start_index: int, device: torch.device) -> _Layout:
    """Gold tags of a batch (flat order, sentences sorted by length, descending) in packed order."""
    sizes, offsets, packed_to_flat, step, sentence = _packing(lengths)
    gold = gold_flat[packed_to_flat]
    prev_rows = np.where(step > 0, offsets[np.maximum(step - 1, 0)] + sentence, 0)
    gold_prev = np.where(step > 0, gold[prev_rows], start_index)
    last_rows = offsets[lengths - 1] + np.arange(lengths.size)
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(device)  # noqa: E731
    return _Layout(sizes=sizes.tolist(), offsets=offsets.tolist(), gold=as_tensor(gold),
                   gold_prev=as_tensor(gold_prev), last_rows=as_tensor(last_rows), num_tokens=int(gold.size))


# ----------------------------------------------------------------------------------------------
# LSTMs for training on the CPU
# ----------------------------------------------------------------------------------------------
# torch's CPU LSTM under autograd slices its packed input once per time step, and the backward of
# each slice zero-fills a gradient as large as the whole input: quadratic in the batch's length
# and most of a batch's time (Flair's trainer pays it as well).  These functions compute the same
# cell equations (PyTorch's gate order i, f, g, o) on per-step views cut by one ``torch.split``
# (one backward node), with the input projection of all tokens done in one matrix product.

def _cell(gates: torch.Tensor, c: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, c) from the pre-activations ``[n, 4H]`` and the previous cell state (None: zeros)."""
    hidden = gates.size(1) // 4
    sig = torch.sigmoid(gates)
    i, f, _, o = sig.chunk(4, 1)
    g = torch.tanh(gates[:, 2 * hidden: 3 * hidden])
    c = i * g if c is None else torch.addcmul(f * c, i, g)
    return o * torch.tanh(c), c


class _LSTMDirection(torch.autograd.Function):
    """One LSTM direction over packed input projections ``[N, 4H]`` (plus ``W_hh``) -> ``h`` ``[N, H]``.

    ``sizes`` are the packed batch sizes (non-increasing); the backward direction processes the
    steps last to first, sentences joining with zero state at their last token.  The backward pass
    runs the recurrence for the state gradients step by step, with the activation derivatives
    computed for all rows at once, and gets ``dW_hh`` from one matrix product over all steps
    instead of one small product (and one gradient accumulation) per step.
    """

    @staticmethod
    def forward(ctx, gx: torch.Tensor, w_hh: torch.Tensor, sizes: tuple[int, ...], reverse: bool):
        n_rows, hidden = gx.size(0), w_hh.size(1)
        acts = gx.new_empty(n_rows, 4 * hidden)  # sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)
        cells = gx.new_empty(n_rows, hidden)
        tanh_cells = gx.new_empty(n_rows, hidden)
        out = gx.new_empty(n_rows, hidden)
        w = w_hh.t()
        # per-step views, cut once
        gx_t, acts_t, cells_t, tanh_t, out_t = (x.split(sizes) for x in (gx, acts, cells, tanh_cells, out))
        order = list(range(len(sizes) - 1, -1, -1) if reverse else range(len(sizes)))
        previous = None
        for t in order:
            n = sizes[t]
            if previous is None:
                gates = gx_t[t]
            else:
                m = min(n, sizes[previous])
                if m == n:
                    gates = torch.addmm(gx_t[t], out_t[previous][:m], w)
                else:  # rows m.. start here from zero state
                    gates = gx_t[t].clone()
                    gates[:m].addmm_(out_t[previous], w)
            a = acts_t[t]
            torch.sigmoid(gates, out=a)
            i, f, g, o = a.chunk(4, 1)
            torch.tanh(gates.chunk(4, 1)[2], out=g)
            c = torch.mul(i, g, out=cells_t[t])
            if previous is not None:
                c[:m].addcmul_(f[:m], cells_t[previous][:m])
            torch.mul(o, torch.tanh(c, out=tanh_t[t]), out=out_t[t])
            previous = t
        # the row whose state each row read (-1: zero state)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        prev_row = np.full(n_rows, -1, dtype=np.int64)
        for k in range(1, len(order)):
            t, p = order[k], order[k - 1]
            m = min(sizes[t], sizes[p])
            prev_row[offsets[t]: offsets[t] + m] = offsets[p] + np.arange(m)
        ctx.save_for_backward(w_hh, acts, cells, tanh_cells, out)
        ctx.sizes, ctx.order, ctx.prev_row = sizes, order, prev_row
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        w_hh, acts, cells, tanh_cells, out = ctx.saved_tensors
        sizes, order, prev_row = ctx.sizes, ctx.order, ctx.prev_row
        hidden = w_hh.size(1)
        n_rows = acts.size(0)
        has_prev = torch.from_numpy(np.flatnonzero(prev_row >= 0)).to(acts.device)
        source = torch.from_numpy(prev_row[prev_row >= 0]).to(acts.device)
        h_prev = acts.new_zeros(n_rows, hidden)
        c_prev = acts.new_zeros(n_rows, hidden)
        h_prev[has_prev] = out[source]
        c_prev[has_prev] = cells[source]
        i, f, g, og = acts.chunk(4, 1)
        # d(gates)/d(state) factors for all rows at once
        to_cell = og * (1 - tanh_cells * tanh_cells)  # dc += dh * to_cell
        to_o = tanh_cells * og * (1 - og)  # dz_o = dh * to_o
        to_ifg = torch.stack([g * i * (1 - i), c_prev * f * (1 - f), i * (1 - g * g)], 1)  # dz = dc * .
        dgates = grad_out.new_empty(acts.shape)
        dh_carry = grad_out.new_zeros(grad_out.shape)  # from the step that read this row's state
        dc_carry = grad_out.new_zeros(grad_out.shape)
        grad_t, dh_t, dc_t, to_cell_t, to_o_t, to_ifg_t, f_t, d_t = (
            x.split(sizes) for x in (grad_out, dh_carry, dc_carry, to_cell, to_o, to_ifg, f, dgates))
        for k in range(len(order) - 1, -1, -1):
            t = order[k]
            n = sizes[t]
            dh = grad_t[t] + dh_t[t]
            dc = torch.addcmul(dc_t[t], dh, to_cell_t[t])
            d = d_t[t]
            torch.mul(dh, to_o_t[t], out=d[:, 3 * hidden:])
            torch.mul(dc.unsqueeze(1), to_ifg_t[t], out=d[:, : 3 * hidden].view(n, 3, hidden))
            if k:
                p = order[k - 1]
                m = min(n, sizes[p])
                torch.mm(d[:m], w_hh, out=dh_t[p][:m])
                torch.mul(dc[:m], f_t[t][:m], out=dc_t[p][:m])
        return dgates, dgates.t().mm(h_prev), None, None


def lstm_packed(rnn: torch.nn.LSTM, x: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """``rnn(PackedSequence(x, sizes))[0].data`` (zero initial state), computed step by step."""
    directions = [("", False), ("_reverse", True)] if rnn.bidirectional else [("", False)]
    sizes = tuple(int(n) for n in sizes)
    for layer in range(rnn.num_layers):
        outputs = []
        for suffix, reverse in directions:
            w_ih, w_hh, bias = direction_weights(rnn, layer, suffix)
            gx = torch.nn.functional.linear(x, w_ih, bias)
            outputs.append(_LSTMDirection.apply(gx, w_hh, sizes, reverse))
        x = torch.cat(outputs, 1) if len(outputs) > 1 else outputs[0]
        if layer < rnn.num_layers - 1 and rnn.dropout and rnn.training:
            x = torch.nn.functional.dropout(x, rnn.dropout, True)
    return x


def char_encode(component, inputs: dict[str, Any]) -> torch.Tensor:
    """Flair's CharacterEmbeddings for a batch's unique words ``[U, 2H]``, as ``_CharComponent.encode``.

    The forward LSTM's state after the last character, and the backward LSTM's output at the same
    position: its state after reading the last character alone (Flair's quirk), one cell step.
    """
    rnn = component.char_rnn
    lengths = inputs["lengths"].numpy()
    chars = inputs["chars"]
    order = np.argsort(-lengths, kind="stable")
    sorted_lengths = lengths[order]
    sizes, offsets, _, step, word = _packing(sorted_lengths)
    ids = chars[torch.from_numpy(order[word]).to(chars.device), torch.from_numpy(step).to(chars.device)]
    embedded = component.char_embedding(ids)  # packed [total chars, D]
    w_ih, w_hh, bias = direction_weights(rnn, 0, "")
    gx = torch.nn.functional.linear(embedded, w_ih, bias)
    states = _LSTMDirection.apply(gx, w_hh, tuple(sizes.tolist()), False)
    last = torch.from_numpy(offsets[sorted_lengths - 1] + np.arange(lengths.size)).to(chars.device)
    forward = states[last]
    w_ih, _, bias = direction_weights(rnn, 0, "_reverse")
    backward, _ = _cell(torch.nn.functional.linear(embedded[last], w_ih, bias), None)
    unsort = np.empty_like(order)
    unsort[order] = np.arange(order.size)
    return torch.cat([forward, backward], 1)[torch.from_numpy(unsort).to(chars.device)]


def crf_loss_packed(emissions: torch.Tensor, transitions: torch.Tensor, layout: _Layout,
                    start_index: int, stop_index: int) -> torch.Tensor:
    """Flair's ``ViterbiLoss`` on packed emissions ``[N, K]``: the batch's summed negative log-likelihood.

    ``transitions[to, from]`` as in Flair's CRF.  The gold score adds ``emission[y_t]``,
    ``transitions[y_t, y_{t-1}]`` (``y_{-1}`` = <START>) and ``transitions[<STOP>, y_last]``; the
    partition function runs the forward algorithm one packed time step at a time (the first
    ``sizes[t]`` sentences are still running at step ``t``).
    """
    gold = layout.gold
    gold_score = (emissions.gather(1, gold.unsqueeze(1)).sum()
                  + transitions[gold, layout.gold_prev].sum()
                  + transitions[stop_index, gold[layout.last_rows]].sum())
    scores = emissions.unsqueeze(2) + transitions.unsqueeze(0)  # [N, to, from], Flair's CRF features
    steps = torch.split(scores, layout.sizes)  # one backward node, not one full-size slice per step
    alpha = steps[0][:, :, start_index]
    ended = []
    for step in steps[1:]:
        n = step.size(0)
        if n < alpha.size(0):
            ended.append(alpha[n:])
            alpha = alpha[:n]
        alpha = torch.logsumexp(step + alpha.unsqueeze(1), dim=2)
    alpha = torch.cat([alpha, *reversed(ended)]) if ended else alpha
    all_paths = torch.logsumexp(alpha + transitions[stop_index].unsqueeze(0), dim=1).sum()
    return all_paths - gold_score


# ----------------------------------------------------------------------------------------------
# splits
# ----------------------------------------------------------------------------------------------
@dataclass
class _Split:
    """A corpus split as strings and tag ids (non-empty sentences only), built once."""

    words: list[list[str]]
    tags: Optional[list[np.ndarray]]  # None when a gold tag is not in the tag dictionary
    lengths: np.ndarray
    index: list[int]  # position of each kept sentence in the split
    spans: Optional[list[list[tuple[int, int, str]]]]  # gold spans per kept sentence (span taggers)
    duplicate_gold: bool = False  # a span with two gold labels (Flair then scores multi-label)

    @classmethod
    def build(cls, tagger: "SequenceTagger", sentences, with_spans: bool) -> "_Split":
        sentences = list(sentences)
        keep = [i for i, s in enumerate(sentences) if len(s) > 0]
        kept = [sentences[i] for i in keep]
        words = [[token.text for token in sentence] for sentence in kept]
        lengths = np.fromiter((len(w) for w in words), dtype=np.int64, count=len(words))
        tags: Optional[list[np.ndarray]] = None
        if kept:
            labels = tagger._get_gold_labels(kept)  # Flair's own span -> BIOES/BIO tag encoding
            item2idx = tagger.label_dictionary.item2idx
            ids = [item2idx.get(label.encode("utf-8")) for label in labels]
            if None not in ids:
                flat = np.asarray(ids, dtype=np.int64)
                tags = np.split(flat, np.cumsum(lengths)[:-1])
        spans = None
        duplicate = False
        if with_spans:
            spans = []
            label_type = tagger.label_type
            for sentence in kept:
                mine: list[tuple[int, int, str]] = []
                for label in sentence.get_labels(label_type):
                    if label.value == "O":
                        continue
                    span = label.data_point
                    mine.append((span[0].idx - 1, span[-1].idx, label.value))
                if len({(a, b) for a, b, _ in mine}) != len(mine):
                    duplicate = True
                spans.append(mine)
        return cls(words=words, tags=tags, lengths=lengths, index=keep, spans=spans, duplicate_gold=duplicate)

    def __len__(self) -> int:
        return len(self.words)


class _FrozenCache:
    """Embeddings of a frozen, costly component (a FlairEmbeddings LM) per sentence, computed once."""

    def __init__(self, fast: FastSequenceTagger, component: int, split: _Split, max_tokens: int) -> None:
        self.component = component
        offsets = np.zeros(len(split) + 1, dtype=np.int64)
        np.cumsum(split.lengths, out=offsets[1:])
        self.offsets = offsets
        length = fast.components[component].length
        self.table = torch.zeros(int(offsets[-1]), length)
        skip = [i for i in range(len(fast.components)) if i != component]
        order = np.argsort(-split.lengths, kind="stable")
        with torch.no_grad(), _eval_mode(fast.tagger):
            for chunk in _token_chunks(order, split.lengths, max_tokens):
                batch = fast.prepare([split.words[i] for i in chunk], skip=skip)
                out = fast.components[component].forward(batch.component_inputs[component], fast.device)
                self.table[self.rows(chunk)] = out.float().cpu()

    def rows(self, sentence_ids) -> torch.Tensor:
        """Table rows of the sentences' tokens, flat order."""
        ids = np.asarray(sentence_ids, dtype=np.int64)
        starts, ends = self.offsets[ids], self.offsets[ids + 1]
        lengths = ends - starts
        base = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
        return torch.from_numpy(base + np.arange(int(lengths.sum())))

    def lookup(self, sentence_ids, device: torch.device) -> torch.Tensor:
        return self.table[self.rows(sentence_ids)].to(device, non_blocking=True)


def _token_chunks(order: np.ndarray, lengths: np.ndarray, max_tokens: int):
    """Consecutive chunks of `order` (sorted by length, descending) of about max_tokens tokens."""
    begin = 0
    while begin < len(order):
        count = max(1, max_tokens // int(lengths[order[begin]]))
        yield order[begin: begin + count]
        begin += count


def micro_scores(gold: list[list[tuple[int, int, str]]], predicted: list[list[tuple]]) -> tuple[float, float, float]:
    """Flair's micro-average over exact span + type matches (sklearn's arithmetic, zero_division=0)."""
    tp = n_pred = n_gold = 0
    for gold_spans, predicted_spans in zip(gold, predicted):
        expected = set(gold_spans)
        n_gold += len(gold_spans)
        n_pred += len(predicted_spans)
        tp += sum((a, b, label) in expected for a, b, label, *_ in predicted_spans)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * tp / (n_gold + n_pred) if n_gold + n_pred else 0.0
    return precision, recall, f1


# ----------------------------------------------------------------------------------------------
# the trainer
# ----------------------------------------------------------------------------------------------
class FastTrainer:
    """Trains a supported ``SequenceTagger`` in place, one epoch / one dev evaluation at a time."""

    def __init__(self, tagger: "SequenceTagger", train_sentences, dev_sentences=None, batch_size: int = 32,
                 batching: str = "shuffle", mixed_precision: bool = False, eval_tokens: int = 8192,
                 seed: int = 1) -> None:
        reason = unsupported_reason(tagger)
        if reason is not None:
            raise ValueError(reason)
        if batching not in BATCHINGS:
            raise ValueError(f"batching must be one of {BATCHINGS}, not {batching!r}")
        self.tagger = tagger
        self.fast = FastSequenceTagger(tagger, max_tokens_per_batch=eval_tokens, max_cached_types=2**62)
        self.device = self.fast.device
        self.batch_size = batch_size
        self.batching = batching
        self.seed = seed
        self.mixed_precision = mixed_precision and self.device.type == "cuda"
        if mixed_precision and not self.mixed_precision:
            log.warning("mixed precision is used on a GPU only; training in float32")
        self.use_crf = bool(tagger.use_crf)
        dictionary = tagger.label_dictionary
        self.start_index = dictionary.get_idx_for_item("<START>") if self.use_crf else 0
        self.stop_index = dictionary.get_idx_for_item("<STOP>") if self.use_crf else 0

        self.train_split = _Split.build(tagger, train_sentences, with_spans=False)
        if self.train_split.tags is None:
            raise ValueError("the training split has tags that are not in the tagger's tag dictionary")
        self.dev_sentences = list(dev_sentences) if dev_sentences is not None else None
        self.dev_split = None
        if self.dev_sentences:
            self.dev_split = _Split.build(tagger, self.dev_sentences, with_spans=bool(tagger.predict_spans))

        # frozen Flair LMs: computed once per sentence (Flair keeps them with storage mode "cpu")
        self.frozen = [i for i, c in enumerate(self.fast.components)
                       if isinstance(c, _FlairComponent) and not c.fine_tune]
        # on a GPU, cuDNN runs packed LSTMs well; on the CPU our step-wise LSTMs avoid autograd's
        # quadratic slicing cost (see lstm_packed)
        cpu = self.device.type == "cpu"
        self.char_components = [i for i, c in enumerate(self.fast.components)
                                if cpu and isinstance(c, _CharComponent)]
        rnn = getattr(tagger, "rnn", None) if tagger.use_rnn else None
        self.rnn_override = None
        if cpu and type(rnn) is torch.nn.LSTM and not getattr(rnn, "proj_size", 0):
            self.rnn_override = lambda x, batch: lstm_packed(rnn, x, batch.batch_sizes.tolist())
        self.train_cache = {i: _FrozenCache(self.fast, i, self.train_split, eval_tokens) for i in self.frozen}
        self.dev_cache = ({i: _FrozenCache(self.fast, i, self.dev_split, eval_tokens) for i in self.frozen}
                          if self.dev_split is not None and len(self.dev_split) else {})
        self._dev_batches: Optional[list[tuple[np.ndarray, PreparedBatch, Optional[_Layout]]]] = None

    # ------------------------------------------------------------------ one batch
    def _batch(self, split: _Split, ids: np.ndarray, cache: Optional[dict[int, _FrozenCache]]):
        ids = ids[np.argsort(-split.lengths[ids], kind="stable")]  # Flair sorts a batch by length
        batch = self.fast.prepare([split.words[i] for i in ids], skip=self.frozen)
        layout = None
        if split.tags is not None:
            gold = np.concatenate([split.tags[i] for i in ids])
            layout = make_layout(split.lengths[ids], gold, self.start_index, self.device)
        given = {i: cache[i].lookup(ids, self.device) for i in self.frozen} if cache is not None else {}
        return ids, batch, layout, given

    def _emissions(self, batch: PreparedBatch, given: dict[int, torch.Tensor]) -> torch.Tensor:
        """Emissions in packed order; with autograd, through the trainer's own LSTM kernels."""
        rnn = None
        if torch.is_grad_enabled():
            given = dict(given)
            for i in self.char_components:
                inputs = batch.component_inputs[i]
                given[i] = char_encode(self.fast.components[i], inputs)[inputs["token_to_unique"]]
            rnn = self.rnn_override
        if self.mixed_precision:
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                return self.fast.forward_packed(batch, given, rnn).float()
        return self.fast.forward_packed(batch, given, rnn)

    def loss(self, emissions: torch.Tensor, layout: _Layout) -> torch.Tensor:
        """The summed loss of a batch, as ``SequenceTagger.forward_loss`` returns it."""
        if self.use_crf:
            return crf_loss_packed(emissions, self.tagger.crf.transitions, layout, self.start_index, self.stop_index)
        return self.tagger.loss_function(emissions, layout.gold)

    def batch_loss(self, sentence_ids) -> tuple[torch.Tensor, int]:
        """(summed loss, tokens) of some training sentences in the current mode (a test hook)."""
        ids, batch, layout, given = self._batch(self.train_split, np.asarray(sentence_ids), self.train_cache)
        return self.loss(self._emissions(batch, given), layout), layout.num_tokens

    # ------------------------------------------------------------------ an epoch
    def batches(self, epoch: int) -> list[np.ndarray]:
        """This epoch's mini-batches of training-sentence ids (``batch_size`` sentences each)."""
        n = len(self.train_split)
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(n, generator=generator).numpy()
        size = self.batch_size
        if self.batching == "shuffle":  # Flair's DataLoader(shuffle=True)
            return [order[i: i + size] for i in range(0, n, size)]
        # bucket: sort pools of 50 batches by length, then shuffle the batches
        pool = 50 * size
        batches = []
        for begin in range(0, n, pool):
            chunk = order[begin: begin + pool]
            chunk = chunk[np.argsort(-self.train_split.lengths[chunk], kind="stable")]
            batches.extend(chunk[i: i + size] for i in range(0, len(chunk), size))
        shuffled = torch.randperm(len(batches), generator=generator).tolist()
        return [batches[i] for i in shuffled]

    def train_epoch(self, optimizer: torch.optim.Optimizer, epoch: int,
                    max_grad_norm: Optional[float] = MAX_GRAD_NORM) -> float:
        """One pass over the training split; returns the loss per token (Flair's train loss)."""
        tagger = self.tagger
        tagger.train()
        parameters = [p for p in tagger.parameters()]
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        tokens = 0
        batches = self.batches(epoch)
        log_every = max(1, len(batches) // 10)
        started = time.time()
        for number, ids in enumerate(batches, 1):
            ids, batch, layout, given = self._batch(self.train_split, ids, self.train_cache)
            optimizer.zero_grad(set_to_none=True)
            loss = self.loss(self._emissions(batch, given), layout)
            loss.backward()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
            optimizer.step()
            total += loss.detach()
            tokens += layout.num_tokens
            if number % log_every == 0:
                log.debug("epoch %d - batch %d/%d - loss %.8f - %.1f s", epoch, number, len(batches),
                          float(total) / max(tokens, 1), time.time() - started)
        tagger.eval()
        return float(total) / max(tokens, 1)

    # ------------------------------------------------------------------ dev evaluation
    def _prepared_dev(self):
        if self._dev_batches is None:
            split = self.dev_split
            order = np.argsort(-split.lengths, kind="stable")
            batches = []
            for chunk in _token_chunks(order, split.lengths, self.fast.max_tokens_per_batch):
                ids, batch, layout, _ = self._batch(split, np.asarray(chunk), None)
                batches.append((ids, batch, layout))
            self._dev_batches = batches
        return self._dev_batches

    def evaluate(self) -> Optional[DevScores]:
        """Dev micro P/R/F1 of the model as it is now (Flair's numbers), and the dev loss per token."""
        split = self.dev_split
        if split is None:
            return None
        if not split.spans or split.duplicate_gold or not self.tagger.predict_spans:
            return self._flair_evaluate()
        predicted: list[list[tuple]] = [[] for _ in range(len(split))]
        loss = torch.zeros((), dtype=torch.float64, device=self.device)
        tokens = 0
        with torch.inference_mode(), _eval_mode(self.tagger):
            for ids, batch, layout in self._prepared_dev():
                given = {i: self.dev_cache[i].lookup(ids, self.device) for i in self.frozen}
                emissions = self._emissions(batch, given).float()
                if layout is not None:
                    loss += self.loss(emissions, layout)
                    tokens += layout.num_tokens
                tags, scores = self.fast._decode(emissions, batch)
                for i, spans in zip(ids, self.fast._spans(tags, scores, batch.lengths)):
                    predicted[i] = spans
        precision, recall, f1 = micro_scores(split.spans, predicted)
        dev_loss = float(loss) / tokens if split.tags is not None and tokens else None
        return DevScores(precision, recall, f1, dev_loss)

    def _flair_evaluate(self) -> DevScores:
        """Flair's own evaluation, for what the fast scorer does not cover (token tags, multi-label)."""
        result = self.tagger.evaluate(self.dev_sentences, gold_label_type=self.tagger.label_type,
                                      mini_batch_size=64, embedding_storage_mode="none")
        micro = result.classification_report.get("micro avg", {}) if result.classification_report else {}
        return DevScores(float(micro.get("precision", 0.0)), float(micro.get("recall", 0.0)),
                         float(result.main_score), float(result.loss))


# ----------------------------------------------------------------------------------------------
# the run (bookkeeping shared with Flair's trainer lives in annotator.training.RunBook)
# ----------------------------------------------------------------------------------------------
def fit(tagger: "SequenceTagger", corpus, config: "TrainConfig", book: "RunBook") -> None:
    """Train `tagger` from the book's epoch to ``config.max_epochs`` (or until annealing ends it)."""
    started = time.time()
    trainer = FastTrainer(tagger, corpus.train, corpus.dev, batch_size=config.batch_size,
                          batching=config.batching, mixed_precision=config.mixed_precision,
                          seed=config.seed)
    log.info("fast trainer: %d training sentences in %d batches of %d; prepared in %.1f s",
             len(trainer.train_split), -(-len(trainer.train_split) // config.batch_size),
             config.batch_size, time.time() - started)
    optimizer = torch.optim.SGD(tagger.parameters(), lr=book.learning_rate)
    scheduler = book.make_scheduler(optimizer, has_dev=corpus.dev is not None)
    tagger.model_card = _model_card(config)
    try:
        for epoch in range(book.epoch + 1, config.max_epochs + 1):
            book.start_epoch()
            train_loss = trainer.train_epoch(optimizer, epoch)
            dev = trainer.evaluate()
            if book.end_epoch(tagger, epoch, train_loss, dev, optimizer, scheduler):
                log.info("learning rate too small - quitting training!")
                break
        tagger.save(book.output / "final-model.pt")
    except KeyboardInterrupt:  # as Flair's trainer: stop, keep what the last epoch produced
        log.info("exiting from training early; saving final-model.pt")
        tagger.save(book.output / "final-model.pt")
    finally:
        tagger.eval()


def _model_card(config: "TrainConfig") -> dict[str, Any]:
    import flair

    return {"flair_version": flair.__version__, "pytorch_version": torch.__version__,
            "training_parameters": {"trainer": "annotator.fast_training", "learning_rate": config.learning_rate,
                                    "mini_batch_size": config.batch_size, "max_epochs": config.max_epochs,
                                    "optimizer": "torch.optim.sgd.SGD", "max_grad_norm": MAX_GRAD_NORM,
                                    "anneal_factor": config.anneal_factor, "patience": config.patience,
                                    "min_learning_rate": config.min_learning_rate, "batching": config.batching}}


# ----------------------------------------------------------------------------------------------
# benchmark hook
# ----------------------------------------------------------------------------------------------
def time_epoch(corpus_dir, config: "TrainConfig", trainer: str, max_sentences: Optional[int] = None,
               include_dev: bool = True, clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds one epoch takes with `trainer` ("fast" or "flair") on the corpus, from a fresh model.

    An epoch is one pass of SGD over the training split (the first `max_sentences` sentences, if
    given) plus, with `include_dev`, the dev evaluation each epoch ends with.  Flair's side runs
    the body of ``ModelTrainer.train_custom``'s epoch loop (forward_loss, backward, clipping,
    ``store_embeddings``, ``evaluate``) without its file writing; the fast side runs
    :class:`FastTrainer`.  One-time setup (reading the corpus, building the model, turning the
    splits into index data, frozen-LM caches) is not counted for either.  ``clock``: e.g.
    ``time.process_time`` for CPU seconds, steadier than wall time on a shared machine.
    """
    import flair
    from flair.data import Corpus
    from flair.datasets import DataLoader
    from flair.training_utils import store_embeddings

    from annotator.corpus import load_corpus, parse_column_format
    from annotator.training import build_tagger, choose_device, has_trainable_embeddings, seed_everything

    if trainer not in ("fast", "flair"):
        raise ValueError(f"trainer must be 'fast' or 'flair', not {trainer!r}")
    flair.device = choose_device(config.device)
    seed_everything(config.seed)
    full = load_corpus(corpus_dir, config.column_format)
    train = list(full.train)
    if max_sentences is not None:
        train = train[:max_sentences]
    corpus = Corpus(train=train, dev=full.dev, test=None, name="bench", sample_missing_splits=False)
    _, label_type = parse_column_format(config.column_format)
    tagger = build_tagger(config, corpus, label_type)
    dev = list(full.dev) if (include_dev and full.dev is not None) else None
    if trainer == "fast":
        fast = FastTrainer(tagger, train, dev, batch_size=config.batch_size, batching=config.batching,
                           mixed_precision=config.mixed_precision, seed=config.seed)
        optimizer = torch.optim.SGD(tagger.parameters(), lr=config.learning_rate)
        _synchronize()
        started = clock()
        fast.train_epoch(optimizer, 1)
        if dev:
            fast.evaluate()
        _synchronize()
        return clock() - started

    storage = "none" if has_trainable_embeddings(tagger.embeddings) else \
        ("gpu" if flair.device.type == "cuda" else "cpu")
    optimizer = torch.optim.SGD(tagger.parameters(), lr=config.learning_rate)
    _synchronize()
    started = clock()
    tagger.train()
    for batch in DataLoader(train, batch_size=config.batch_size, shuffle=True):
        tagger.zero_grad()
        optimizer.zero_grad()
        loss, _count = tagger.forward_loss(batch)
        loss.item()
        loss.backward()
        store_embeddings(batch, storage)
        torch.nn.utils.clip_grad_norm_(tagger.parameters(), MAX_GRAD_NORM)
        optimizer.step()
    tagger.eval()
    if dev:
        with tempfile.TemporaryDirectory() as folder:
            tagger.evaluate(dev, gold_label_type=tagger.label_type, out_path=Path(folder) / "dev.tsv",
                            mini_batch_size=64, embedding_storage_mode=storage)
    _synchronize()
    return clock() - started


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
