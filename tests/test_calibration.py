"""Span marginals from the CRF, the calibration map, and the scores the engines give with it."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch

from annotator.tagging.calibration import (
    SpanMarginals,
    apply_map,
    fit_isotonic,
    reliability,
)
from annotator.tagging.crf import forward_backward_packed

TAGS = ["O", "S-PER", "B-PER", "E-PER", "I-PER", "S-LOC", "<START>", "<STOP>"]
START, STOP = TAGS.index("<START>"), TAGS.index("<STOP>")


def _path_score(tags, emissions, transitions) -> float:
    score = transitions[tags[0], START] + emissions[0][tags[0]]
    for t in range(1, len(tags)):
        score += transitions[tags[t], tags[t - 1]] + emissions[t][tags[t]]
    return float(score + transitions[STOP, tags[-1]])


def _packed(sentences):
    """Time-major rows of sentences sorted by length (descending), and their lengths."""
    longest = len(sentences[0])
    sizes = [sum(len(s) > t for s in sentences) for t in range(longest)]
    rows = [sentences[c][t] for t in range(longest) for c in range(sizes[t])]
    return torch.stack(rows), [len(s) for s in sentences]


def test_span_marginals_equal_brute_force_enumeration():
    generator = torch.Generator().manual_seed(3)
    transitions = torch.randn(len(TAGS), len(TAGS), generator=generator, dtype=torch.float64)
    sentences = [
        torch.randn(length, len(TAGS), generator=generator, dtype=torch.float64)
        for length in (4, 3, 1)
    ]
    emissions, lengths = _packed(sentences)
    sizes = [sum(n > t for n in lengths) for t in range(lengths[0])]
    offsets = [0, *itertools.accumulate(sizes)][:-1]
    marginals = SpanMarginals(TAGS, transitions, START, STOP)
    _, beta, log_z = forward_backward_packed(emissions, lengths, transitions, START, STOP)
    for column, sentence in enumerate(sentences):
        length = len(sentence)
        paths = {
            tags: math.exp(_path_score(tags, sentence, transitions))
            for tags in itertools.product(range(len(TAGS)), repeat=length)
        }
        total = sum(paths.values())
        assert float(log_z[column]) == pytest.approx(math.log(total))
        # the backward pass reaches the same partition from the sentence's first token
        first_row = emissions[column] + beta[column] + transitions[:, START]
        assert float(torch.logsumexp(first_row, 0)) == pytest.approx(math.log(total))
        spans = [
            (first, end, label)
            for first in range(length)
            for end in range(first + 1, length + 1)
            for label in ("PER", "LOC")
            if label == "PER" or end == first + 1
        ]
        wanted = [
            (column, [offsets[t] + column for t in range(first, end)], label)
            for first, end, label in spans
        ]
        for (first, end, label), value in zip(spans, marginals(emissions, lengths, wanted)):
            path = tuple(marginals.path(label, end - first))
            expected = sum(p for tags, p in paths.items() if tags[first:end] == path) / total
            assert value == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_marginals_of_alternatives_at_a_token_sum_to_one():
    """Token 0 is O or starts a span of some length and label: with the transitions of invalid
    BIOES sequences forbidden, those alternatives' probabilities add up to one."""
    transitions = torch.randn(len(TAGS), len(TAGS), dtype=torch.float64)
    opens = {"<START>", "O", "S-PER", "E-PER", "S-LOC"}  # tags after which a span may start
    for to, to_tag in enumerate(TAGS):
        for source, from_tag in enumerate(TAGS):
            inside = to_tag in ("I-PER", "E-PER")
            if (
                to_tag == "<START>"
                or from_tag == "<STOP>"
                or inside != (from_tag in ("B-PER", "I-PER"))
                or (not inside and from_tag not in opens)
                or (to_tag == "<STOP>" and from_tag == "<START>")
            ):
                transitions[to, source] = -1e4
    sentence = torch.randn(4, len(TAGS), dtype=torch.float64)
    emissions, lengths = _packed([sentence])
    marginals = SpanMarginals(TAGS, transitions, START, STOP)
    spans = [(0, list(range(end)), "PER") for end in range(1, 5)] + [(0, [0], "LOC")]
    alpha, beta, log_z = forward_backward_packed(emissions, lengths, transitions, START, STOP)
    outside = math.exp(float(alpha[0, 0] + beta[0, 0] - log_z[0]))
    assert sum(marginals(emissions, lengths, spans)) + outside == pytest.approx(1.0)


def test_isotonic_map_is_monotone_and_fits_shares():
    rng = random.Random(0)
    scores = [rng.random() for _ in range(2000)]
    correct = [rng.random() < s**2 for s in scores]  # overconfident scores
    x, y = fit_isotonic(scores, correct)
    assert all(a <= b for a, b in zip(x, x[1:])) and all(a <= b for a, b in zip(y, y[1:]))
    grid = [i / 100 for i in range(101)]
    mapped = apply_map({"x": x, "y": y}, grid)
    assert all(a <= b for a, b in zip(mapped, mapped[1:]))
    before = reliability(scores, correct)["ece"]
    after = reliability(apply_map({"x": x, "y": y}, scores), correct)["ece"]
    assert before > 0.1 and after < 0.02
