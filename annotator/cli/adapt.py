"""`annotator adapt`: fine-tune a model on a labelled sample of one's own text."""

from __future__ import annotations

from pathlib import Path

import click

from annotator.cli.options import DEVICE, PROGRESS, show_progress
from annotator.files import check_parent
from annotator.training.adapt import AdaptSettings

DEFAULTS = AdaptSettings()


@click.command(
    short_help="Fine-tune a model on a labelled sample of your own text.",
    epilog="Example:\n\n\b\n  annotator adapt default sample.conll -o adapted.pt "
    "--replay data/conllpp\n  annotator annotate docs.jsonl -m adapted.pt -o entities.parquet",
)
@click.argument("model")
@click.argument("sample", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Model file to write (whole or not at all).",
)
@click.option(
    "--replay",
    type=click.Path(exists=True, path_type=Path),
    help="The model's original training data (a corpus folder's train split, or a column "
    "file), mixed into every epoch so the model keeps what it knew.",
)
@click.option(
    "--column-format",
    default=DEFAULTS.column_format,
    show_default=True,
    help="SAMPLE's columns, comma-separated ('text' the token, 'ner' the tag).",
)
@click.option(
    "--replay-column-format",
    default=DEFAULTS.replay_column_format,
    show_default=True,
    help="--replay's columns.",
)
@click.option(
    "--holdout",
    default=DEFAULTS.holdout,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Share of SAMPLE's documents held out: they choose the epoch, fit the score map "
    "and give the before/after table.",
)
@click.option(
    "--epochs",
    default=DEFAULTS.epochs,
    show_default=True,
    type=click.IntRange(min=1),
    help="Passes over SAMPLE's training part; the best on the held-out part is kept.",
)
@click.option(
    "--learning-rate",
    default=DEFAULTS.learning_rate,
    show_default=True,
    type=click.FloatRange(0, min_open=True),
    help="SGD learning rate, constant.",
)
@click.option(
    "--replay-ratio",
    default=DEFAULTS.replay_ratio,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Replayed sentences per SAMPLE training sentence, each epoch (new ones each epoch).",
)
@click.option(
    "--batch-size",
    default=DEFAULTS.batch_size,
    show_default=True,
    type=click.IntRange(min=1),
    help="Sentences per mini-batch.",
)
@click.option(
    "--seed",
    default=DEFAULTS.seed,
    show_default=True,
    type=click.IntRange(min=0),
    help="Seed of the held-out choice, the replay draw and training.",
)
@DEVICE
@PROGRESS
def adapt(
    model: str,
    sample: Path,
    output: Path,
    replay: Path | None,
    progress: bool | None,
    **settings,
) -> None:
    """Fine-tune MODEL (`default`, a file or a run folder) on SAMPLE, labelled text of your own
    domain in a column format (a file, or a folder of them), into one model file whose span
    scores are calibrated on SAMPLE's held-out part. Labels must be MODEL's own types."""
    from annotator.models import resolve_model

    resolve_model(model)  # a mistyped path fails here, before anything loads
    check_parent(output, "--output")
    from annotator.training.adapt import adapt as run
    from annotator.training.adapt import format_adapt

    result = run(model, sample, output, replay, AdaptSettings(**settings), show_progress(progress))
    click.echo(format_adapt(result))
