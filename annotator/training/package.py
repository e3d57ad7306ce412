"""Make a finished training run the packaged default model, with its model card.

The card's prose is `data/MODEL_CARD.template.md`; the figures come from the run's own files
and, given the corpus, from scoring the model end to end on its test split as raw text.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from string import Template

import tomllib

from annotator import models
from annotator.errors import ModelError
from annotator.files import sha256_file
from annotator.tagging.calibration import CARD_KEY
from annotator.tagging.export import write_export

CARD_TEMPLATE = models.DATA_DIR / "MODEL_CARD.template.md"
# tensors of at least this many elements (weight matrices, vector tables) are packaged in float16;
# biases and the CRF's transitions stay float32
HALF_FROM = 4096


def package_default_model(
    run_dir: str | Path,
    command: str,
    corpus_dir: str | Path | None = None,
    model_file: str | Path | None = None,
) -> Path:
    """Export a finished run's best model (or `model_file` made from it, e.g. calibrated) into
    the package (float16 matrices, `save_half_precision`; safetensors, `write_export`), with a
    model card built from the run's files (and the model's raw-text scores on
    `corpus_dir`'s test split, where given)."""
    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if not metrics.get("finished") or not metrics.get("test"):
        raise ModelError(f"{run_dir}: the run has not finished (no test scores in metrics.json)")
    models.DATA_DIR.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        half = Path(folder) / "half.pt"
        card = save_half_precision(model_file or run_dir / "best-model.pt", half)
        # shipped as an export: no pickle in the package, and no Flair needed to load it
        write_export(half, models.DEFAULT_MODEL)
    # its training curve stays drawable (`annotator plot default`, docs/training.png)
    shutil.copyfile(run_dir / "metrics.json", models.DEFAULT_METRICS)
    raw = raw_test_scores(corpus_dir) if corpus_dir else None
    config = (run_dir / "config.toml").read_text()
    method = (card.get(CARD_KEY) or {}).get("method", "isotonic")  # older maps: isotonic
    text = model_card(metrics, config, command, models.DEFAULT_MODEL, raw, method)
    models.DEFAULT_MODEL_CARD.write_text(text, encoding="utf-8")
    return models.DEFAULT_MODEL


def save_half_precision(source: str | Path, target: str | Path) -> dict:
    """Copy a saved tagger with its large float32 tensors stored as float16, half their size
    (the int8 vector tables stay as they are). Loading is unchanged: `load_state_dict` copies
    them back into the float32 parameters, so only the stored digits are fewer. Returns the
    model's card, read on the way."""
    import torch

    state = torch.load(source, map_location="cpu", weights_only=False)
    weights = state["state_dict"]
    for name, tensor in weights.items():  # in place: the state dict keeps its metadata
        if tensor.dtype == torch.float32 and tensor.numel() >= HALF_FROM:
            weights[name] = tensor.half()
    torch.save(state, target)
    return state.get("model_card") or {}


def raw_test_scores(corpus_dir: str | Path) -> dict[str, dict]:
    """The packaged model end to end on the test split rebuilt as raw text, per unit."""
    from annotator.raw_evaluation import evaluate_raw

    return {
        unit: evaluate_raw(models.DEFAULT_MODEL, corpus_dir, "test", unit=unit).to_dict()
        for unit in ("document", "sentence")
    }


def model_card(
    metrics: dict,
    config: str,
    command: str,
    model: Path,
    raw: dict[str, dict] | None = None,
    calibration: str = "isotonic",
) -> str:
    """The default model's card: data and terms, config and command, scores (end to end on raw
    text first, where measured), speed, size, limits. `calibration`: the method of its map."""
    test = metrics["test"]
    rows = "\n".join(
        f"| {label} | {100 * s['precision']:.2f} | {100 * s['recall']:.2f} | "
        f"{100 * s['f1']:.2f} | {s['support']} |"
        for label, s in test["per_type"].items()
    )
    micro = test["micro"]
    speed = metrics.get("speed", {})
    settings = tomllib.loads(config)
    if settings.get("dev_holdout"):
        selection = (
            f"trained on train + dev except {100 * settings['dev_holdout']:g}% of dev's documents, "
            f"held out: best held-out dev micro-F1 {100 * metrics['best_dev_f1']:.2f} at epoch "
            f"{metrics['best_epoch']} of {metrics['epoch']}"
        )
    elif settings.get("train_with_dev"):
        selection = (
            f"trained on train + dev for {metrics['epoch']} epochs on a fixed learning-rate "
            "schedule (no dev scores: dev is training data)"
        )
    else:
        selection = (
            f"best dev micro-F1 {100 * metrics['best_dev_f1']:.2f} at epoch "
            f"{metrics['best_epoch']} of {metrics['epoch']}"
        )
    holdout = settings.get("dev_holdout", 0.0)
    if holdout:
        dev_data = f", and on the {100 - 100 * holdout:g}% of dev's documents not held out"
        calibration_data = f"the {100 * holdout:g}% of CoNLL++ dev's documents held out of training"
    else:
        dev_data = ", and on dev" if settings.get("train_with_dev") else ""
        calibration_data = "CoNLL++ dev documents"
    return Template(CARD_TEMPLATE.read_text(encoding="utf-8")).substitute(
        dev_data=dev_data,
        calibration_data=calibration_data,
        calibration=("an isotonic" if calibration == "isotonic" else "a sigmoid (Platt)"),
        size=f"{model.stat().st_size / 1e6:.1f}",
        glove=(
            f"the {settings['glove_words']:,} most frequent words"
            if settings.get("glove_words")
            else "none: glove_words = 0"
        ),
        raw=_raw_lines(raw),
        sha256=sha256_file(model),
        f1=f"{100 * micro['f1']:.2f}",
        precision=f"{100 * micro['precision']:.2f}",
        recall=f"{100 * micro['recall']:.2f}",
        selection=selection,
        minutes=f"{metrics['seconds'] / 60:.0f}",
        speed=(
            f"{speed['words_per_second']:,.0f} words/s ({speed['how']})"
            if speed
            else "see `annotator bench`"
        ),
        rows=rows,
        command=command,
        config=config.rstrip(),
    )


def _raw_lines(raw: dict[str, dict] | None) -> str:
    """The card's end-to-end lines: what a user of `annotate` gets on raw text."""
    if not raw:
        return ""
    parts = []
    for unit, scores in raw.items():
        micro, calibration = scores["micro"], scores["calibration"]
        types = " / ".join(
            f"{label} {100 * s['f1']:.2f}" for label, s in scores["per_type"].items()
        )
        parts.append(
            f"\n- **End to end on raw text, one text per {unit}: micro-F1 "
            f"{100 * micro['f1']:.2f}** ({types}; `annotator evaluate --raw --unit {unit}`); "
            f"span scores: ECE {calibration['ece']:.3f}"
        )
    return "".join(parts)
