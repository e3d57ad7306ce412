"""Span marginals from the CRF, the calibration map, and the scores the engines give with it."""

from __future__ import annotations

import itertools
import math
import random
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from annotator.cli import cli
from annotator.tagging.calibration import (
    CARD_KEY,
    SpanMarginals,
    apply_map,
    fit_isotonic,
    fit_sigmoid,
    out_of_fold_ece,
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
    return np.stack(rows), [len(s) for s in sentences]


def test_span_marginals_equal_brute_force_enumeration():
    generator = np.random.default_rng(3)
    transitions = generator.standard_normal((len(TAGS), len(TAGS)))
    sentences = [generator.standard_normal((length, len(TAGS))) for length in (4, 3, 1)]
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
        assert float(np.logaddexp.reduce(first_row)) == pytest.approx(math.log(total))
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
    transitions = np.random.default_rng(4).standard_normal((len(TAGS), len(TAGS)))
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
    sentence = np.random.default_rng(6).standard_normal((4, len(TAGS)))
    emissions, lengths = _packed([sentence])
    marginals = SpanMarginals(TAGS, transitions, START, STOP)
    spans = [(0, list(range(end)), "PER") for end in range(1, 5)] + [(0, [0], "LOC")]
    alpha, beta, log_z = forward_backward_packed(emissions, lengths, transitions, START, STOP)
    outside = math.exp(float(alpha[0, 0] + beta[0, 0] - log_z[0]))
    assert sum(marginals(emissions, lengths, spans)) + outside == pytest.approx(1.0)


def test_span_marginals_of_a_float32_model_are_summed_in_float64():
    """A long sentence of confident float32 emissions, as a trained model gives them: its
    marginals are those of the same numbers in float64 (in float32 the sums lose the digits
    that tell 0.999 from 1.0)."""
    generator = np.random.default_rng(5)
    transitions = generator.standard_normal((len(TAGS), len(TAGS)), dtype=np.float32)
    sentence = 12 * generator.standard_normal((240, len(TAGS)), dtype=np.float32)
    emissions, lengths = _packed([sentence])
    spans = [(0, [t], label) for t in range(0, 240, 7) for label in ("PER", "LOC")]
    found = SpanMarginals(TAGS, transitions, START, STOP)(emissions, lengths, spans)
    exact = SpanMarginals(TAGS, transitions.astype(np.float64), START, STOP)(
        emissions.astype(np.float64), lengths, spans
    )
    assert found == pytest.approx(exact, rel=1e-12, abs=1e-15)
    assert any(0.999 < value < 1.0 for value in exact)


def test_isotonic_map_gives_tied_scores_their_share():
    """Spans of one score are one block, however their right and wrong ones sort: 1.0 maps to
    the share right at 1.0, not to certainty (real marginals tie at 1.0 by the thousand)."""
    scores = [1.0] * 100 + [0.5] * 100
    correct = [n < 80 for n in range(100)] + [n < 50 for n in range(100)]
    x, y = fit_isotonic(scores, correct)
    assert apply_map({"x": x, "y": y}, [0.5, 1.0]) == pytest.approx([0.5, 0.8])


def test_out_of_fold_ece_of_fewer_spans_than_folds_is_not_a_number():
    assert math.isnan(out_of_fold_ece([0.9], [True], "isotonic"))
    assert (
        out_of_fold_ece([0.9, 0.2, 0.7, 0.4, 0.6], [True, False, True, False, True], "sigmoid") >= 0
    )


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


def _sigmoid(value: float) -> float:
    return 1 / (1 + math.exp(-value))


def _logit(value: float) -> float:
    return math.log(value / (1 - value))


def test_sigmoid_map_recovers_the_log_odds_line_and_is_monotone():
    """Spans right with probability sigmoid(0.5 * logit(score) - 0.3): the fit finds that line
    (so its map is the truth) and brings the ECE down."""
    rng = random.Random(1)
    scores = [rng.uniform(0.01, 0.999) for _ in range(5000)]
    correct = [rng.random() < _sigmoid(0.5 * _logit(s) - 0.3) for s in scores]
    x, y = fit_sigmoid(scores, correct)
    assert all(a < b for a, b in zip(x, x[1:])) and all(a <= b for a, b in zip(y, y[1:]))
    probes = [0.05, 0.3, 0.5, 0.8, 0.95, 0.99]
    truth = [_sigmoid(0.5 * _logit(p) - 0.3) for p in probes]
    assert apply_map({"x": x, "y": y}, probes) == pytest.approx(truth, abs=0.03)
    before = reliability(scores, correct)["ece"]
    after = reliability(apply_map({"x": x, "y": y}, scores), correct)["ece"]
    assert before > 0.1 and after < 0.02


def test_sigmoid_map_of_scores_that_say_nothing_is_the_share_right():
    """Scores that fall as correctness rises get no decreasing map: every span scores the
    share right; certain scores (0 and 1) do not break the fit."""
    scores = [0.0, 0.1, 0.2, 0.8, 0.9, 1.0] * 50
    correct = [True, True, False, True, False, False] * 50
    x, y = fit_sigmoid(scores, correct)
    assert y == pytest.approx([0.5] * len(y))
    assert len(x) == len(y) and x[0] < 0.001 and x[-1] > 0.999


def test_sigmoid_map_stays_finite_where_a_score_separates_right_from_wrong():
    """Every span under 0.5 wrong, every one above right: Platt's targets keep the slope
    finite (no overflow), and the map stays short of certainty on 20 spans."""
    scores = [0.2, 0.3, 0.4] * 3 + [0.7, 0.8, 0.9, 0.99] * 3
    correct = [score > 0.5 for score in scores]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x, y = fit_sigmoid(scores, correct)
    low, high = apply_map({"x": x, "y": y}, [0.2, 0.99])
    assert 0.0 < low < 0.2 and 0.9 < high < 1.0


def test_out_of_fold_ece_scores_maps_on_spans_they_were_not_fitted_on():
    """Small splits whose spans are right with probability sigmoid(0.5 * logit(score) - 0.3):
    the isotonic map fits its own spans closely but follows their noise, so on spans left out
    of the fit the two-parameter sigmoid does better (on average over ten splits); on a large
    split both maps learn the truth. The folds are seeded: the same spans, the same figure."""
    rng = random.Random(0)

    def split(size: int) -> tuple[list[float], list[bool]]:
        scores = [rng.uniform(0.01, 0.999) for _ in range(size)]
        return scores, [rng.random() < _sigmoid(0.5 * _logit(s) - 0.3) for s in scores]

    small = [split(300) for _ in range(10)]
    isotonic = [out_of_fold_ece(s, c, "isotonic") for s, c in small]
    sigmoid = [out_of_fold_ece(s, c, "sigmoid") for s, c in small]
    x, y = fit_isotonic(*small[0])
    in_sample = reliability(apply_map({"x": x, "y": y}, small[0][0]), small[0][1])["ece"]
    assert sum(sigmoid) < 0.9 * sum(isotonic) and in_sample < isotonic[0]
    assert out_of_fold_ece(*small[0], "isotonic") == isotonic[0]
    scores, correct = split(4000)
    assert reliability(scores, correct)["ece"] > 0.08
    assert out_of_fold_ece(scores, correct, "isotonic") < 0.03
    assert out_of_fold_ece(scores, correct, "sigmoid") < 0.03


def test_calibrated_model_survives_save_and_reload_and_engines_agree(
    tiny_model, synthetic_corpus, tmp_path, single_thread
):
    from annotator.models import load_tagger
    from annotator.tagging.engines import make_engine

    output = tmp_path / "calibrated.pt"
    outcome = CliRunner().invoke(
        cli,
        ["calibrate", str(tiny_model), str(synthetic_corpus), "-o", str(output), "--device", "cpu"],
    )
    assert outcome.exit_code == 0, outcome.output
    assert (
        "ECE of the span marginals" in outcome.output and "calibrated (sigmoid)" in outcome.output
    )
    tagger = load_tagger(output, device="cpu")
    card = tagger.model_card[CARD_KEY]
    assert card["method"] == "sigmoid"
    assert "ECE on spans left out of the fit (5 folds, 5 repeats): sigmoid 0." in outcome.output
    assert card["y"] == sorted(card["y"]) and len(card["x"]) == len(card["y"]) >= 1
    sentences = [
        s.split()
        for s in [
            "John Smith works for Siemens in Paris .",
            "The French minister met Anna Berg in Oslo .",
            "Prices rose .",
        ]
    ]
    fast = make_engine(tagger, engine="fast").predict(sentences)
    flair = make_engine(tagger, engine="flair").predict(sentences)
    marginal = make_engine(tagger, engine="fast", span_scores="marginal").predict(sentences)
    plain = make_engine(tagger, engine="fast", span_scores="flair").predict(sentences)
    flair_marginal = make_engine(tagger, engine="flair", span_scores="marginal").predict(sentences)
    # a model without a map keeps Flair's scores
    assert make_engine(load_tagger(tiny_model, device="cpu"), engine="fast").span_scorer is None
    assert [s[3] for f in marginal for s in f] == pytest.approx(
        [s[3] for f in flair_marginal for s in f], abs=1e-4
    )
    assert (
        [[s[:3] for s in f] for f in fast]
        == [[s[:3] for s in f] for f in flair]
        == [[s[:3] for s in f] for f in plain]
    )
    assert sum(map(len, fast)) >= 4
    for f, g, m in zip(fast, flair, marginal):
        for a, b, c in zip(f, g, m):
            assert a[3] == pytest.approx(b[3], abs=1e-3)
            assert a[3] == pytest.approx(apply_map(card, [c[3]])[0], abs=1e-6)
            assert 0.0 <= c[3] <= 1.0


def test_evaluate_raw_report_draws_the_reliability_diagram(
    tiny_model, synthetic_corpus, tmp_path, single_thread
):
    report = tmp_path / "report"
    outcome = CliRunner().invoke(
        cli,
        [
            "evaluate",
            str(tiny_model),
            str(synthetic_corpus),
            "--raw",
            "--report",
            str(report),
            "--device",
            "cpu",
            "--json",
            str(tmp_path / "both.json"),
        ],
    )
    assert outcome.exit_code == 0, outcome.output
    assert "end to end on raw text" in outcome.output
    assert (report / "reliability.png").stat().st_size > 1000
    assert (report / "raw.json").exists() and (report / "report.json").exists()
    import json

    data = json.loads((tmp_path / "both.json").read_text())
    assert set(data) == {"token_level", "raw"} and "ece" in data["raw"]["calibration"]


def test_calibrate_refuses_a_split_where_the_model_finds_nothing(tiny_model, tmp_path):
    """No predicted span leaves nothing to fit: one clear message, no empty map saved (which
    would break every later annotate)."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for split in ("train", "dev", "test"):
        (corpus / f"{split}.txt").write_text(
            "-DOCSTART- -X- -X- O\n\nthe DT O B-PER\nof IN O O\n. . O O\n", encoding="utf-8"
        )
    outcome = CliRunner().invoke(
        cli, ["calibrate", str(tiny_model), str(corpus), "-o", str(tmp_path / "c.pt")]
    )
    assert outcome.exit_code == 1
    assert "finds no entity in dev: there is nothing to calibrate" in outcome.output
    assert not (tmp_path / "c.pt").exists()
