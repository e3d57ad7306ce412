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
``AnnealOnPlateau`` on dev micro-F1 (``annotator.training.runbook.RunBook`` owns it for both
trainers),
and Ctrl-C stops after saving ``final-model.pt``.  The model is an ordinary ``SequenceTagger``
saved with ``tagger.save``.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from annotator.tagging.components import CharComponent, FlairComponent
from annotator.tagging.crf import START_TAG, STOP_TAG, crf_loss_packed
from annotator.tagging.fast import FastSequenceTagger
from annotator.tagging.lstm import char_encode, lstm_packed
from annotator.tagging.packed import GoldLayout, PreparedBatch, eval_mode, token_chunks
from annotator.training.runbook import DevScores

log = logging.getLogger("annotator")


if TYPE_CHECKING:  # pragma: no cover
    from flair.models import SequenceTagger

    from annotator.training.config import TrainConfig
    from annotator.training.runbook import RunBook


MAX_GRAD_NORM = 5.0  # ModelTrainer.train_custom's default max_grad_norm


BATCHINGS = ("shuffle", "bucket")


def unsupported_reason(tagger: SequenceTagger, config: TrainConfig | None = None) -> str | None:
    """Why the fast trainer cannot train this tagger (then Flair's trainer does), or None."""
    if config is not None and config.preset == "transformer":
        return "the transformer preset fine-tunes a transformer encoder"
    return FastSequenceTagger.unsupported_reason(tagger)


@dataclass
class _Split:
    """A corpus split as strings and tag ids (non-empty sentences only), built once."""

    words: list[list[str]]
    tags: list[np.ndarray] | None  # None when a gold tag is not in the tag dictionary
    lengths: np.ndarray
    index: list[int]  # position of each kept sentence in the split
    spans: list[list[tuple[int, int, str]]] | None  # gold spans per kept sentence (span taggers)
    duplicate_gold: bool = False  # a span with two gold labels (Flair then scores multi-label)

    @classmethod
    def build(cls, tagger: SequenceTagger, sentences, with_spans: bool) -> _Split:
        sentences = list(sentences)
        keep = [i for i, s in enumerate(sentences) if len(s) > 0]
        kept = [sentences[i] for i in keep]
        words = [[token.text for token in sentence] for sentence in kept]
        lengths = np.fromiter((len(w) for w in words), dtype=np.int64, count=len(words))
        tags: list[np.ndarray] | None = None
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
        return cls(
            words=words,
            tags=tags,
            lengths=lengths,
            index=keep,
            spans=spans,
            duplicate_gold=duplicate,
        )

    def __len__(self) -> int:
        return len(self.words)


class _FrozenCache:
    """Embeddings of a frozen, costly component (a FlairEmbeddings LM) per sentence, computed
    once."""

    def __init__(
        self, fast: FastSequenceTagger, component: int, split: _Split, max_tokens: int
    ) -> None:
        self.component = component
        offsets = np.zeros(len(split) + 1, dtype=np.int64)
        np.cumsum(split.lengths, out=offsets[1:])
        self.offsets = offsets
        length = fast.components[component].length
        self.table = torch.zeros(int(offsets[-1]), length)
        skip = [i for i in range(len(fast.components)) if i != component]
        order = np.argsort(-split.lengths, kind="stable")
        with torch.no_grad(), eval_mode(fast.tagger):
            for chunk in token_chunks(order, split.lengths, max_tokens):
                batch = fast.prepare([split.words[i] for i in chunk], skip=skip)
                out = fast.components[component].forward(
                    batch.component_inputs[component], fast.device
                )
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


def micro_scores(
    gold: list[list[tuple[int, int, str]]], predicted: list[list[tuple]]
) -> tuple[float, float, float]:
    """Flair's micro-average over exact span + type matches (sklearn's arithmetic,
    zero_division=0)."""
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


class FastTrainer:
    """Trains a supported ``SequenceTagger`` in place, one epoch / one dev evaluation at a time."""

    def __init__(
        self,
        tagger: SequenceTagger,
        train_sentences,
        dev_sentences=None,
        batch_size: int = 32,
        batching: str = "shuffle",
        mixed_precision: bool = False,
        eval_tokens: int = 8192,
        seed: int = 1,
    ) -> None:
        reason = unsupported_reason(tagger)
        if reason is not None:
            raise ValueError(reason)
        if batching not in BATCHINGS:
            raise ValueError(f"batching must be one of {BATCHINGS}, not {batching!r}")
        self.tagger = tagger
        self.fast = FastSequenceTagger(
            tagger, max_tokens_per_batch=eval_tokens, max_cached_types=2**62
        )
        self.device = self.fast.device
        self.batch_size = batch_size
        self.batching = batching
        self.seed = seed
        self.mixed_precision = mixed_precision and self.device.type == "cuda"
        if mixed_precision and not self.mixed_precision:
            log.warning("mixed precision is used on a GPU only; training in float32")
        self.use_crf = bool(tagger.use_crf)
        dictionary = tagger.label_dictionary
        self.start_index = dictionary.get_idx_for_item(START_TAG) if self.use_crf else 0
        self.stop_index = dictionary.get_idx_for_item(STOP_TAG) if self.use_crf else 0

        self.train_split = _Split.build(tagger, train_sentences, with_spans=False)
        if self.train_split.tags is None:
            raise ValueError(
                "the training split has tags that are not in the tagger's tag dictionary"
            )
        self.dev_sentences = list(dev_sentences) if dev_sentences is not None else None
        self.dev_split = None
        if self.dev_sentences:
            self.dev_split = _Split.build(
                tagger, self.dev_sentences, with_spans=bool(tagger.predict_spans)
            )

        # frozen Flair LMs: computed once per sentence (Flair keeps them with storage mode "cpu")
        self.frozen = [
            i
            for i, c in enumerate(self.fast.components)
            if isinstance(c, FlairComponent) and not c.fine_tune
        ]
        # on a GPU, cuDNN runs packed LSTMs well; on the CPU our step-wise LSTMs avoid autograd's
        # quadratic slicing cost (see lstm_packed)
        cpu = self.device.type == "cpu"
        self.char_components = [
            i for i, c in enumerate(self.fast.components) if cpu and isinstance(c, CharComponent)
        ]
        rnn = getattr(tagger, "rnn", None) if tagger.use_rnn else None
        self.rnn_override = None
        if cpu and type(rnn) is torch.nn.LSTM and not getattr(rnn, "proj_size", 0):
            self.rnn_override = lambda x, batch: lstm_packed(rnn, x, batch.batch_sizes.tolist())
        self.train_cache = {
            i: _FrozenCache(self.fast, i, self.train_split, eval_tokens) for i in self.frozen
        }
        self.dev_cache = (
            {i: _FrozenCache(self.fast, i, self.dev_split, eval_tokens) for i in self.frozen}
            if self.dev_split is not None and len(self.dev_split)
            else {}
        )
        self._dev_batches: list[tuple[np.ndarray, PreparedBatch, GoldLayout | None]] | None = None

    @classmethod
    def from_config(cls, tagger: SequenceTagger, train, dev, config: TrainConfig) -> FastTrainer:
        """The trainer a training config asks for."""
        return cls(
            tagger,
            train,
            dev,
            batch_size=config.batch_size,
            batching=config.batching,
            mixed_precision=config.mixed_precision,
            seed=config.seed,
        )

    # ------------------------------------------------------------------ one batch
    def _batch(self, split: _Split, ids: np.ndarray, cache: dict[int, _FrozenCache] | None):
        ids = ids[np.argsort(-split.lengths[ids], kind="stable")]  # Flair sorts a batch by length
        batch = self.fast.prepare([split.words[i] for i in ids], skip=self.frozen)
        layout = None
        if split.tags is not None:
            gold = np.concatenate([split.tags[i] for i in ids])
            layout = GoldLayout.of(split.lengths[ids], gold, self.start_index, self.device)
        given = (
            {i: cache[i].lookup(ids, self.device) for i in self.frozen} if cache is not None else {}
        )
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

    def loss(self, emissions: torch.Tensor, layout: GoldLayout) -> torch.Tensor:
        """The summed loss of a batch, as ``SequenceTagger.forward_loss`` returns it."""
        if self.use_crf:
            return crf_loss_packed(
                emissions, self.tagger.crf.transitions, layout, self.start_index, self.stop_index
            )
        return self.tagger.loss_function(emissions, layout.gold)

    def batch_loss(self, sentence_ids) -> tuple[torch.Tensor, int]:
        """(summed loss, tokens) of some training sentences, in the tagger's current mode."""
        ids, batch, layout, given = self._batch(
            self.train_split, np.asarray(sentence_ids), self.train_cache
        )
        return self.loss(self._emissions(batch, given), layout), layout.num_tokens

    # ------------------------------------------------------------------ an epoch
    def batches(self, epoch: int, sentence_ids: np.ndarray | None = None) -> list[np.ndarray]:
        """This epoch's mini-batches of training-sentence ids (``batch_size`` sentences each),
        drawn from `sentence_ids` where given (an epoch of a subset: adapt's replay mixes)."""
        n = len(self.train_split) if sentence_ids is None else len(sentence_ids)
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(n, generator=generator).numpy()
        if sentence_ids is not None:
            order = np.asarray(sentence_ids)[order]
        size = self.batch_size
        if self.batching == "shuffle":  # Flair's DataLoader(shuffle=True)
            return [order[i : i + size] for i in range(0, n, size)]
        # bucket: sort pools of 50 batches by length, then shuffle the batches
        pool = 50 * size
        batches = []
        for begin in range(0, n, pool):
            chunk = order[begin : begin + pool]
            chunk = chunk[np.argsort(-self.train_split.lengths[chunk], kind="stable")]
            batches.extend(chunk[i : i + size] for i in range(0, len(chunk), size))
        shuffled = torch.randperm(len(batches), generator=generator).tolist()
        return [batches[i] for i in shuffled]

    def train_epoch(
        self,
        optimizer: torch.optim.Optimizer,
        epoch: int,
        max_grad_norm: float | None = MAX_GRAD_NORM,
        progress: bool = False,
        epochs: int | None = None,
        sentence_ids: np.ndarray | None = None,
    ) -> float:
        """One pass over the training split (or its `sentence_ids`); returns the loss per token
        (Flair's train loss). `progress`: a bar on stderr labelled with the epoch: batches, loss,
        rate, ETA."""
        from tqdm import tqdm

        tagger = self.tagger
        tagger.train()
        parameters = list(tagger.parameters())
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        tokens = 0
        batches = self.batches(epoch, sentence_ids)
        log_every = max(1, len(batches) // 10)
        started = time.time()
        bar = tqdm(
            total=len(batches),
            desc=f"epoch {epoch}" + (f"/{epochs}" if epochs else ""),
            unit="batch",
            file=sys.stderr,
            disable=not progress,
            leave=False,
            dynamic_ncols=True,
        )
        for number, ids in enumerate(batches, 1):
            optimizer.zero_grad(set_to_none=True)
            loss, count = self.batch_loss(ids)
            loss.backward()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
            optimizer.step()
            total += loss.detach()
            tokens += count
            bar.update(1)
            if progress and (number % 10 == 0 or number == len(batches)):
                bar.set_postfix(loss=f"{float(total) / max(tokens, 1):.4f}", refresh=False)
            if number % log_every == 0:
                log.debug(
                    "epoch %d - batch %d/%d - loss %.8f - %.1f s",
                    epoch,
                    number,
                    len(batches),
                    float(total) / max(tokens, 1),
                    time.time() - started,
                )
        bar.close()
        tagger.eval()
        return float(total) / max(tokens, 1)

    # ------------------------------------------------------------------ dev evaluation
    def _prepared_dev(self):
        if self._dev_batches is None:
            split = self.dev_split
            order = np.argsort(-split.lengths, kind="stable")
            batches = []
            for chunk in token_chunks(order, split.lengths, self.fast.max_tokens_per_batch):
                ids, batch, layout, _ = self._batch(split, np.asarray(chunk), None)
                batches.append((ids, batch, layout))
            self._dev_batches = batches
        return self._dev_batches

    def evaluate(self) -> DevScores | None:
        """Dev micro P/R/F1 of the model as it is now (Flair's numbers), and the dev loss per
        token."""
        split = self.dev_split
        if split is None:
            return None
        if not split.spans or split.duplicate_gold or not self.tagger.predict_spans:
            return self._flair_evaluate()
        predicted: list[list[tuple]] = [[] for _ in range(len(split))]
        loss = torch.zeros((), dtype=torch.float64, device=self.device)
        tokens = 0
        with torch.inference_mode(), eval_mode(self.tagger):
            for ids, batch, layout in self._prepared_dev():
                given = {i: self.dev_cache[i].lookup(ids, self.device) for i in self.frozen}
                emissions = self._emissions(batch, given).float()
                if layout is not None:
                    loss += self.loss(emissions, layout)
                    tokens += layout.num_tokens
                tags, scores = self.fast.decode(emissions, batch)
                for i, spans in zip(ids, self.fast.spans(tags, scores, batch.lengths)):
                    predicted[i] = spans
        precision, recall, f1 = micro_scores(split.spans, predicted)
        dev_loss = float(loss) / tokens if split.tags is not None and tokens else None
        return DevScores(precision, recall, f1, dev_loss)

    def _flair_evaluate(self) -> DevScores:
        """Flair's own evaluation, for what the fast scorer does not cover (token tags, multi-
        label)."""
        result = self.tagger.evaluate(
            self.dev_sentences,
            gold_label_type=self.tagger.label_type,
            mini_batch_size=64,
            embedding_storage_mode="none",
        )
        micro = (
            result.classification_report.get("micro avg", {})
            if result.classification_report
            else {}
        )
        return DevScores(
            float(micro.get("precision", 0.0)),
            float(micro.get("recall", 0.0)),
            float(result.main_score),
            float(result.loss),
        )


def fit(tagger: SequenceTagger, corpus, config: TrainConfig, book: RunBook) -> None:
    """Train `tagger` from the book's epoch to ``config.max_epochs`` (or until annealing ends
    it)."""
    started = time.time()
    trainer = FastTrainer.from_config(tagger, corpus.train, corpus.dev, config)
    log.info(
        "fast trainer: %d training sentences in %d batches of %d; prepared in %.1f s",
        len(trainer.train_split),
        -(-len(trainer.train_split) // config.batch_size),
        config.batch_size,
        time.time() - started,
    )
    optimizer = torch.optim.SGD(tagger.parameters(), lr=book.learning_rate)
    scheduler = book.make_scheduler(optimizer, has_dev=corpus.dev is not None)
    tagger.model_card = _model_card(config)
    try:
        for epoch in range(book.epoch + 1, config.max_epochs + 1):
            book.start_epoch()
            train_loss = trainer.train_epoch(
                optimizer,
                epoch,
                progress=book.progress,
                epochs=config.max_epochs,
            )
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


def _model_card(config: TrainConfig) -> dict[str, Any]:
    import flair

    return {
        "flair_version": flair.__version__,
        "pytorch_version": torch.__version__,
        "training_parameters": {
            "trainer": "annotator.training.fast",
            "learning_rate": config.learning_rate,
            "mini_batch_size": config.batch_size,
            "max_epochs": config.max_epochs,
            "optimizer": "torch.optim.sgd.SGD",
            "max_grad_norm": MAX_GRAD_NORM,
            "anneal_factor": config.anneal_factor,
            "patience": config.patience,
            "min_learning_rate": config.min_learning_rate,
            "batching": config.batching,
        },
    }
