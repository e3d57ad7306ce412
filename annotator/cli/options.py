"""Options that several commands share."""

from __future__ import annotations

import sys

import click

COLUMN_FORMAT = click.option(
    "--column-format",
    default="text,pos,chunk,ner",
    show_default=True,
    help="Names of the corpus columns, comma-separated; 'text' is the token, 'ner' the tag "
    "(IOB1, BIO or BIOES). Two-column files: text,ner.",
)


DEVICE = click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto (a GPU when there is one), cpu, or cuda[:N].",
)


PRECISION = click.option(
    "--precision",
    type=click.Choice(["fp32", "bf16", "auto"]),
    default="auto",
    show_default=True,
    help="The fast engine's arithmetic: fp32 (exactly Flair's spans), bf16 (matrix work in "
    "bfloat16: a CPU with AMX or AVX512-BF16, or a GPU; refused elsewhere), auto (bf16 where "
    "it is fast, else fp32).",
)


PROGRESS = click.option(
    "--progress/--no-progress",
    default=None,
    help="A progress bar on stderr (default: when stderr is a terminal).",
)


def show_progress(progress: bool | None) -> bool:
    return progress if progress is not None else sys.stderr.isatty()


def input_options(command):
    """How documents are read: the same flags for `annotate` and `view`."""
    command = click.option(
        "--id-field",
        default="id",
        show_default=True,
        help="JSONL/Parquet id field; without one, ids are SOURCE:ROW.",
    )(command)
    command = click.option(
        "--text-field", default="text", show_default=True, help="JSONL/Parquet text field."
    )(command)
    return click.option(
        "--input-format",
        type=click.Choice(["jsonl", "text", "parquet"]),
        help="Input format (default: from each file's extension; stdin is JSONL).",
    )(command)


MODEL = click.option(
    "--model",
    "-m",
    envvar="ANNOTATOR_MODEL",
    show_envvar=True,
    help="Flair model file or training folder, `default` (the packaged model, also when "
    "absent), or a hub name (`name`, `org/name`). A value that looks like a path (it starts "
    "with / . ~, ends in .pt, or its folder exists) must exist.",
)
