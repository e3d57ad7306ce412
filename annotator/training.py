"""Train a Flair sequence tagger from a preset, a TOML config and command-line overrides.

Presets:
- ``seed``: the tutorial's recipe — GloVe + Flair news-forward/backward, BiLSTM-CRF 256.
- ``offline``: needs no network — word embeddings learned from the training split's own
  vocabulary and a character encoder whose alphabet comes from the training data.
- ``transformer``: fine-tunes a Hugging Face encoder (FLERT-style), by name or local folder.

Everything the run needs to be reproduced is written beside the model: the resolved
config, the corpus checksums, the training log, per-epoch metrics and a checkpoint that
``--resume`` continues from.

Trainers (``trainer = auto | fast | flair``): ``annotator.fast_training`` trains the same
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
import random
import re
import time
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from annotator.corpus import (
    DEFAULT_COLUMN_FORMAT,
    find_split_files,
    load_corpus,
    parse_column_format,
    sha256_file,
)
from annotator.errors import AnnotatorError

log = logging.getLogger("annotator")

PRESETS = ("seed", "offline", "transformer")
TRAINERS = ("auto", "fast", "flair")
CHOICES = {"trainer": TRAINERS, "batching": ("shuffle", "bucket")}
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"
CONFIG = "config.toml"


@dataclass
class TrainConfig:
    """Every hyper-parameter of a run; a TOML file and flags override the preset's values."""

    preset: str = "offline"
    column_format: str = DEFAULT_COLUMN_FORMAT
    # model
    hidden_size: int = 256
    rnn_layers: int = 1
    use_crf: bool = True
    dropout: float = 0.0
    word_dropout: float = 0.05
    locked_dropout: float = 0.5
    # seed preset: names Flair fetches, or local files for air-gapped machines
    word_vectors: str = "glove"
    flair_forward: str = "news-forward"
    flair_backward: str = "news-backward"
    # offline preset
    word_embedding_dim: int = 100
    min_word_freq: int = 2
    # 50/50 rather than Flair's 25/25: best dev F1 90.83 against 89.92 over 50 epochs on CoNLL++
    char_embedding_dim: int = 50
    char_hidden_size: int = 50
    spacy_vectors: str = ""  # a spaCy pipeline (name or folder) whose word vectors are stacked in
    # transformer preset
    transformer: str = "bert-base-cased"
    transformer_layers: str = "-1"
    context: bool = True
    # optimisation
    learning_rate: float = 0.1
    batch_size: int = 32
    max_epochs: int = 50
    patience: int = 3
    anneal_factor: float = 0.5
    min_learning_rate: float = 0.0001
    # a fixed schedule instead of annealing when dev F1 stalls: the epochs after which the
    # learning rate is multiplied by anneal_factor (e.g. the ones a run with a dev split found)
    anneal_after: list = dataclasses.field(default_factory=list)
    # train on train + dev (Flair's train_with_dev): no dev scores, the last epoch's model is kept
    train_with_dev: bool = False
    seed: int = 1
    device: str = "auto"
    # which trainer: auto (the fast one where it supports the model), fast, or flair (ModelTrainer)
    trainer: str = "auto"
    # fast trainer: "shuffle" draws batches like Flair's DataLoader; "bucket" groups sentences of
    # similar length (fewer RNN/CRF time steps per batch), batches still of batch_size sentences
    batching: str = "shuffle"
    mixed_precision: bool = False  # fast trainer on a GPU: bfloat16 autocast (opt-in)

    @classmethod
    def for_preset(cls, preset: str) -> "TrainConfig":
        if preset not in PRESETS:
            raise AnnotatorError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        config = cls(preset=preset)
        if preset == "transformer":
            config.learning_rate, config.batch_size, config.max_epochs = 5e-6, 4, 10
            config.use_crf = False
        return config

    def update(self, values: dict[str, Any], origin: str) -> None:
        known = {f.name: f for f in dataclasses.fields(self)}
        for key, value in values.items():
            if key not in known:
                raise AnnotatorError(f"{origin}: unknown setting {key!r}; known: "
                                     f"{', '.join(sorted(known))}")
            if value is None:
                continue
            expected = type(getattr(self, key))
            if expected is float and isinstance(value, int):
                value = float(value)
            if not isinstance(value, expected) or expected is list and not all(
                    isinstance(item, int) and not isinstance(item, bool) for item in value):
                what = "a list of integers" if expected is list else expected.__name__
                raise AnnotatorError(f"{origin}: {key} must be {what}, not {value!r}")
            if key in CHOICES and value not in CHOICES[key]:
                raise AnnotatorError(f"{origin}: {key} must be one of {', '.join(CHOICES[key])}, "
                                     f"not {value!r}")
            setattr(self, key, value)

    def to_toml(self) -> str:
        return "".join(f"{key} = {json.dumps(value)}\n" for key, value in dataclasses.asdict(self).items())


def resolve_config(preset: str | None, config_file: str | Path | None = None,
                   overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Preset defaults, then the TOML file, then flags — later wins."""
    file_values: dict[str, Any] = {}
    if config_file is not None:
        try:
            file_values = tomllib.loads(Path(config_file).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise AnnotatorError(f"{config_file}: no such config file") from None
        except tomllib.TOMLDecodeError as exc:
            raise AnnotatorError(f"{config_file}: not valid TOML ({exc})") from None
    preset = preset or file_values.get("preset") or "offline"
    config = TrainConfig.for_preset(preset)
    config.update({k: v for k, v in file_values.items() if k != "preset"}, str(config_file))
    config.update(overrides or {}, "command line")
    return config


def choose_device(name: str = "auto"):
    """`auto` is the first GPU when there is one, else the CPU."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise AnnotatorError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AnnotatorError(f"device {name!r} asked for, but no CUDA GPU is available")
    return device


def seed_everything(seed: int) -> None:
    import flair

    random.seed(seed)
    flair.set_seed(seed)


# --- embeddings -------------------------------------------------------------------------

def normalise_word(word: str) -> str:
    """The key learned word vectors use: lower case, digits as 0 (WordEmbeddings' own fallback)."""
    return re.sub(r"\d", "0", word.lower())


def build_vocabulary(sentences, min_freq: int) -> dict[str, int]:
    """Training-split words seen at least `min_freq` times; rarer ones train the unknown row."""
    counts = Counter(normalise_word(token.text) for sentence in sentences for token in sentence)
    words = sorted(word for word, count in counts.items() if count >= min_freq)
    return {word: index for index, word in enumerate(words)}


def build_char_dictionary(sentences):
    from flair.data import Dictionary

    chars = Dictionary(add_unk=True)
    for char in sorted({char for sentence in sentences for token in sentence for char in token.text}):
        chars.add_item(char)
    return chars


def learned_word_embeddings(vocab: dict[str, int], dim: int, name: str = "words"):
    """Trainable word vectors built without gensim, randomly initialised (unknown row included)."""
    import torch
    from flair.embeddings import WordEmbeddings

    embeddings = WordEmbeddings(None, vocab=vocab, embedding_length=dim, fine_tune=True,
                                force_cpu=False, name=name)
    with torch.no_grad():
        bound = (3.0 / dim) ** 0.5
        embeddings.embedding.weight.uniform_(-bound, bound)
    return embeddings


def read_word_vectors(path: str | Path, name: str):
    """Frozen vectors from a word2vec/GloVe text file (header optional), without gensim."""
    import numpy as np
    import torch
    from flair.embeddings import WordEmbeddings

    path = Path(path)
    if path.suffix not in (".txt", ".vec", ".w2v"):
        # gensim KeyedVectors files (e.g. Flair's glove.gensim) need flair's own loader
        return WordEmbeddings(str(path), name=name)
    vocab: dict[str, int] = {}
    rows: list[list[float]] = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle):
            parts = line.rstrip("\n").rstrip(" ").split(" ")
            if number == 0 and len(parts) == 2 and all(p.isdigit() for p in parts):
                continue
            if len(parts) < 2 or parts[0] in vocab:
                continue
            vocab[parts[0]] = len(rows)
            rows.append([float(x) for x in parts[1:]])
    if not rows or len({len(r) for r in rows}) != 1:
        raise AnnotatorError(f"{path}: not a word-vector text file (one word and its numbers a line)")
    embeddings = WordEmbeddings(None, vocab=vocab, embedding_length=len(rows[0]), name=name)
    with torch.no_grad():
        table = np.vstack([np.asarray(rows, dtype="float32"), np.zeros((1, len(rows[0])), "float32")])
        embeddings.embedding.weight.copy_(torch.from_numpy(table))
    return embeddings


def _fetch(kind: str, value: str, flag: str, make: Callable[[], Any]):
    """Build a pretrained embedding; a failed download is one message naming the way out."""
    try:
        return make()
    except AnnotatorError:
        raise
    except Exception as exc:  # flair raises many kinds (HTTP, OSError, ValueError) for one cause
        raise AnnotatorError(
            f"could not load the {kind} {value!r} ({type(exc).__name__}: {exc}). "
            f"Give a local file with {flag} PATH, or train with --preset offline, "
            "which needs nothing from the network") from None


def build_embeddings(config: TrainConfig, corpus):
    from flair.embeddings import (
        CharacterEmbeddings,
        FlairEmbeddings,
        StackedEmbeddings,
        TransformerWordEmbeddings,
        WordEmbeddings,
    )

    if config.preset == "seed":
        local = Path(config.word_vectors).exists()
        words = _fetch("word vectors", config.word_vectors, "--word-vectors",
                       lambda: read_word_vectors(config.word_vectors, "glove") if local
                       else WordEmbeddings(config.word_vectors))
        forward = _fetch("Flair language model", config.flair_forward, "--flair-forward",
                         lambda: FlairEmbeddings(config.flair_forward))
        backward = _fetch("Flair language model", config.flair_backward, "--flair-backward",
                          lambda: FlairEmbeddings(config.flair_backward))
        return StackedEmbeddings([words, forward, backward])
    if config.preset == "offline":
        vocab = build_vocabulary(corpus.train, config.min_word_freq)
        words = learned_word_embeddings(vocab, config.word_embedding_dim)
        chars = CharacterEmbeddings(build_char_dictionary(corpus.train),
                                    char_embedding_dim=config.char_embedding_dim,
                                    hidden_size_char=config.char_hidden_size)
        stack = [words, chars]
        if config.spacy_vectors:
            from annotator.embeddings import SharedVectorEmbeddings

            stack.append(_fetch("spaCy vectors", config.spacy_vectors, "--spacy-vectors",
                                lambda: SharedVectorEmbeddings.from_spacy(config.spacy_vectors)))
        return StackedEmbeddings(stack)
    return _fetch("transformer", config.transformer, "--transformer",
                  lambda: TransformerWordEmbeddings(
                      config.transformer, layers=config.transformer_layers,
                      subtoken_pooling="first", fine_tune=True, use_context=config.context))


def has_trainable_embeddings(embeddings) -> bool:
    return any(p.requires_grad for p in embeddings.parameters())


def build_tagger(config: TrainConfig, corpus, label_type: str):
    from flair.models import SequenceTagger

    tag_dictionary = corpus.make_label_dictionary(label_type=label_type, add_unk=False)
    embeddings = build_embeddings(config, corpus)
    if config.preset == "transformer":
        return SequenceTagger(embeddings=embeddings, tag_dictionary=tag_dictionary,
                              tag_type=label_type, hidden_size=config.hidden_size,
                              use_crf=config.use_crf, use_rnn=False, reproject_embeddings=False)
    return SequenceTagger(embeddings=embeddings, tag_dictionary=tag_dictionary, tag_type=label_type,
                          hidden_size=config.hidden_size, rnn_layers=config.rnn_layers,
                          use_crf=config.use_crf, dropout=config.dropout,
                          word_dropout=config.word_dropout, locked_dropout=config.locked_dropout)


# --- the run ----------------------------------------------------------------------------

@dataclass
class TrainResult:
    output: Path
    epochs: int
    best_epoch: int
    best_dev_f1: float
    test: dict[str, Any] | None
    seconds: float
    finished: bool


@dataclass
class DevScores:
    """An epoch's dev evaluation: Flair's micro-averaged span scores and loss per token."""

    precision: float | None
    recall: float | None
    f1: float
    loss: float | None = None


class RunBook:
    """The per-epoch bookkeeping both trainers share (Flair's ModelTrainer and the fast trainer).

    It owns what must survive ``--resume``: metrics.json (one entry per epoch), the best model
    (best dev micro-F1, kept here rather than in a trainer's local variables), checkpoint.pt,
    and the state of the AnnealOnPlateau scheduler, which it steps after each evaluation as
    Flair's AnnealingPlugin does (mode max on dev micro-F1, dev loss breaking ties).  The state
    is saved *after* that step, so a resumed run starts with the learning rate and patience
    counters the next epoch would have had.
    """

    def __init__(self, output: Path, state: dict[str, Any], config: "TrainConfig",
                 on_epoch: Callable[[Path], None] | None = None) -> None:
        self.output, self.state, self.config, self.on_epoch = output, state, config, on_epoch
        self.started = time.time()

    @property
    def epoch(self) -> int:
        return int(self.state["epoch"])

    @property
    def learning_rate(self) -> float:
        return float(self.state["learning_rate"])

    def make_scheduler(self, optimizer, has_dev: bool = True):
        """Flair's AnnealOnPlateau as its AnnealingPlugin sets it up (mode max on dev F1, min on
        the training loss without a dev split), or the config's fixed schedule; with the saved
        state restored."""
        from flair.training_utils import AnnealOnPlateau

        if self.config.anneal_after:
            scheduler: Any = FixedSchedule(optimizer, self.config.anneal_factor, self.config.anneal_after)
        else:
            scheduler = AnnealOnPlateau(optimizer, mode="max" if has_dev else "min",
                                        factor=self.config.anneal_factor,
                                        patience=self.config.patience, initial_extra_patience=0)
        if self.state.get("scheduler"):
            vars(scheduler).update(self.state["scheduler"])
        return scheduler

    def start_epoch(self) -> None:
        self.started = time.time()

    def end_epoch(self, model, epoch: int, train_loss: float | None, dev: DevScores | None,
                  optimizer, scheduler) -> bool:
        """Anneal, record the epoch, save best model / checkpoint / metrics; True: stop training."""
        state = self.state
        lr = float(optimizer.param_groups[0]["lr"])
        note = ""
        if scheduler is not None:
            # Flair steps on (dev micro-F1, dev loss), or on the train loss without a dev split
            scores = (dev.f1, dev.loss) if dev is not None else (train_loss,)
            if scheduler.step(*scores):
                why = "as scheduled" if self.config.anneal_after else \
                    f"{self.config.patience + 1} epochs without improvement"
                note = f"; {why}: learning rate annealed to {optimizer.param_groups[0]['lr']:g}"
            elif scheduler.num_bad_epochs:
                note = f"; {scheduler.num_bad_epochs} epochs without improvement"
        entry = {"epoch": epoch, "train_loss": train_loss,
                 "dev_precision": dev.precision if dev else None,
                 "dev_recall": dev.recall if dev else None,
                 "dev_f1": dev.f1 if dev else None, "learning_rate": lr,
                 "seconds": round(time.time() - self.started, 2)}
        state["epochs"].append(entry)
        state["last_train_loss"] = train_loss
        state["last_dev_p"], state["last_dev_r"] = entry["dev_precision"], entry["dev_recall"]
        best = dev is None or dev.f1 > state["best_dev_f1"] or state["best_epoch"] == 0
        if best:
            state["best_epoch"] = epoch
            if dev is not None:
                state["best_dev_f1"] = dev.f1
            model.save(self.output / "best-model.pt")
        state["scheduler"] = {k: v for k, v in vars(scheduler).items()
                              if isinstance(v, (int, float, str, bool))} if scheduler else None
        state["epoch"], state["learning_rate"] = epoch, float(optimizer.param_groups[0]["lr"])
        model.save(self.output / CHECKPOINT)
        _write_json(self.output / METRICS, state)
        _draw_curves(self.output)
        dev_text = f"dev P {100 * dev.precision:.2f} R {100 * dev.recall:.2f} F1 {100 * dev.f1:.2f}" \
            if dev is not None and dev.precision is not None and dev.recall is not None else \
            (f"dev F1 {100 * dev.f1:.2f}" if dev is not None else "no dev split")
        log.info("epoch %d/%d: train loss %.4f, %s%s, lr %g, %.1f s%s", epoch, self.config.max_epochs,
                 train_loss if train_loss is not None else float("nan"), dev_text,
                 " (best)" if best else "", lr, entry["seconds"], note)
        if self.on_epoch is not None:
            self.on_epoch(self.output)
        return scheduler is not None and state["learning_rate"] < self.config.min_learning_rate


class FixedSchedule:
    """Multiplies the learning rate by `factor` after each epoch listed in `after` (the
    scheduler interface the RunBook steps: ``step`` is True when it annealed)."""

    def __init__(self, optimizer, factor: float, after: list) -> None:
        self.optimizer, self.factor, self.after = optimizer, factor, {int(epoch) for epoch in after}
        self.epochs_done = 0
        self.num_bad_epochs = 0

    def step(self, *scores: float | None) -> bool:
        self.epochs_done += 1
        if self.epochs_done not in self.after:
            return False
        for group in self.optimizer.param_groups:
            group["lr"] *= self.factor
        return True


def _run_plugin(book: RunBook, anneal: bool, has_dev: bool):
    """Flair's ModelTrainer reports each epoch to the shared RunBook through this plugin.

    With `anneal`, the plugin replaces Flair's AnnealingPlugin (the RunBook steps the same
    AnnealOnPlateau), so the scheduler's state is recorded after its step, not before.
    """
    from flair.trainers.plugins.base import TrainerPlugin, TrainingInterrupt

    class RunPlugin(TrainerPlugin):
        scheduler = None

        @TrainerPlugin.hook
        def after_setup(self, **kw):
            self.scheduler = book.make_scheduler(self.trainer.optimizer, has_dev) if anneal else None

        @TrainerPlugin.hook
        def before_training_epoch(self, epoch, **kw):
            book.start_epoch()
            self.scores: dict[str, float] = {}

        @TrainerPlugin.hook
        def metric_recorded(self, record):
            names = {("train", "loss"): "loss", ("dev", "micro avg", "precision"): "p",
                     ("dev", "micro avg", "recall"): "r"}
            name = names.get(tuple(record.name))
            if name is not None:
                self.scores[name] = float(record.value)

        @TrainerPlugin.hook
        def after_evaluation(self, epoch, validation_scores, **kw):
            dev = None
            if has_dev and validation_scores:
                dev = DevScores(self.scores.get("p"), self.scores.get("r"), float(validation_scores[0]),
                                float(validation_scores[1]) if len(validation_scores) > 1 else None)
            if book.end_epoch(self.model, epoch, self.scores.get("loss"), dev, self.trainer.optimizer,
                              self.scheduler):
                raise TrainingInterrupt("learning rate too small - quitting training!")

    return RunPlugin()


def _draw_curves(output: Path) -> None:
    """training.png beside the model, redrawn every epoch so that a long run can be watched."""
    try:
        from annotator.views import TRAINING_PNG, plot_training

        plot_training(output, output / TRAINING_PNG)
    except Exception as exc:  # a figure is never worth stopping a training run for
        log.warning("could not draw the training curves: %s", exc)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def choose_trainer(config: TrainConfig, tagger) -> tuple[str, str]:
    """("fast" | "flair", why): `auto` is the fast trainer wherever it supports the model."""
    from annotator.fast_training import unsupported_reason

    if config.trainer == "flair":
        return "flair", "Flair's ModelTrainer (trainer = flair)"
    reason = unsupported_reason(tagger, config)
    if reason is None:
        return "fast", f"the fast trainer (vectorised batches, trainer = {config.trainer})"
    if config.trainer == "fast":
        raise AnnotatorError(f"--trainer fast cannot train this model: {reason}; "
                             "use --trainer flair (or auto)")
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
    training_corpus = Corpus(train=corpus.train, dev=corpus.dev, test=None, name="annotator",
                             sample_missing_splits=False)
    trainer = ModelTrainer(tagger, training_corpus)
    anneal = config.preset != "transformer"
    plugin = _run_plugin(book, anneal=anneal, has_dev=corpus.dev is not None)
    common = dict(base_path=book.output, learning_rate=book.learning_rate,
                  mini_batch_size=config.batch_size, max_epochs=config.max_epochs,
                  epoch=book.epoch, embeddings_storage_mode=storage, plugins=[plugin],
                  use_final_model_for_eval=True, save_final_model=True, create_file_logs=False)
    if anneal:
        # the RunBook steps Flair's AnnealOnPlateau itself (see RunBook.end_epoch)
        trainer.train(attach_default_scheduler=False, **common)
    else:
        trainer.fine_tune(**common)


def with_dev_in_train(corpus):
    """The corpus with its dev split appended to train (vocabularies, characters and batches
    all see both), and no dev split left to score."""
    from flair.data import Corpus
    from torch.utils.data import ConcatDataset

    if corpus.dev is None:
        raise AnnotatorError("train_with_dev: the corpus has no dev split")
    return Corpus(train=ConcatDataset([corpus.train, corpus.dev]), dev=None, test=corpus.test,
                  name=corpus.name, sample_missing_splits=False)


def train(corpus_dir: str | Path, output: str | Path, config: TrainConfig, resume: bool = False,
          on_epoch: Callable[[Path], None] | None = None) -> TrainResult:
    """Train `config` on a column corpus into `output`; with `resume`, continue its checkpoint."""
    import flair
    from flair.models import SequenceTagger

    import annotator.embeddings  # noqa: F401  (registers our embeddings for loading checkpoints)
    from annotator.evaluation import evaluate_tagger

    output = Path(output)
    started = time.time()
    flair.device = choose_device(config.device)
    _, label_type = parse_column_format(config.column_format)
    checksums = {split: {"file": path.name, "sha256": sha256_file(path)}
                 for split, path in find_split_files(corpus_dir).items()}
    state: dict[str, Any]
    if resume:
        if not (output / CHECKPOINT).exists() or not (output / METRICS).exists():
            raise AnnotatorError(f"{output}: nothing to resume (no {CHECKPOINT}); start without --resume")
        state = json.loads((output / METRICS).read_text())
        if state["corpus"] != checksums:
            raise AnnotatorError(f"{output}: the corpus differs from the one this run started on")
        saved = resolve_config(None, output / CONFIG)
        # both trainers write the same checkpoint, so a run may continue with the other one
        diff = [f.name for f in dataclasses.fields(config) if f.name != "trainer"
                and getattr(saved, f.name) != getattr(config, f.name)]
        if diff:
            raise AnnotatorError(f"{output}: --resume with other settings than the run started with "
                                 f"({', '.join(diff)}); resume without changing them")
        if state.get("finished"):
            raise AnnotatorError(f"{output}: this run already finished")
    else:
        if (output / CHECKPOINT).exists():
            raise AnnotatorError(f"{output}: holds a run already; use --resume to continue it, "
                                 "or choose another --output")
        output.mkdir(parents=True, exist_ok=True)
        (output / CONFIG).write_text(config.to_toml())
        state = {"corpus": checksums, "epochs": [], "best_epoch": 0, "best_dev_f1": 0.0,
                 "epoch": 0, "learning_rate": config.learning_rate, "scheduler": None}

    seed_everything(config.seed + state["epoch"])
    corpus = load_corpus(corpus_dir, config.column_format)
    if config.train_with_dev:
        corpus = with_dev_in_train(corpus)
    if resume:
        tagger = SequenceTagger.load(output / CHECKPOINT)
    else:
        tagger = build_tagger(config, corpus, label_type)
    book = RunBook(output, state, config, on_epoch)
    with _training_log(output):
        kind, why = choose_trainer(config, tagger)
        log.info("training with %s", why)
        if kind == "fast":
            from annotator.fast_training import fit

            fit(tagger, corpus, config, book)
        else:
            _train_with_flair(tagger, corpus, config, book)

        # Both trainers return normally after Ctrl-C too: a run is finished only when it ran all
        # its epochs or annealing took the learning rate below the minimum.
        finished = state["epoch"] >= config.max_epochs or \
            state["learning_rate"] < config.min_learning_rate
        state["seconds"] = round(state.get("seconds", 0) + time.time() - started, 1)
        test_scores = None
        best = output / "best-model.pt"
        if finished and corpus.test is not None and best.exists():
            test_scores = evaluate_tagger(SequenceTagger.load(best), corpus.test).to_dict()
            log.info("test micro-F1 of the best model (epoch %d): %.2f", state["best_epoch"],
                     100 * test_scores["micro"]["f1"])
        state.update(finished=finished, test=test_scores)
        _write_json(output / METRICS, state)
        _draw_curves(output)
        if not finished:
            log.warning("training stopped after epoch %d of %d; continue it with --resume",
                        state["epoch"], config.max_epochs)
    return TrainResult(output=output, epochs=state["epoch"], best_epoch=state["best_epoch"],
                       best_dev_f1=state["best_dev_f1"], test=test_scores, seconds=state["seconds"],
                       finished=finished)
