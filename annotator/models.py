"""Find and load taggers: a local file, a Flair/Hugging Face hub name, or the packaged default."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from annotator.corpus import sha256_file
from annotator.errors import AnnotatorError, MissingModel, ModelError
from annotator.logs import flair_imported, flair_quieted

log = logging.getLogger("annotator")

DATA_DIR = Path(__file__).parent / "data"
DEFAULT_MODEL = DATA_DIR / "default-model.pt"
DEFAULT_MODEL_CARD = DATA_DIR / "MODEL_CARD.md"
DEFAULT_METRICS = DATA_DIR / "default-model.metrics.json"  # its training run (`plot default`)
DEFAULT_NAME = "default"  # `--model default` names the packaged model wherever a model is taken


@dataclass(frozen=True)
class ModelInfo:
    """Provenance written beside every output: which model, exactly."""

    name: str
    sha256: str | None


MODEL_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


def looks_like_path(model: str) -> bool:
    """A path, not a hub name: it starts with / . ~, has a model suffix, has more than one
    separator or a backslash, or its parent folder exists (`runs/smal` beside `runs/`). Hub
    names are `name` or `org/name`."""
    if model.startswith(("/", ".", "~")) or "\\" in model or model.count("/") > 1:
        return True
    if Path(model).suffix.lower() in MODEL_SUFFIXES:
        return True
    return "/" in model and Path(model).expanduser().parent.is_dir()


def resolve_model(model: str | Path | None) -> str | Path:
    """None or `default` means the packaged default; an existing path is a file or a run
    folder; a missing one that looks like a path fails at once (no hub lookup); anything else
    is a hub name."""
    if model is None or str(model) == DEFAULT_NAME:
        if not DEFAULT_MODEL.exists():
            raise ModelError(
                "no --model given and no default model is packaged; "
                "train one with `annotator train` and pass --model PATH"
            )
        return DEFAULT_MODEL
    path = Path(model).expanduser()
    if path.is_dir():
        for name in ("best-model.pt", "final-model.pt"):
            if (path / name).exists():
                return path / name
        raise ModelError(f"{path}: a folder without best-model.pt or final-model.pt")
    if path.exists():
        return path
    if isinstance(model, Path) or looks_like_path(str(model)):
        raise MissingModel(
            f"{model}: no such model file or folder (give a path that exists, `default` for "
            "the packaged model, or a hub name)"
        )
    return str(model)


def model_info(model: str | Path | None) -> ModelInfo:
    resolved = resolve_model(model)
    if isinstance(resolved, Path):
        return ModelInfo(
            name=str(model) if model is not None else DEFAULT_NAME, sha256=sha256_file(resolved)
        )
    return ModelInfo(name=resolved, sha256=None)


def load_tagger(model: str | Path | None = None, device: str = "auto"):
    """Load a SequenceTagger onto `device`; every failure is one ModelError naming the model."""
    import flair
    from flair.models import SequenceTagger

    import annotator.embeddings  # noqa: F401  (registers our embeddings with Flair's loader)

    flair_imported()
    resolved = resolve_model(model)
    flair.device = choose_device(device)
    try:
        with flair_quieted():
            tagger = SequenceTagger.load(resolved)
    except Exception as exc:  # unpickling, hub and torch errors all mean "cannot use this model"
        where = "file" if isinstance(resolved, Path) else "hub model"
        hint = (
            ""
            if isinstance(resolved, Path)
            else " (hub models need network access; pass a local file with --model PATH)"
        )
        raise ModelError(
            f"cannot load {where} {resolved}: {type(exc).__name__}: {exc}{hint}"
        ) from None
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

    from annotator.version import __version__

    device = choose_device("auto")
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    lines = [
        f"annotator {__version__}",
        f"flair     {flair.__version__}",
        f"torch     {torch.__version__}",
        f"spacy     {spacy.__version__}",
        f"pyarrow   {pyarrow.__version__}",
        f"device    {device}{gpu}",
        "",
    ]
    if DEFAULT_MODEL.exists():
        size = DEFAULT_MODEL.stat().st_size / 1e6
        lines.append(
            f"default model: {DEFAULT_MODEL} ({size:.1f} MB, "
            f"sha256 {sha256_file(DEFAULT_MODEL)[:12]})"
        )
        if DEFAULT_MODEL_CARD.exists():
            lines += ["", DEFAULT_MODEL_CARD.read_text(encoding="utf-8").rstrip()]
    else:
        lines.append("default model: none packaged (pass --model)")
    return "\n".join(lines)


def choose_device(name: str = "auto"):
    """`auto` is the first GPU when there is one, else the CPU."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise AnnotatorError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AnnotatorError(f"device {name!r} asked for, but no CUDA GPU is available")
    return device
