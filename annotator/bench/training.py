"""Training speed: one epoch of either trainer on a corpus, timed the same way.

Flair's side runs the body of ``ModelTrainer.train_custom``'s epoch loop; the fast side runs
`annotator.training.fast.FastTrainer`. The GPU check and the tests use it.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from annotator.training.config import TrainConfig
from annotator.training.fast import MAX_GRAD_NORM, FastTrainer


def time_epoch(
    corpus_dir,
    config: TrainConfig,
    trainer: str,
    max_sentences: int | None = None,
    include_dev: bool = True,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Seconds one epoch takes with `trainer` ("fast" or "flair") on the corpus, from a fresh model.

    An epoch is one pass of SGD over the training split (the first `max_sentences` sentences, if
    given) plus, with `include_dev`, the dev evaluation each epoch ends with (see `epoch_times`).
    """
    parts = epoch_times(
        corpus_dir, config, trainer, max_sentences, None if include_dev else 0, clock
    )
    return sum(parts)


def epoch_times(
    corpus_dir,
    config: TrainConfig,
    trainer: str,
    max_sentences: int | None = None,
    max_dev_sentences: int | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[float, float]:
    """(training pass, dev evaluation) seconds of one epoch with `trainer` ("fast" or "flair").

    Each part is timed apart so that a part-epoch (`max_sentences` training and
    `max_dev_sentences` dev sentences; 0 dev sentences: no evaluation) projects to a whole one.
    Flair's side runs the body of ``ModelTrainer.train_custom``'s epoch loop (forward_loss,
    backward, clipping, ``store_embeddings``, ``evaluate``) without its file writing; the fast
    side runs :class:`FastTrainer`.  One-time setup (reading the corpus, building the model,
    turning the splits into index data, frozen-LM caches) is not counted for either.  ``clock``:
    e.g. ``time.process_time`` for CPU seconds, steadier than wall time on a shared machine.
    """
    import flair
    from flair.data import Corpus
    from flair.datasets import DataLoader
    from flair.training_utils import store_embeddings

    from annotator.corpus import load_corpus, parse_column_format
    from annotator.models import choose_device
    from annotator.training.recipes import build_tagger, has_trainable_embeddings, seed_everything

    if trainer not in ("fast", "flair"):
        raise ValueError(f"trainer must be 'fast' or 'flair', not {trainer!r}")
    flair.device = choose_device(config.device)
    seed_everything(config.seed)
    full = load_corpus(corpus_dir, config.column_format)
    train = list(full.train)[:max_sentences]
    corpus = Corpus(train=train, dev=full.dev, test=None, name="bench", sample_missing_splits=False)
    _, label_type = parse_column_format(config.column_format)
    tagger = build_tagger(config, corpus, label_type)
    dev = list(full.dev)[:max_dev_sentences] if full.dev is not None else []
    if trainer == "fast":
        fast = FastTrainer.from_config(tagger, train, dev or None, config)
        optimizer = torch.optim.SGD(tagger.parameters(), lr=config.learning_rate)
        _synchronize()
        started = clock()
        fast.train_epoch(optimizer, 1)
        _synchronize()
        trained = clock()
        if dev:
            fast.evaluate()
        _synchronize()
        return trained - started, clock() - trained

    storage = (
        "none"
        if has_trainable_embeddings(tagger.embeddings)
        else ("gpu" if flair.device.type == "cuda" else "cpu")
    )
    optimizer = torch.optim.SGD(tagger.parameters(), lr=config.learning_rate)
    _synchronize()
    started = clock()
    tagger.train()
    for batch in DataLoader(train, batch_size=config.batch_size, shuffle=True):
        tagger.zero_grad()
        optimizer.zero_grad()
        loss, _count = tagger.forward_loss(batch)
        loss.item()
        loss.backward()
        store_embeddings(batch, storage)
        torch.nn.utils.clip_grad_norm_(tagger.parameters(), MAX_GRAD_NORM)
        optimizer.step()
    tagger.eval()
    _synchronize()
    trained = clock()
    if dev:
        with tempfile.TemporaryDirectory() as folder:
            tagger.evaluate(
                dev,
                gold_label_type=tagger.label_type,
                out_path=Path(folder) / "dev.tsv",
                mini_batch_size=64,
                embedding_storage_mode=storage,
            )
    _synchronize()
    return trained - started, clock() - trained


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
