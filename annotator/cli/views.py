"""`annotator plot` and `view`: pictures of results, without Flair or torch."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from annotator.cli.options import input_options
from annotator.errors import AnnotatorError, UsageError
from annotator.files import check_parent, write_atomically
from annotator.io.readers import check_outputs_apart
from annotator.logs import say


@click.command(
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
    check_parent(output, "-o")
    if packaged and not DEFAULT_METRICS.exists():
        raise AnnotatorError(
            f"{DEFAULT_METRICS}: the packaged model's training metrics are not in this "
            "checkout (`make model` packages them with the model)"
        )
    source = DEFAULT_METRICS if packaged else model_dir
    folder = run_folder(source)
    metrics = read_metrics(source if str(source).endswith(".json") else folder)
    name = "packaged default model" if packaged else folder.name
    say(str(plot_training(metrics, output or folder / TRAINING_PNG, name)))


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


@click.command(
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
@input_options
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
    check_parent(output, "-o")
    try:
        check_outputs_apart([spans, *docs], {"-o": output})
    except AnnotatorError as exc:
        raise UsageError(str(exc)) from None
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
        say(f"Warning: {line}")
    if len(warnings) > 20:
        click.echo(f"Warning: ... and {len(warnings) - 20} more (listed in the page)", err=True)
    types = ", ".join(f"{label} {count}" for label, count in sorted(page.counts.items()))
    say(
        f"{output}: {page.shown} of {page.eligible} documents, "
        f"{sum(page.counts.values())} entities ({types or 'none'})"
    )
