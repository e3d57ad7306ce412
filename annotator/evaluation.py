"""Span-level evaluation: Flair's own numbers, in a shape tables and JSON can use."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from annotator.corpus import DEFAULT_COLUMN_FORMAT, load_corpus, split_sentences
from annotator.errors import AnnotatorError


@dataclass
class Scores:
    precision: float
    recall: float
    f1: float
    support: int


@dataclass
class EvalResult:
    micro: Scores
    macro: Scores
    per_type: dict[str, Scores] = field(default_factory=dict)
    sentences: int = 0
    loss: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _scores(row: dict[str, float]) -> Scores:
    return Scores(precision=float(row["precision"]), recall=float(row["recall"]),
                  f1=float(row["f1-score"]), support=int(row["support"]))


def evaluate_tagger(tagger, sentences, batch_size: int = 64) -> EvalResult:
    """Run Flair's evaluation (exact span match per type) and keep its classification report."""
    sentences = list(sentences)
    result = tagger.evaluate(sentences, gold_label_type=tagger.label_type,
                             mini_batch_size=batch_size, embedding_storage_mode="none")
    report = result.classification_report
    if not report:
        raise AnnotatorError("nothing to evaluate: the split has no entities and none were predicted")
    per_type = {label: _scores(row) for label, row in report.items()
                if label not in ("micro avg", "macro avg", "weighted avg", "accuracy")}
    return EvalResult(micro=_scores(report["micro avg"]), macro=_scores(report["macro avg"]),
                      per_type=dict(sorted(per_type.items())), sentences=len(sentences),
                      loss=float(result.loss))


def evaluate(model: str | Path | None, corpus_dir: str | Path, split: str = "test",
             column_format: str = DEFAULT_COLUMN_FORMAT, batch_size: int = 64,
             device: str = "auto") -> EvalResult:
    """Evaluate a saved tagger on one split of a column corpus."""
    from annotator.models import load_tagger

    corpus = load_corpus(corpus_dir, column_format)
    sentences = split_sentences(corpus, split)
    if sentences is None:
        raise AnnotatorError(f"{corpus_dir}: has no {split} split")
    tagger = load_tagger(model, device=device)
    return evaluate_tagger(tagger, sentences, batch_size)


def format_table(result: EvalResult) -> str:
    """The per-type table, with the micro and macro averages below it."""
    lines = [f"{'type':<12}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    rows = [*result.per_type.items(), ("micro avg", result.micro), ("macro avg", result.macro)]
    for index, (label, s) in enumerate(rows):
        if index == len(result.per_type):
            lines.append("-" * 52)
        lines.append(f"{label:<12}{100 * s.precision:>10.2f}{100 * s.recall:>10.2f}"
                     f"{100 * s.f1:>10.2f}{s.support:>10d}")
    return "\n".join(lines)
