"""The tagger engine: token lists in, entity spans out.

Three engines give the same spans: the numpy engine (`annotator.tagging.numpy_engine`) on the
CPU for the exports it covers (no torch is imported), the vectorised torch fast engine
(`annotator.tagging.fast`) for the model families it supports, and Flair's own
`SequenceTagger.predict` otherwise. Spans are mapped back to character offsets here, so
downstream code never sees tokens.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Protocol

from annotator.records import Entity, Sentence, TokenSpan

log = logging.getLogger("annotator")


class Engine(Protocol):
    name: str

    def predict(self, sentences: list[list[str]]) -> list[list[TokenSpan]]: ...


def flair_spans(sentence, label_type: str) -> list[TokenSpan]:
    """A Flair sentence's `label_type` spans as (first token, end token, label, score)."""
    spans = []
    for span in sentence.get_spans(label_type):
        label = span.get_label(label_type)
        spans.append((span.tokens[0].idx - 1, span.tokens[-1].idx, label.value, float(label.score)))
    return spans


class FlairEngine:
    """Flair's own `predict`: works for every SequenceTagger, at Flair's speed."""

    name = "flair"

    def __init__(self, tagger, batch_size: int = 32) -> None:
        self.tagger = tagger
        self.batch_size = batch_size
        self.span_scorer = None  # as FastSequenceTagger.span_scorer

    def predict(self, sentences: list[list[str]]) -> list[list[TokenSpan]]:
        from flair.data import Sentence as FlairSentence

        flair_sentences = [FlairSentence(tokens) for tokens in sentences if tokens]
        if flair_sentences:
            self.tagger.predict(
                flair_sentences, mini_batch_size=self.batch_size, embedding_storage_mode="none"
            )
        results: list[list[TokenSpan]] = []
        filled = iter(flair_sentences)
        label_type = self.tagger.label_type
        for tokens in sentences:
            if not tokens:
                results.append([])
                continue
            sentence = next(filled)
            results.append(flair_spans(sentence, label_type))
        if self.span_scorer is not None and flair_sentences:
            rescored = iter(
                self.span_scorer.rescore_flair(
                    self.tagger,
                    flair_sentences,
                    [found for found, tokens in zip(results, sentences) if tokens],
                    self.batch_size,
                )
            )
            results = [next(rescored) if tokens else [] for tokens in sentences]
        return results


# Tokens per forward pass of the fast engine: smaller batches suit a CPU's caches (chosen with
# `annotator bench`), a GPU wants larger ones.
CPU_TOKENS_PER_BATCH = 8192


GPU_TOKENS_PER_BATCH = 16384


def make_engine(
    tagger,
    batch_size: int = 32,
    device=None,
    engine: str = "auto",
    span_scores: str = "auto",
    precision: str = "fp32",
) -> Engine:
    """The fast engine where it supports the model, else Flair's predict (said once, in the log).

    `span_scores`: "auto" scores spans by their calibrated CRF marginals where the model carries
    a calibration map (else Flair's scores); "marginal" by uncalibrated marginals; "flair" by
    Flair's scores. `precision`: the fast engine's (`annotator.tagging.precision`); Flair's
    predict runs in float32.
    """
    from annotator.tagging.calibration import SpanScorer

    if getattr(tagger, "name", None) == "numpy":  # a NumpyTagger: its own engine
        chosen: Engine = tagger
    else:
        chosen = _make_engine(tagger, batch_size, device, engine, precision)
    chosen.span_scorer = SpanScorer.for_tagger(tagger, span_scores)
    return chosen


def _make_engine(tagger, batch_size: int, device, engine: str, precision: str) -> Engine:
    if engine == "flair":
        return _flair_engine(tagger, batch_size, precision)
    if engine == "numpy":
        from annotator.errors import ModelError

        raise ModelError("the numpy engine runs only exported models it covers (see --engine)")
    import torch

    from annotator.tagging.fast import FastSequenceTagger
    from annotator.tagging.precision import resolve_precision

    reason = FastSequenceTagger.unsupported_reason(tagger)
    if reason is None:
        where = torch.device(device) if device is not None else tagger.linear.weight.device
        tokens = CPU_TOKENS_PER_BATCH if where.type == "cpu" else GPU_TOKENS_PER_BATCH
        fast = FastSequenceTagger(tagger, device=device, max_tokens_per_batch=tokens)
        # bfloat16 pays where a character language model's large LSTM is the work
        heavy = any(component.contextual for component in fast.components)
        fast.autocast_dtype = resolve_precision(precision, where, worthwhile=heavy)
        return fast
    if engine == "fast":
        from annotator.errors import ModelError

        raise ModelError(f"the fast engine does not support this model: {reason}")
    log.info("fast engine unavailable for this model (%s); using Flair's predict", reason)
    return _flair_engine(tagger, batch_size, precision)


def _flair_engine(tagger, batch_size: int, precision: str) -> FlairEngine:
    if precision == "bf16":
        log.warning("--precision bf16 applies to the fast engine; Flair's predict runs in float32")
    return FlairEngine(tagger, batch_size)


def limit_threads(threads: int) -> None:
    """Each engine's compute threads, `threads` at most: numpy's BLAS (the numpy engine), and
    torch's intra-op threads, set without importing torch where it is not loaded yet (through
    the variables it reads when it is)."""
    from threadpoolctl import threadpool_limits

    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)  # libraries loaded from now on
    threadpool_limits(threads)  # those loaded already
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def entities_of(text: str, sentences: list[Sentence], spans: list[list[TokenSpan]]) -> list[Entity]:
    """Token spans → entities with character offsets into `text`."""
    entities = []
    for number, (sentence, found) in enumerate(zip(sentences, spans)):
        for first, end, label, score in found:
            start, stop = sentence.starts[first], sentence.ends[end - 1]
            entities.append(
                Entity(
                    start=start,
                    end=stop,
                    text=text[start:stop],
                    label=label,
                    score=score,
                    sentence=number,
                )
            )
    return entities


def tagged_string(text: str, entities: list[Entity]) -> str:
    """The text with each entity followed by its label, as Flair's `to_tagged_string` shows it."""
    parts, position = [], 0
    for entity in sorted(entities, key=lambda e: e.start):
        parts.append(text[position : entity.end])
        parts.append(f" <{entity.label}>")
        position = entity.end
    parts.append(text[position:])
    return "".join(parts)
