"""Span-level evaluation (Flair's own numbers) and the evaluation report's data: each
sentence's predicted spans matched against its gold spans, the confusion of types, and the
report folder (figures, error page, JSON).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from annotator.corpus import (
    DEFAULT_COLUMN_FORMAT,
    document_numbers,
    held_out_dev,
    holds_out,
    load_corpus,
    split_sentences,
)
from annotator.errors import AnnotatorError
from annotator.files import write_atomically, write_json_atomically
from annotator.records import (
    ERROR_KINDS,
    MISSED,
    SPURIOUS,
    LabelledSpan,
    SentenceMatch,
    percent,
)
from annotator.tagging.engines import flair_spans
from annotator.views.figures import plot_confusion, plot_scores
from annotator.views.pages import label_colors, render_errors


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
    return Scores(
        precision=float(row["precision"]),
        recall=float(row["recall"]),
        f1=float(row["f1-score"]),
        support=int(row["support"]),
    )


@contextlib.contextmanager
def flair_bars(show: bool = False, label: str = "evaluating") -> Iterator[None]:
    """Flair's own tqdm bars (label dictionaries, evaluation batches: `0it [00:00, ?it/s]`)
    off for a block, so they never reach a log; with `show`, its evaluation bar is labelled."""
    import flair.file_utils
    import flair.models.sequence_tagger_model
    import flair.nn.model
    from tqdm import tqdm

    def bar(*args, **kwargs):
        kwargs["disable"] = not show
        kwargs.setdefault("desc", label)
        kwargs.setdefault("unit", "batch")
        kwargs.setdefault("leave", False)
        return tqdm(*args, **kwargs)

    modules = (flair.nn.model, flair.models.sequence_tagger_model)
    saved = [module.tqdm for module in modules]
    tqdm_of_flair = flair.file_utils.Tqdm.tqdm
    try:
        for module in modules:
            module.tqdm = bar
        flair.file_utils.Tqdm.tqdm = staticmethod(bar)
        yield
    finally:
        for module, original in zip(modules, saved):
            module.tqdm = original
        flair.file_utils.Tqdm.tqdm = staticmethod(tqdm_of_flair)


def evaluate_tagger(tagger, sentences, batch_size: int = 64, progress: bool = False) -> EvalResult:
    """Run Flair's evaluation (exact span match per type) and keep its classification report."""
    sentences = list(sentences)
    _check_known_types(tagger, sentences)
    with flair_bars(progress):
        result = tagger.evaluate(
            sentences,
            gold_label_type=tagger.label_type,
            mini_batch_size=batch_size,
            embedding_storage_mode="none",
        )
    report = result.classification_report
    if not report:
        raise AnnotatorError(
            "nothing to evaluate: the split has no entities and none were predicted"
        )
    per_type = {
        label: _scores(row)
        for label, row in report.items()
        if label not in ("micro avg", "macro avg", "weighted avg", "accuracy")
    }
    return EvalResult(
        micro=_scores(report["micro avg"]),
        macro=_scores(report["macro avg"]),
        per_type=dict(sorted(per_type.items())),
        sentences=len(sentences),
        loss=float(result.loss),
    )


def _check_known_types(tagger, sentences: list) -> None:
    """Gold entity types the model has no tag for cannot be scored (Flair fails on them with a
    bare IndexError): refused, naming them."""
    dictionary = tagger.label_dictionary
    if dictionary.add_unk:
        return
    known = {item.split("-", 1)[-1] for item in dictionary.get_items()}
    gold = Counter(
        label.value for sentence in sentences for label in sentence.get_labels(tagger.label_type)
    )
    unknown = {kind: count for kind, count in gold.items() if kind not in known}
    if unknown:
        listed = ", ".join(f"{kind} ({count} spans)" for kind, count in sorted(unknown.items()))
        types = ", ".join(sorted(known - {"O", "<START>", "<STOP>"}))
        raise AnnotatorError(
            f"the corpus has entity types the model has no tag for: {listed}; the model knows "
            f"{types}: evaluate on a corpus of the model's types, or train on this one"
        )


def evaluate(
    model: str | Path | None,
    corpus_dir: str | Path,
    split: str = "test",
    column_format: str = DEFAULT_COLUMN_FORMAT,
    batch_size: int = 64,
    device: str = "auto",
    progress: bool = False,
) -> EvalResult:
    """Evaluate a saved tagger on one split of a column corpus."""
    from annotator.models import load_tagger

    tagger = load_tagger(model, device=device)
    sentences = split_for(tagger, corpus_dir, split, column_format)
    return evaluate_tagger(tagger, sentences, batch_size, progress=progress)


def split_for(tagger, corpus_dir: str | Path, split: str, column_format: str) -> list:
    """One split's sentences to evaluate `tagger` on; for a model trained on train + dev, dev
    is the documents it held out of training."""
    corpus = load_corpus(corpus_dir, column_format)
    dataset = split_sentences(corpus, split)
    if dataset is None:
        raise AnnotatorError(f"{corpus_dir}: has no {split} split")
    sentences = [dataset[index] for index in range(len(dataset))]
    if holds_out(corpus_dir, split, tagger):
        sentences = held_out_dev(sentences, document_numbers(sentences), tagger, "sentences")
    return sentences


def format_table(result: EvalResult) -> str:
    """The per-type table, with the micro and macro averages below it (scores as `88.47%`)."""
    lines = [f"{'type':<12}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    rows = [*result.per_type.items(), ("micro avg", result.micro), ("macro avg", result.macro)]
    for index, (label, s) in enumerate(rows):
        if index == len(result.per_type):
            lines.append("-" * 52)
        lines.append(
            f"{label:<12}{percent(s.precision):>10}{percent(s.recall):>10}"
            f"{percent(s.f1):>10}{s.support:>10d}"
        )
    return "\n".join(lines)


def _spans(sentence, label_type: str) -> list[LabelledSpan]:
    return sorted(span[:3] for span in flair_spans(sentence, label_type))


def match_sentence(
    index: int, tokens: list[str], gold: list[LabelledSpan], predicted: list[LabelledSpan]
) -> SentenceMatch:
    """Sort each gold and predicted span of one sentence into correct or an error kind.

    Wrong type: a prediction at exactly the gold span's tokens, of another type. Wrong boundary:
    no exact prediction, but one that overlaps. Missed: nothing overlaps the gold span.
    Spurious: a prediction that overlaps no gold span.
    """
    errors: list[tuple[str, LabelledSpan | None, LabelledSpan | None]] = []
    exact = {(p[0], p[1]): p for p in predicted}
    for g in gold:
        p = exact.get((g[0], g[1]))
        if p is not None:
            if p[2] != g[2]:
                errors.append(("wrong type", g, p))
            continue
        overlapping = [p for p in predicted if p[0] < g[1] and g[0] < p[1]]
        if overlapping:
            errors.append(("wrong boundary", g, overlapping[0]))
        else:
            errors.append(("missed", g, None))
    for p in predicted:
        if not any(g[0] < p[1] and p[0] < g[1] for g in gold):
            errors.append(("spurious", None, p))
    return SentenceMatch(index, tokens, gold, predicted, errors)


def confusion_counts(matches: Iterable[SentenceMatch]) -> dict[str, Counter]:
    """gold type → predicted type → count, at exact span level, as Flair's evaluation pairs them.

    A gold span without a prediction at exactly its tokens counts under MISSED; a prediction
    without a gold span at exactly its tokens under the gold row SPURIOUS. A boundary error is
    therefore one missed and one spurious span, just as Flair scores it.
    """
    table: dict[str, Counter] = {}
    for match in matches:
        gold = {(g[0], g[1]): g[2] for g in match.gold}
        predicted = {(p[0], p[1]): p[2] for p in match.predicted}
        for key, label in gold.items():
            table.setdefault(label, Counter())[predicted.get(key, MISSED)] += 1
        for key, label in predicted.items():
            if key not in gold:
                table.setdefault(SPURIOUS, Counter())[label] += 1
    return table


def evaluation_report(
    model: str | Path | None,
    corpus_dir: str | Path,
    report_dir: str | Path,
    split: str = "test",
    column_format: str | None = None,
    batch_size: int = 64,
    device: str = "auto",
    progress: bool = False,
):
    """Evaluate like `annotator evaluate`, and write scores.png, confusion.png, errors.html and
    report.json into `report_dir`. Returns the evaluation's own result (Flair's numbers)."""
    from annotator.models import load_tagger, model_info

    report_dir = Path(report_dir)
    if report_dir.exists() and not report_dir.is_dir():
        raise AnnotatorError(f"{report_dir}: exists and is not a directory")
    tagger = load_tagger(model, device=device)
    sentences = split_for(tagger, corpus_dir, split, column_format or DEFAULT_COLUMN_FORMAT)
    info = model_info(model)
    # Flair's evaluate leaves its predictions on the sentences under the label type "predicted"
    result = evaluate_tagger(tagger, sentences, batch_size, progress)
    matches = [
        match_sentence(i, [t.text for t in s], _spans(s, tagger.label_type), _spans(s, "predicted"))
        for i, s in enumerate(sentences)
    ]
    table = confusion_counts(matches)
    labels = sorted(
        {label for label in table if label != SPURIOUS}
        | {label for row in table.values() for label in row if label != MISSED}
    )
    rows, columns = [*labels, SPURIOUS], [*labels, MISSED]
    counts = [
        [None if (r == SPURIOUS and c == MISSED) else table.get(r, Counter())[c] for c in columns]
        for r in rows
    ]
    kinds = Counter(kind for match in matches for kind, _, _ in match.errors)
    report_dir.mkdir(parents=True, exist_ok=True)
    colors = label_colors(labels)
    plot_scores(result, report_dir / "scores.png")
    plot_confusion(rows, columns, counts, report_dir / "confusion.png")
    summary = (
        f"model {info.name} · {split} split of {corpus_dir} · {len(sentences)} sentences · "
        f"micro P {percent(result.micro.precision)} R {percent(result.micro.recall)} "
        f"F1 {percent(result.micro.f1)}"
    )
    wrong = [m for m in matches if m.errors]
    write_atomically(
        report_dir / "errors.html",
        render_errors(wrong, colors, f"Errors: {info.name} on the {split} split", summary),
    )
    report = {
        "model": info.name,
        "model_sha256": info.sha256,
        "corpus": str(corpus_dir),
        "split": split,
        "sentences": len(sentences),
        "sentences_with_errors": len(wrong),
        "labels": labels,
        "confusion": {
            "rows": rows,
            "columns": columns,
            "counts": counts,
            "note": f"rows: gold type ('{SPURIOUS}': no gold span at those tokens); "
            f"columns: predicted type ('{MISSED}': no prediction at those tokens)",
        },
        "true_positives": {label: table.get(label, Counter())[label] for label in labels},
        "gold": {label: sum(table.get(label, Counter()).values()) for label in labels},
        "predicted": {label: sum(table.get(r, Counter())[label] for r in rows) for label in labels},
        "errors": {kind: kinds[kind] for kind in ERROR_KINDS},
        "scores": result.to_dict(),
    }
    write_json_atomically(report_dir / "report.json", report)
    return result
