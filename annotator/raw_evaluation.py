"""End-to-end evaluation on raw text: what a user of `annotate` actually gets; and the
calibration map of span scores, fitted the same way.

Flair's evaluation scores a tagger on the corpus's own tokens, which a user never gives us.
Here each split is rebuilt as plain text (tokens joined by single spaces), either one text per
``-DOCSTART-`` document (sentences joined by a newline, so spaCy's sentence splitting is
exercised) or one text per sentence, run through :class:`annotator.pipeline.Annotator` -- the
code `annotate` runs -- and the predicted character spans are compared with the gold ones.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from annotator.corpus import (
    DEFAULT_COLUMN_FORMAT,
    Tagged,
    check_column_format,
    find_split_files,
    held_out_dev,
    holds_out,
    read_tagged_documents,
    token_spans,
)
from annotator.errors import AnnotatorError
from annotator.evaluation import EvalResult, Scores
from annotator.files import write_json_atomically
from annotator.tagging.calibration import (
    CARD_KEY,
    FITS,
    SpanScorer,
    apply_map,
    out_of_fold_ece,
    reliability,
)
from annotator.views.figures import plot_reliability

CharSpan = tuple[int, int, str]  # start, end (exclusive), label
UNITS = ("document", "sentence")


@dataclass
class GoldText:
    """A rebuilt text and its gold entities as character spans."""

    text: str
    spans: list[CharSpan]


@dataclass
class RawResult(EvalResult):
    """Span scores on rebuilt raw text, with every predicted span's score and correctness
    (the calibration statistics are computed from them)."""

    unit: str = "document"
    documents: int = 0
    scored: list[tuple[float, bool]] = field(default_factory=list, repr=False)

    def reliability(self) -> dict[str, Any]:
        return reliability([s for s, _ in self.scored], [c for _, c in self.scored])

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data.pop("scored")
        data["calibration"] = self.reliability()
        return data


def rebuild(
    documents: list[list[Tagged]], unit: str = "document", separator: str = "\n"
) -> list[GoldText]:
    """Raw texts with gold character spans: tokens joined by one space; per document, sentences
    joined by `separator`; per sentence, one text each."""
    if unit not in UNITS:
        raise AnnotatorError(f"unit must be one of {', '.join(UNITS)}, not {unit!r}")
    groups = documents if unit == "document" else [[s] for document in documents for s in document]
    texts = []
    for group in groups:
        parts: list[str] = []
        spans: list[CharSpan] = []
        offset = 0
        for number, sentence in enumerate(group):
            if number:
                parts.append(separator)
                offset += len(separator)
            starts = []
            for position, (token, _) in enumerate(sentence):
                if position:
                    parts.append(" ")
                    offset += 1
                starts.append(offset)
                parts.append(token)
                offset += len(token)
            for first, end, label in token_spans([tag for _, tag in sentence]):
                spans.append((starts[first], starts[end - 1] + len(sentence[end - 1][0]), label))
        texts.append(GoldText("".join(parts), spans))
    return texts


def score(
    gold: list[list[CharSpan]],
    predicted: list[list[tuple[int, int, str, float]]],
    unit: str = "document",
) -> RawResult:
    """Exact-match (start, end, label) precision/recall/F1 per type, micro and macro."""
    true_positives: Counter = Counter()
    gold_counts: Counter = Counter()
    predicted_counts: Counter = Counter()
    scored: list[tuple[float, bool]] = []
    for gold_spans, found in zip(gold, predicted, strict=True):
        expected = set(gold_spans)
        gold_counts.update(label for _, _, label in gold_spans)
        for start, end, label, value in found:
            predicted_counts[label] += 1
            correct = (start, end, label) in expected
            true_positives[label] += correct
            scored.append((value, correct))
    labels = sorted(set(gold_counts) | set(predicted_counts))
    if not labels:
        raise AnnotatorError(
            "nothing to evaluate: the split has no entities and none were predicted"
        )
    per_type = {
        label: _counted(true_positives[label], predicted_counts[label], gold_counts[label])
        for label in labels
    }
    micro = _counted(
        sum(true_positives.values()), sum(predicted_counts.values()), sum(gold_counts.values())
    )
    macro = Scores(
        *(
            sum(getattr(s, name) for s in per_type.values()) / len(labels)
            for name in ("precision", "recall", "f1")
        ),
        support=micro.support,
    )
    return RawResult(
        micro=micro,
        macro=macro,
        per_type=per_type,
        sentences=0,
        unit=unit,
        documents=len(gold),
        scored=scored,
    )


def _counted(true_positives: int, predicted: int, gold: int) -> Scores:
    precision = true_positives / predicted if predicted else 0.0
    recall = true_positives / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Scores(precision=precision, recall=recall, f1=f1, support=gold)


def evaluate_raw(
    model: str | Path | None,
    corpus_dir: str | Path,
    split: str = "test",
    column_format: str = DEFAULT_COLUMN_FORMAT,
    unit: str = "document",
    batch_size: int = 32,
    device: str = "auto",
    engine: str = "auto",
    span_scores: str = "auto",
    annotator=None,
    precision: str = "fp32",
) -> RawResult:
    """Score the whole annotate pipeline (`Annotator`, or the one given) on a split rebuilt as
    raw text (`span_scores`, `precision`: see `annotator.tagging.engines.make_engine`)."""
    from annotator.pipeline import Annotator

    files = find_split_files(corpus_dir)
    if split not in files:
        raise AnnotatorError(f"{corpus_dir}: has no {split} split")
    check_column_format(files[split], column_format)  # one line, never an IndexError
    annotator = annotator or Annotator(
        None if model is None else str(model),
        device=device,
        batch_size=batch_size,
        engine=engine,
        span_scores=span_scores,
        precision=precision,
    )
    documents = read_tagged_documents(files[split], column_format)
    if holds_out(corpus_dir, split, annotator.tagger):
        numbers = list(range(len(documents)))
        documents = held_out_dev(documents, numbers, annotator.tagger, "documents")
    return score_documents(annotator, documents, unit)


def score_documents(annotator, documents: list[list[Tagged]], unit: str = "document") -> RawResult:
    """An `Annotator` scored on labelled documents given as raw text (see `rebuild`)."""
    texts = rebuild(documents, unit)
    predicted = [
        [(e.start, e.end, e.label, e.score) for e in entities]
        for entities in annotator.annotate_texts(t.text for t in texts)
    ]
    result = score([t.spans for t in texts], predicted, unit)
    result.sentences = sum(len(document) for document in documents)
    return result


def format_raw(result: RawResult) -> str:
    """The per-type table, then what was scored and how well the scores are calibrated."""
    from annotator.evaluation import format_table

    stats = result.reliability()
    high = stats["share_correct_at_0.9"]
    return (
        f"{format_table(result)}\nraw text, one text per {result.unit}: {result.documents} "
        f"texts, {result.sentences} corpus sentences; ECE {stats['ece']:.3f} "
        f"({stats['spans']} spans), spans scored >= 0.9: {stats['spans_at_0.9']}, "
        + (f"{100 * high:.1f}% right" if high is not None else "none")
    )


def write_raw_report(result: RawResult, report_dir: str | Path) -> None:
    """raw.json (scores and calibration statistics) and reliability.png into `report_dir`."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    data = result.to_dict()
    write_json_atomically(report_dir / "raw.json", data)
    plot_reliability(
        data["calibration"], report_dir / "reliability.png", f"raw text per {result.unit}"
    )


def calibrate(
    model: str | Path | None,
    corpus_dir: str | Path,
    output: str | Path,
    split: str = "dev",
    column_format: str | None = None,
    unit: str = "document",
    device: str = "auto",
    method: str = "sigmoid",
) -> dict[str, Any]:
    """Fit the calibration map of MODEL's span marginals on a held-out split, end to end on raw
    text (as `annotate` scores), and save the model with it in its card to `output`. `method`:
    sigmoid (Platt scaling: two parameters, steady on a small split) or isotonic (any monotone
    shape, so it also follows the split's noise)."""
    from annotator.pipeline import Annotator

    annotator = Annotator(
        None if model is None else str(model),
        device=device,
        span_scores="marginal",
        split_process=False,
    )
    tagger = annotator.tagger
    if SpanScorer.for_tagger(tagger, "marginal") is None:
        raise AnnotatorError("calibration needs a CRF tagger with BIOES tags (its span marginals)")
    result = evaluate_raw(
        model,
        corpus_dir,
        split,
        column_format or DEFAULT_COLUMN_FORMAT,
        unit,
        annotator=annotator,
    )
    scores, correct = [s for s, _ in result.scored], [c for _, c in result.scored]
    if not scores:
        raise AnnotatorError(f"the model finds no entity in {split}: there is nothing to calibrate")
    x, y = FITS[method](scores, correct)
    card = {
        "method": method,
        "x": x,
        "y": y,
        "fitted_on": Path(corpus_dir).name
        + (f" {split}" if Path(corpus_dir).is_dir() else "")
        + (" (the documents held out of training)" if holds_out(corpus_dir, split, tagger) else "")
        + f", raw text per {unit}",
        "spans": len(scores),
    }
    # saved as Flair saves a tagger (the fast engine's model may be a Flair-free FlatTagger)
    from annotator.models import load_tagger

    saved = load_tagger(None if model is None else str(model), device="cpu")
    saved.model_card = {**(getattr(saved, "model_card", None) or {}), CARD_KEY: card}
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    saved.save(Path(output))
    return {
        "before": reliability(scores, correct),
        "after": reliability(apply_map(card, scores), correct),
        "out_of_fold_ece": {name: out_of_fold_ece(scores, correct, name) for name in FITS},
    }
