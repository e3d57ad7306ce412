"""Adapt a trained tagger to a labelled sample of the user's own text, in one step.

A model trained on 1996 news misses much of another domain's entities and its scores claim a
certainty it lacks there. `adapt` fine-tunes the model on the sample with the fast trainer,
keeping what the model is (its embeddings, tokens and sentence rules), and holds a seeded share
of the sample's documents out: they choose the epoch and fit the score map, so the scores are
calibrated on the user's domain on text the model never trained on, and they give the figures
before and after. `replay` mixes sentences of the model's original training data into every
epoch (new ones each epoch), so that learning the new domain does not unlearn the old one.

A label the model does not have is refused: the tag set, CRF and output layer stay the
model's, so every span the adapted model finds is of a type the user already knows from it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import random
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from annotator.corpus import (
    DEFAULT_COLUMN_FORMAT,
    Tagged,
    check_column_format,
    find_split_files,
    read_tagged_documents,
    token_spans,
)
from annotator.errors import AnnotatorError, CorpusError, UsageError
from annotator.files import AtomicFile, sha256_file

log = logging.getLogger("annotator")

#: where an adapted model's card records what it was adapted from and on, and how it did
ADAPTED_KEY = "annotator_adapted"
#: a held-out part with fewer gold entities cannot choose an epoch or fit a map
MIN_HELD_OUT_ENTITIES = 10
#: with fewer documents than this, sentences are held out instead (a file without -DOCSTART-
#: is one document)
MIN_DOCUMENTS = 8
#: a word (or character) new to the model gets its own trainable row once the sample's training
#: part has it this often, as the offline recipe's vocabulary does (min_word_freq = 2)
MIN_NEW_WORD_COUNT = 2


@dataclass
class AdaptSettings:
    """How `adapt` trains; the defaults were chosen on WNUT-16 tweets (docs/how-to/adapt.md)."""

    holdout: float = 0.25  # share of the sample's documents held out
    epochs: int = 12
    learning_rate: float = 0.1
    replay_ratio: float = 3.0  # replay sentences per sample training sentence, each epoch
    batch_size: int = 32
    seed: int = 1
    column_format: str = "text,ner"
    replay_column_format: str = DEFAULT_COLUMN_FORMAT
    device: str = "auto"


@dataclass
class AdaptResult:
    output: Path
    before: Any  # RawResult: the held-out part, the model as it was
    after: Any  # RawResult: the held-out part, the adapted model and its new map
    out_of_fold_ece: float  # the map's ECE on held-out spans it was not fitted on
    held_out: dict[str, Any]
    best_epoch: int
    epochs: list[dict[str, Any]]
    seconds: float


def _usage(exc: CorpusError) -> UsageError:
    """A sample or replay corpus that cannot be read as asked is a usage error (exit 2)."""
    return UsageError(str(exc))


def read_sample(path: Path, column_format: str) -> tuple[list[list[Tagged]], dict[str, Any]]:
    """The sample's documents (a column file, or every column file of a folder) and what the
    card records of it: its files, their sha256 (one for the whole sample) and its size."""
    try:
        files = sorted(set(find_split_files(path).values()))
        for file in files:
            check_column_format(file, column_format)
        documents = [doc for file in files for doc in read_tagged_documents(file, column_format)]
    except CorpusError as exc:
        raise _usage(exc) from None
    if not documents:
        raise UsageError(f"{path}: the sample has no labelled sentences")
    digests = [(file.name, sha256_file(file)) for file in files]
    whole = (
        digests[0][1]
        if len(digests) == 1
        else hashlib.sha256("".join(f"{d}  {n}\n" for n, d in digests).encode()).hexdigest()
    )
    sentences = [sentence for document in documents for sentence in document]
    return documents, {
        "path": str(path),
        "sha256": whole,
        "files": [{"file": name, "sha256": digest} for name, digest in digests],
        "bytes": sum(file.stat().st_size for file in files),
        "documents": len(documents),
        "sentences": len(sentences),
        "tokens": sum(len(sentence) for sentence in sentences),
        "entities": sum(len(token_spans([t for _, t in s])) for s in sentences),
    }


def read_replay(path: Path, column_format: str) -> tuple[list[Tagged], dict[str, Any]]:
    """The replay corpus's training sentences: a corpus folder's train split, or one file."""
    try:
        file = path if path.is_file() else find_split_files(path).get("train")
        if file is None:
            raise UsageError(f"--replay {path}: no training file (a name containing 'train')")
        check_column_format(file, column_format)
        documents = read_tagged_documents(file, column_format)
    except CorpusError as exc:
        raise _usage(exc) from None
    sentences = [sentence for document in documents for sentence in document]
    return sentences, {"path": str(file), "sha256": sha256_file(file), "sentences": len(sentences)}


def labels_of(sentences: list[Tagged]) -> Counter:
    return Counter(label for s in sentences for _, _, label in token_spans([t for _, t in s]))


def check_labels(found: Counter, tagger, where: str) -> None:
    """Refuse, in one line, a label the model cannot tag."""
    tags = tagger.label_dictionary.get_items()
    known = sorted({tag.split("-", 1)[1] for tag in tags if "-" in tag})
    unknown = sorted(set(found) - set(known))
    if unknown:
        raise UsageError(
            f"{where}: label{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
            f"({sum(found[u] for u in unknown)} spans) not among the model's ({', '.join(known)}); "
            "adapt teaches the model's own types: relabel them as one of those, or train a new "
            "model with `annotator train`"
        )


def split_held_out(
    documents: list[list[Tagged]], share: float, seed: int
) -> tuple[list[list[Tagged]], list[list[Tagged]], str]:
    """(training documents, held-out documents, unit): a seeded `share` of the documents held
    out, or of the sentences (each then a document of its own) where there are too few
    documents to hold some out. A held-out part too small to choose an epoch or fit a map on
    is refused in one line."""
    unit = "documents"
    if len(documents) < MIN_DOCUMENTS:  # logged below, once the sample is known to be enough
        unit = "sentences"
        documents = [[sentence] for document in documents for sentence in document]
    order = list(range(len(documents)))
    random.Random(seed).shuffle(order)
    count = max(1, round(share * len(documents)))
    chosen = set(order[:count])
    held = [d for i, d in enumerate(documents) if i in chosen]
    kept = [d for i, d in enumerate(documents) if i not in chosen]
    entities = sum(labels_of([s for d in held for s in d]).values())
    if not kept or entities < MIN_HELD_OUT_ENTITIES:
        total = sum(len(d) for d in documents)
        raise UsageError(
            f"the sample is too small to hold a part out: {total} sentences; the held-out "
            f"{share:.0%} of its {unit} has {entities} entities and at least "
            f"{MIN_HELD_OUT_ENTITIES} are needed to choose the epoch and fit the score map; "
            "label more sentences (or raise --holdout)"
        )
    if unit == "sentences":
        log.info("the sample has too few documents to hold some out: holding out sentences")
    return kept, held, unit


def flair_sentences(tagged: list[Tagged], label_type: str, tokenize=None) -> list:
    """Flair sentences with their gold spans; re-tokenized by `tokenize` (annotate's spaCy
    tokenizer, labels projected onto the pieces) where the model was trained that way."""
    from flair.data import Sentence

    from annotator.training.retokenize import project

    result = []
    for pairs in tagged:
        tokens, tags = [t for t, _ in pairs], [g for _, g in pairs]
        if tokenize is not None:
            tokens, tags = project(tokens, tags, tokenize)
        sentence = Sentence(tokens)
        for first, end, label in token_spans(tags):
            sentence[first:end].add_label(label_type, label)
        result.append(sentence)
    return result


def grow_vocabulary(tagger, sentences) -> dict[str, int]:
    """New rows for the sample's words and characters the model's trainable word embeddings
    and character encoder lack (frozen pretrained vectors cannot grow: there is no vector to
    give a new word). A new row starts as a copy of the unknown row, so the model predicts as
    before until training moves it."""
    import torch
    from flair.embeddings import CharacterEmbeddings, WordEmbeddings

    from annotator.tagging.components import leaf_embeddings, word_index
    from annotator.training.recipes import normalise_word

    words = Counter(token.text for sentence in sentences for token in sentence)
    added = {"words": 0, "characters": 0}
    for embedding in leaf_embeddings(tagger.embeddings):
        if type(embedding) is WordEmbeddings and embedding.embedding.weight.requires_grad:
            vocab = embedding.vocab
            new = sorted(
                {
                    normalise_word(word)
                    for word, count in words.items()
                    if count >= MIN_NEW_WORD_COUNT and word_index(vocab, word) == len(vocab)
                }
            )
            table = embedding.embedding.weight.data
            unknown = table[len(vocab)]
            rows = torch.cat([table[: len(vocab)], unknown.expand(len(new) + 1, -1)])
            for word in new:
                vocab[word] = len(vocab)
            embedding.embedding = torch.nn.Embedding.from_pretrained(rows.clone(), freeze=False)
            vars(embedding).pop("get_cached_token_index", None)  # Flair's per-instance cache
            added["words"] += len(new)
        elif type(embedding) is CharacterEmbeddings:
            dictionary = embedding.char_dictionary
            chars: Counter = Counter()
            for word, count in words.items():
                for char in word:
                    chars[char] += count
            new = sorted(
                char
                for char, count in chars.items()
                if count >= MIN_NEW_WORD_COUNT and not dictionary.has_item(char)
            )
            old = embedding.char_embedding.weight.data
            unknown = old[dictionary.get_idx_for_item("<unk>")]
            for char in new:
                dictionary.add_item(char)
            grown = torch.nn.Embedding(len(dictionary), old.size(1)).to(old.device)
            grown.weight.data = torch.cat([old, unknown.expand(len(new), -1)]).clone()
            embedding.char_embedding = grown
            added["characters"] += len(new)
    return added


def replay_draw(pool_size: int, per_epoch: int, epochs: int, seed: int) -> list[list[int]]:
    """Which replay sentences each epoch mixes in: new ones each epoch until the pool is used
    up, then a fresh shuffle."""
    rng = random.Random(seed)
    order: list[int] = []
    draws = []
    for _ in range(epochs):
        while len(order) < per_epoch:
            more = list(range(pool_size))
            rng.shuffle(more)
            order += more
        draws.append(order[:per_epoch])
        order = order[per_epoch:]
    return draws


def adapt(
    model: str | Path | None,
    sample: str | Path,
    output: str | Path,
    replay: str | Path | None = None,
    settings: AdaptSettings | None = None,
    progress: bool = False,
) -> AdaptResult:
    """Fine-tune MODEL on a labelled SAMPLE into one model file at `output` (written whole or
    not at all), with a map of span scores fitted on the sample's held-out part."""
    from annotator.evaluation import flair_bars
    from annotator.logs import flair_imported

    settings = settings or AdaptSettings()
    if not 0 < settings.holdout < 1:
        raise UsageError(f"--holdout must be above 0 and below 1, not {settings.holdout}")
    flair_imported()
    with flair_bars(False), tempfile.TemporaryDirectory(prefix="annotator-adapt-") as scratch:
        return _adapt(model, Path(sample), Path(output), replay, settings, progress, Path(scratch))


def _adapt(
    model, sample: Path, output: Path, replay, settings: AdaptSettings, progress: bool, scratch
) -> AdaptResult:
    import torch

    from annotator.models import load_tagger, model_info, resolve_model
    from annotator.pipeline import Annotator
    from annotator.raw_evaluation import score_documents
    from annotator.segmentation import CARD_KEY as SEGMENTATION_KEY
    from annotator.tagging.calibration import CARD_KEY, apply_map, fit_sigmoid, out_of_fold_ece
    from annotator.training.fast import unsupported_reason
    from annotator.training.package import save_half_precision
    from annotator.training.retokenize import spacy_tokenize

    started = time.time()
    documents, sample_card = read_sample(sample, settings.column_format)
    replay_sentences, replay_card = (
        read_replay(Path(replay), settings.replay_column_format) if replay else ([], None)
    )
    source = model_info(model)
    before_annotator = Annotator(
        str(resolve_model(model)), device=settings.device, split_process=False
    )
    # training needs Flair's tagger (the annotator's may be the Flair-free export)
    tagger = load_tagger(str(resolve_model(model)), device=settings.device)
    reason = unsupported_reason(tagger)
    if reason is not None:
        raise AnnotatorError(f"adapt trains with the fast trainer, which cannot: {reason}")
    check_labels(labels_of([s for d in documents for s in d]), tagger, str(sample))
    if replay_sentences:
        check_labels(labels_of(replay_sentences), tagger, f"--replay {replay}")
    train_docs, held_docs, unit = split_held_out(documents, settings.holdout, settings.seed)
    held_sentences = [s for d in held_docs for s in d]
    train_sentences = [s for d in train_docs for s in d]
    held_out = {
        "unit": unit,
        "share": settings.holdout,
        "seed": settings.seed,
        "documents": len(held_docs),
        "sentences": len(held_sentences),
        "entities": sum(labels_of(held_sentences).values()),
    }
    log.info(
        "held out %d of the sample's %d %s (%d sentences, %d entities); training on %d sentences",
        len(held_docs),
        len(held_docs) + len(train_docs),
        unit,
        held_out["sentences"],
        held_out["entities"],
        len(train_sentences),
    )
    log.info("scoring the held-out part with the model as it is")
    before = score_documents(before_annotator, held_docs)
    del before_annotator

    card = tagger.model_card or {}
    tokenize = spacy_tokenize() if (card.get(SEGMENTATION_KEY) or {}).get("retokenized") else None
    label_type = tagger.label_type
    per_epoch = round(settings.replay_ratio * len(train_sentences)) if replay_sentences else 0
    draws = replay_draw(len(replay_sentences), per_epoch, settings.epochs, settings.seed)
    drawn = sorted({i for draw in draws for i in draw})
    position = {index: len(train_sentences) + n for n, index in enumerate(drawn)}
    train_flair = flair_sentences(
        train_sentences + [replay_sentences[i] for i in drawn], label_type, tokenize
    )
    held_flair = flair_sentences(held_sentences, label_type, tokenize)
    grown = grow_vocabulary(tagger, train_flair[: len(train_sentences)])
    log.info("vocabulary grown by %(words)d words and %(characters)d characters", grown)
    replayed = [[position[i] for i in draw] for draw in draws]
    best_epoch, history = _fine_tune(
        tagger, train_flair, held_flair, len(train_sentences), replayed, settings, progress
    )
    tagger.model_card = {k: v for k, v in card.items() if k != CARD_KEY}

    plain, half = scratch / "adapted.pt", scratch / "adapted-half.pt"
    tagger.save(plain)
    save_half_precision(plain, half)  # what is shipped is what the map is fitted on
    log.info("scoring the held-out part with the adapted model (epoch %d)", best_epoch)
    after_annotator = Annotator(
        str(half), device=settings.device, split_process=False, span_scores="marginal"
    )
    after = score_documents(after_annotator, held_docs)
    del after_annotator
    values, correct = [s for s, _ in after.scored], [c for _, c in after.scored]
    if not values:
        raise AnnotatorError("the adapted model finds no entity in the held-out part")
    x, y = fit_sigmoid(values, correct)
    calibration = {
        "method": "sigmoid",
        "x": x,
        "y": y,
        "fitted_on": f"{sample.name}: the {held_out['documents']} {unit} held out of adapt, "
        "raw text per document",
        "spans": len(values),
    }
    after.scored = list(zip(apply_map(calibration, values), correct, strict=True))
    out_of_fold = out_of_fold_ece(values, correct, "sigmoid")
    seconds = time.time() - started
    record = {
        "from": {"model": source.name, "sha256": source.sha256},
        "sample": sample_card,
        "replay": replay_card and {**replay_card, "sentences_per_epoch": per_epoch},
        "settings": dataclasses.asdict(settings),
        "vocabulary_added": grown,
        "best_epoch": best_epoch,
        "epochs": history,
        "held_out": {
            **held_out,
            "before": _figures(before),
            "after": {**_figures(after), "out_of_fold_ece": out_of_fold},
        },
        "seconds": round(seconds, 1),
    }
    state = torch.load(half, map_location="cpu", weights_only=False)
    state["model_card"] = {**tagger.model_card, CARD_KEY: calibration, ADAPTED_KEY: record}
    with AtomicFile(output) as target:
        torch.save(state, target.tmp)
    return AdaptResult(output, before, after, out_of_fold, held_out, best_epoch, history, seconds)


def _fine_tune(
    tagger,
    train,
    held,
    sample_sentences: int,
    replayed: list[list[int]],
    settings: AdaptSettings,
    progress: bool,
) -> tuple[int, list[dict[str, Any]]]:
    """Train `tagger` in place on the first `sample_sentences` of `train` plus each epoch's
    `replayed` ones; leave it at the epoch best on `held` (epoch 0: as it was). Returns that
    epoch and each epoch's loss and held-out F1."""
    import copy

    import numpy as np
    import torch

    from annotator.training.fast import FastTrainer
    from annotator.training.recipes import seed_everything

    seed_everything(settings.seed)
    trainer = FastTrainer(tagger, train, held, batch_size=settings.batch_size, seed=settings.seed)
    optimizer = torch.optim.SGD(tagger.parameters(), lr=settings.learning_rate)
    sample_ids = np.arange(sample_sentences)
    first = trainer.evaluate()
    history: list[dict[str, Any]] = [{"epoch": 0, "held_out_f1": first.f1}]
    best_f1, best_epoch, best_state = first.f1, 0, copy.deepcopy(tagger.state_dict())
    log.info("epoch 0 (the model as it was): held-out F1 %.2f%% (model tokens)", 100 * first.f1)
    for epoch in range(1, settings.epochs + 1):
        ids = np.concatenate([sample_ids, replayed[epoch - 1]]).astype(int)
        loss = trainer.train_epoch(
            optimizer, epoch, progress=progress, epochs=settings.epochs, sentence_ids=ids
        )
        f1 = trainer.evaluate().f1
        history.append({"epoch": epoch, "loss": loss, "held_out_f1": f1})
        better = f1 > best_f1
        if better:
            best_f1, best_epoch, best_state = f1, epoch, copy.deepcopy(tagger.state_dict())
        log.info(
            "epoch %d/%d: %d sentences (%d replayed), loss %.4f, held-out F1 %.2f%%%s",
            epoch,
            settings.epochs,
            len(ids),
            len(ids) - sample_sentences,
            loss,
            100 * f1,
            " (best)" if better else "",
        )
    tagger.load_state_dict(best_state)
    return best_epoch, history


def _figures(result) -> dict[str, Any]:
    """The card's held-out figures: micro and per type P/R/F1, and the ECE of the scores."""
    data = result.to_dict()
    return {
        "micro": data["micro"],
        "per_type": data["per_type"],
        "ece": data["calibration"]["ece"],
        "spans": data["calibration"]["spans"],
    }


def format_adapt(result: AdaptResult) -> str:
    """One table: the held-out part before and after, per type, end to end on raw text."""
    from annotator.records import percent

    before, after = result.before, result.after
    labels = sorted(set(before.per_type) | set(after.per_type))
    header = f"{'type':<10}" + "".join(
        f"{name:>9}" for name in ("P", "R", "F1", "P", "R", "F1", "support")
    )
    lines = [f"{'':<10}{'before':^27}{'after':^27}", header]

    def row(name: str, old, new) -> str:
        cells = [percent(getattr(s, k)) for s in (old, new) for k in ("precision", "recall", "f1")]
        return f"{name:<10}" + "".join(f"{c:>9}" for c in cells) + f"{new.support:>9d}"

    zero = type(before.micro)(0.0, 0.0, 0.0, 0)
    for label in labels:
        lines.append(row(label, before.per_type.get(label, zero), after.per_type.get(label, zero)))
    lines.append("-" * 73)
    lines.append(row("micro", before.micro, after.micro))
    old_ece, new_ece = before.reliability()["ece"], after.reliability()["ece"]
    lines.append(f"{'ECE':<10}{old_ece:>27.3f}{new_ece:>27.3f}")
    held = result.held_out
    lines.append(
        f"held-out part: {held['documents']} {held['unit']}, {held['sentences']} sentences, "
        f"{held['entities']} entities, raw text; after: epoch {result.best_epoch}, ECE of the "
        f"new map on spans left out of its fit {result.out_of_fold_ece:.3f}; "
        f"{result.seconds / 60:.1f} min; model: {result.output}"
    )
    return "\n".join(lines)
