"""What the torch fast engine and the numpy engine share around their arithmetic: sentences
cleaned, sorted and cut into token-bounded batches, word types looked up once, the CRF
decoded (`annotator.tagging.crf`), tags turned into spans as Flair does, span scores
rescored. An engine supplies only its emissions (`PackedEngine._emissions`). No torch here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np

from annotator.records import TokenSpan
from annotator.tagging.crf import START_TAG, STOP_TAG, viterbi_decode_packed
from annotator.tagging.lookup import GrowableColumns, TypeLookup
from annotator.tagging.packed import token_chunks

# tags that Flair's get_spans_from_bio treats as "outside"
_OUTSIDE_SPAN_TAGS = frozenset({"", "O", "_"})
# tags that flair skips when it adds token-level (non-span) predictions
_OUTSIDE_TOKEN_TAGS = frozenset({"O", "_"})


class PackedEngine:
    """An engine over the packed layout: `predict` from `_emissions` (packed, float32 numpy).

    A subclass sets `components` (`TypeLookup`s in Flair's sorted-name order), calls
    `_set_components` and `_set_tags`, and provides `_emissions`, `_predicting` and
    `_transitions`.
    """

    name: str
    components: list[TypeLookup]
    max_tokens_per_batch: int
    max_cached_types: int
    # annotator.tagging.calibration.SpanScorer: span marginals (calibrated) instead of
    # Flair's scores; set by make_engine
    span_scorer = None

    def _set_components(self) -> None:
        self._column_slices: list[slice] = []
        n_cols = 0
        for component in self.components:
            width = component.n_columns
            self._column_slices.append(slice(n_cols, n_cols + width))
            n_cols += width
        self._n_cols = n_cols
        self._reset_type_cache()

    def _set_tags(self, tags: list[str], predict_spans: bool, use_crf: bool) -> None:
        self.tags = tags
        self.predict_spans = predict_spans
        outside = _OUTSIDE_SPAN_TAGS if predict_spans else _OUTSIDE_TOKEN_TAGS
        self._is_outside = np.array([tag in outside for tag in tags], dtype=bool)
        self.use_crf = use_crf
        if use_crf:
            self._start_index = tags.index(START_TAG)
            self._stop_index = tags.index(STOP_TAG)

    # ------------------------------------------------------------------ type cache
    def _reset_type_cache(self) -> None:
        self._type_ids: dict[str, int] = {}
        self._type_columns = GrowableColumns(self._n_cols)
        for component in self.components:
            reset = getattr(component, "reset", None)
            if reset is not None:
                reset()

    def _lookup_types(self, words: list[str]) -> np.ndarray:
        """Word strings -> type ids; new types get their per-component indices computed once."""
        if len(self._type_ids) > self.max_cached_types:
            self._reset_type_cache()
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

    # ------------------------------------------------------------------ the engine's part
    def _predicting(self) -> contextlib.AbstractContextManager:
        """The context a prediction runs in (torch: inference mode, eval mode)."""
        return contextlib.nullcontext()

    def _emissions(self, sentences: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """Packed float32 emissions ``[N, tags]`` of non-empty sentences sorted by length,
        descending, and the packed row of each flat token."""
        raise NotImplementedError

    def _transitions(self) -> np.ndarray:
        """The CRF's transitions ``[to, from]``, float32."""
        raise NotImplementedError

    # ------------------------------------------------------------------ public API
    def batches(
        self, sentences: Sequence[Sequence[str]]
    ) -> Iterator[tuple[list[int], list[list[str]], list[list[int]]]]:
        """Drops empty tokens (flair's Sentence does), sorts by length and cuts token-bounded
        batches.

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
        lengths = np.fromiter((len(c[1]) for c in cleaned), dtype=np.int64, count=len(cleaned))
        for chunk in token_chunks(np.arange(len(cleaned)), lengths, self.max_tokens_per_batch):
            batch = [cleaned[i] for i in chunk]
            yield [c[0] for c in batch], [c[1] for c in batch], [c[2] for c in batch]

    def predict(self, sentences: Sequence[Sequence[str]]) -> list[list[TokenSpan]]:
        """For each sentence (list of token strings), the spans ``(first, end_exclusive, label,
        score)``.

        Token-level taggers (no BIO/BIOES tag dictionary) return one ``(i, i + 1, tag, score)`` per
        token whose tag is not ``O``/``_``, as flair adds token labels for them.
        """
        results: list[list[TokenSpan]] = [[] for _ in sentences]
        with self._predicting():
            for indices, batch_sentences, positions in self.batches(sentences):
                emissions, flat_to_packed = self._emissions(batch_sentences)
                lengths = [len(sentence) for sentence in batch_sentences]
                tags, scores = self.decode_packed(emissions, lengths, flat_to_packed)
                batch_spans = self.spans(tags, scores, lengths)
                if self.span_scorer is not None:
                    batch_spans = self.span_scorer.rescore_packed(
                        emissions, lengths, flat_to_packed, batch_spans
                    )
                for index, spans, original in zip(indices, batch_spans, positions):
                    if original:
                        spans = [
                            (original[a], original[b - 1] + 1, label, score)
                            for a, b, label, score in spans
                        ]
                    results[index] = spans
        return results

    # ------------------------------------------------------------------ decoding
    def decode_packed(
        self, emissions: np.ndarray, lengths: list[int], flat_to_packed: np.ndarray
    ) -> tuple[np.ndarray, list[float]]:
        """Packed emissions -> (tag ids, confidences) in flat order."""
        if self.use_crf:
            tags, confidences = viterbi_decode_packed(
                emissions,
                np.asarray(lengths),
                self._transitions(),
                self._start_index,
                self._stop_index,
            )
        else:  # the softmax's max, and its tag
            shifted = np.exp(emissions - emissions.max(1, keepdims=True))
            tags, confidences = emissions.argmax(1), 1.0 / shifted.sum(1)
        return tags[flat_to_packed], confidences[flat_to_packed].tolist()

    def spans(
        self, tags: np.ndarray, scores: list[float], lengths: list[int]
    ) -> list[list[TokenSpan]]:
        """Per-sentence spans; flair's ``get_spans_from_bio`` runs only on maximal non-O runs.

        Outside tags reset ``get_spans_from_bio``'s whole state, so decoding each run of inside tags
        separately is identical to decoding the full sentence, and the Python work scales with the
        number of entity tokens rather than all tokens.
        """
        n_sentences = len(lengths)
        out: list[list[TokenSpan]] = [[] for _ in range(n_sentences)]
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
        for begin, end, sentence in zip(
            run_starts.tolist(), run_ends.tolist(), run_sentence.tolist()
        ):
            base = begin - int(starts[sentence])
            run_tags = [tag_names[t] for t in tags[begin:end].tolist()]
            run_scores = scores[begin:end]
            if self.predict_spans:
                for token_indices, score, label in spans_from_bio(run_tags, run_scores):
                    out[sentence].append(
                        (base + token_indices[0], base + token_indices[-1] + 1, label, score)
                    )
            else:
                for k, (tag, score) in enumerate(zip(run_tags, run_scores)):
                    out[sentence].append((base + k, base + k + 1, tag, score))
        return out


def spans_from_bio(tags: list[str], scores: list[float]) -> list[tuple[list[int], float, str]]:
    """Flair 0.15.1's ``get_spans_from_bio``, rule for rule, so that spans are decoded without
    importing Flair (3 s of a short job's start): B-/S- start a span, and so does I- (or any
    tag after S-) of another class; a span's label is its tags' classes weighted 1.1 at a start
    and 1.0 after, its score the mean of its tokens'."""
    found: list[tuple[list[int], float, str]] = []
    previous = "O-"
    span: list[int] = []
    span_scores: list[float] = []
    weights: dict[str, float] = {}
    for index, tag in enumerate([*tags, "O"]):
        if tag in _OUTSIDE_SPAN_TAGS:
            tag = "O-"
        inside = tag != "O-"
        starts = tag[:2] in {"B-", "S-"} or (
            inside and previous[2:] != tag[2:] and (tag[:2] == "I-" or previous[2:] == "S-")
        )
        if (starts or not inside) and span:
            found.append((span, sum(span_scores) / len(span_scores), max(weights, key=weights.get)))
            span, span_scores, weights = [], [], {}
        if inside:
            span.append(index)
            span_scores.append(scores[index])
            weights[tag[2:]] = weights.get(tag[2:], 0.0) + (1.1 if starts else 1.0)
        previous = tag
    return found
