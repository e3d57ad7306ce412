"""`annotator annotate` and `tag`."""

from __future__ import annotations

import math
import sys
from typing import Any

import click

from annotator.cli.options import DEVICE, MODEL, PRECISION, PROGRESS, input_options
from annotator.io.readers import MAX_RECORD_BYTES
from annotator.streams import drop_stdout

EXIT_SKIPPED = 3


def _a_number(ctx: click.Context, param: Any, value: float) -> float:
    """FloatRange lets NaN through (every comparison with it is false)."""
    if math.isnan(value):
        raise click.BadParameter("nan is not a number from 0 to 1", param=param)
    return value


@click.command(
    short_help="Find the entities in files, folders or stdin.",
    epilog="Example:\n\n\b\n  annotator annotate docs.jsonl -o entities.parquet\n"
    "  annotator annotate archive/ -o entities/ --resume --html first.html\n"
    "  cat docs.jsonl | annotator annotate --labels PER,ORG --min-score 0.8",
)
@click.argument("inputs", nargs=-1)
@click.option(
    "--output",
    "-o",
    help="Output file (.jsonl or .parquet), - for stdout (default), or a "
    "directory (DIR/, an existing one, or s3://bucket/prefix/) for part files and a "
    "manifest that --resume continues.",
)
@MODEL
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["jsonl", "parquet"]),
    help="Output format (default: from the extension; stdout is JSONL; a directory Parquet).",
)
@click.option(
    "--layout",
    type=click.Choice(["documents", "spans"]),
    help="One record per document (JSONL default) or per entity (Parquet default).",
)
@input_options
@click.option(
    "--drop-fields",
    is_flag=True,
    help="Documents layout: leave out the input's other fields (doc_id, entities and the "
    "provenance keys stay).",
)
@click.option(
    "--spacy-model",
    help="Installed spaCy pipeline whose parser/senter finds sentences "
    "(default: a blank English pipeline with the sentencizer).",
)
@click.option(
    "--max-record-bytes",
    default=MAX_RECORD_BYTES,
    show_default=True,
    type=click.IntRange(min=1),
    help="A larger record (JSON line, text file, Parquet text) is a bad record: memory stays "
    "bounded whatever the input.",
)
@click.option(
    "--max-sentence-tokens",
    default=250,
    show_default=True,
    type=click.IntRange(min=1),
    help="Longer sentences are cut into pieces of this many tokens.",
)
@click.option(
    "--batch-size",
    default=32,
    show_default=True,
    type=click.IntRange(min=1),
    help="Sentences per mini-batch of Flair's predict (--engine flair); the fast engine "
    "fills its batches by tokens (8,192 on a CPU, 16,384 on a GPU).",
)
@DEVICE
@PRECISION
@click.option(
    "--engine",
    type=click.Choice(["auto", "numpy", "fast", "flair"]),
    default="auto",
    show_default=True,
    help="Tagging engine. fast: vectorised (torch), same predictions; numpy: the same on "
    "the CPU without torch, for exported models without character LMs; flair: Flair's "
    "predict; auto: numpy on a CPU in float32 where it covers the model, else fast where "
    "it does, else flair.",
)
@click.option("--labels", help="Keep only these entity types, comma-separated (e.g. PER,ORG).")
@click.option(
    "--min-score",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 1),
    callback=_a_number,
    help="Keep entities scoring at least this (0 to 1). With a calibrated model (the default "
    "one is), 0.9 keeps the spans that are right about 90% of the time.",
)
@click.option(
    "--on-error",
    type=click.Choice(["fail", "skip"]),
    default="fail",
    show_default=True,
    help="Bad input record: stop with a message, or skip it and report it.",
)
@click.option(
    "--errors",
    "errors_file",
    type=click.Path(dir_okay=False),
    help="With --on-error skip: write skipped records here as JSONL (else to stderr).",
)
@PROGRESS
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the interrupted run in the output directory (starts one if there is none; "
    "a finished run is left as it is).",
)
@click.option(
    "--part-size",
    default=10_000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Directory output: documents per part file (the most a resume redoes).",
)
@click.option(
    "--shard",
    metavar="K/N",
    help="Only the documents of shard K of N (K = 0..N-1, by a stable hash of the document id).",
)
@click.option(
    "--devices",
    metavar="LIST",
    help="One worker process per device, e.g. cuda:0,cuda:1 (directory output).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Worker processes on --device (local backend) or tagger actors (ray backend).",
)
@click.option(
    "--backend",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="ray: tag on a Ray cluster (pip install 'annotator[ray]').",
)
@click.option("--ray-address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray).")
@click.option(
    "--html",
    "html_page",
    type=click.Path(dir_okay=False),
    help="Also write an entity viewer page (like `annotator view`) of the first documents.",
)
@click.option(
    "--html-limit",
    default=100,
    show_default=True,
    type=click.IntRange(min=1),
    help="Documents in the --html page.",
)
@click.option(
    "--include-suffix",
    "include_suffixes",
    multiple=True,
    metavar="SUFFIX",
    help="Folders give only .txt .text .jsonl .ndjson .json .parquet files (+ .gz/.zst); "
    "also take files with this suffix, e.g. .md (repeatable).",
)
def annotate(
    inputs: tuple[str, ...],
    output: str | None,
    labels: str | None,
    errors_file: str | None,
    resume: bool,
    part_size: int,
    shard: str | None,
    devices: str | None,
    workers: int | None,
    backend: str,
    ray_address: str | None,
    html_page: str | None,
    html_limit: int,
    include_suffixes: tuple[str, ...],
    **options: Any,
) -> None:
    """Find the entities in INPUTS (files, folders, globs, s3:// URIs; none or - for stdin).

    Exit codes: 0 done; 1 failed; 2 usage error; 3 done but records were skipped.
    """
    from annotator.runs.request import AnnotateOptions, AnnotateRequest

    settings = AnnotateOptions(
        labels=tuple(l.strip() for l in labels.split(",") if l.strip()) if labels else (),
        errors=errors_file,
        **options,
    )
    request = AnnotateRequest.build(
        inputs,
        output,
        settings,
        resume=resume,
        shard=shard,
        part_size=part_size,
        workers=workers,
        devices=tuple(d.strip() for d in devices.split(",") if d.strip()) if devices else (),
        backend=backend,
        ray_address=ray_address,
        page=html_page,
        page_limit=html_limit,
        include_suffixes=include_suffixes,
    )
    from annotator.runs.dispatch import annotate_run  # after the checks: a usage error is quick

    try:
        summary = annotate_run(request)
    except BrokenPipeError:
        drop_stdout()  # `annotator annotate | head` ends quietly: no error to report
        sys.exit(141)
    click.echo(summary.line(), err=True)
    if summary.skipped:
        sys.exit(EXIT_SKIPPED)


@click.command(
    epilog='Example:\n\n\b\n  annotator tag "I live in Singapore, I work for DSO."\n'
    '  echo "Angela Merkel visited Paris." | annotator tag -m runs/offline'
)
@click.argument("text", required=False)
@MODEL
@DEVICE
def tag(text: str | None, model: str | None, device: str) -> None:
    """Tag TEXT (or stdin) and print it with its entities inline."""
    from annotator.models import resolve_model
    from annotator.pipeline import Annotator
    from annotator.tagging.engines import tagged_string

    resolve_model(model)
    if text is None:
        text = sys.stdin.read()
    with Annotator(model, device=device, split_process=False) as annotator:
        click.echo(tagged_string(text, annotator.annotate_text(text)))
