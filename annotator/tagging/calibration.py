"""Span scores that mean what they say.

A user filters with ``--min-score``; the score is only useful if spans scored s are right
about s of the time. Flair's span score (the mean over the span's tokens of a softmax of the
Viterbi scores) is no probability. Here a span is scored by its CRF marginal -- the probability
that exactly that labelled span is in the sentence, by forward-backward -- through a monotone
map fitted on a held-out split and stored in the model's card (`annotator calibrate`); models
without a map keep Flair's scores. The expected calibration error (ECE, equal-width score bins)
says how far scores are from the share of spans that are right.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from annotator.records import TokenSpan
from annotator.tagging.crf import START_TAG, STOP_TAG, forward_backward_packed
from annotator.tagging.packed import Packing

BINS = 10
#: where a model's card keeps its calibration map
CARD_KEY = "annotator_calibration"
#: a span of the packed batch: its sentence (packed column), the packed rows of its tokens, label
PackedSpan = tuple[int, list[int], str]


def reliability(
    scores: Sequence[float], correct: Sequence[bool], bins: int = BINS
) -> dict[str, Any]:
    """ECE over `bins` equal-width bins (weighted by the spans in each), the share correct of
    spans scored >= 0.9, and per bin: count, mean score, share correct (for the diagram)."""
    table = [[0, 0.0, 0] for _ in range(bins)]  # count, score sum, correct
    for value, right in zip(scores, correct, strict=True):
        row = table[min(int(value * bins), bins - 1)]
        row[0] += 1
        row[1] += value
        row[2] += bool(right)
    total = len(scores)
    ece = sum(abs(s - c) for _, s, c in table) / total if total else 0.0
    high = [right for value, right in zip(scores, correct) if value >= 0.9]
    return {
        "spans": total,
        "ece": ece,
        "share_correct_at_0.9": sum(high) / len(high) if high else None,
        "spans_at_0.9": len(high),
        "bins": [
            {
                "low": i / bins,
                "high": (i + 1) / bins,
                "count": n,
                "mean_score": s / n if n else None,
                "share_correct": c / n if n else None,
            }
            for i, (n, s, c) in enumerate(table)
        ],
    }


def fit_isotonic(
    scores: Sequence[float], correct: Sequence[bool]
) -> tuple[list[float], list[float]]:
    """A non-decreasing map score → share correct by pool-adjacent-violators, as breakpoints
    (x, y) for linear interpolation (clamped at the ends)."""
    blocks: list[list[float]] = []  # [sum of x, sum of correct, count]
    # spans of one score are one block: sorted one by one, the wrong ones would go below the
    # right ones and the map would give that score two shares, neither of them its own
    for x, tied in itertools.groupby(sorted(zip(scores, correct)), key=lambda pair: pair[0]):
        rights = [right for _, right in tied]
        blocks.append([x * len(rights), float(sum(rights)), float(len(rights))])
        while len(blocks) > 1 and blocks[-2][1] / blocks[-2][2] >= blocks[-1][1] / blocks[-1][2]:
            x_sum, c_sum, n = blocks.pop()
            blocks[-1][0] += x_sum
            blocks[-1][1] += c_sum
            blocks[-1][2] += n
    return [b[0] / b[2] for b in blocks], [b[1] / b[2] for b in blocks]


#: the logits (log odds) at which a fitted sigmoid is tabulated, as breakpoints for `apply_map`
SIGMOID_GRID = np.linspace(-16.0, 16.0, 129)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0, -z))  # without overflow at large |z|


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1 - p))


def fit_sigmoid(
    scores: Sequence[float], correct: Sequence[bool]
) -> tuple[list[float], list[float]]:
    """Platt scaling of the scores' log odds: P(right) = sigmoid(a * logit(score) + b), fitted
    by Newton's method (logistic regression, two parameters), so that a small calibration set
    gives a smooth map where isotonic steps would follow its noise. The targets are Platt's
    (right: (n+1)/(n+2), wrong: 1/(m+2) for n right and m wrong spans), which keeps the fit
    finite where a score separates right from wrong. Tabulated as breakpoints (x, y) for
    `apply_map`; a slope below 0 is clamped to 0, so the map never decreases."""
    clipped = np.clip(np.asarray(scores, dtype=np.float64), 1e-7, 1 - 1e-7)
    features = np.stack([_logit(clipped), np.ones_like(clipped)], axis=1)
    right = np.asarray(correct, dtype=bool)
    n, m = int(right.sum()), int((~right).sum())
    target = np.where(right, (n + 1) / (n + 2), 1 / (m + 2))

    def loss(w: np.ndarray) -> float:  # the log loss, computed without overflow
        z = features @ w
        return float(np.mean(np.logaddexp(0, z) - target * z))

    weights = np.zeros(2)
    for _ in range(100):
        p = _sigmoid(features @ weights)
        hessian = features.T @ (features * (p * (1 - p))[:, None]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hessian, features.T @ (target - p))
        size, current = 1.0, loss(weights)  # halved until the loss falls: a full step can overshoot
        while size > 1e-6 and loss(weights + size * step) > current:
            size /= 2
        weights = weights + size * step
        if np.abs(size * step).max() < 1e-10:
            break
    if weights[0] < 0:  # scores that say nothing: every span gets the share right
        weights = np.array([0.0, _logit(target.mean())])  # Platt's targets: strictly in (0, 1)
    y = _sigmoid(weights[0] * SIGMOID_GRID + weights[1])
    return _sigmoid(SIGMOID_GRID).tolist(), y.tolist()


#: how `annotator calibrate` can fit its map
FITS = {"sigmoid": fit_sigmoid, "isotonic": fit_isotonic}


def out_of_fold_ece(
    scores: Sequence[float], correct: Sequence[bool], method: str, folds: int = 5, repeats: int = 5
) -> float:
    """The ECE a `method` map reaches on spans it was not fitted on: each fold's spans scored
    by the map fitted on the others, averaged over `repeats` seeded shuffles. The in-sample ECE
    flatters a map that follows its split's noise; this is what a new split would see. NaN
    for fewer spans than folds: no fold would be fitted on enough of them."""
    values, right = np.asarray(scores, dtype=np.float64), np.asarray(correct, dtype=bool)
    if len(values) < folds:
        return float("nan")
    rng = np.random.default_rng(0)
    eces = []
    for _ in range(repeats):
        fold = rng.permutation(len(values)) % folds
        mapped = np.empty(len(values))
        for k in range(folds):
            x, y = FITS[method](values[fold != k].tolist(), right[fold != k].tolist())
            mapped[fold == k] = apply_map({"x": x, "y": y}, values[fold == k].tolist())
        eces.append(reliability(mapped.tolist(), right.tolist())["ece"])
    return float(np.mean(eces))


def apply_map(calibration: dict[str, Any] | None, values: list[float]) -> list[float]:
    if not calibration or not values:
        return values
    return np.interp(values, calibration["x"], calibration["y"]).tolist()


class SpanMarginals:
    """P(exactly this labelled span) under the CRF, for BIOES taggers: the probability mass of
    all tag sequences holding its path (S-L, or B-L I-L ... E-L), by forward-backward
    (`annotator.tagging.crf.forward_backward_packed`)."""

    def __init__(self, tags: list[str], transitions, start_index: int, stop_index: int) -> None:
        self.index = {tag: i for i, tag in enumerate(tags)}
        self.transitions = transitions
        self.start_index, self.stop_index = start_index, stop_index

    @staticmethod
    def supported(tags: list[str]) -> bool:
        return any(tag.startswith("S-") for tag in tags) and any(
            tag.startswith("E-") for tag in tags
        )

    def path(self, label: str, length: int) -> list[int]:
        if length == 1:
            return [self.index[f"S-{label}"]]
        inside = [self.index[f"I-{label}"]] * (length - 2)
        return [self.index[f"B-{label}"], *inside, self.index[f"E-{label}"]]

    def __call__(self, emissions, lengths, spans: list[PackedSpan]) -> list[float]:
        """Marginals of `spans` in a packed batch of sentences of `lengths` (sorted,
        descending), computed in float64: in float32 the forward and backward sums of a long
        sentence lose the digits that tell a marginal of 0.996 from 1.0, where a calibration
        map needs them."""
        if not spans:
            return []
        emissions = np.asarray(emissions, dtype=np.float64)
        transitions = np.asarray(self.transitions, dtype=np.float64)
        alpha, beta, log_z = forward_backward_packed(
            emissions, lengths, transitions, self.start_index, self.stop_index
        )
        rows, tags, owners, firsts = [], [], [], []
        for number, (_, span_rows, label) in enumerate(spans):
            for offset, tag in enumerate(self.path(label, len(span_rows))):
                rows.append(span_rows[offset])
                tags.append(tag)
                owners.append(number)
                firsts.append(offset == 0)
        rows_a, tags_a, first_a = np.array(rows), np.array(tags), np.array(firsts)
        # a span's path score: alpha at its first token, then transition + emission per token
        steps = np.where(
            first_a,
            alpha[rows_a, tags_a],
            transitions[tags_a, np.roll(tags_a, 1)] + emissions[rows_a, tags_a],
        )
        total = np.bincount(owners, weights=steps, minlength=len(spans))
        last = np.append(first_a[1:], True)
        total += beta[rows_a[last], tags_a[last]]
        sentence_of = np.array([column for column, _, _ in spans])
        return np.minimum(np.exp(total - log_z[sentence_of]), 1.0).tolist()


class SpanScorer:
    """Span scores for a BIOES CRF tagger: its span marginals, through the model's calibration
    map when it has one. Replaces Flair's score (the softmax of Viterbi scores at each token)."""

    def __init__(self, tagger, calibrated: bool = True) -> None:
        dictionary = tagger.label_dictionary
        transitions = tagger.crf.transitions
        if hasattr(transitions, "detach"):  # the torch engines' tagger; the numpy engine's is numpy
            transitions = transitions.detach().float().cpu().numpy()
        self.marginals = SpanMarginals(
            dictionary.get_items(),
            transitions,
            dictionary.get_idx_for_item(START_TAG),
            dictionary.get_idx_for_item(STOP_TAG),
        )
        card = getattr(tagger, "model_card", None) or {}
        self.calibration = card.get(CARD_KEY) if calibrated else None

    @staticmethod
    def for_tagger(tagger, span_scores: str = "auto") -> SpanScorer | None:
        """The scorer `span_scores` asks for, where the model's tags allow: "auto" where the
        model carries a calibration map (calibrated marginals), "marginal" always (raw
        marginals); None for "flair" and otherwise (Flair's scores)."""
        card = getattr(tagger, "model_card", None) or {}
        wanted = span_scores == "marginal" or (span_scores == "auto" and CARD_KEY in card)
        if (
            not wanted
            or not getattr(tagger, "use_crf", False)
            or not SpanMarginals.supported(tagger.label_dictionary.get_items())
        ):
            return None
        return SpanScorer(tagger, calibrated=span_scores == "auto")

    def rescore_packed(
        self, emissions, lengths: list[int], flat_to_packed, spans: list[list[TokenSpan]]
    ) -> list[list[TokenSpan]]:
        """`spans` of a packed batch (one list per sentence, sentences sorted by length,
        descending) with new scores."""
        to_packed = np.asarray(flat_to_packed)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        wanted = [
            (column, to_packed[starts[column] + first : starts[column] + end].tolist(), label)
            for column, found in enumerate(spans)
            for first, end, label, _ in found
        ]
        values = iter(apply_map(self.calibration, self.marginals(emissions, lengths, wanted)))
        return [
            [(first, end, label, next(values)) for first, end, label, _ in found] for found in spans
        ]

    def rescore_flair(self, tagger, sentences, spans, batch_size: int = 32):
        """The same scores for Flair's predict: emissions from the tagger's own forward pass
        (the input of its CRF module)."""
        import torch

        captured: list = []
        hook = tagger.crf.register_forward_hook(
            lambda module, inputs, output: captured.append(inputs[0])
        )
        # Flair's forward wants its sentences sorted by length, descending; so does packing
        order = sorted(range(len(sentences)), key=lambda i: -len(sentences[i]))
        result: list = [None] * len(sentences)
        try:
            with torch.no_grad():
                for begin in range(0, len(order), batch_size):
                    chunk = order[begin : begin + batch_size]
                    batch = [sentences[i] for i in chunk]
                    captured.clear()
                    tagger.forward(*tagger._prepare_tensors(batch))
                    for sentence in batch:
                        sentence.clear_embeddings()
                    lengths = [len(sentence) for sentence in batch]
                    packing = Packing.of(np.asarray(lengths))
                    padded = captured[0].float().cpu().numpy()
                    emissions = padded[packing.sentence, packing.step]
                    rescored = self.rescore_packed(
                        emissions, lengths, packing.flat_to_packed, [spans[i] for i in chunk]
                    )
                    for i, found in zip(chunk, rescored):
                        result[i] = found
        finally:
            hook.remove()
        return result
