"""`annotator info` and `bench`: what this machine has, and how fast it annotates."""

from __future__ import annotations

from typing import Any

import click

from annotator.cli.options import DEVICE, MODEL
from annotator.errors import AnnotatorError


@click.command(
    short_help="Versions, device and the default model.", epilog="Example:\n\n\b\n  annotator info"
)
def info() -> None:
    """Versions, the device that would be used, and the default model's card."""
    from annotator.models import describe_environment

    click.echo(describe_environment())


@click.command(
    short_help="Words/s of Flair, spaCy and annotator.",
    epilog="Example:\n\n\b\n  annotator bench --docs 50 --repeat 3 --json bench.json",
)
@click.argument("inputs", nargs=-1)
@MODEL
@DEVICE
@click.option(
    "--json", "json_file", type=click.Path(dir_okay=False), help="Also write the results as JSON."
)
@click.option(
    "--docs", type=int, help="Use the first N input documents (generated: N, default 200)."
)
@click.option(
    "--corpus",
    type=click.Path(file_okay=False),
    help="CoNLL folder to generate documents from when no INPUTS are given "
    "(default: ../shared/data/conllpp beside the repository, else templates).",
)
@click.option("--text-field", default="text", show_default=True, help="JSONL/Parquet text field.")
@click.option(
    "--batch-sizes",
    default="32,128,512",
    show_default=True,
    help="Flair predict mini-batch sizes to try (32 is always run: the reference).",
)
@click.option(
    "--spacy-ner",
    help="spaCy pipeline (name or folder) for the spaCy NER row; 'off' "
    "skips it (default: ANNOTATOR_SPACY_NER, else en_core_web_sm).",
)
@click.option(
    "--stand-in",
    type=click.Choice(["tutorial"]),
    help="Also bench a same-shape stand-in of Flair's tutorial tagger (GloVe + "
    "news-forward/backward, random weights).",
)
@click.option(
    "--stand-in-docs",
    default=5,
    show_default=True,
    help="Documents for the stand-in section (its language models are slow on CPU).",
)
@click.option(
    "--stand-in-vocab",
    default=400_000,
    show_default=True,
    help="Word-vector rows of the stand-in (GloVe has 400,000).",
)
@click.option(
    "--memory", is_flag=True, help="Also run annotate on the documents x10 and compare peak RSS."
)
@click.option("--repeat", default=1, show_default=True, help="Runs per row (best time is kept).")
@click.option(
    "--isolate/--no-isolate",
    default=True,
    show_default=True,
    help="A fresh process per row (per-row peak RSS); --no-isolate is faster.",
)
@click.option(
    "--threads",
    type=int,
    help="torch threads (and the numpy engine's BLAS threads) in every row (default: their own).",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    help="Keep the documents, stand-in model and worker logs here (default: a temp dir).",
)
@click.option(
    "--flair-docs",
    type=int,
    help="Run Flair's rows (1, 2) on the first N documents only (Flair's predict on a GPU is "
    "slow); the other rows' spans are compared on those.",
)
@click.option(
    "--annotate-workers",
    default=1,
    show_default=True,
    help="Also time annotate in N worker processes on --device, each splitting sentences in its "
    "own process (row 3w).",
)
@click.option(
    "--workers-copies",
    default=1,
    show_default=True,
    help="Row 3w reads the documents this many times over (more work per worker).",
)
@click.option(
    "--precision",
    "precisions",
    default="fp32",
    show_default=True,
    help="The fast engine's precisions, comma-separated (fp32, bf16, auto): rows 3, 3p and 4 "
    "run in each (e.g. fp32,bf16 compares them; bf16 rows are skipped where bfloat16 is slow).",
)
def bench(inputs: tuple[str, ...], batch_sizes: str, precisions: str, **options: Any) -> None:
    """Words/s of Flair, spaCy and annotator side by side on the same documents (INPUTS: files
    or folders like annotate's; none: generated news-like documents)."""
    from annotator.bench.run import BenchOptions, run_bench

    try:
        sizes = tuple(int(s) for s in batch_sizes.split(",") if s.strip())
    except ValueError:
        raise AnnotatorError("--batch-sizes: comma-separated integers, e.g. 32,128,512") from None
    chosen = tuple(dict.fromkeys(p.strip() for p in precisions.split(",") if p.strip()))
    run_bench(
        BenchOptions(inputs=inputs, batch_sizes=sizes, precisions=chosen, **options),
        echo=click.echo,
        log=lambda line: click.echo(line, err=True),
    )
