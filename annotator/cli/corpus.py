"""`annotator corpus fetch|stats`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from annotator.cli.options import COLUMN_FORMAT
from annotator.logs import say


@click.group(
    epilog="Example:\n\n\b\n  annotator corpus fetch conllpp --dest data/conllpp\n"
    "  annotator corpus stats data/conllpp"
)
def corpus() -> None:
    """Fetch a corpus such as CoNLL++ and count what is inside it."""


@corpus.command(
    "fetch",
    epilog="Example:\n\n\b\n  annotator corpus fetch conllpp --dest data/conllpp\n"
    "  annotator corpus fetch conllpp --dest data/conllpp --from ../shared/data/conllpp",
)
@click.argument("name")
@click.option(
    "--dest",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write the corpus files into.",
)
@click.option(
    "--from",
    "source",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Copy from a local folder instead of downloading (checked the same way).",
)
def corpus_fetch(name: str, dest: Path, source: Path | None) -> None:
    """Download corpus NAME (conllpp) and verify each file's sha256."""
    from annotator.corpus import fetch_corpus

    for path in fetch_corpus(name, dest, source=source, progress=sys.stderr.isatty()):
        say(f"{path}  ok")


@corpus.command(
    "stats", epilog="Example:\n\n\b\n  annotator corpus stats data/conllpp --column-format text,ner"
)
@click.argument("corpus_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@COLUMN_FORMAT
def corpus_stats(corpus_dir: Path, column_format: str) -> None:
    """Sentences, tokens and entities per type of each split."""
    from annotator.corpus import corpus_stats as stats_of
    from annotator.corpus import reference_warnings

    stats = stats_of(corpus_dir, column_format)
    labels = sorted({label for item in stats.values() for label in item.entities})
    names = {"train": "Train", "test": "Test", "dev": "Development"}
    header = f"{'split':<13}{'sentences':>10}{'tokens':>9}" + "".join(f"{l:>7}" for l in labels)
    click.echo(header)
    for split in ("train", "test", "dev"):
        if split in stats:
            item = stats[split]
            click.echo(
                f"{names[split]:<13}{item.sentences:>10}{item.tokens:>9}"
                + "".join(f"{item.entities[l]:>7}" for l in labels)
            )
    if {"train", "dev", "test"} <= set(stats) and column_format == "text,pos,chunk,ner":
        for line in reference_warnings(stats):
            say(f"Warning: {line}")
