"""A training run: the corpus and its checksums, the tagger, the trainer, resume, the final test.

Trainers (``trainer = auto | fast | flair``): ``annotator.training.fast`` trains the same
``SequenceTagger`` with Flair's loss and training semantics through vectorised batches
(``auto`` picks it wherever it supports the model); Flair's ``ModelTrainer`` trains the rest
(the transformer preset).  Both report each epoch to one :class:`RunBook` — metrics, best
model, checkpoint, annealing state — so their runs look the same and resume either way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from annotator.corpus import (
    HOLDOUT_KEY,
    check_column_format,
    document_numbers,
    held_out,
    load_corpus,
    parse_column_format,
    sha256_file,
    training_files,
)
from annotator.errors import AnnotatorError
from annotator.files import write_json_atomically
from annotator.models import choose_device
from annotator.records import percent
from annotator.segmentation import segmentation_card
from annotator.training.config import CHECKPOINT, CONFIG, METRICS, TrainConfig, resolve_config
from annotator.training.recipes import build_tagger, has_trainable_embeddings, seed_everything
from annotator.training.runbook import RunBook, draw_curves, run_plugin

log = logging.getLogger("annotator")


@dataclass
class TrainResult:
    output: Path
    epochs: int
    best_epoch: int
    best_dev_f1: float
    test: dict[str, Any] | None
    seconds: float
    finished: bool


def choose_trainer(config: TrainConfig, tagger) -> tuple[str, str]:
    """("fast" | "flair", why): `auto` is the fast trainer wherever it supports the model."""
    from annotator.training.fast import unsupported_reason

    if config.trainer == "flair":
        return "flair", "Flair's ModelTrainer (trainer = flair)"
    reason = unsupported_reason(tagger, config)
    if reason is None:
        return "fast", f"the fast trainer (vectorised batches, trainer = {config.trainer})"
    if config.trainer == "fast":
        raise AnnotatorError(
            f"--trainer fast cannot train this model: {reason}; use --trainer flair (or auto)"
        )
    return "flair", f"Flair's ModelTrainer (the fast trainer does not support this model: {reason})"


@contextlib.contextmanager
def _training_log(output: Path):
    """training.log beside the model: our per-epoch lines and Flair's log, appended on --resume."""
    handler = logging.FileHandler(output / "training.log", mode="a", encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)-15s %(name)s: %(message)s"))
    loggers = [log, logging.getLogger("flair")]
    level = log.level
    if not log.isEnabledFor(logging.INFO):
        log.setLevel(logging.INFO)
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        log.setLevel(level)
        handler.close()


def _train_with_flair(tagger, corpus, config: TrainConfig, book: RunBook) -> None:
    import flair
    from flair.data import Corpus
    from flair.trainers import ModelTrainer

    trainable = has_trainable_embeddings(tagger.embeddings)
    # Flair 0.15.1 keeps embeddings computed under no_grad when storage is "cpu": trainable
    # ones would then be frozen at their epoch-1 values for every later dev evaluation.
    storage = "none" if trainable else ("gpu" if flair.device.type == "cuda" else "cpu")
    training_corpus = Corpus(
        train=corpus.train, dev=corpus.dev, test=None, name="annotator", sample_missing_splits=False
    )
    trainer = ModelTrainer(tagger, training_corpus)
    anneal = config.preset != "transformer"
    plugin = run_plugin(book, anneal=anneal, has_dev=corpus.dev is not None)
    common = {
        "base_path": book.output,
        "learning_rate": book.learning_rate,
        "mini_batch_size": config.batch_size,
        "max_epochs": config.max_epochs,
        "epoch": book.epoch,
        "embeddings_storage_mode": storage,
        "plugins": [plugin],
        "use_final_model_for_eval": True,
        "save_final_model": True,
        "create_file_logs": False,
    }
    if anneal:
        # the RunBook steps Flair's AnnealOnPlateau itself (see RunBook.end_epoch)
        trainer.train(attach_default_scheduler=False, **common)
    else:
        trainer.fine_tune(**common)


def with_dev_in_train(corpus, holdout: float = 0.0):
    """The corpus with its dev split appended to train (vocabularies, characters and batches
    all see both), except the `holdout` share of dev's documents, which stays dev; with no
    holdout there is no dev split left to score."""
    from flair.data import Corpus
    from flair.datasets import SentenceDataset
    from torch.utils.data import ConcatDataset

    if corpus.dev is None:
        raise AnnotatorError("train_with_dev: the corpus has no dev split")
    dev = [corpus.dev[index] for index in range(len(corpus.dev))]
    kept = [held_out(number, holdout) for number in document_numbers(dev)]
    if holdout and not any(kept):
        raise AnnotatorError(f"dev_holdout = {holdout:g} holds out none of dev's documents")
    joining = [sentence for sentence, keep in zip(dev, kept, strict=True) if not keep]
    return Corpus(
        train=ConcatDataset([corpus.train, SentenceDataset(joining)]),
        dev=SentenceDataset([sentence for sentence, keep in zip(dev, kept, strict=True) if keep])
        if holdout
        else None,
        test=corpus.test,
        name=corpus.name,
        sample_missing_splits=False,
    )


def train(
    corpus_dir: str | Path,
    output: str | Path,
    config: TrainConfig,
    resume: bool = False,
    on_epoch: Callable[[Path], None] | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train `config` on a column corpus into `output`; with `resume`, continue its checkpoint.

    `progress`: a labelled bar per epoch on stderr (batches, loss, rate, ETA); the log has one
    line per epoch either way, and Flair's own bars never show."""
    from annotator.evaluation import flair_bars

    with flair_bars(False):
        return _train(corpus_dir, output, config, resume, on_epoch, progress)


def _train(
    corpus_dir: str | Path,
    output: str | Path,
    config: TrainConfig,
    resume: bool,
    on_epoch: Callable[[Path], None] | None,
    progress: bool,
) -> TrainResult:
    import flair
    from flair.models import SequenceTagger

    import annotator.embeddings  # noqa: F401  (registers our embeddings for loading checkpoints)
    from annotator.evaluation import evaluate_tagger
    from annotator.logs import flair_imported

    flair_imported()

    output = Path(output)
    started = time.time()
    flair.device = choose_device(config.device)
    _, label_type = parse_column_format(config.column_format)
    files = training_files(corpus_dir)
    for path in set(files.values()):  # before the output folder is made: a refusal leaves none
        check_column_format(path, config.column_format)
    checksums = {
        split: {"file": path.name, "sha256": sha256_file(path)} for split, path in files.items()
    }
    state: dict[str, Any]
    if resume:
        if not (output / CHECKPOINT).exists() or not (output / METRICS).exists():
            raise AnnotatorError(
                f"{output}: nothing to resume (no {CHECKPOINT}); start without --resume"
            )
        state = json.loads((output / METRICS).read_text())
        if state["corpus"] != checksums:
            raise AnnotatorError(f"{output}: the corpus differs from the one this run started on")
        saved = resolve_config(None, output / CONFIG)
        # both trainers write the same checkpoint, so a run may continue with the other one
        diff = [
            f.name
            for f in dataclasses.fields(config)
            if f.name != "trainer" and getattr(saved, f.name) != getattr(config, f.name)
        ]
        if diff:
            raise AnnotatorError(
                f"{output}: --resume with other settings than the run started with "
                f"({', '.join(diff)}); resume without changing them"
            )
        if state.get("finished"):
            raise AnnotatorError(f"{output}: this run already finished")
    else:
        if (output / CHECKPOINT).exists():
            raise AnnotatorError(
                f"{output}: holds a run already; use --resume to continue it, "
                "or choose another --output"
            )
        output.mkdir(parents=True, exist_ok=True)
        (output / CONFIG).write_text(config.to_toml())
        state = {
            "corpus": checksums,
            "epochs": [],
            "best_epoch": 0,
            "best_dev_f1": 0.0,
            "epoch": 0,
            "learning_rate": config.learning_rate,
            "scheduler": None,
        }

    seed_everything(config.seed + state["epoch"])
    corpus = load_corpus(corpus_dir, config.column_format)
    if config.retokenize:
        from annotator.training.retokenize import retokenized_corpus, spacy_tokenize

        corpus = retokenized_corpus(
            corpus, label_type, spacy_tokenize(), keep_train_tokens=config.keep_corpus_tokens
        )
    if config.train_with_dev:
        corpus = with_dev_in_train(corpus, config.dev_holdout)
    if resume:
        tagger = SequenceTagger.load(output / CHECKPOINT)
    else:
        tagger = build_tagger(config, corpus, label_type)
    book = RunBook(output, state, config, on_epoch)
    if config.retokenize or config.list_markers or config.line_breaks:
        book.card = segmentation_card(config.retokenize, config.list_markers, config.line_breaks)
    if config.dev_holdout:
        # evaluate and calibrate read it, so that "dev" means the documents training never saw
        book.card[HOLDOUT_KEY] = config.dev_holdout
    book.progress = progress  # the log keeps one line per epoch either way
    with _training_log(output):
        kind, why = choose_trainer(config, tagger)
        log.info("training with %s", why)
        if kind == "fast":
            from annotator.training.fast import fit

            fit(tagger, corpus, config, book)
        else:
            _train_with_flair(tagger, corpus, config, book)

        # Both trainers return normally after Ctrl-C too: a run is finished only when it ran all
        # its epochs or annealing took the learning rate below the minimum.
        finished = (
            state["epoch"] >= config.max_epochs or state["learning_rate"] < config.min_learning_rate
        )
        state["seconds"] = round(state.get("seconds", 0) + time.time() - started, 1)
        test_scores = None
        best = output / "best-model.pt"
        if finished and corpus.test is not None and best.exists():
            test_scores = evaluate_tagger(SequenceTagger.load(best), corpus.test).to_dict()
            log.info(
                "test micro-F1 of the best model (epoch %d): %s",
                state["best_epoch"],
                percent(test_scores["micro"]["f1"]),
            )
        state.update(finished=finished, test=test_scores)
        write_json_atomically(output / METRICS, state)
        draw_curves(output)
        if not finished:
            log.warning(
                "training stopped after epoch %d of %d; continue it with --resume",
                state["epoch"],
                config.max_epochs,
            )
    return TrainResult(
        output=output,
        epochs=state["epoch"],
        best_epoch=state["best_epoch"],
        best_dev_f1=state["best_dev_f1"],
        test=test_scores,
        seconds=state["seconds"],
        finished=finished,
    )
